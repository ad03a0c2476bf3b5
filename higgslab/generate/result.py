"""What a generation returns: the codes, the delayed columns as generated, audio, timing, and for a long-form
run each chunk's report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from higgslab.config import StreamIds

if TYPE_CHECKING:
    from higgslab.generate.longform import ChunkReport


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    steps: int = 0
    frames: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    time_to_first_audio_s: float | None = None
    audio_decode_s: float = 0.0
    peak_memory_bytes: int | None = None
    device: str = "cpu"

    @property
    def steps_per_s(self) -> float:
        """LM steps (one delayed audio column each) per second of decoding."""
        return self.steps / self.decode_s if self.decode_s > 0 else float("nan")

    @property
    def frames_per_s(self) -> float:
        """Decodable frames (complete output frames, delay reverted) per second of decoding: below
        `steps_per_s`, since the delay pattern's partial columns and the stream tokens decode to no frame."""
        return self.frames / self.decode_s if self.decode_s > 0 else float("nan")


@dataclass
class GenerationResult:
    codes: torch.Tensor  # [n_q, F], delay reverted, stream tokens removed, values in [0, codebook_size)
    columns: torch.Tensor  # [n_q, steps] the delayed columns as generated (stream bos/eos included)
    finished: bool  # every codebook emitted stream-eos before max_new_tokens
    stream_ids: StreamIds  # the model's stream bos/eos ids in `columns` (`HiggsConfig.stream_ids`)
    sample_rate: int = 24000
    audio: np.ndarray | None = None  # float32 [samples] when an audio tokenizer is attached
    seed: int | None = None  # the seed it was sampled with (drawn when none was given)
    stats: GenerationStats = field(default_factory=GenerationStats)
    chunks: list[ChunkReport] = field(default_factory=list)  # long-form: one report per chunk, else empty

    @property
    def duration_s(self) -> float:
        return 0.0 if self.audio is None else len(self.audio) / self.sample_rate
