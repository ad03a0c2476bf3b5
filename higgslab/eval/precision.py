"""Precision mode: is the output valid, deterministic and whole? (the NPU port's five checks)

Per seed (sampled at the configured temperature): finite valid codes, audio checks (NaN/Inf, level,
duration, silences, jumps, clipping), every frame decoded, every codebook in use, no unreported
truncation. Across runs: every seed valid; temperature 0 twice gives identical codes and samples;
the first seed twice gives identical output.
"""

from __future__ import annotations

import numpy as np

from higgslab.config import StreamIds
from higgslab.eval import checks
from higgslab.eval.checks import DEFAULT, Check, Thresholds
from higgslab.eval.harness import Clip, GenerateFn
from higgslab.tokenizer.stats import codebook_stats, codebook_usage


def clip_summary(clip: Clip, seed: int, t: Thresholds, hop_length: int, ids: StreamIds) -> dict:
    """One clip's figures and checks (the report's `precision.seeds[i]`)."""
    audio = np.zeros(0, np.float32) if clip.audio is None else np.asarray(clip.audio)
    code_check = checks.codes_valid(clip.codes, ids.codebook_size)
    found = [
        code_check,
        *checks.audio_checks(audio, clip.sample_rate, t),
        checks.frames_decode(clip.codes, audio, hop_length),
        checks.codebook_use(clip.codes, t),
        checks.not_truncated(clip.columns, clip.finished, ids.eos),
    ]
    usage = None
    if code_check.passed and clip.codes.shape[-1]:
        stats = codebook_stats(codebook_usage([clip.codes], bins=ids.codebook_size))
        usage = {
            "distinct": [int(ids.codebook_size - d) for d in stats.dead],
            "perplexity": [round(float(p), 2) for p in stats.perplexity],
            "top_share": [round(float(s), 4) for s in stats.top_share],
        }
    finite = audio[np.isfinite(audio)]
    return {
        "seed": seed,
        "steps": int(clip.columns.shape[-1]),
        "frames": int(clip.codes.shape[-1]),
        "finished": bool(clip.finished),
        "duration_s": audio.size / clip.sample_rate,
        "rms": float(np.sqrt(np.mean(finite.astype(np.float64) ** 2))) if finite.size else None,
        "peak": float(np.max(np.abs(finite))) if finite.size else None,
        "codebook_usage": usage,
        "checks": [c.to_dict() for c in found],
        "passed": all(c.passed for c in found),
    }


def run_precision(
    generate: GenerateFn,
    seeds: list[int],
    temperature: float,
    max_new_tokens: int,
    hop_length: int,
    ids: StreamIds,
    t: Thresholds = DEFAULT,
) -> dict:
    """Generate one clip per seed, then the determinism pairs; the report's `precision` section. `ids`: the
    model's stream ids (`HiggsConfig.stream_ids`)."""
    if not seeds:
        raise ValueError("precision needs at least one seed")
    clips = {s: generate(seed=s, temperature=temperature, max_new_tokens=max_new_tokens) for s in seeds}
    per_seed = [clip_summary(clips[s], s, t, hop_length, ids) for s in seeds]

    bad = [p["seed"] for p in per_seed if not p["passed"]]
    across = [
        Check(
            "all_seeds_valid",
            not bad,
            len(seeds) - len(bad),
            len(seeds),
            f"failing seeds {bad}" if bad else "",
        )
    ]

    first = seeds[0]
    greedy = [generate(seed=first, temperature=0.0, max_new_tokens=max_new_tokens) for _ in range(2)]
    across.append(
        checks.identical(
            "deterministic_greedy", greedy[0].codes, greedy[1].codes, greedy[0].audio, greedy[1].audio
        )
    )
    again = generate(seed=first, temperature=temperature, max_new_tokens=max_new_tokens)
    across.append(
        checks.identical(
            "deterministic_seed", clips[first].codes, again.codes, clips[first].audio, again.audio
        )
    )

    return {
        "status": "passed" if all(c.passed for c in across) else "failed",
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "seeds": per_seed,
        "checks": [c.to_dict() for c in across],
    }
