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


def training_only_tensors(cfg: CodecConfig, fmt: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random stand-ins, under their on-disk names in `fmt`, for the tensors a real checkpoint carries but
    inference ignores (semantic decoder, fc_post1), so a tiny checkpoint has the real key set (transformers'
    tokenizer class loads it strictly)."""
    from higgslab.io.codec_format import key_rules
    from higgslab.io.keys import to_disk

    d, fused = cfg.semantic_dim, cfg.latent_dim + cfg.semantic_dim

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    out = {"decoder_semantic.conv1.weight": rand(d, d, 3), "decoder_semantic.conv2.weight": rand(d, d, 3)}
    for i in range(len(cfg.semantic_strides)):
        block = f"decoder_semantic.conv_blocks.{i}"
        out[f"{block}.conv.weight"], out[f"{block}.conv.bias"] = rand(d, d, 3), rand(d)
        for j in range(len(cfg.semantic_dilations)):
            out[f"{block}.res_units.{j}.conv1.weight"] = rand(d, d, cfg.semantic_unit_kernel)
            out[f"{block}.res_units.{j}.conv2.weight"] = rand(d, d, 1)
    out["fc_post1.weight"], out["fc_post1.bias"] = rand(d, fused), rand(d)
    rules = key_rules(fmt, len(cfg.ratios))
    return {to_disk(k, rules): v for k, v in out.items()}


def write_tiny_tokenizer(directory: str | Path, fmt: str = "original", seed: int = 0, **overrides) -> Path:
    """Write a tiny random tokenizer to `directory` as config.json + model.pth ('original', weight-normalised DAC
    convs) or config.json + model.safetensors ('transformers'), with random training-only tensors beside the
    ones inference uses, as a real checkpoint has them. `overrides` change `tiny_config` (e.g. `n_q=4`,
    `bins=512`). Returns the directory."""
    from higgslab.io.codec_format import write_codec

    codec = tiny_codec(seed, **overrides)
    extra = training_only_tensors(codec.cfg, fmt, torch.Generator().manual_seed(seed))
    return write_codec(codec, directory, fmt, extra)
