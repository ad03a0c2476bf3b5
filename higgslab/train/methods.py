"""Fine-tuning methods: which weights train, and what a finished run writes.

    model = prepare_for(load_model(path, dtype=torch.float32), "lora", LoraSettings(rank=16))
    ...  # train the parameters with requires_grad
    save_trained(model, "lora", "run/adapter", base_path=path)

- `lora`: PEFT's LoRA on the Linear layers named by `LoraSettings.targets` (attention: q/k/v/o_proj;
  audio_ffn: the DualFFN audio FFN `audio_mlp.*`; text_ffn: the text FFN `mlp.*`), everything else frozen.
  `prepare_for` returns a `peft.PeftModel` (called like the model; attributes pass through). Writes a
  PEFT adapter directory (`peft.PeftModel.from_pretrained(base, dir)` loads it; so do `load_adapter`,
  `load_model(path, adapter_path=dir)`, `python -m higgslab.merge` and `generate adapter_path=`).
- `audio`: only the DualFFN audio path trains, chosen by name (`is_audio_path`): each layer's `audio_*`
  modules (FFN, norms, and the audio attention where the config has one), the audio embedding and the
  audio head. Attention, text FFNs and norms, the final norm, the text embedding and head stay frozen.
- `full`: every weight.
`audio` and `full` write the whole model as a checkpoint in the original layout (for `audio` its text
weights are the base's, unchanged), with the base's text tokenizer files and generation_config.json: a
checkpoint like any other (`model_path=` everywhere).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from higgslab.errors import HiggsLabError
from higgslab.io.adapter import CONFIG as ADAPTER_CONFIG
from higgslab.io.adapter import load_adapter

__all__ = [
    "METHODS",
    "LoraSettings",
    "prepare_for",
    "trainable_parameters",
    "save_trained",
    "load_adapter",
    "check_method",
]

METHODS = ("lora", "audio", "full")
# LoRA targets by name -> the Linear modules they cover (PEFT full-matches the regex against module names)
LORA_TARGETS = {
    "attention": r"(self_attn|audio_attn)\.(q|k|v|o)_proj",
    "audio_ffn": r"audio_mlp\.(gate|up|down)_proj",
    "text_ffn": r"mlp\.(gate|up|down)_proj",
}
AUDIO_PATH = re.compile(r"^(embed_audio|audio_head|layers\.\d+\.audio_\w+)\.")


@dataclass
class LoraSettings:
    """PEFT LoRA settings: rank, alpha (the update is scaled by alpha / rank), dropout on the adapter's
    input, and which Linear layers get an adapter (names of `LORA_TARGETS`)."""

    rank: int = 16
    alpha: float = 32
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attention",)

    def check(self) -> LoraSettings:
        """Itself, or one `HiggsLabError` line naming the bad setting."""
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise HiggsLabError(f"lora.rank must be an integer >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise HiggsLabError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise HiggsLabError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if isinstance(self.targets, str) or not self.targets or unknown:
            raise HiggsLabError(
                f"lora.targets={list(self.targets) if not isinstance(self.targets, str) else self.targets}: "
                f"takes a non-empty list of {', '.join(LORA_TARGETS)}"
            )
        return self

    def target_regex(self) -> str:
        """The module-name regex PEFT matches (stored in adapter_config.json as `target_modules`)."""
        return rf"layers\.\d+\.({'|'.join(LORA_TARGETS[t] for t in self.targets)})"


def check_method(method: str) -> None:
    if method not in METHODS:
        raise HiggsLabError(f"method={method}: takes {' | '.join(METHODS)}")


def is_audio_path(name: str) -> bool:
    """Is parameter `name` (of a `HiggsAudioModel`) part of the DualFFN audio path?"""
    return AUDIO_PATH.match(name) is not None


def prepare_for(model: nn.Module, method: str, lora: LoraSettings | None = None) -> nn.Module:
    """`model` (a `HiggsAudioModel`) set up for `method`: `requires_grad` on exactly the weights that
    train. `lora` wraps it in a `peft.PeftModel` (a fresh adapter's B is zero: same outputs as the
    base); `audio` and `full` return the model itself."""
    check_method(method)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = (lora or LoraSettings()).check()
        config = LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_regex(),
        )
        return get_peft_model(model, config)
    if lora is not None:
        raise HiggsLabError(f"LoRA settings are used only with method=lora, not method={method}")
    for name, p in model.named_parameters():
        p.requires_grad_(method == "full" or is_audio_path(name))
    return model


def trainable_parameters(model: nn.Module) -> int:
    """How many weights train (shared ones counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_trained(
    model: nn.Module, method: str, output_dir: str | Path, *, base_path: str | Path, state_dict=None
) -> Path:
    """Write what `method` trained to `output_dir` (whole or not at all) and return it.

    lora: a PEFT adapter directory recording `base_path`; audio/full: the whole model as a checkpoint in
    the original layout, with `base_path`'s other files (text tokenizer, generation_config.json).
    `output_dir` may be replaced only if it is an earlier output (it holds adapter_config.json or
    config.json) or empty. `model` may be wrapped in DDP. `state_dict`: the full state dict when the
    model cannot give one itself (FSDP2: gathered on every rank with
    `torch.distributed.checkpoint.state_dict.get_model_state_dict(model, options=StateDictOptions(
    full_state_dict=True, cpu_offload=True))`, then saved from rank 0).
    """
    from peft import PeftModel
    from torch.nn.parallel import DistributedDataParallel

    from higgslab.io import lm_format
    from higgslab.io.atomic import atomic_dir

    check_method(method)
    if isinstance(model, DistributedDataParallel):
        model = model.module
    if (method == "lora") != isinstance(model, PeftModel):
        has = "a LoRA (PEFT) model" if isinstance(model, PeftModel) else "a model without LoRA adapters"
        raise HiggsLabError(f"save_trained(method={method}) was given {has}")
    out = Path(output_dir)
    earlier = (out / ADAPTER_CONFIG).is_file() or (out / "config.json").is_file()
    if out.is_dir() and any(out.iterdir()) and not earlier:
        raise HiggsLabError(f"{out}: not empty and not an earlier output: refusing to replace it")
    with atomic_dir(out) as tmp:
        if method == "lora":
            model.peft_config[model.active_adapter].base_model_name_or_path = str(base_path)
            # LoRA never targets the embeddings; PEFT's "auto" would re-read the base's config to check
            model.save_pretrained(tmp, state_dict=state_dict, save_embedding_layers=False)
        else:
            tensors = model.state_dict() if state_dict is None else state_dict
            lm_format.write_checkpoint(tmp, model.config, tensors, "original")
            lm_format.copy_other_files(Path(base_path), tmp)
    return out
