"""The loading entry points: a checkpoint directory in either on-disk layout -> a model ready to run.

    model = load_model("model_cache")          # HiggsAudioModel (LM), original or transformers layout
    model = load_model("model_cache", adapter_path="run/adapter")   # + a LoRA adapter, merged
    tok = load_tokenizer("tokenizer_cache")    # AudioTokenizer, original (model.pth) or transformers layout

Both build the module on the meta device from the checkpoint's config and shapes, check every tensor
strictly against it (a bad file is one `HiggsLabError` naming the file and the tensor by its on-disk name),
then assign the tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from higgslab.device import pick_device
from higgslab.io import codec_format, lm_format


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    adapter_path: str | Path | None = None,
):
    """Load an LM checkpoint directory in either layout -> `HiggsAudioModel` in eval mode.

    `dtype` defaults to the checkpoint's (bf16 for the real weights). The text head is built when the
    checkpoint has one. `adapter_path`: a PEFT LoRA adapter directory, merged into the weights
    (`higgslab.io.adapter.load_adapter`): plain Linear layers, decode at the base model's speed.
    """
    from higgslab.model.lm import HiggsAudioModel

    device = pick_device(str(device))  # an unavailable device is one line, before anything is read
    config, tensors, where = lm_format.read_checkpoint(path)
    with torch.device("meta"):
        model = HiggsAudioModel(config, text_head="text_head.weight" in tensors)
    lm_format.check_state_dict(model, tensors, where, config.source_format)
    dtype = dtype or tensors["embed_tokens.weight"].dtype
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True, assign=True)
    model.materialize_buffers()
    if adapter_path is not None:
        from higgslab.io.adapter import load_adapter

        load_adapter(model, adapter_path)
    return model.to(device).eval()


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
