"""`python -m higgslab.eval mode=all|precision|performance|quality seeds=[1,37,42,74] tokens=[512,1024,2048]`

Hydra config `higgslab/conf/eval.yaml` (groups model=, generation=, device= as for generate). Writes
`<output_dir>/<timestamp>/report.json` (validated against `report.schema.json`), `steps_per_s.png`
and `rms_per_seed.png`, and prints a summary table. Exit code 0 unless `strict=true` and a section failed.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from higgslab.conf import CONF_DIR
from higgslab.errors import HiggsLabError, cli_errors
from higgslab.eval import quality
from higgslab.eval.report import SCHEMA_VERSION, skipped

MODES = ("all", "precision", "performance", "quality")


def check_config(cfg: DictConfig) -> None:
    """Fail on bad settings before any model is loaded."""
    if cfg.mode not in MODES:
        raise HiggsLabError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if cfg.mode in ("all", "precision") and not cfg.seeds:
        raise HiggsLabError("seeds is empty: pass seeds=[1,37,42,74]")
    if cfg.mode in ("all", "performance") and (not cfg.tokens or min(cfg.tokens) < 1):
        raise HiggsLabError(
            f"tokens must be a non-empty list of positive counts, got {list(cfg.tokens or [])}"
        )
    if not isinstance(cfg.text, str) or not cfg.text.strip():
        raise HiggsLabError('text is empty: pass text="what to say"')
    if cfg.adapter_path is not None:
        from higgslab.io.adapter import check_adapter_dir

        check_adapter_dir(cfg.adapter_path)
    from higgslab.generate.settings import check_model_settings

    check_model_settings(cfg)
    if cfg.ref_audio is not None and not Path(cfg.ref_audio).is_file():
        raise HiggsLabError(f"ref_audio {cfg.ref_audio}: no such file")
    if cfg.mode == "quality" and quality.missing():
        raise HiggsLabError(quality.missing())


def wanted(cfg: DictConfig, section: str) -> bool:
    return cfg.mode in ("all", section)


def run(cfg: DictConfig, command: str) -> tuple[dict, Path]:
    """Run the requested sections and write the report; returns (report, its folder)."""
    from higgslab.embedded import resolve_paths
    from higgslab.eval.checks import Thresholds
    from higgslab.eval.harness import generator_fn
    from higgslab.eval.performance import run_performance
    from higgslab.eval.precision import run_precision
    from higgslab.eval.report import new_run_dir, overall_passed, plot_report, summary_table, write_report
    from higgslab.generate.generator import Generator
    from higgslab.generate.settings import load_settings
    from higgslab.model.quant import spec_of

    check_config(cfg)
    created = datetime.now()
    model_path, tokenizer_path, label = resolve_paths(cfg.model_path, cfg.tokenizer_path)
    if tokenizer_path is None:
        raise HiggsLabError("eval needs an audio tokenizer to check audio: pass tokenizer_path=...")
    # eager: a compiled step's warm-up would land in the timed runs of performance mode
    gen = Generator.from_paths(
        model_path, tokenizer_path, device=cfg.device, compile=False, **load_settings(cfg)
    )
    if cfg.adapter_path is not None:
        label += f" + LoRA adapter {cfg.adapter_path}"
    print(f"model: {label}\ndevice: {gen.model.device} ({gen.model.dtype})")
    sampling = {k: cfg[k] for k in ("top_k", "top_p", "ras_window", "ras_max_repeat")}
    generate = generator_fn(gen, cfg.text, cfg.scene, cfg.ref_audio, cfg.ref_text, sampling)
    thresholds = Thresholds(**cfg.thresholds)
    not_asked = skipped(f"not requested (mode={cfg.mode})")

    report = {
        "schema_version": SCHEMA_VERSION,
        "created": created.isoformat(timespec="seconds"),
        "command": command,
        "mode": cfg.mode,
        "model": {
            "label": label,
            "model_path": str(model_path),
            "tokenizer_path": str(tokenizer_path),
            "adapter_path": cfg.adapter_path,
            "quantize": getattr(spec_of(gen.model), "method", None),
            "parameters": gen.model.num_parameters(text_head=False),
            "dtype": str(gen.model.dtype).removeprefix("torch."),
            "device": str(gen.model.device),
        },
        "settings": {
            **{k: cfg[k] for k in ("text", "scene", "ref_audio", "temperature", "max_new_tokens")},
            **sampling,
            "seeds": list(cfg.seeds),
            "tokens": list(cfg.tokens),
            "thresholds": OmegaConf.to_container(cfg.thresholds),
        },
        "precision": not_asked,
        "performance": not_asked,
        "quality": not_asked,
    }
    if wanted(cfg, "precision"):
        print(f"precision: seeds {list(cfg.seeds)}, {cfg.max_new_tokens} tokens, + determinism runs")
        report["precision"] = run_precision(
            generate,
            list(cfg.seeds),
            cfg.temperature,
            cfg.max_new_tokens,
            gen.audio_tokenizer.hop_length,
            gen.config.stream_ids,
            thresholds,
        )
    if wanted(cfg, "performance"):
        print(f"performance: tokens {list(cfg.tokens)}, best of {cfg.repeats}")
        report["performance"] = run_performance(
            generate, list(cfg.tokens), cfg.seeds[0], cfg.temperature, cfg.repeats
        )
    if wanted(cfg, "quality"):
        if quality.missing():
            report["quality"] = skipped(quality.missing())
        else:
            print(
                f"quality: {len(cfg.quality.texts)} texts, WER by ASR"
                + (", SIM to ref_audio" if cfg.ref_audio else "")
            )
            reference = None
            if cfg.ref_audio is not None:
                from higgslab.io.audio import read_audio

                reference = read_audio(cfg.ref_audio)
            report["quality"] = quality.run_quality(
                generate,
                list(cfg.quality.texts),
                cfg.seeds[0],
                cfg.temperature,
                cfg.max_new_tokens,
                reference,
                cfg.quality.max_wer,
                cfg.quality.min_speaker_similarity,
            )
    report["passed"] = overall_passed(report)

    folder = new_run_dir(cfg.output_dir)
    path = write_report(report, folder)
    plot_report(report, folder)
    print()
    print(summary_table(report))
    print(f"\nwrote {path}")
    return report, folder


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    with cli_errors():
        report, _ = run(cfg, " ".join(["python -m higgslab.eval", *sys.argv[1:]]))
        if cfg.strict and not report["passed"]:
            sys.exit(1)


if __name__ == "__main__":
    main()
