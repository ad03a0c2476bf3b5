"""Convert LM checkpoints between the original Boson layout and the transformers layout.

The NPU port's weight-remapping tool, both directions: keys renamed (see `io.checkpoints`), configs
rewritten, tensors copied bit for bit, written in shards with an index. The output appears whole or not
at all (`io.atomic.atomic_dir`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from higgslab.config import HiggsConfig
from higgslab.errors import HiggsLabError
from higgslab.io.atomic import atomic_dir
from higgslab.io.checkpoints import INDEX, from_canonical, read_checkpoint

CONFIG_WRITERS = {"original": HiggsConfig.to_original_dict, "transformers": HiggsConfig.to_transformers_dict}
WEIGHT_FILES = ("model.safetensors", INDEX, "config.json")


def shard(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split into shards of at most `max_bytes` (a larger tensor gets a shard of its own), key order kept."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    return shards


def write_checkpoint(
    directory: str | Path,
    config: HiggsConfig,
    tensors: dict[str, torch.Tensor],
    fmt: str,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Write canonical-key `tensors` + config as a checkpoint in `fmt`. One file if it fits one shard,
    else `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    theirs = {from_canonical(k, fmt): v.contiguous() for k, v in tensors.items()}
    (directory / "config.json").write_text(json.dumps(CONFIG_WRITERS[fmt](config), indent=2) + "\n")
    parts = shard(theirs, max_shard_bytes)
    if len(parts) == 1:
        save_file(parts[0], directory / "model.safetensors", metadata={"format": "pt"})
        return directory
    weight_map = {}
    for i, part in enumerate(parts, 1):
        name = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
        save_file(part, directory / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    total = sum(v.numel() * v.element_size() for v in theirs.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return directory


def convert(
    src: str | Path, dst: str | Path, to: str, max_shard_bytes: int = 5 * 2**30, overwrite: bool = False
) -> Path:
    """Convert the checkpoint at `src` to format `to` at `dst`; other files (text tokenizer, generation
    config) are copied along. Refuses to touch an existing `dst` unless `overwrite`."""
    if to not in CONFIG_WRITERS:
        raise HiggsLabError(f"unknown target format {to!r} (use 'original' or 'transformers')")
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise HiggsLabError(f"{dst}: already exists (pass --overwrite to replace it)")
    config, tensors, _ = read_checkpoint(src)
    if to == "transformers":
        CONFIG_WRITERS[to](config)  # raises for layouts the transformers format cannot hold, before writing
    with atomic_dir(dst) as tmp:
        write_checkpoint(tmp, config, tensors, to, max_shard_bytes)
        for f in src.iterdir():
            is_weights = f.name in WEIGHT_FILES or f.name.endswith(".safetensors")
            if f.is_file() and not is_weights:
                shutil.copy2(f, tmp / f.name)
    return dst
