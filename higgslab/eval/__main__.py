"""`python -m higgslab.eval mode=all|precision|performance|quality seeds=[1,37,42,74] tokens=[512,1024,2048]`

Hydra config `higgslab/conf/eval.yaml` (groups model=, generation=, device= as for generate). Writes
`<output_dir>/<timestamp>/report.json` (validated against `report.schema.json`), `steps_per_s.png`
and `rms_per_seed.png`, and prints a summary table. Exit code 0 unless `strict=true` and a section failed.
`mode=quality audio_dir=DIR` scores the clips of a `python -m higgslab.synthesize` folder (its summary.json
names each clip's text and the model that made it) instead of generating any: no model loads.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from higgslab.conf import command
from higgslab.errors import HiggsLabError
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
    if cfg.audio_dir is not None:
        if cfg.mode != "quality":
            raise HiggsLabError(
                f"audio_dir scores the clips of a folder: it takes mode=quality, not {cfg.mode}"
            )
        from higgslab.synthesize import read_summary

        read_summary(cfg.audio_dir)


def wanted(cfg: DictConfig, section: str) -> bool:
    return cfg.mode in ("all", section)


def run(cfg: DictConfig, command: str) -> tuple[dict, Path]:
    """Run the requested sections and write the report; returns (report, its folder)."""
    from higgslab.embedded import resolve_paths
    from higgslab.eval.checks import Thresholds
    from higgslab.eval.harness import generator_fn
    from higgslab.eval.performance import run_performance
    from higgslab.eval.precision import run_precision
    from higgslab.eval.report import (
        model_info,
        new_run_dir,
        overall_passed,
        plot_report,
        summary_table,
        write_report,
    )
    from higgslab.generate.generator import Generator
    from higgslab.generate.settings import load_settings
    from higgslab.synthesize import read_summary

    check_config(cfg)
    created = datetime.now()
    sampling = {k: cfg[k] for k in ("top_k", "top_p", "ras_window", "ras_max_repeat")}
    settings = {k: cfg[k] for k in ("text", "scene", "ref_audio", "temperature", "max_new_tokens")} | sampling
    if cfg.audio_dir is not None:  # the clips are made: the model and settings that made them, no loading
        clips = read_summary(cfg.audio_dir)
        model = clips["model"]
        settings |= {k: clips["settings"][k] for k in ("temperature", "max_new_tokens", *sampling)}
        settings["audio_dir"] = cfg.audio_dir
    else:
        model_path, tokenizer_path, label = resolve_paths(cfg.model_path, cfg.tokenizer_path)
        if tokenizer_path is None:
            raise HiggsLabError("eval needs an audio tokenizer to check audio: pass tokenizer_path=...")
        # eager: a compiled step's warm-up would land in the timed runs of performance mode
        gen = Generator.from_paths(
            model_path, tokenizer_path, device=cfg.device, compile=False, **load_settings(cfg)
        )
        model = model_info(gen, label, model_path, tokenizer_path, cfg.adapter_path)
        generate = generator_fn(gen, cfg.text, cfg.scene, cfg.ref_audio, cfg.ref_text, sampling)
    print(f"model: {model['label']}\ndevice: {model['device']} ({model['dtype']})")
    thresholds = Thresholds(**cfg.thresholds)
    not_asked = skipped(f"not requested (mode={cfg.mode})")

    report = {
        "schema_version": SCHEMA_VERSION,
        "created": created.isoformat(timespec="seconds"),
        "command": command,
        "mode": cfg.mode,
        "model": model,
        "settings": {
            **settings,
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
            what = (
                f"{len(cfg.quality.texts)} texts"
                if cfg.audio_dir is None
                else f"the clips in {cfg.audio_dir}"
            )
            print(f"quality: {what}, WER by ASR" + (", SIM to ref_audio" if cfg.ref_audio else ""))
            reference = None
            if cfg.ref_audio is not None:
                from higgslab.io.audio import read_audio

                reference = read_audio(cfg.ref_audio)
            limits = (cfg.quality.max_wer, cfg.quality.min_speaker_similarity)
            if cfg.audio_dir is not None:
                report["quality"] = quality.score_folder(cfg.audio_dir, clips["records"], reference, *limits)
            else:
                report["quality"] = quality.run_quality(
                    generate,
                    list(cfg.quality.texts),
                    cfg.seeds[0],
                    cfg.temperature,
                    cfg.max_new_tokens,
                    reference,
                    *limits,
                )
    report["passed"] = overall_passed(report)

    folder = new_run_dir(cfg.output_dir)
    path = write_report(report, folder)
    plot_report(report, folder)
    print()
    print(summary_table(report))
    print(f"\nwrote {path}")
    return report, folder


def cli(cfg: DictConfig) -> int:
    report, _ = run(cfg, " ".join(["python -m higgslab.eval", *sys.argv[1:]]))
    return 1 if cfg.strict and not report["passed"] else 0


main = command("eval", cli)


if __name__ == "__main__":
    main()
