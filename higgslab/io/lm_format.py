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
from dataclasses import dataclass
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


# safetensors' dtype names (the header's) -> torch's
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class TensorRef:
    """A checkpoint tensor not read yet: shape and dtype from its file's header; `load()` reads it.

    Loading reads tensor by tensor, so a model is built without a second copy of its weights in memory
    (safetensors maps the file: a tensor's pages are read when touched and let go with the tensor)."""

    parts: tuple[tuple[Path, str], ...]  # (file, key); a split tensor's halves, concatenated on dim 0
    shape: tuple[int, ...]
    dtype: torch.dtype

    def load(self) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        loaded = []
        for f, key in self.parts:
            try:
                with safe_open(f, "pt") as handle:
                    loaded.append(handle.get_tensor(key))
            except (SafetensorError, OSError) as e:
                raise HiggsLabError(f"{f}: unreadable tensor {key} ({e})") from None
        return loaded[0] if len(loaded) == 1 else torch.cat(loaded)


def _header(f: Path) -> dict[str, TensorRef]:
    """The tensors one safetensors file holds, from its header (checked whole by safetensors: a truncated
    file is refused here, before any tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(f, "pt") as handle:
            slices = {k: handle.get_slice(k) for k in handle.keys()}
            return {
                k: TensorRef(((f, k),), tuple(s.get_shape()), DTYPES[s.get_dtype()])
                for k, s in slices.items()
            }
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise HiggsLabError(f"{f}: unreadable safetensors file ({e})") from None


def open_weights(directory: str | Path) -> tuple[dict[str, TensorRef], dict[str, Path]]:
    """Every tensor of a checkpoint, unread, under its on-disk key, merged and filtered; and which file
    holds each. Split `*_frozen`/`*_trainable` halves become one tensor; ignorable buffers are dropped."""
    directory = Path(directory)
    files, weight_map = weight_files(directory)
    refs: dict[str, TensorRef] = {}
    origin: dict[str, Path] = {}
    for f in files:
        for k, ref in _header(f).items():
            if weight_map is not None and weight_map.get(k) != f.name:
                raise HiggsLabError(f"{f}: holds {k}, which {INDEX} does not place in that file")
            refs[k], origin[k] = ref, f
    if weight_map is not None and (absent := sorted(set(weight_map) - set(refs))):
        raise HiggsLabError(f"{directory / INDEX}: lists {absent[0]}, which no shard holds")
    return _merge_splits(refs, origin)


def read_weights(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """`open_weights`, every tensor read."""
    refs, origin = open_weights(directory)
    return {k: ref.load() for k, ref in refs.items()}, origin


def _merge_splits(refs: dict[str, TensorRef], origin):
    halves: dict[str, dict[str, TensorRef]] = {}
    out, where = {}, {}
    for k, v in refs.items():
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
        frozen, trainable = parts["frozen"], parts["trainable"]
        shape = (frozen.shape[0] + trainable.shape[0], *frozen.shape[1:])
        out[k] = TensorRef(frozen.parts + trainable.parts, shape, frozen.dtype)
    return out, where


def layout_of(keys) -> str:
    """The layout on-disk tensor names belong to: 'transformers' if they carry the `model.` prefix, else 'original'."""
    return "transformers" if any(k.startswith("model.") for k in keys) else "original"


def open_checkpoint(path: str | Path) -> tuple[HiggsConfig, dict[str, TensorRef], dict[str, Path]]:
    """Config, the tensors (unread) under our names, and the file each is in."""
    path = Path(path)
    if not path.is_dir():
        raise HiggsLabError(f"{path}: no such checkpoint directory")
    config = HiggsConfig.from_file(path / "config.json")
    refs, origin = open_weights(path)
    fmt = layout_of(refs)
    if fmt != config.source_format:
        raise HiggsLabError(
            f"{path}: tensors are in the {fmt} layout but config.json is the {config.source_format} one"
        )
    rules = KEY_RULES[fmt]
    return (
        config,
        {to_ours(k, rules): v for k, v in refs.items()},
        {to_ours(k, rules): f for k, f in origin.items()},
    )


def read_checkpoint(path: str | Path) -> tuple[HiggsConfig, dict[str, torch.Tensor], dict[str, Path]]:
    """`open_checkpoint`, every tensor read."""
    config, refs, where = open_checkpoint(path)
    return config, {k: ref.load() for k, ref in refs.items()}, where


def check_state_dict(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: dict[str, Path], fmt: str
):
    """Strict key and shape check, and dtype for integer tensors (quantized weights); the error names the
    file and the key (in the file's own naming)."""
    state = model.state_dict()
    expected = {k: v.shape for k, v in state.items()}
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
        if not state[k].is_floating_point() and v.dtype != state[k].dtype:
            raise HiggsLabError(
                f"{where[k]}: tensor {to_disk(k, KEY_RULES[fmt])} is {v.dtype}, the model asks for {state[k].dtype}"
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
    fill=None,
) -> Path:
    """Write `tensors` (our names) + config as a checkpoint in `fmt`. One file if it fits one shard,
    else `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`. `fill(key, tensor)`, if
    given, makes each tensor just before its shard is written (`tensors` may then be meta tensors: a
    checkpoint larger than memory, one shard in memory at a time)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    theirs = {to_disk(k, KEY_RULES[fmt]): v.contiguous() for k, v in tensors.items()}
    (directory / "config.json").write_text(json.dumps(CONFIG_WRITERS[fmt](config), indent=2) + "\n")
    parts = shard(theirs, max_shard_bytes)

    def save(part: dict[str, torch.Tensor], name: str) -> None:
        filled = part if fill is None else {k: fill(k, v) for k, v in part.items()}
        save_file(filled, directory / name, metadata={"format": "pt"})

    if len(parts) == 1:
        save(parts[0], "model.safetensors")
        return directory
    weight_map = {}
    for i, part in enumerate(parts, 1):
        name = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
        save(part, name)
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
