"""CPU speed of the Higgs audio tokenizer at real size vs transformers' HiggsAudioV2TokenizerModel.

    python bench/tokenizer_speed.py [--seconds 10] [--repeats 3] [--threads 2]

Builds the real geometry (DAC 64/1024 channels, D 256, HuBERT-base, 8 × 1024 codebooks of dim 64) with random
weights, copies the same weights into transformers' model (torchaudio, which cannot be installed beside
torch 2.13, is stood in by a stub whose `functional.resample` is higgslab's plain-torch port, so both sides
pay for the same resampler), checks that both give the same codes, then times encode and decode of the same
clip, alternating the two implementations and keeping each one's best time (the CPU is shared).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import sys
import time
import types

import numpy as np
import torch

from higgslab.io.codec_format import key_rules, transformers_config_json
from higgslab.io.keys import to_disk
from higgslab.tiny.tokenizer import training_only_tensors
from higgslab.tokenizer.model import CodecConfig, HiggsAudioCodec
from higgslab.tokenizer.resample import resample

REAL_PARAMS = 200_343_777  # transformers' HiggsAudioV2TokenizerModel at the real geometry (FORMATS.md §9)


def transformers_class():
    """transformers' tokenizer class, importable through a torchaudio stub."""
    stub = types.ModuleType("torchaudio")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    stub.functional = types.SimpleNamespace(resample=lambda x, orig, new, **_: resample(x, orig, new))
    sys.modules.setdefault("torchaudio", stub)
    from transformers.utils import import_utils

    import_utils.is_torchaudio_available.cache_clear()
    from transformers.models.higgs_audio_v2_tokenizer.modeling_higgs_audio_v2_tokenizer import (
        HiggsAudioV2TokenizerModel,
    )

    return HiggsAudioV2TokenizerModel


def build_both(seed: int = 0):
    """(our codec, transformers' model) with identical random real-size weights."""
    torch.manual_seed(seed)
    ours = HiggsAudioCodec(CodecConfig())
    with torch.no_grad():
        for level in ours.quantizer.layers:
            level.codebook.normal_()
    cls = transformers_class()
    config = cls.config_class.from_dict(transformers_config_json(ours.cfg))
    theirs = cls(config).eval()
    rules = key_rules("transformers", len(ours.cfg.ratios))
    state = {to_disk(k, rules): v for k, v in ours.state_dict().items()}
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    unused = ("decoder_semantic.", "fc1.")  # training-only; k-means buffers below
    leftover = [
        k
        for k in missing
        if not k.startswith(unused) and not k.endswith(("inited", "cluster_size", "embed_avg"))
    ]
    assert not leftover and not unexpected, (leftover, unexpected)
    return ours, theirs


def clip(seconds: float, sr: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 60 * np.sin(2 * np.pi * 0.5 * t)
    wav = np.sin(2 * np.pi * np.cumsum(f0) / sr) + 0.05 * np.random.default_rng(0).standard_normal(t.shape)
    return (0.3 * wav / np.abs(wav).max()).astype(np.float32)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds summed over threads) of one call. CPU time is the steadier of the
    two when other users load the machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ours, theirs = build_both()
    n_ours = sum(p.numel() for p in ours.parameters())
    n_extra = sum(
        v.numel() for v in training_only_tensors(ours.cfg, "transformers", torch.Generator()).values()
    )
    n_theirs = sum(p.numel() for p in theirs.parameters())
    print(
        f"params: ours {n_ours:,} (+ {n_extra:,} training-only = {n_ours + n_extra:,}); transformers {n_theirs:,}"
    )
    assert n_ours + n_extra == n_theirs == REAL_PARAMS, "not the real geometry"

    wav = torch.from_numpy(clip(args.seconds))[None, None]
    with torch.no_grad():
        codes = ours.encode(wav)
        assert torch.equal(codes, theirs.encode(wav, return_dict=False)), "codes differ"
        diff = (ours.decode(codes) - theirs.decode(codes, return_dict=False)).abs().max().item()
        print(f"codes {list(codes.shape)} identical; decoded audio max |diff| {diff:.1e}")

        steps = {
            "encode": {
                "ours": lambda: ours.encode(wav),
                "transformers": lambda: theirs.encode(wav, return_dict=False),
            },
            "decode": {
                "ours": lambda: ours.decode(codes),
                "transformers": lambda: theirs.decode(codes, return_dict=False),
            },
        }
        timed(steps["decode"]["ours"])  # warm-up
        runs = {(step, impl): [] for step in steps for impl in steps[step]}
        for _ in range(args.repeats):  # alternate implementations so that other users' load hits both alike
            for step, impls in steps.items():
                for impl, fn in impls.items():
                    runs[step, impl].append(timed(fn))

    print(f"\n{args.seconds:g} s of 24 kHz audio, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(
        f"{'':8s} {'ours wall/cpu (s)':>18s} {'RTF':>7s} {'transformers wall/cpu (s)':>26s} {'RTF':>7s} {'ratio wall/cpu':>15s}"
    )
    for step in steps:
        a = [min(t[i] for t in runs[step, "ours"]) for i in (0, 1)]
        b = [min(t[i] for t in runs[step, "transformers"]) for i in (0, 1)]
        print(
            f"{step:8s} {a[0]:8.3f} / {a[1]:7.3f} {a[0] / args.seconds:7.4f} {b[0]:16.3f} / {b[1]:7.3f} "
            f"{b[0] / args.seconds:7.4f} {a[0] / b[0]:7.2f} / {a[1] / b[1]:5.2f}"
        )


if __name__ == "__main__":
    main()
