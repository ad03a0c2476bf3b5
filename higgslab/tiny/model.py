"""Tiny random Higgs Audio V2 LMs, written in the exact real layouts (FORMATS.md §1–2).

The weights come from transformers' own `HiggsAudioV2ForConditionalGeneration` (the numerical oracle),
so a test can load the same directory into both and compare. Vocabulary and token ids are the real
ones (128256, `<|AUDIO_OUT|>` = 128016), only the widths are tiny.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from higgslab.config import HiggsConfig

REAL_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def tiny_hf_config(
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 64,
    codebooks: int = 8,
    codebook_size: int = 1024,
):
    """A transformers `HiggsAudioV2Config` with real token ids and rope, tiny widths (FORMATS.md §9 traps
    handled: codebook_size counts the two stream tokens, head_dim = hidden // heads). `codebooks` ×
    `codebook_size` real codes, the stream ids right after them (the real 8 × 1024 by default)."""
    from transformers import HiggsAudioV2Config

    return HiggsAudioV2Config(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        num_codebooks=codebooks,
        codebook_size=codebook_size + 2,
        audio_stream_bos_id=codebook_size,
        audio_stream_eos_id=codebook_size + 1,
        max_position_embeddings=131072,
        rope_parameters=dict(REAL_ROPE),
    )


def tiny_hf_model(seed: int = 0, text_head: bool = True, **sizes):
    """The oracle: a random transformers model in float32, eval mode."""
    from transformers import HiggsAudioV2ForConditionalGeneration

    torch.manual_seed(seed)
    model = HiggsAudioV2ForConditionalGeneration(tiny_hf_config(**sizes), use_text_head=text_head)
    # random init leaves norms at 1 and logits near 0: perturb norms so that routing errors show up
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def write_tiny_model(
    directory: str | Path, fmt: str = "original", seed: int = 0, text_head: bool = True, **sizes
):
    """Write a tiny random checkpoint in `fmt` ('original' or 'transformers'); returns the directory."""
    from higgslab.io.keys import to_ours
    from higgslab.io.lm_format import KEY_RULES, write_checkpoint

    directory = Path(directory)
    model = tiny_hf_model(seed=seed, text_head=text_head, **sizes)
    if fmt == "transformers":
        model.save_pretrained(directory)
        return directory
    config = HiggsConfig.from_dict(json.loads(model.config.to_json_string()))
    config = config.replace(source_format="new", raw={})  # a new original file, not one converted
    tensors = {to_ours(k, KEY_RULES["transformers"]): v for k, v in model.state_dict().items()}
    write_checkpoint(directory, config, tensors, fmt="original")
    return directory
