"""A clip to look at without downloads: a rising chirp with harmonics, a steady vowel-like buzz and noise
bursts, so that spectrograms show sweeps, stripes and broadband events."""

from __future__ import annotations

import numpy as np


def demo_clip(seconds: float = 2.5, sample_rate: int = 24000, seed: int = 0) -> np.ndarray:
    """float32 `[seconds · sample_rate]` in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * (150 * t + 250 * t**2 / seconds)  # 150 Hz rising to 650 Hz
    chirp = sum(np.sin(h * phase) / h for h in (1, 2, 3, 5)) * (t < seconds / 2)
    buzz = sum(np.sin(2 * np.pi * 220 * h * t) * np.exp(-((h * 220 - 700) ** 2) / 2e5) for h in range(1, 15))
    buzz = buzz * (t >= seconds / 2)
    bursts = rng.standard_normal(t.size) * (np.sin(2 * np.pi * 3 * t) > 0.92)
    clip = 0.5 * chirp + 0.4 * buzz + 0.2 * bursts
    return (0.8 * clip / np.abs(clip).max()).astype(np.float32)
