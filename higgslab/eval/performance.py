"""Performance mode: speed and memory per generation length (the NPU port's 512/1024/2048 table).

Per token count (`max_new_tokens`): LM steps run, steps/s and decodable frames/s, prefill time, time to first audio (first
complete frame), audio decode time, real-time factor (compute seconds per second of audio: < 1 is
faster than real time), peak memory and the device. A short warm-up run comes first so one-time costs
(allocations, kernel selection) stay out of the figures; with `repeats` > 1 the fastest run is kept.
A model that closes its streams early runs fewer steps than asked: `steps` says how many ran.
"""

from __future__ import annotations

import math

from higgslab.eval.harness import Clip, GenerateFn, device_name


def timing(clip: Clip, tokens: int) -> dict:
    """One run's figures (the report's `performance.runs[i]`)."""
    s = clip.stats
    audio_s = 0.0 if clip.audio is None else len(clip.audio) / clip.sample_rate
    compute_s = s.prefill_s + s.decode_s + s.audio_decode_s
    frames = int(clip.codes.shape[-1])  # complete output frames: what decodes to audio
    return {
        "tokens": tokens,
        "steps": int(s.steps),
        "frames": frames,
        "prefill_s": s.prefill_s,
        "decode_s": s.decode_s,
        "steps_per_s": s.steps / s.decode_s if s.decode_s > 0 else None,
        "frames_per_s": frames / s.decode_s if s.decode_s > 0 else None,
        "time_to_first_audio_s": s.time_to_first_audio_s,
        "audio_decode_s": s.audio_decode_s,
        "audio_s": audio_s,
        "real_time_factor": compute_s / audio_s if audio_s > 0 else None,
        "peak_memory_bytes": s.peak_memory_bytes,
        "device": str(s.device),
    }


def run_performance(
    generate: GenerateFn,
    tokens: list[int],
    seed: int,
    temperature: float,
    repeats: int = 1,
    warmup_tokens: int = 16,
) -> dict:
    """Time one generation per token count (best of `repeats`); the report's `performance` section."""
    if not tokens or repeats < 1:
        raise ValueError("performance needs at least one token count and one repeat")
    if warmup_tokens > 0:
        generate(seed=seed, temperature=temperature, max_new_tokens=warmup_tokens)
    runs = []
    for n in tokens:
        tries = [
            timing(generate(seed=seed, temperature=temperature, max_new_tokens=n), n) for _ in range(repeats)
        ]
        runs.append(min(tries, key=lambda r: r["decode_s"] / max(r["steps"], 1)))
    device = runs[0]["device"]
    ok = all(
        r["steps_per_s"] is not None and math.isfinite(r["steps_per_s"]) and r["frames"] > 0 for r in runs
    )
    return {
        "status": "passed" if ok else "failed",
        "device": device,
        "device_name": device_name(device),
        "seed": seed,
        "temperature": temperature,
        "repeats": repeats,
        "runs": runs,
    }
