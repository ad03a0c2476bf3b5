"""`python -m higgslab.merge adapter=DIR output_dir=DIR [layout=original|transformers] [model_path=DIR]`

A LoRA adapter (PEFT's format, as `python -m higgslab.finetune method=lora` writes it) merged into its base
model's weights and written as a checkpoint in either layout, with the base's text tokenizer and
generation_config.json. Hydra config `higgslab/conf/merge.yaml`; with no model_path the embedded default
is the base. The settings are checked before anything loads (one `error:` line, exit code 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from higgslab.conf import command
from higgslab.errors import HiggsLabError


@dataclass
class MergeSettings:
    adapter: str
    output_dir: str
    layout: str
    model_path: str | None
    overwrite: bool


def settings_from(cfg: DictConfig) -> MergeSettings:
    """The composed config as checked `MergeSettings`, or one `HiggsLabError` line; nothing loads."""
    from higgslab.generate.settings import check_output_dir, typed_settings
    from higgslab.io.adapter import check_adapter_dir
    from higgslab.io.lm_format import CONFIG_WRITERS

    s = typed_settings(MergeSettings, cfg, "merge")
    if s.layout not in CONFIG_WRITERS:
        raise HiggsLabError(f"layout={s.layout}: takes {' | '.join(CONFIG_WRITERS)}")
    check_adapter_dir(s.adapter, "adapter")
    if s.model_path is not None and not (Path(s.model_path) / "config.json").is_file():
        raise HiggsLabError(f"model_path {s.model_path}: no checkpoint there (no config.json)")
    if Path(s.output_dir).exists() and not s.overwrite:
        raise HiggsLabError(f"output_dir {s.output_dir}: already exists (pass overwrite=true to replace it)")
    check_output_dir(s.output_dir)
    return s


def run(cfg: DictConfig) -> Path:
    from higgslab.config import HiggsConfig
    from higgslab.embedded import resolve_paths
    from higgslab.io import lm_format
    from higgslab.io.atomic import atomic_dir
    from higgslab.io.load import load_model

    s = settings_from(cfg)
    base, _, label = resolve_paths(s.model_path, None)
    lm_format.CONFIG_WRITERS[s.layout](HiggsConfig.from_file(base / "config.json"))  # layouts it cannot hold
    print(f"base: {label}")
    model = load_model(base, adapter_path=s.adapter)  # in the checkpoint's dtype
    with atomic_dir(Path(s.output_dir)) as tmp:
        lm_format.write_checkpoint(tmp, model.config, model.state_dict(), s.layout)
        lm_format.copy_other_files(base, tmp)
    print(f"wrote {s.layout} checkpoint {s.output_dir} ({s.adapter} merged)")
    return Path(s.output_dir)


main = command("merge", run)


if __name__ == "__main__":
    main()
