"""Read and write Higgs Audio V2 LM checkpoints in both on-disk formats (FORMATS.md §1–2).

A checkpoint directory holds `config.json` and safetensors weights: one `model.safetensors`, or shards
listed by `model.safetensors.index.json`. Key names differ by format; inside higgslab they are the
module names of `HiggsAudioModel` ("canonical"):

    original (Boson)                          transformers                                     canonical
    audio_codebook_embeddings.weight          model.embed_audio_tokens.embed_audio_tokens.weight embed_audio.weight
    embed_tokens.* / layers.* / norm.*        model.embed_tokens.* / model.layers.* / model.norm.* (same)
    audio_decoder_proj.audio_lm_head.weight   audio_lm_head.weight                             audio_head.weight
    audio_decoder_proj.text_lm_head.weight    text_lm_head.weight                              text_head.weight

Training checkpoints may split a tensor in `*_frozen` + `*_trainable` halves (concatenated on dim 0
here), and carry buffers that are not weights (dropped).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from higgslab.config import HiggsConfig
from higgslab.errors import HiggsLabError

KEY_MAPS: dict[str, list[tuple[str, str]]] = {
    "original": [
        ("audio_codebook_embeddings.", "embed_audio."),
        ("audio_decoder_proj.audio_lm_head.", "audio_head."),
        ("audio_decoder_proj.text_lm_head.", "text_head."),
    ],
    "transformers": [
        ("model.embed_audio_tokens.embed_audio_tokens.", "embed_audio."),
        ("model.embed_tokens.", "embed_tokens."),
        ("model.layers.", "layers."),
        ("model.norm.", "norm."),
        ("audio_lm_head.", "audio_head."),
        ("text_lm_head.", "text_head."),
    ],
}
IGNORED = re.compile(r"(^|\.)(audio_codebook_weights|rotary_emb\.inv_freq|rotary_emb\.original_inv_freq)$")
SPLIT = re.compile(r"^(.*)\.(embedding|linear)_(frozen|trainable)\.weight$")
INDEX = "model.safetensors.index.json"


def to_canonical(key: str, fmt: str) -> str:
    for theirs, ours in KEY_MAPS[fmt]:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return key


def from_canonical(key: str, fmt: str) -> str:
    for theirs, ours in KEY_MAPS[fmt]:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return key


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


def read_tensors(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """All tensors of a checkpoint with their file-format keys, merged and filtered; and which file held each.

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


def detect_format(keys) -> str:
    """'transformers' if the keys carry the `model.` prefix, else 'original'."""
    return "transformers" if any(k.startswith("model.") for k in keys) else "original"


def read_checkpoint(path: str | Path) -> tuple[HiggsConfig, dict[str, torch.Tensor], dict[str, Path]]:
    """Config, canonical-key tensors, and the file each came from."""
    path = Path(path)
    if not path.is_dir():
        raise HiggsLabError(f"{path}: no such checkpoint directory")
    config = HiggsConfig.from_file(path / "config.json")
    tensors, origin = read_tensors(path)
    fmt = detect_format(tensors)
    if fmt != config.source_format:
        raise HiggsLabError(
            f"{path}: tensors are in the {fmt} layout but config.json is the {config.source_format} one"
        )
    canon = {to_canonical(k, fmt): v for k, v in tensors.items()}
    where = {to_canonical(k, fmt): f for k, f in origin.items()}
    return config, canon, where


def check_state_dict(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: dict[str, Path], fmt: str
):
    """Strict key and shape check; the error names the file and the key (in the file's own naming)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise HiggsLabError(
            f"{Path(next(iter(where.values()))).parent}: checkpoint lacks tensor {from_canonical(missing[0], fmt)}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    for k, v in tensors.items():
        if k not in expected:
            raise HiggsLabError(f"{where[k]}: unexpected tensor {from_canonical(k, fmt)}")
        if tuple(v.shape) != tuple(expected[k]):
            raise HiggsLabError(
                f"{where[k]}: tensor {from_canonical(k, fmt)} has shape {tuple(v.shape)}, "
                f"the config asks for {tuple(expected[k])}"
            )


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a checkpoint directory in either format → `HiggsAudioModel` in eval mode.

    `dtype` defaults to the checkpoint's (bf16 for the real weights). The text head is built when the
    checkpoint has one. Bad input raises `HiggsLabError` naming the file and key.
    """
    from higgslab.model.lm import HiggsAudioModel

    config, tensors, where = read_checkpoint(path)
    fmt = config.source_format
    with torch.device("meta"):
        model = HiggsAudioModel(config, text_head="text_head.weight" in tensors)
    check_state_dict(model, tensors, where, fmt)
    dtype = dtype or tensors["embed_tokens.weight"].dtype
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True, assign=True)
    model.materialize_buffers()
    return model.to(device).eval()
