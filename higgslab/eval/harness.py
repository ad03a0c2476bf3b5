"""What the evaluation modes run: a `GenerateFn` (one clip per call) and the clip it returns.

`precision`, `performance` and `quality` never touch a model themselves; they call a `GenerateFn`, so
tests can hand them stubs (NaN audio, a truncated stream, a non-deterministic generator) and see them
fail. `generator_fn` wraps a real `higgslab.Generator`.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Protocol

import numpy as np
import torch


class Clip(Protocol):
    """A generated clip: what `Generator.generate` returns (`GenerationResult`)."""

    codes: torch.Tensor  # [n_q, F]
    columns: torch.Tensor  # [n_q, steps], stream bos/eos included
    finished: bool
    audio: np.ndarray | None  # float32 [samples]
    sample_rate: int
    stats: object  # GenerationStats: steps, frames, prefill_s, decode_s, frames_per_s, ...


class GenerateFn(Protocol):
    def __call__(
        self, *, seed: int, temperature: float, max_new_tokens: int, text: str | None = None
    ) -> Clip: ...


def generator_fn(
    gen, text: str, scene: str | None, ref_audio: str | None, ref_text: str | None, sampling: dict
) -> GenerateFn:
    """Bind a `Generator`, a prompt and sampling settings (top_k, top_p, ras_window, ras_max_repeat)."""
    prompts: dict[str, tuple] = {}

    def generate(*, seed: int, temperature: float, max_new_tokens: int, text: str | None = text) -> Clip:
        if text not in prompts:  # tokenise (and encode the reference clip) once per text
            prompts[text] = gen.prompt(text, scene, ref_audio, ref_text)
        ids, codes = prompts[text]
        return gen.generate(
            ids,
            audio_codes=codes,
            seed=seed,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            **sampling,
        )

    return generate


def device_name(device: str) -> str:
    """A human name for the device a run used: the GPU's model, or the CPU's."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    if dev.type == "cpu":
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            for line in cpuinfo.read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        return platform.processor() or platform.machine()
    return str(dev)
