"""Pass/fail checks on generated codes and audio: pure functions, each returning a `Check` that can fail.

    checks = [audio_finite(wav), level(wav), silent_blocks(wav, 24000), sample_jumps(wav), clipping(wav)]
    all(c.passed for c in checks)

Audio is float32 `[samples]` at `sample_rate`; codes are `[n_q, F]` (delay reverted, values in
[0, codebook_size)); columns are the generated delayed columns `[n_q, S]` with stream bos/eos included.
The thresholds live in `Thresholds` (and `higgslab/conf/eval.yaml`), defaults set for 24 kHz speech.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class Check:
    """One check's verdict: `value` is what was measured, `limit` what it was held against."""

    name: str
    passed: bool
    value: float | None = None
    limit: float | list[float] | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    rms_min: float = 1e-3  # quieter than -60 dBFS on average: no usable speech
    rms_max: float = 0.5
    min_duration_s: float = 0.1  # the NPU port saw 0.04 s outputs from short prompts: those are failures
    silence_db: float = -60.0  # a 20 ms window below this level counts as silent
    max_silence_s: float = 2.0  # longer pauses than this are dropouts, not speech
    max_jump: float = 0.5  # |x[t+1] - x[t]| above this is a discontinuity (a click), not a waveform
    clip_level: float = 0.999
    max_clipped: int = 0  # samples at or above clip_level allowed
    min_distinct_codes: int = 2  # a codebook stuck on one code over a whole clip has collapsed


DEFAULT = Thresholds()


def _as_numpy(audio) -> np.ndarray:
    return np.asarray(audio, dtype=np.float64).reshape(-1)


def audio_finite(audio: np.ndarray) -> Check:
    """No NaN or Inf sample, and at least one sample."""
    x = _as_numpy(audio)
    bad = int((~np.isfinite(x)).sum())
    if x.size == 0:
        return Check("audio_finite", False, 0, 0, "empty audio")
    return Check("audio_finite", bad == 0, bad, 0, f"{bad} NaN/Inf samples of {x.size}" if bad else "")


def codes_valid(codes: torch.Tensor | np.ndarray, codebook_size: int) -> Check:
    """Every code is an integer in [0, codebook_size): stream tokens and garbage never reach the decoder."""
    c = torch.as_tensor(codes)
    if c.is_floating_point():  # codes must be integers; NaN/Inf or fractions mean a broken sampler
        bad_values = ~torch.isfinite(c) | (c != c.round())
        c = torch.where(bad_values, -1.0, c)
    bad = int(((c < 0) | (c >= codebook_size)).sum())
    return Check(
        "codes_valid",
        bad == 0,
        bad,
        codebook_size,
        f"{bad} codes outside [0, {codebook_size})" if bad else "",
    )


def level(audio: np.ndarray, t: Thresholds = DEFAULT) -> Check:
    """RMS within [rms_min, rms_max] (peak is reported; clipping is its own check)."""
    x = _as_numpy(audio)
    rms = float(np.sqrt(np.mean(x**2))) if x.size else 0.0
    ok = bool(np.isfinite(rms) and t.rms_min <= rms <= t.rms_max)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return Check("level", ok, rms, [t.rms_min, t.rms_max], f"rms {rms:.4g}, peak {peak:.4g}")


def duration(audio: np.ndarray, sample_rate: int, t: Thresholds = DEFAULT) -> Check:
    """At least `min_duration_s` of audio: every seed must give usable output."""
    seconds = _as_numpy(audio).size / sample_rate
    return Check("duration", seconds >= t.min_duration_s, seconds, t.min_duration_s, f"{seconds:.2f} s")


def frames_decode(codes: torch.Tensor, audio: np.ndarray, hop_length: int) -> Check:
    """Every generated frame became audio: `len(audio) == frames * hop_length` (no lost tail)."""
    frames, samples = int(codes.shape[-1]), _as_numpy(audio).size
    expected = frames * hop_length
    ok = frames > 0 and samples == expected
    return Check("frames_decode", ok, samples, expected, f"{frames} frames -> {samples} samples")


def codebook_use(codes: torch.Tensor, t: Thresholds = DEFAULT) -> Check:
    """Each codebook uses at least `min_distinct_codes` distinct codes (value: the fewest any codebook uses)."""
    c = torch.as_tensor(codes)
    if c.shape[-1] == 0:
        return Check("codebook_use", False, 0, t.min_distinct_codes, "no frames")
    distinct = [int(row.unique().numel()) for row in c]
    worst = min(distinct)
    return Check(
        "codebook_use",
        worst >= t.min_distinct_codes,
        worst,
        t.min_distinct_codes,
        f"distinct codes per codebook {distinct}",
    )


