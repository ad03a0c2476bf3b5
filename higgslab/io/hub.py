"""Fetch the real checkpoints from the Hugging Face hub into the NPU port's layout.

    model_cache/      ← bosonai/higgs-audio-v2-generation-3B-base  (LM, text tokenizer; ~11.5 GB)
    tokenizer_cache/  ← bosonai/higgs-audio-v2-tokenizer           (audio tokenizer; ~2 GB)

`huggingface_hub.snapshot_download` resumes partial files, so a re-run continues where it stopped.
Where the hub cannot be reached it fails within seconds with one line saying how to use local copies.
"""

from __future__ import annotations

import os
from pathlib import Path

from higgslab.errors import HiggsLabError

REPOS = {
    "model": ("bosonai/higgs-audio-v2-generation-3B-base", "model_cache"),
    "tokenizer": ("bosonai/higgs-audio-v2-tokenizer", "tokenizer_cache"),
}
OFFLINE_HINT = (
    "download the two repositories on a machine that can reach it and point higgslab at the copies: "
    "python -m higgslab.generate model_path=/path/to/model tokenizer_path=/path/to/tokenizer"
)


def download(
    what: tuple[str, ...] = ("model", "tokenizer"),
    root: str | Path = ".",
    endpoint: str | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Path]:
    """Download the repositories named in `what` under `root`; returns {name: local directory}."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout_s)))
    from huggingface_hub import HfApi, snapshot_download

    unknown = [w for w in what if w not in REPOS]
    if unknown:
        raise HiggsLabError(f"unknown download target {unknown[0]!r} (choose from {sorted(REPOS)})")
    api = HfApi(endpoint=endpoint)
    out = {}
    for name in what:
        repo, folder = REPOS[name]
        try:  # one cheap call first: an unreachable hub fails here, fast, before any file is touched
            api.model_info(repo, timeout=timeout_s)
        except Exception as e:  # noqa: BLE001 - every way of not reaching the hub ends the same way
            reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise HiggsLabError(
                f"cannot reach the Hugging Face hub for {repo} ({reason}); {OFFLINE_HINT}"
            ) from None
        target = Path(root) / folder
        out[name] = Path(snapshot_download(repo, local_dir=target, endpoint=endpoint))
    return out
