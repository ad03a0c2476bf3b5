"""What the evaluation modes run: a `GenerateFn` (one clip per call) and the clip it returns.

`precision`, `performance` and `quality` never touch a model themselves; they call a `GenerateFn`, so
tests can hand them stubs (NaN audio, a truncated stream, a non-deterministic generator) and see them
fail. `generator_fn` wraps a real `higgslab.Generator`.
"""

from __future__ import annotations

import time
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
    stats: object  # GenerationStats: steps, frames, prefill_s, decode_s, steps_per_s, frames_per_s, ...


class GenerateFn(Protocol):
    def __call__(
        self, *, seed: int, temperature: float, max_new_tokens: int, text: str | None = None
    ) -> Clip: ...


def generator_fn(
    gen, text: str, scene: str | None, ref_audio: str | None, ref_text: str | None, sampling: dict
) -> GenerateFn:
    """Bind a `Generator`, a prompt and generation settings (top_k, top_p, ras_window, ras_max_repeat,
    cfg_scale: `Generator.generate`'s keywords). A call gives what `gen.generate(text=...)` would."""
    prompts: dict[str, object] = {}

    def generate(*, seed: int, temperature: float, max_new_tokens: int, text: str | None = text) -> Clip:
        if text not in prompts:  # tokenise (and encode the reference clip) once per text
            prompts[text] = gen.build_prompt(text, scene, ref_audio, ref_text)
        prompt = prompts[text]
        clip = gen.generate(
            prompt.input_ids,
            audio_codes=prompt.audio_codes,
            unconditional_ids=prompt.without_text(),  # used only when guided (cfg_scale != 1)
            seed=seed,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            decode_audio=False,
            **sampling,
        )
        # decoded here, not by `generate`: a clip with no complete frame is a failed check, not an error
        t0 = time.perf_counter()
        clip.audio = (
            gen.audio_tokenizer.decode(clip.codes) if clip.codes.shape[-1] else np.zeros(0, np.float32)
        )
        clip.stats.audio_decode_s = time.perf_counter() - t0
        return clip

    return generate


def device_name(device: str) -> str:
    """A human name for the device a run used: the accelerator's product name, or the CPU's model."""
    from higgslab.device import device_name as backend_name

    dev = torch.device(device)
    cpuinfo = Path("/proc/cpuinfo")
    if dev.type == "cpu" and cpuinfo.is_file():  # platform.processor() is often empty on Linux
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return backend_name(dev)
