"""Audio files in and out, and the one conversion the tokenizer needs (any rate/channels -> mono 24 kHz).

Conventions: audio arrays are float32 in [-1, 1]; multi-channel audio is channels-first `[channels, samples]`;
multi-channel input is averaged to mono (as `librosa.load(mono=True)` does in the original code); other rates
are resampled with soxr "HQ", which is what `librosa.resample` (the original's choice) uses by default.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from higgslab.errors import HiggsLabError
from higgslab.io.atomic import atomic_write

TOKENIZER_RATE = 24000


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read any file soundfile can (wav/flac/ogg, 8/16/24-bit, float) -> (float32 `[channels, samples]`, rate)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise HiggsLabError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [samples, channels]
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError on bad files
        raise HiggsLabError(f"{path}: cannot read audio ({str(e).splitlines()[0][:120]})") from e
    if data.shape[0] == 0:
        raise HiggsLabError(f"{path}: audio file has no samples")
    return np.ascontiguousarray(data.T), int(rate)


def check_rate(sample_rate: float) -> int:
    """A sample rate as a positive int, or a one-line error."""
    try:
        ok = float(sample_rate).is_integer() and sample_rate > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise HiggsLabError(f"sample rate must be a positive integer (Hz), got {sample_rate!r}")
    return int(sample_rate)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """`[samples]`, `[channels, samples]` (or soundfile's `[samples, channels]` with ≤ 8 channels) -> `[samples]`."""
    a = np.asarray(audio)
    if not np.issubdtype(a.dtype, np.number):
        raise HiggsLabError(f"audio must be a numeric array, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.integer):  # integer PCM: scale to [-1, 1] (unsigned is offset by half)
        info = np.iinfo(a.dtype)
        half = (int(info.max) + 1) / 2 if info.min == 0 else -float(info.min)
        a = (a.astype(np.float64) - (half if info.min == 0 else 0)) / half
    a = a.astype(np.float32, copy=False)
    if a.ndim == 2:
        if a.shape[0] > 8 and a.shape[1] <= 8:
            a = a.T
        elif a.shape[0] > 8:
            raise HiggsLabError(f"audio of shape {list(a.shape)}: expected [channels ≤ 8, samples]")
        a = a.mean(axis=0)
    elif a.ndim != 1:
        raise HiggsLabError(f"audio must be [samples] or [channels, samples], got shape {list(a.shape)}")
    if a.size == 0:
        raise HiggsLabError("audio has 0 samples")
    if not np.isfinite(a).all():
        bad = int(np.flatnonzero(~np.isfinite(a))[0])
        raise HiggsLabError(f"audio contains NaN or Inf samples (first at sample {bad})")
    return a


def resample_soxr(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """librosa.resample's default: soxr HQ, then length fixed to ceil(n · target / orig)."""
    if orig_sr == target_sr:
        return audio
    import soxr

    out = soxr.resample(audio, orig_sr, target_sr, quality="soxr_hq").astype(np.float32, copy=False)
    n = math.ceil(audio.shape[-1] * target_sr / orig_sr)
    return np.pad(out, (0, max(0, n - out.shape[-1])))[:n]


def to_mono_24k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Any numeric audio (see `to_mono`) at `sample_rate` -> float32 mono `[samples]` at 24 kHz."""
    return resample_soxr(to_mono(audio), check_rate(sample_rate), TOKENIZER_RATE)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int, overwrite: bool = False) -> Path:
    """Write 16-bit PCM mono WAV atomically (temp file + rename). Multi-channel input is averaged to mono,
    samples outside [-1, 1] are clipped. Refuses to replace an existing file unless `overwrite`."""
    import soundfile as sf

    path = Path(path)
    if path.exists() and not overwrite:
        raise HiggsLabError(f"{path} already exists (pass overwrite=True to replace it)")
    if not path.parent.is_dir():
        raise HiggsLabError(f"directory does not exist: {path.parent}")
    mono = np.clip(to_mono(audio), -1.0, 1.0)
    rate = check_rate(sample_rate)
    return atomic_write(path, lambda tmp: sf.write(tmp, mono, rate, subtype="PCM_16", format="WAV"))
