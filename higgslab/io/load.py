"""The loading entry points: a checkpoint directory in either on-disk layout -> a model ready to run.

    model = load_model("model_cache")          # HiggsAudioModel (LM), original or transformers layout
    model = load_model("model_cache", adapter_path="run/adapter")   # + a LoRA adapter, merged
    tok = load_tokenizer("tokenizer_cache")    # AudioTokenizer, original (model.pth) or transformers layout

Both build the module on the meta device from the checkpoint's config and shapes, check every tensor
strictly against it (a bad file is one `HiggsLabError` naming the file and the tensor by its on-disk name),
then assign the tensors.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from higgslab.device import pick_device
from higgslab.errors import HiggsLabError
from higgslab.io import codec_format, lm_format
from higgslab.model.quant import (
    QuantLinear,
    QuantSpec,
    check_device,
    quantize_model,
    quantized_linears,
    replace_linears,
)


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    adapter_path: str | Path | None = None,
    quantize: str | QuantSpec | None = None,
    group_size: int | None = None,
    text_head: bool | None = None,
):
    """Load an LM checkpoint directory in either layout -> `HiggsAudioModel` in eval mode.

    `dtype` defaults to the checkpoint's (bf16 for the real weights). `text_head`: build the text head
    (None: when the checkpoint has one; generation never reads it). `adapter_path`: a PEFT LoRA adapter
    directory, merged into the weights (`higgslab.io.adapter.load_adapter`): plain Linear layers, decode
    at the base model's speed. `quantize`: "int8" | "int4" (`group_size` inputs per scale, default 128) |
    "none" | None (as the checkpoint is: a quantized checkpoint, `python -m higgslab.quantize`, loads
    quantized); weight-only, the decoder layers' Linears (`higgslab.model.quant`).

    The tensors are read one module at a time, cast (and quantized) and placed on `device` as they come,
    into a model built on the meta device: peak memory stays near the final model's size.
    """
    from higgslab.model.lm import HiggsAudioModel

    spec = QuantSpec.parse(quantize, group_size)  # bad settings are one line, before anything is read
    device = pick_device(str(device))
    check_device(spec, device)
    config, refs, where = lm_format.open_checkpoint(path)
    saved = _saved_spec(Path(path), spec)
    if adapter_path is not None and saved is not None:
        raise HiggsLabError(
            f"{path}: a {saved.method} checkpoint takes no adapter: merge it into the float original, then quantize"
        )
    has_text_head = "text_head.weight" in refs
    if text_head and not has_text_head:
        raise HiggsLabError(f"{path}: the checkpoint has no text head")
    keep_text_head = has_text_head if text_head is None else text_head
    if not keep_text_head:
        refs.pop("text_head.weight", None)
    with torch.device("meta"):
        model = HiggsAudioModel(config, text_head=keep_text_head)
    dtype = dtype or refs["embed_tokens.weight"].dtype
    asked = spec if spec is not None and spec.active else None
    if saved or asked:
        (saved or asked).check_shapes([m.in_features for m in quantized_linears(model).values()], str(path))
    quant = saved or (asked if adapter_path is None else None)  # with an adapter: quantized after the merge
    if saved is not None:
        replace_linears(model, saved, dtype)  # the checkpoint holds the quantized tensors
    try:
        lm_format.check_state_dict(model, refs, where, config.source_format)
    except HiggsLabError as e:
        raise HiggsLabError(f"{e}{_says(saved)}") from None
    if quant is not None and saved is None:
        replace_linears(model, quant, dtype)  # float tensors in, quantized as they are read
    _assign(model, refs, dtype, device)
    model.materialize_buffers()
    if adapter_path is not None:
        from higgslab.io.adapter import load_adapter

        load_adapter(model, adapter_path)
        if asked is not None:
            quantize_model(model, asked)  # the adapter's delta is quantized with the weights
    return model.eval()


def _saved_spec(path: Path, asked: QuantSpec | None) -> QuantSpec | None:
    """The checkpoint's own quantization, refused with one line when `asked` is another."""
    saved = QuantSpec.read(path)
    if saved is None or asked is None:
        return saved
    other_group = saved.method == "int4" and asked.group_size != saved.group_size  # int8 has no groups
    if asked.method != saved.method or other_group:
        group = f" (group_size {saved.group_size})" if saved.method == "int4" else ""
        raise HiggsLabError(
            f"{path}: is quantized {saved.method}{group}, not {asked.method}"
            + (f" (group_size {asked.group_size})" if asked.method == "int4" else "")
            + ": load it as it is (quantize=null) or quantize its float original"
        )
    return saved


def _release_freed_heap() -> None:
    """Hand the heap pages that quantizing's temporaries left free back to the OS: glibc keeps them, and
    they stayed resident beside an int4 model and raised the peak while loading (bench/RESULTS.md)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _says(saved: QuantSpec | None) -> str:
    if saved is None:
        return ""
    group = f" (group_size {saved.group_size})" if saved.method == "int4" else ""
    return f": its quantization.json says {saved.method}{group}"


def _assign(model: torch.nn.Module, refs: dict, dtype: torch.dtype, device: torch.device) -> None:
    """Read the checkpoint module by module into the meta-built `model`: floating tensors cast to `dtype`,
    all moved to `device`; a `QuantLinear` takes its float weight (quantized here) or its saved tensors."""
    by_module: dict[str, dict[str, object]] = {}
    for key, ref in refs.items():
        owner, _, name = key.rpartition(".")
        by_module.setdefault(owner, {})[name] = ref
    for owner, named in by_module.items():
        module = model.get_submodule(owner)
        quantized_here = isinstance(module, QuantLinear) and "weight" in named  # read once, then dropped
        tensors = {}
        for name, ref in named.items():
            t = ref.load()
            placed = t.to(device, dtype if t.is_floating_point() else t.dtype)
            # kept: the process's own memory, not the file's mapped pages, which could be evicted under
            # memory pressure (and re-read mid-decode) or change if the file is rewritten
            kept = not quantized_here and placed.data_ptr() == t.data_ptr()
            tensors[name] = placed.clone() if kept else placed
            del t, placed
        if isinstance(module, QuantLinear):
            if "weight" in tensors:
                module.set_weight(tensors["weight"])
            else:
                module.set_portable(tensors)
            del tensors
            _release_freed_heap()  # the temporaries' holes, before the next weight fragments the heap
            continue
        for name, t in tensors.items():
            if name in module._parameters:
                module._parameters[name] = torch.nn.Parameter(t, module._parameters[name].requires_grad)
            else:
                module._buffers[name] = t


def load_tokenizer(path: str | Path, device: str | torch.device = "cpu"):
    """Load an audio tokenizer directory in either layout -> `AudioTokenizer` (float32, eval mode)."""
    from higgslab.tokenizer.codec import AudioTokenizer
    from higgslab.tokenizer.model import HiggsAudioCodec

    device = pick_device(str(device))
    cfg, tensors, fmt, weights = codec_format.read_codec(path)
    with torch.device("meta"):
        model = HiggsAudioCodec(cfg)
    codec_format.check_state_dict(model, tensors, weights, fmt)
    model.load_state_dict(tensors, assign=True)
    return AudioTokenizer(model.to(device).eval(), fmt, path)
