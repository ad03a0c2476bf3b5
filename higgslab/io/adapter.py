"""LoRA adapters in PEFT's on-disk format, read without PEFT and merged into a model's weights.

A PEFT adapter directory holds `adapter_config.json` (rank, alpha, targets, ...) and
`adapter_model.safetensors` with, per adapted `nn.Linear` `<module>`,

    base_model.model.<module>.lora_A.weight   [r, in]
    base_model.model.<module>.lora_B.weight   [out, r]

and the adapted layer computes `W x + scale · B A x`, scale = alpha / r (alpha / √r with rsLoRA). Merging
adds `scale · B A` to `W` once, so the model runs (and the CPU decode path packs, `model/packing.py`)
plain `nn.Linear` weights at the base model's speed. `higgslab.train.methods.prepare_for` writes such
directories through PEFT itself; `peft.PeftModel.from_pretrained(model, dir)` loads them too (to keep
training an adapter, that is the loader to use: this one merges).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from higgslab.errors import HiggsLabError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")
# adapter_config.json features this loader does not implement: the value each must have
PLAIN_LORA = {
    "use_dora": False,
    "fan_in_fan_out": False,
    "bias": "none",
    "lora_bias": False,
    "modules_to_save": None,
    "alpha_pattern": {},
    "layer_replication": None,
    "trainable_token_indices": None,
}


def check_adapter_dir(path: str | Path, key: str = "adapter_path") -> Path:
    """`path` is a folder holding `adapter_config.json` (the cheap check a CLI runs before loading)."""
    path = Path(path)
    if not path.is_dir():
        raise HiggsLabError(f"{key} {path}: no such folder")
    if not (path / CONFIG).is_file():
        hint = " (a full or audio fine-tune is a checkpoint: pass it as model_path=)"
        raise HiggsLabError(
            f"{key} {path}: holds no {CONFIG}, so it is not a LoRA adapter"
            + (hint if (path / "config.json").is_file() else "")
        )
    return path


def read_adapter(path: str | Path) -> tuple[dict, dict[str, tuple[torch.Tensor, torch.Tensor, float]]]:
    """(adapter_config.json, {module name: (A [r, in], B [out, r], scale)}); one line for anything that
    is not a plain LoRA on Linear layers."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = check_adapter_dir(path)
    try:
        config = json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HiggsLabError(f"{path / CONFIG}: not JSON ({e})") from None
    if config.get("peft_type") != "LORA":
        raise HiggsLabError(
            f"{path / CONFIG}: peft_type {config.get('peft_type')!r}, only LORA adapters load"
        )
    for feature, plain in PLAIN_LORA.items():
        if (value := config.get(feature)) and value != plain:
            raise HiggsLabError(
                f"{path / CONFIG}: {feature}={value!r} is not supported here "
                "(peft.PeftModel.from_pretrained loads it)"
            )
    try:
        tensors = load_file(path / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as e:
        raise HiggsLabError(f"{path / WEIGHTS}: unreadable ({e})") from None
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if not (m := KEY.match(k)):
            raise HiggsLabError(f"{path / WEIGHTS}: tensor {k} is not a LoRA A/B weight of a Linear layer")
        halves.setdefault(m[1], {})[m[2]] = v
    alpha, rslora = float(config["lora_alpha"]), bool(config.get("use_rslora"))
    pairs = {}
    for module, ab in halves.items():
        if set(ab) != {"A", "B"}:
            raise HiggsLabError(f"{path / WEIGHTS}: {module} has lora_{next(iter(ab))} but not its pair")
        r = ab["A"].shape[0]  # per module: rank_pattern may give modules other ranks than config["r"]
        pairs[module] = (ab["A"], ab["B"], alpha / (r**0.5 if rslora else r))
    return config, pairs


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Merge the LoRA adapter at `adapter_dir` into `model`'s Linear weights, in place; returns `model`.

    Every target is checked before any weight changes: a module the model lacks or a shape it does not
    have is one line naming it (an adapter made for another base). The update is summed in float32 and
    rounded to the weight's dtype once; weights stored as views (packed for decode) are updated in place.
    """
    config, pairs = read_adapter(adapter_dir)
    base = config.get("base_model_name_or_path")
    made_for = f" (it was made for {base})" if base else ""
    modules = dict(model.named_modules())
    for name, (a, b, _) in pairs.items():
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            raise HiggsLabError(f"adapter {adapter_dir}: targets {name}, which this model lacks{made_for}")
        out, inp = layer.weight.shape
        if a.shape[1] != inp or b.shape[0] != out or a.shape[0] != b.shape[1]:
            raise HiggsLabError(
                f"adapter {adapter_dir}: {name} is [{out}, {inp}] in this model but the adapter's "
                f"B A is [{b.shape[0]}, {b.shape[1]}] x [{a.shape[0]}, {a.shape[1]}]: made for another "
                f"base model{made_for}"
            )
    with torch.no_grad():
        for name, (a, b, scale) in pairs.items():
            w = modules[name].weight
            delta = (b.float() @ a.float()).to(w.device) * scale
            w.copy_((w.float() + delta).to(w.dtype))
    return model
