"""Which model to use when none is configured: the embedded default.

Order: the paths the user gave; else the shipped mini model (`higgslab/assets/mini/`, trained on
synthetic speech by `higgslab.train`). `HIGGSLAB_EMBEDDED=tiny` picks tiny random checkpoints instead
(test fixtures from `higgslab.tiny`, written once into `~/.cache/higgslab/tiny-random/`), which exercise
the whole real loading and generation path offline but speak noise: tests of the plumbing want weights
that never emit an end of stream. The returned label says which one is in use, so every CLI and notebook
can print it.
"""

from __future__ import annotations

import os
from pathlib import Path

from higgslab.errors import HiggsLabError

ASSETS = Path(__file__).parent / "assets" / "mini"
TINY_LABEL = "embedded tiny RANDOM weights (no checkpoint configured: the audio is noise)"


def cache_root() -> Path:
    return Path(os.environ.get("HIGGSLAB_CACHE", Path.home() / ".cache" / "higgslab"))


def tiny_random_paths() -> tuple[Path, Path]:
    """Tiny random LM (original layout, with a tiny text tokenizer) and audio tokenizer; written once."""
    from higgslab.tiny.model import write_tiny_model
    from higgslab.tiny.text import write_tiny_text_tokenizer
    from higgslab.tiny.tokenizer import write_tiny_tokenizer

    root = cache_root() / "tiny-random"
    model, tokenizer = root / "model", root / "tokenizer"
    if not (root / "done").is_file():
        write_tiny_model(model, "original", seed=0)
        write_tiny_text_tokenizer(model)
        write_tiny_tokenizer(tokenizer, "original", seed=0)
        (root / "done").write_text("ok\n")
    return model, tokenizer


def resolve_paths(model_path: str | None, tokenizer_path: str | None) -> tuple[Path, Path | None, str]:
    """(model dir, audio tokenizer dir, a label saying which model this is)."""
    if model_path is not None:
        return (
            Path(model_path),
            (Path(tokenizer_path) if tokenizer_path else None),
            f"checkpoint {model_path}",
        )
    choice = os.environ.get("HIGGSLAB_EMBEDDED", "mini")
    if choice not in ("mini", "tiny"):
        raise HiggsLabError(f"HIGGSLAB_EMBEDDED={choice!r}: expected 'mini' or 'tiny'")
    if choice == "tiny":
        model, tokenizer = tiny_random_paths()
        return model, tokenizer, TINY_LABEL
    if not (ASSETS / "model" / "config.json").is_file():
        raise HiggsLabError(
            f"{ASSETS}: the shipped higgslab-mini is missing (reinstall higgslab, give model_path=..., "
            "or set HIGGSLAB_EMBEDDED=tiny for random weights)"
        )
    return (
        ASSETS / "model",
        ASSETS / "tokenizer",
        "embedded higgslab-mini (trained on espeak-ng speech; how well it speaks: bench/RESULTS.md)",
    )
