"""Fixtures for the tokenizer tests: a torchaudio stand-in (so transformers' tokenizer class imports), the
transformers oracle with tiny random weights saved by `save_pretrained`, and tiny checkpoints of our own."""

from __future__ import annotations

import importlib.machinery
import math
import sys
import types

import numpy as np
import pytest
import torch


def direct_sinc_resample(
    x: np.ndarray, orig: int, new: int, width: int = 6, rolloff: float = 0.99
) -> np.ndarray:
    """Windowed-sinc resampling by direct evaluation in float64: y[j] = Σ_i x[i]·h(i/orig − j/new), with
    h(t) = sinc(π f_c t)·cos²(π f_c t / 2w)·f_c/orig for |f_c t| < w (rates reduced by their gcd,
    f_c = min(orig, new)·rolloff). Written from the formula, independently of higgslab's conv1d version."""
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    fc = min(o, n) * rolloff
    x = np.asarray(x, dtype=np.float64)
    out_len = math.ceil(n * x.shape[-1] / o)
    j = np.arange(out_len)[:, None]
    reach = math.ceil(width * o / fc) + o + 1
    i = (j * o) // n + np.arange(-reach, reach + 1)[None, :]
    arg = fc * (i / o - j / n)
    h = np.where(np.abs(arg) < width, np.sinc(arg) * np.cos(np.pi * arg / (2 * width)) ** 2 * fc / o, 0.0)
    valid = (i >= 0) & (i < x.shape[-1])
    xs = np.where(valid, x[..., np.clip(i, 0, x.shape[-1] - 1)], 0.0)
    return (xs * h).sum(-1)


def stub_resample(waveform: torch.Tensor, orig_freq: int, new_freq: int, **_) -> torch.Tensor:
    flat = waveform.reshape(-1, waveform.shape[-1]).double().numpy()
    out = np.stack([direct_sinc_resample(row, orig_freq, new_freq) for row in flat])
    return torch.from_numpy(out).to(waveform.dtype).reshape(*waveform.shape[:-1], -1)


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """Tiny convolutions on a shared 2-core machine: one thread is 10-100x faster than two fighting for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def hf_tokenizer_class():
    """transformers' HiggsAudioV2TokenizerModel, importable thanks to a torchaudio stub in sys.modules
    (transformers only calls `torchaudio.functional.resample`; higgslab never imports torchaudio)."""
    if "torchaudio" not in sys.modules:
        stub = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        stub.__version__ = "0.0-stub"
        stub.functional = types.ModuleType("torchaudio.functional")
        stub.functional.resample = stub_resample
        sys.modules["torchaudio"] = stub
        sys.modules["torchaudio.functional"] = stub.functional
    from transformers.utils import import_utils

    import_utils.is_torchaudio_available.cache_clear()  # it may have been asked (and cached False) before
    from transformers.models.higgs_audio_v2_tokenizer.modeling_higgs_audio_v2_tokenizer import (
        HiggsAudioV2TokenizerModel,
    )

    return HiggsAudioV2TokenizerModel


@pytest.fixture(scope="session")
def hf_tokenizer(hf_tokenizer_class, tmp_path_factory):
    """(transformers model with tiny random weights, directory it was saved to with save_pretrained)."""
    from transformers import HiggsAudioV2TokenizerConfig

    config = HiggsAudioV2TokenizerConfig(
        target_bandwidths=[0.5, 1, 1.5, 2],  # -> 8 quantizers at 25 frames/s × 10 bits
        codebook_dim=8,
        acoustic_model_config={
            "encoder_hidden_size": 2,
            "downsampling_ratios": [8, 5, 4, 2, 3],
            "decoder_hidden_size": 32,
            "upsampling_ratios": [8, 5, 4, 2, 3],
            "hidden_size": 16,
        },
        semantic_model_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 1,
            "intermediate_size": 64,
            "conv_dim": [8] * 7,
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 2,
        },
    )
    torch.manual_seed(0)
    model = hf_tokenizer_class(config).eval()
    with (
        torch.no_grad()
    ):  # its init zeroes the codebooks and leaves tiny conv weights: make every code matter
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("codebook.embed"):
                p.normal_()
            elif name.endswith(".alpha"):
                p.uniform_(0.5, 2.0)
            elif name.startswith("acoustic_") and p.dim() == 3:
                p.normal_(0, 1 / math.sqrt(p.shape[1] * p.shape[2]))
    directory = tmp_path_factory.mktemp("hf_tokenizer")
    model.save_pretrained(directory)
    return model, directory


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Tiny tokenizers written by higgslab.tiny in both layouts: {"original": dir, "transformers": dir}."""
    from higgslab.tiny.tokenizer import write_tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny_tokenizer")
    return {fmt: write_tiny_tokenizer(root / fmt, fmt) for fmt in ("original", "transformers")}


@pytest.fixture(scope="session")
def tok(tiny_dirs):
    from higgslab import load_tokenizer

    return load_tokenizer(tiny_dirs["original"])


@pytest.fixture(scope="session")
def speech_like():
    """A 2 s, 24 kHz test signal: chirp + harmonics + noise bursts, float32 in [-1, 1]."""
    sr = 24000
    t = np.arange(2 * sr) / sr
    f0 = 120 + 80 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wav = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wav = wav + 0.05 * np.random.default_rng(0).standard_normal(t.shape)
    return (0.3 * wav / np.abs(wav).max()).astype(np.float32)
