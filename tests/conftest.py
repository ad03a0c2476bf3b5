"""Shared pytest setup: deterministic, single-threaded-friendly, offline."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import torch  # noqa: E402

# Tiny models are all dispatch: on a shared 2-core machine a second intra-op thread only adds stalls.
torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread_again():
    """Back to one thread after a test that ran code setting its own count (training, the benches): float
    sums depend on the thread count, and a worker thread keeps the count it first ran with, so a later test
    comparing two computations (one in such a thread) would see their last bits differ."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def oracle():
    """transformers' HiggsAudioV2 with tiny random weights: the numerical reference."""
    from higgslab.tiny.model import tiny_hf_model

    return tiny_hf_model(seed=0)


@pytest.fixture(scope="session")
def lm_checkpoints(tmp_path_factory):
    """The oracle's weights written in both real layouts: {"original": dir, "transformers": dir}."""
    from higgslab.tiny.model import write_tiny_model

    root = tmp_path_factory.mktemp("lm")
    return {fmt: write_tiny_model(root / fmt, fmt, seed=0) for fmt in ("original", "transformers")}


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory):
    """A `HIGGSLAB_CACHE` folder holding the embedded tiny checkpoints (LM + text tokenizer, audio
    tokenizer), written once per session. Returns (cache root, model dir, audio tokenizer dir)."""
    from higgslab.embedded import tiny_random_paths

    root = tmp_path_factory.mktemp("higgslab-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("HIGGSLAB_CACHE", str(root))
    try:
        model_dir, tokenizer_dir = tiny_random_paths()
    finally:
        mp.undo()
    return root, model_dir, tokenizer_dir


# The real generation model's config.json (Boson's original layout), as published: shapes at real size.
REAL_CONFIG = Path(__file__).parent / "data" / "generation-original.config.json"
