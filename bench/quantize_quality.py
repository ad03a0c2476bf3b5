"""What weight-only quantization costs higgslab-mini in quality: none vs int8 vs int4 (issue 21).

    OMP_WAIT_POLICY=PASSIVE nice -n 19 python bench/quantize_quality.py [--seeds 0,1,2,3] [--sentences 40] \\
        [--out runs/quantize_quality]

1. **Teacher-forced agreement.** The unquantized mini speaks each held-out sentence (listen's sampling:
   temperature 0.3, the model's guidance, the first seed). Prompt + those codes go through each model's full
   forward, as training feeds them (`train.examples.make_train_example`). At every audio target the training
   loss counts (position × codebook): how often the quantized model's top-1 is the unquantized one's, and the
   absolute differences of the audio logits there. `OUT/teacher_forced.json`.
2. **Listening.** The project's measure, `python -m higgslab.train.listen --quantize M --seed S` (Whisper
   identification among the held-out sentences, WER, duration tracking), one process per (method, seed): Whisper
   seeds its sampler when it loads, so each report is what that command alone gives. `OUT/listen_M_seedS.json`;
   a report already there is kept, so an interrupted run resumes. Seeds outer, methods inner: a partial run
   holds whole seeds.
3. **The table**, printed and written to `OUT/table.md`. A method's identification is its mean over seeds ± the
   sd over seeds. The difference to none is paired: d[s, i] = correct_M[s, i] − correct_none[s, i] over seeds
   × sentences (the same sentence and seed under both models), its standard error sd(d) / √(S·N); beside it the
   coarser one from the S per-seed differences, sd / √S.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

METHODS = ("none", "int8", "int4")
TEMPERATURE = 0.3  # listen's default
MAX_NEW_TOKENS = 500  # listen's


# ---- 1. teacher-forced agreement ------------------------------------------------------------------------
@torch.no_grad()
def teacher_forced(methods: list[str], sentences: int, seed: int, group_size: int) -> dict:
    """Each quantized model's audio logits against the unquantized one's on the same teacher-forced input."""
    from higgslab.embedded import resolve_paths
    from higgslab.generate.generator import Generator
    from higgslab.train.examples import IGNORE, make_train_example
    from higgslab.train.listen import held_out_clips

    model_dir, _, _ = resolve_paths(None, None)
    gens = {
        m: Generator.from_paths(model_dir, None, device="cpu", quantize=m, group_size=group_size)
        for m in methods
    }
    ref = gens["none"]
    totals = {m: {"agree": 0, "correct": 0, "abs_sum": 0.0, "abs_max": 0.0, "logits": 0} for m in methods}
    targets = finished = 0
    for clip in held_out_clips(sentences):
        spoken = ref.generate(
            text=clip.text, seed=seed, temperature=TEMPERATURE, max_new_tokens=MAX_NEW_TOKENS
        )
        finished += spoken.finished
        ex = make_train_example(ref.text_tokenizer, ref.config, clip.text, spoken.codes)
        at = ex.labels != IGNORE  # [T, n_q] the audio targets
        targets += int(at.sum())
        base = None
        for m, gen in gens.items():  # "none" first
            logits = gen.model(ex.input_ids[None], ex.audio_codes[None]).audio_logits[0][at].float()  # [K, V]
            base = logits if base is None else base
            diff = (logits - base).abs()
            t = totals[m]
            t["agree"] += int((logits.argmax(-1) == base.argmax(-1)).sum())
            t["correct"] += int((logits.argmax(-1) == ex.labels[at]).sum())
            t["abs_sum"] += float(diff.sum())
            t["abs_max"] = max(t["abs_max"], float(diff.max()))
            t["logits"] += diff.numel()
    return {
        "sentences": sentences,
        "seed": seed,
        "group_size": group_size,
        "finished": finished,
        "audio_targets": targets,
        "methods": {
            m: {
                "top1_agreement": t["agree"] / targets,  # with none's top-1
                "top1_is_the_code": t["correct"] / targets,  # with the code fed next (none's own sample)
                "max_abs_logit_diff": t["abs_max"],
                "mean_abs_logit_diff": t["abs_sum"] / t["logits"],
            }
            for m, t in totals.items()
        },
    }


# ---- 2. listening -----------------------------------------------------------------------------------------
def listen_runs(out: Path, methods: list[str], seeds: list[int], sentences: int, group_size: int) -> None:
    """One `higgslab.train.listen` process per (method, seed) whose report is not there yet."""
    for seed in seeds:
        for m in methods:
            report = out / f"listen_{m}_seed{seed}.json"
            if report.is_file():
                continue
            cmd = [sys.executable, "-m", "higgslab.train.listen", "--sentences", str(sentences),
                   "--seed", str(seed), "--quantize", m, "--group-size", str(group_size), "--out", str(report)]  # fmt: skip
            start = time.perf_counter()
            with open(report.with_suffix(".log"), "w") as log:
                done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
            if done.returncode:
                sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): see {report.with_suffix('.log')}")
            summary = json.loads(report.read_text())["summary"]
            print(f"listen {m} seed {seed}: identified {summary['identified']:.3f}, wer {summary['wer']:.2f}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip


# ---- 3. the table -----------------------------------------------------------------------------------------
def per_item(report: dict) -> dict[str, np.ndarray]:
    """A listen report's per-sentence measures: identified (0/1), WER, finished."""
    from higgslab.train.listen import identified

    items = report["items"]
    texts, heard = [r["text"] for r in items], [r["transcript"] for r in items]
    return {
        "identified": np.array(identified(texts, heard), float),
        "wer": np.array([r["wer"] for r in items]),
        "finished": np.array([r["finished"] for r in items], float),
    }


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """`a` − `b`, both `[S seeds, N sentences]`: (mean difference, its standard error over the S·N pairs, and
    over the S per-seed differences)."""
    d = a - b
    return float(d.mean()), sem(d.ravel()), sem(d.mean(1))