def not_truncated(columns: torch.Tensor, finished: bool, eos_id: int) -> Check:
    """Every codebook closed its stream (emitted eos) before max length, and `finished` says so.

    A stream cut at `max_new_tokens` fails (the speech may stop mid-word); so does a `finished` flag
    that disagrees with the columns (a truncation the generator did not report).
    """
    c = torch.as_tensor(columns)
    closed = (c == eos_id).any(dim=-1)
    all_closed = bool(closed.all())
    if all_closed != bool(finished):
        return Check(
            "not_truncated", False, None, None, f"finished={finished} but codebooks closed: {closed.tolist()}"
        )
    open_books = [k for k, ok in enumerate(closed.tolist()) if not ok]
    detail = (
        ""
        if all_closed
        else f"cut at max length after {c.shape[-1]} steps; codebooks {open_books} never closed"
    )
    return Check("not_truncated", all_closed, c.shape[-1], None, detail)


def _window_db(x: np.ndarray, window: int) -> np.ndarray:
    n = x.size // window
    frames = x[: n * window].reshape(n, window)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)


def longest_run(flags: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D bool array."""
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def silent_blocks(
    audio: np.ndarray, sample_rate: int, t: Thresholds = DEFAULT, window_s: float = 0.02
) -> Check:
    """No run of silent 20 ms windows longer than `max_silence_s` (a dropout inside the speech)."""
    window = max(1, int(sample_rate * window_s))
    silent = _window_db(_as_numpy(audio), window) < t.silence_db
    seconds = longest_run(silent) * window / sample_rate
    return Check(
        "silent_blocks",
        seconds <= t.max_silence_s,
        seconds,
        t.max_silence_s,
        f"longest silence {seconds:.2f} s",
    )


def sample_jumps(audio: np.ndarray, t: Thresholds = DEFAULT) -> Check:
    """No jump between neighbouring samples above `max_jump` (clicks, block seams)."""
    x = _as_numpy(audio)
    jump = float(np.max(np.abs(np.diff(x)))) if x.size > 1 else 0.0
    ok = bool(np.isfinite(jump) and jump <= t.max_jump)
    where = int(np.argmax(np.abs(np.diff(x)))) if x.size > 1 else 0
    return Check("sample_jumps", ok, jump, t.max_jump, f"largest jump {jump:.3g} at sample {where}")


def clipping(audio: np.ndarray, t: Thresholds = DEFAULT) -> Check:
    """At most `max_clipped` samples at or above full scale (`clip_level`)."""
    clipped = int((np.abs(_as_numpy(audio)) >= t.clip_level).sum())
    return Check(
        "clipping",
        clipped <= t.max_clipped,
        clipped,
        t.max_clipped,
        f"{clipped} samples at |x| >= {t.clip_level}",
    )


def identical(name: str, codes_a, codes_b, audio_a=None, audio_b=None) -> Check:
    """Two runs that must agree bit for bit: same codes, same samples (value: differing frames)."""
    a, b = torch.as_tensor(codes_a), torch.as_tensor(codes_b)
    if a.shape != b.shape:
        return Check(name, False, None, 0, f"code shapes differ: {list(a.shape)} vs {list(b.shape)}")
    diff_frames = int((a != b).any(dim=0).sum()) if a.numel() else 0
    if diff_frames:
        return Check(name, False, diff_frames, 0, f"{diff_frames} of {a.shape[-1]} frames differ")
    if audio_a is not None and audio_b is not None:
        x, y = _as_numpy(audio_a), _as_numpy(audio_b)
        if x.shape != y.shape or not np.array_equal(x, y, equal_nan=True):
            return Check(name, False, 0, 0, "codes agree but samples differ")
    return Check(name, True, 0, 0, f"{a.shape[-1]} frames identical")


def audio_checks(audio: np.ndarray, sample_rate: int, t: Thresholds = DEFAULT) -> list[Check]:
    """The checks every generated clip must pass on its own."""
    return [
        audio_finite(audio),
        level(audio, t),
        duration(audio, sample_rate, t),
        silent_blocks(audio, sample_rate, t),
        sample_jumps(audio, t),
        clipping(audio, t),
    ]
