"""Tiny random Higgs audio tokenizers in the exact real on-disk layouts (FORMATS.md §3–4).

Real frame geometry (24 kHz, strides 8·5·4·2·3 = hop 960, 25 frames/s, 8 codebooks × 1024, HuBERT's conv
front end at 16 kHz with a 2× semantic stride), tiny widths. Built from higgslab's own modules, so writing
one needs neither transformers' tokenizer class nor torchaudio; transformers' `HiggsAudioV2TokenizerModel`
loads the 'transformers' layout strictly (checked in tests/tokenizer/test_tiny.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from higgslab.tokenizer.model import CodecConfig, HiggsAudioCodec

TINY_HUBERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 1,  # = hidden // 64 rounded up to 1: what the original-layout reader infers
    "intermediate_size": 64,
    "conv_dim": [8] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}


def tiny_config(**overrides) -> CodecConfig:
    """Real frame geometry, tiny widths (DAC encoder 2→64 channels, latent 16, decoder 32→1, codebook dim 8)."""
    sizes = dict(encoder_width=2, latent_dim=16, decoder_width=32, codebook_dim=8, hubert=dict(TINY_HUBERT))
    return CodecConfig(**{**sizes, **overrides})


def tiny_codec(seed: int = 0, **overrides) -> HiggsAudioCodec:
    """A random `HiggsAudioCodec` with `tiny_config`; the global RNG is left untouched."""
    # only the CPU generator is touched: fork_rng would also fork whatever accelerator torch reports
    with torch.random.fork_rng(devices=[], device_type="cpu"):
        torch.manual_seed(seed)
        model = HiggsAudioCodec(tiny_config(**overrides))
        with torch.no_grad():
            for level in model.quantizer.layers:  # default init leaves codebooks at zero
                level.codebook.normal_()
            for name, p in model.named_parameters():
                if name.endswith(".alpha"):  # Snake slopes: away from the all-ones init
                    p.uniform_(0.5, 2.0)
    return model.eval()


def write_tiny_tokenizer(directory: str | Path, fmt: str = "original", seed: int = 0, **overrides) -> Path:
    """Write a tiny random tokenizer to `directory` as config.json + model.pth ('original', weight-normalised DAC
    convs) or config.json + model.safetensors ('transformers'). `overrides` change `tiny_config` (e.g.
    `n_q=4`, `bins=512`). Returns the directory."""
    from higgslab.tokenizer.checkpoint import save_codec

    return save_codec(tiny_codec(seed, **overrides), directory, fmt, seed=seed)
