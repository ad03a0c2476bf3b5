"""`python -m higgslab.quantize output_dir=DIR [quantize=int8|int4] [group_size=128] [model_path=DIR]`

A float checkpoint quantized once (weight-only: `higgslab.model.quant`) and written in its own layout, with
`quantization.json` beside `config.json` and the text tokenizer and generation_config.json copied, so that
a 4-bit model is not quantized again at every load: `load_model(DIR)` and `model_path=DIR` load it as it
is. The tensors are read, quantized and kept one at a time, so memory peaks near the quantized size.
Hydra config `higgslab/conf/quantize.yaml`; the settings are checked before anything loads (one `error:`
line, exit code 2), and the folder is written whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from higgslab.conf import command
from higgslab.errors import HiggsLabError
from higgslab.model.quant import QuantSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class QuantizeSettings:
    output_dir: str
    quantize: str
    group_size: int
    model_path: str | None
    dtype: str | None
    overwrite: bool


def settings_from(cfg: DictConfig) -> tuple[QuantizeSettings, QuantSpec]:
    """The composed config as checked settings and spec, or one `HiggsLabError` line; nothing loads."""
    from higgslab.generate.settings import check_output_dir, typed_settings

    s = typed_settings(QuantizeSettings, cfg, "quantize")
    spec = QuantSpec.parse(s.quantize, s.group_size)
    if not spec.active:
        raise HiggsLabError("quantize=none: nothing to write (use int8 or int4)")
    if s.dtype is not None and s.dtype not in DTYPES:
        raise HiggsLabError(f"dtype={s.dtype}: takes {' | '.join(DTYPES)} or null")
    if s.model_path is not None and not (Path(s.model_path) / "config.json").is_file():
        raise HiggsLabError(f"model_path {s.model_path}: no checkpoint there (no config.json)")
    if Path(s.output_dir).exists() and not s.overwrite:
        raise HiggsLabError(f"output_dir {s.output_dir}: already exists (pass overwrite=true to replace it)")
    check_output_dir(s.output_dir)
    return s, spec


def quantize_checkpoint(
    src: str | Path, dst: str | Path, spec: QuantSpec, dtype: torch.dtype | None = None
) -> Path:
    """Write `src` (a float checkpoint) quantized by `spec` to `dst`, whole or not at all."""
    from higgslab.io import lm_format
    from higgslab.io.atomic import atomic_dir
    from higgslab.model.lm import HiggsAudioModel
    from higgslab.model.quant import CONFIG_FILE, quantize_weight, quantized_linears

    src, dst = Path(src), Path(dst)
    if QuantSpec.read(src) is not None:
        raise HiggsLabError(f"{src}: is quantized already ({CONFIG_FILE}): quantize its float original")
    config, refs, where = lm_format.open_checkpoint(src)
    with torch.device("meta"):
        model = HiggsAudioModel(config, text_head="text_head.weight" in refs)
    lm_format.check_state_dict(model, refs, where, config.source_format)
    linears = quantized_linears(model)
    spec.check_shapes([m.in_features for m in linears.values()], str(src))
    dtype = dtype or refs["embed_tokens.weight"].dtype
    tensors: dict[str, torch.Tensor] = {}
    for key, ref in refs.items():
        t = ref.load()
        t = t.to(dtype) if t.is_floating_point() else t
        owner = key.removesuffix(".weight")
        if owner in linears:
            tensors.update({f"{owner}.{k}": v for k, v in quantize_weight(t, spec, dtype).items()})
        else:
            tensors[key] = t
        del t
    with atomic_dir(dst) as tmp:
        lm_format.write_checkpoint(tmp, config, tensors, config.source_format)
        (tmp / CONFIG_FILE).write_text(spec.to_json())
        lm_format.copy_other_files(src, tmp)
    return dst


def run(cfg: DictConfig) -> Path:
    from higgslab.embedded import resolve_paths

    s, spec = settings_from(cfg)
    src, _, label = resolve_paths(s.model_path, None)
    print(f"model: {label}")
    quantize_checkpoint(src, s.output_dir, spec, None if s.dtype is None else DTYPES[s.dtype])
    group = f", group_size {spec.group_size}" if spec.method == "int4" else ""
    print(f"wrote {spec.method}{group} checkpoint {s.output_dir}")
    return Path(s.output_dir)


main = command("quantize", run)


if __name__ == "__main__":
    main()
