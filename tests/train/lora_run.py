"""Helpers shared by the method and merge tests: tiny inputs, logits, a LoRA trained a few steps."""

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from higgslab.conf import CONF_DIR
from higgslab.io.load import load_model
from higgslab.train.methods import LoraSettings, prepare_for, save_trained

ALL_TARGETS = LoraSettings(rank=4, alpha=8, targets=("attention", "audio_ffn", "text_ffn"))


def batch(config, seed=0):
    """Two rows of text then audio-out placeholders, with their audio codes: both FFN paths run."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (2, 12), generator=g)
    ids[:, 5:] = config.audio_out_token_id
    codes = torch.randint(0, config.codebook_size, (2, config.num_codebooks, 7), generator=g)
    return ids, codes


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs).audio_logits


def train_a_few_steps(model, inputs, steps=5) -> None:
    """AdamW on random targets: every trainable weight moves."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    target = torch.randn_like(model(*inputs).audio_logits)
    for _ in range(steps):
        loss = (model(*inputs).audio_logits - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def trained_adapter(base_dir: Path, out: Path):
    """A LoRA on every target trained a few steps and saved: (adapter dir, inputs, its logits in memory)."""
    torch.manual_seed(0)
    model = prepare_for(load_model(base_dir), "lora", ALL_TARGETS)
    inputs = batch(model.config)
    train_a_few_steps(model, inputs)
    model.eval()
    return save_trained(model, "lora", out, base_path=base_dir), inputs, logits(model, inputs)


def merge_config(*overrides: str):
    """merge.yaml composed with command-line overrides."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("merge", overrides=list(overrides))
