"""Higgs Audio V2 LM checkpoints in both on-disk formats (FORMATS.md §1–2): read, written, converted.

A checkpoint directory holds `config.json` and safetensors weights: one `model.safetensors`, or shards
listed by `model.safetensors.index.json`. Key names differ by format; inside higgslab they are the
module names of `HiggsAudioModel` ("ours"), mapped by one rule table per format (`KEY_RULES`, both ways):

    original (Boson)                          transformers                                     ours
    audio_codebook_embeddings.weight          model.embed_audio_tokens.embed_audio_tokens.weight embed_audio.weight
    embed_tokens.* / layers.* / norm.*        model.embed_tokens.* / model.layers.* / model.norm.* (same)
    audio_decoder_proj.audio_lm_head.weight   audio_lm_head.weight                             audio_head.weight
    audio_decoder_proj.text_lm_head.weight    text_lm_head.weight                              text_head.weight

Training checkpoints may split a tensor in `*_frozen` + `*_trainable` halves (concatenated on dim 0
here), and carry buffers that are not weights (dropped). `convert` is the NPU port's weight-remapping tool,
both directions: keys renamed, tensors copied bit for bit, `config.json` converted so that converting back
gives the same file key for key (`higgslab.config`: its rename table and the keys carried along), the other
files (text tokenizer, `generation_config.json`) copied unchanged; written whole or not at all.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from higgslab.config import HiggsConfig
from higgslab.errors import HiggsLabError
from higgslab.io.atomic import atomic_dir
from higgslab.io.keys import Rules, to_disk, to_ours

KEY_RULES: dict[str, Rules] = {
    "original": [
        ("audio_codebook_embeddings.{rest*}", "embed_audio.{rest*}"),
        ("audio_decoder_proj.audio_lm_head.{rest*}", "audio_head.{rest*}"),
        ("audio_decoder_proj.text_lm_head.{rest*}", "text_head.{rest*}"),
    ],
    "transformers": [
        ("model.embed_audio_tokens.embed_audio_tokens.{rest*}", "embed_audio.{rest*}"),
        ("model.embed_tokens.{rest*}", "embed_tokens.{rest*}"),
        ("model.layers.{rest*}", "layers.{rest*}"),
        ("model.norm.{rest*}", "norm.{rest*}"),
        ("audio_lm_head.{rest*}", "audio_head.{rest*}"),
        ("text_lm_head.{rest*}", "text_head.{rest*}"),
    ],
}
CONFIG_WRITERS = {"original": HiggsConfig.to_original_dict, "transformers": HiggsConfig.to_transformers_dict}
IGNORED = re.compile(r"(^|\.)(audio_codebook_weights|rotary_emb\.inv_freq|rotary_emb\.original_inv_freq)$")
SPLIT = re.compile(r"^(.*)\.(embedding|linear)_(frozen|trainable)\.weight$")
INDEX = "model.safetensors.index.json"
WEIGHT_FILES = ("model.safetensors", INDEX, "config.json")  # what `convert` writes anew; the rest is copied


def weight_files(directory: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of a checkpoint, and its index's weight map (None for a single file)."""
    index = directory / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise HiggsLabError(f"{index}: not a safetensors index ({e})") from None
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise HiggsLabError(f"{index}: lists shard {missing[0]}, which does not exist")
        return files, weight_map
    single = directory / "model.safetensors"
    if single.is_file():
        return [single], None
    raise HiggsLabError(f"{directory}: no model.safetensors or {INDEX}")


def read_weights(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """All tensors of a checkpoint with their on-disk keys, merged and filtered; and which file held each.

    Split `*_frozen`/`*_trainable` halves are concatenated on dim 0; ignorable buffers are dropped.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    files, weight_map = weight_files(directory)
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for f in files:
        try:
            part = load_file(f)
        except (SafetensorError, OSError, ValueError) as e:
            raise HiggsLabError(f"{f}: unreadable safetensors file ({e})") from None
        for k, v in part.items():
            if weight_map is not None and weight_map.get(k) != f.name:
                raise HiggsLabError(f"{f}: holds {k}, which {INDEX} does not place in that file")
            tensors[k], origin[k] = v, f
    if weight_map is not None and (absent := sorted(set(weight_map) - set(tensors))):
        raise HiggsLabError(f"{directory / INDEX}: lists {absent[0]}, which no shard holds")
    return _merge_splits(tensors, origin)


def _merge_splits(tensors, origin):
    halves: dict[str, dict[str, torch.Tensor]] = {}
    out, where = {}, {}
    for k, v in tensors.items():
        if IGNORED.search(k):
            continue
        if m := SPLIT.match(k):
            halves.setdefault(f"{m[1]}.weight", {})[m[3]] = v
            where[f"{m[1]}.weight"] = origin[k]
            continue
        out[k], where[k] = v, origin[k]
    for k, parts in halves.items():
        if set(parts) != {"frozen", "trainable"}:
            raise HiggsLabError(f"{where[k]}: {k} is split but only its {next(iter(parts))} half is there")
        out[k] = torch.cat([parts["frozen"], parts["trainable"]], dim=0)
    return out, where


def layout_of(keys) -> str:
    """The layout on-disk tensor names belong to: 'transformers' if they carry the `model.` prefix, else 'original'."""
    return "transformers" if any(k.startswith("model.") for k in keys) else "original"


def read_checkpoint(path: str | Path) -> tuple[HiggsConfig, dict[str, torch.Tensor], dict[str, Path]]:
    """Config, tensors under our names, and the file each came from."""
    path = Path(path)
    if not path.is_dir():
        raise HiggsLabError(f"{path}: no such checkpoint directory")
    config = HiggsConfig.from_file(path / "config.json")
    tensors, origin = read_weights(path)
    fmt = layout_of(tensors)
    if fmt != config.source_format:
        raise HiggsLabError(
            f"{path}: tensors are in the {fmt} layout but config.json is the {config.source_format} one"
        )
    rules = KEY_RULES[fmt]
    ours = {to_ours(k, rules): v for k, v in tensors.items()}
    where = {to_ours(k, rules): f for k, f in origin.items()}
    return config, ours, where


def check_state_dict(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: dict[str, Path], fmt: str
):
    """Strict key and shape check; the error names the file and the key (in the file's own naming)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise HiggsLabError(
            f"{Path(next(iter(where.values()))).parent}: checkpoint lacks tensor {to_disk(missing[0], KEY_RULES[fmt])}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    for k, v in tensors.items():
        if k not in expected:
            raise HiggsLabError(f"{where[k]}: unexpected tensor {to_disk(k, KEY_RULES[fmt])}")
        if tuple(v.shape) != tuple(expected[k]):
            raise HiggsLabError(
                f"{where[k]}: tensor {to_disk(k, KEY_RULES[fmt])} has shape {tuple(v.shape)}, "
                f"the config asks for {tuple(expected[k])}"
            )


# ------------------------------------------------------------------------------------------- writing


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
    """Write `tensors` (our names) + config as a checkpoint in `fmt`. One file if it fits one shard,
    else `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    theirs = {to_disk(k, KEY_RULES[fmt]): v.contiguous() for k, v in tensors.items()}
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
        copy_other_files(src, tmp)
    return dst


def copy_other_files(src: Path, dst: Path) -> None:
    """Copy the files of checkpoint `src` that are not its weights or config (text tokenizer,
    generation_config.json) into `dst`."""
    for f in Path(src).iterdir():
        is_weights = f.name in WEIGHT_FILES or f.name.endswith(".safetensors")
        if f.is_file() and not is_weights:
            shutil.copy2(f, Path(dst) / f.name)
