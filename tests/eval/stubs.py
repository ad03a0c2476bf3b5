"""Synthetic clips and stub generators for the eval tests: good ones, and ones broken in one way each."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from higgslab import delay

SR, HOP = 24000, 960
IDS = delay.StreamIds.after_codes(1024)  # the stubs' codes: 8 codebooks of 1024, as the real model


def speech_like(frames: int, seed: int = 0) -> np.ndarray:
    """A plausible clip: a 150 Hz tone with a syllable-rate envelope, RMS about 0.05, no clipping."""
    t = np.arange(frames * HOP) / SR
    rng = np.random.default_rng(seed)
    envelope = 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * 3 * t + rng.uniform(0, 1)))
    return (0.1 * envelope * np.sin(2 * np.pi * 150 * t)).astype(np.float32)


@dataclass
class StubClip:
    codes: torch.Tensor
    columns: torch.Tensor
    finished: bool
    audio: np.ndarray | None
    sample_rate: int = SR
    stats: SimpleNamespace = field(default_factory=SimpleNamespace)


def good_clip(seed: int = 0, frames: int = 50) -> StubClip:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1024, (8, frames), generator=g)
    ids = IDS
    bos = torch.full((8, 1), ids.bos)
    columns = torch.cat([bos, delay.apply(torch.cat([bos, codes, torch.full((8, 1), ids.eos)], 1), ids)], 1)
    steps = columns.shape[1]
    stats = SimpleNamespace(
        prompt_tokens=10,
        steps=steps,
        frames=frames,
        prefill_s=0.01,
        decode_s=steps / 100,
        time_to_first_audio_s=0.05,
        audio_decode_s=0.02,
        peak_memory_bytes=None,
        device="cpu",
    )
    return StubClip(codes, columns, True, speech_like(frames, seed), stats=stats)


def truncated(clip: StubClip, seed: int | None = None) -> StubClip:
    """Cut at max length: the last codebooks never emit eos, yet the clip claims to be finished."""
    clip.columns = clip.columns[:, : clip.columns.shape[1] - 4]
    return clip


class StubGenerator:
    """A `GenerateFn`: good 6 s clips keyed by seed (and temperature), optionally broken by `mutate(clip, seed)`."""

    def __init__(self, mutate=None, deterministic: bool = True):
        self.mutate, self.deterministic, self.calls = mutate, deterministic, 0

    def __call__(self, *, seed, temperature, max_new_tokens, text=None):
        self.calls += 1
        key = seed if self.deterministic else seed + 1000 * self.calls
        clip = good_clip(key + (500 if temperature == 0 else 0), frames=min(150, max_new_tokens))
        return self.mutate(clip, seed) if self.mutate else clip