def sem(x: np.ndarray) -> float:
    """Standard error of the mean of `x` `[n]` (sample sd / √n; nan below two values)."""
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def mean_sd(x) -> str:
    x = np.asarray(x, float)
    return f"{x.mean():.3f} ± {sem(x) * np.sqrt(len(x)):.3f}"


def span(x: list[float]) -> str:
    return f"{min(x):.3f}–{max(x):.3f}"


def listening_table(out: Path, methods: list[str], seeds: list[int]) -> list[str]:
    """The listening table over the seeds every method has a report for."""
    reports = {(m, s): out / f"listen_{m}_seed{s}.json" for m in methods for s in seeds}
    seeds = [s for s in seeds if all(reports[m, s].is_file() for m in methods)]  # whole seeds only
    if not seeds:
        return []
    runs = {m: [json.loads(reports[m, s].read_text()) for s in seeds] for m in methods}
    items = {m: {k: np.stack([per_item(r)[k] for r in rs]) for k in ("identified", "wer", "finished")}
             for m, rs in runs.items()}  # fmt: skip
    S, N = items["none"]["identified"].shape
    lines = [
        f"Listening: {S} seeds ({', '.join(map(str, seeds))}) × {N} held-out sentences, chance {1 / N:.3f}.",
        "",
        "| method | identified: mean ± sd over seeds (each seed) | SE | − none (SE paired, S·N; SE over seeds) "
        "| WER: mean ± sd | − none (SE) | r (espeak-ng): mean ± sd | duration ÷ espeak-ng | ends |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for m in methods:
        ident, wer = items[m]["identified"].mean(1), items[m]["wer"].mean(1)
        summary = [r["summary"] for r in runs[m]]
        d_ident = d_wer = "—"
        if m != "none":
            d, se, se_seed = paired(items[m]["identified"], items["none"]["identified"])
            d_ident = f"{d:+.3f} ({se:.3f}; {se_seed:.3f})"
            verdicts.append(f"{m} − none on identification: {d:+.3f}, {'within' if abs(d) <= se else 'outside'} "
                            f"one standard error ({se:.3f} paired over seeds × sentences; {se_seed:.3f} over seeds).")  # fmt: skip
            d, se, _ = paired(items[m]["wer"], items["none"]["wer"])
            d_wer = f"{d:+.3f} ({se:.3f})"
        lines.append(
            f"| {m} | {mean_sd(ident)} ({' / '.join(f'{x:.3f}' for x in ident)}) "
            f"| {sem(ident):.3f} | {d_ident} "
            f"| {mean_sd(wer)} | {d_wer} | {mean_sd([x['duration_vs_espeak_r'] for x in summary])} "
            f"| {np.mean([x['duration_ratio'] for x in summary]):.2f} "
            f"| {int(items[m]['finished'].sum())} / {S * N} |"
        )
    # The ceilings do not involve the LM, yet vary a little from report to report: on a doubtful transcript
    # Whisper retries by sampling from one sampler seeded per process, so what was transcribed before matters.
    summaries = [r["summary"] for rs in runs.values() for r in rs]
    if "resynth_identified" in summaries[0]:
        lines += ["", "Ceilings on the same sentences, min–max over the reports: codec resynthesis identified "
                  f"{span([x['resynth_identified'] for x in summaries])}, espeak-ng originals "
                  f"{span([x['espeak_identified'] for x in summaries])}."]  # fmt: skip
    return [*lines, "", *verdicts]


def teacher_forced_table(tf: dict) -> list[str]:
    lines = [
        f"Teacher-forced on {tf['sentences']} held-out sentences (none's codes, seed {tf['seed']}; "
        f"{tf['audio_targets']} audio targets = positions × codebooks; {tf['finished']} of them ended):",
        "",
        "| method | top-1 = none's top-1 | top-1 = the code fed next | max abs logit diff | mean abs logit diff |",
        "|---|---|---|---|---|",
    ]
    for m, r in tf["methods"].items():
        lines.append(f"| {m} | {r['top1_agreement']:.4f} | {r['top1_is_the_code']:.4f} "
                     f"| {r['max_abs_logit_diff']:.4f} | {r['mean_abs_logit_diff']:.5f} |")  # fmt: skip
    return lines


def main() -> None:
    from higgslab.io.atomic import atomic_write

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated listening seeds")
    parser.add_argument("--sentences", type=int, default=40, help="held-out sentences")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, none first")
    parser.add_argument("--group-size", type=int, default=128, help="int4: inputs per scale")
    parser.add_argument("--out", type=Path, default=Path("runs/quantize_quality"))
    parser.add_argument("--no-listen", action="store_true", help="teacher-forced agreement and table only")
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. 0,1,2,3")
    methods = args.methods.split(",")
    if methods[0] != "none" or not set(methods) <= set(METHODS):
        parser.error(f"--methods {args.methods!r}: none first, then any of int8, int4")
    if args.sentences < 2:
        parser.error("--sentences must be at least 2 (identification needs two)")
    args.out.mkdir(parents=True, exist_ok=True)

    tf_file = args.out / "teacher_forced.json"
    if not tf_file.is_file():
        start = time.perf_counter()
        tf = teacher_forced(methods, args.sentences, seeds[0], args.group_size)
        atomic_write(tf_file, lambda tmp: Path(tmp).write_text(json.dumps(tf, indent=1)))
        print(f"teacher-forced agreement: {time.perf_counter() - start:.0f} s", flush=True)
    if not args.no_listen:
        listen_runs(args.out, methods, seeds, args.sentences, args.group_size)
    tf = json.loads(tf_file.read_text())
    text = "\n".join([*listening_table(args.out, methods, seeds), "", *teacher_forced_table(tf)])
    atomic_write(args.out / "table.md", lambda tmp: Path(tmp).write_text(text + "\n"))
    print(text)


if __name__ == "__main__":
    main()
