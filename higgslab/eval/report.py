"""The eval report: JSON (validated against `report.schema.json`), PNG plots and a summary table.

folder = new_run_dir("eval_results")          # eval_results/20261123-141502/
write_report(report, folder)                  # report.json, after validation
plot_report(report, folder)                   # steps_per_s.png, rms_per_seed.png
print(summary_table(report))
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from functools import cache
from pathlib import Path

from higgslab.errors import HiggsLabError

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
SCHEMA_VERSION = 2  # 2: steps_per_s, and frames_per_s of decodable frames; quality items' durations


@cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def skipped(reason: str) -> dict:
    """A section that did not run."""
    return {"status": "skipped", "reason": reason}


def model_info(gen, label: str, model_path, tokenizer_path, adapter_path) -> dict:
    """The report's `model` section for a loaded `Generator` (`python -m higgslab.synthesize` records the
    same in its summary, for eval to score its folder)."""
    from higgslab.model.quant import spec_of

    return {
        "label": label if adapter_path is None else f"{label} + LoRA adapter {adapter_path}",
        "model_path": str(model_path),
        "tokenizer_path": None if tokenizer_path is None else str(tokenizer_path),
        "adapter_path": adapter_path,
        "quantize": getattr(spec_of(gen.model), "method", None),
        "parameters": gen.model.num_parameters(text_head=False),
        "dtype": str(gen.model.dtype).removeprefix("torch."),
        "device": str(gen.model.device),
    }


def finite_json(value):
    """NaN/Inf → None (JSON has no such numbers), numpy scalars → Python ones, recursively."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def validate(report: dict) -> None:
    """Raise `HiggsLabError` naming the first place where `report` breaks the schema."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema()).iter_errors(report))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise HiggsLabError(f"eval report does not match {SCHEMA_PATH.name} at {where}: {error.message}")


def overall_passed(report: dict) -> bool:
    return all(report[s]["status"] != "failed" for s in ("precision", "performance", "quality"))


def new_run_dir(root: str | Path, now: datetime | None = None) -> Path:
    """`root/<YYYYmmdd-HHMMSS>/`, suffixed `-2`, `-3`, ... when two runs start in the same second."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise HiggsLabError(f"output_dir {root} is a file, not a directory")
    folder, n = root / stamp, 1
    while folder.exists():
        n += 1
        folder = root / f"{stamp}-{n}"
    folder.mkdir(parents=True)
    return folder


def write_report(report: dict, folder: Path) -> Path:
    """Validate and write `folder/report.json`."""
    report = finite_json(report)
    validate(report)
    path = folder / "report.json"
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path


def plot_report(report: dict, folder: Path) -> list[Path]:
    """LM steps/s vs generation length (performance) and RMS per seed (precision), as PNGs."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    written = []
    perf, prec = report["performance"], report["precision"]
    if perf["status"] != "skipped":
        runs = [r for r in perf["runs"] if r["steps_per_s"] is not None]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["tokens"] for r in runs], [r["steps_per_s"] for r in runs], "o-")
        ax.set(
            xlabel="max_new_tokens",
            ylabel="LM steps/s",
            title=f"decode speed on {perf['device_name']}",
            xscale="log",
            xticks=[r["tokens"] for r in runs],
        )
        ax.set_xticklabels([str(r["tokens"]) for r in runs])
        ax.grid(alpha=0.3)
        written.append(_save(fig, folder / "steps_per_s.png"))
    if prec["status"] != "skipped":
        seeds = prec["seeds"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        colours = ["tab:green" if s["passed"] else "tab:red" for s in seeds]
        ax.bar([str(s["seed"]) for s in seeds], [s["rms"] or 0.0 for s in seeds], color=colours)
        low, high = report["settings"]["thresholds"]["rms_min"], report["settings"]["thresholds"]["rms_max"]
        ax.axhline(low, ls="--", c="grey")
        ax.axhline(high, ls="--", c="grey")
        ax.set(xlabel="seed", ylabel="RMS", yscale="log", title="RMS per seed (red: seed failed a check)")
        written.append(_save(fig, folder / "rms_per_seed.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [header, ["-" * w for w in widths], *rows]
    return [
        "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in lines
    ]


def summary_table(report: dict) -> str:
    """The NPU port's tables: per seed (tokens, time, speed, audio, RMS, peak, verdict), per length, checks."""
    out = [f"model: {report['model']['label']}", f"device: {report['model']['device']}"]
    prec, perf, qual = report["precision"], report["performance"], report["quality"]
    if prec["status"] != "skipped":
        rows = [
            [
                s["seed"],
                s["steps"],
                s["frames"],
                f"{s['duration_s']:.2f}s",
                _fmt(s["rms"], ".4f"),
                _fmt(s["peak"], ".4f"),
                "ok"
                if s["passed"]
                else "FAIL: " + ", ".join(c["name"] for c in s["checks"] if not c["passed"]),
            ]
            for s in prec["seeds"]
        ]
        out += [
            "",
            f"precision: {prec['status']}",
            *_table(["seed", "steps", "frames", "audio", "RMS", "peak", "checks"], rows),
        ]
        out += [f"  {'ok  ' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}" for c in prec["checks"]]
    if perf["status"] != "skipped":
        rows = [
            [
                r["tokens"],
                r["steps"],
                _fmt(r["decode_s"], ".2f"),
                _fmt(r["steps_per_s"], ".1f"),
                _fmt(r["frames_per_s"], ".1f"),
                _fmt(r["prefill_s"]),
                _fmt(r["time_to_first_audio_s"]),
                _fmt(r["audio_decode_s"]),
                _fmt(r["real_time_factor"], ".2f"),
                "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**30:.2f} GiB",
            ]
            for r in perf["runs"]
        ]
        header = [
            "tokens",
            "steps",
            "decode s",
            "steps/s",
            "frames/s",
            "prefill s",
            "first audio s",
            "audio decode s",
            "RTF",
            "peak mem",
        ]
        out += [
            "",
            f"performance: {perf['status']} on {perf['device_name']} ({perf['device']})",
            *_table(header, rows),
        ]
    if qual["status"] != "skipped":
        out += [
            "",
            f"quality: {qual['status']}  WER {qual['wer']:.3f}  SIM {_fmt(qual['speaker_similarity'])}",
        ]
        out += [
            f"  said {i['text']!r} -> heard {i['transcript']!r} (WER {i['wer']:.2f})" for i in qual["items"]
        ]
    for name in ("precision", "performance", "quality"):
        if report[name]["status"] == "skipped":
            out.append(f"{name}: skipped ({report[name]['reason']})")
    out += ["", f"overall: {'PASSED' if report['passed'] else 'FAILED'}"]
    return "\n".join(out)
