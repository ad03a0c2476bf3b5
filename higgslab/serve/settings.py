"""The server's settings, checked before the model loads: `settings_from(cfg) -> ServeSettings`.

As for `python -m higgslab.generate` (see `higgslab.generate.settings`): serve.yaml and its groups hold the
defaults, the dataclass only the types, and every bad value is one `HiggsLabError` line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from omegaconf import DictConfig

from higgslab.errors import HiggsLabError
from higgslab.generate.settings import check_model_settings, settings_class, typed_settings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass
class _ServerKeys:
    # network
    host: str
    port: int
    api_key: str | None
    log_level: str
    # what is served
    model_name: str | None
    voices_dir: str | None
    # capacity and limits
    rows: int
    max_tokens: int
    max_queue: int
    max_input_chars: int
    timeout_s: float
    chunk_frames: int
    max_chunk_frames: int
    decode_threads: int
    step_threads: int | None


ServeSettings = settings_class(
    "ServeSettings",
    _ServerKeys,
    __name__,
    "Every key of `python -m higgslab.serve` (serve.yaml + generation/ + model/), typed.",
)


def step_threads(s: ServeSettings) -> int:
    """Intra-op threads for the decode steps: `s.step_threads`, or the cores this process may run on that
    the audio threads leave. Two threads' teams on two cores spin against each other: the split keeps the
    steps and the audio from taking each other's cores (bench/RESULTS.md, *Fifth look*)."""
    if s.step_threads is not None:
        return s.step_threads
    return max(1, len(os.sched_getaffinity(0)) - s.decode_threads)


def settings_from(cfg: DictConfig) -> ServeSettings:
    """The composed Hydra config as checked `ServeSettings`, or one `HiggsLabError` line."""
    from higgslab.generate import voices
    from higgslab.generate.sampling import SamplingSettings

    s = typed_settings(ServeSettings, cfg, "serve")
    if not 0 <= s.port < 65536:
        raise HiggsLabError(f"port must be in 0..65535, got {s.port}")
    at_least = {"rows": 1, "max_tokens": 2, "max_queue": 0, "max_input_chars": 1, "chunk_frames": 1, "decode_threads": 1,
                "max_new_tokens": 1}  # fmt: skip
    for key, low in at_least.items():
        if getattr(s, key) < low:
            raise HiggsLabError(f"{key} must be >= {low}, got {getattr(s, key)}")
    if s.step_threads is not None and s.step_threads < 1:
        raise HiggsLabError(
            f"step_threads must be >= 1 (null: the cores the audio threads leave), got {s.step_threads}"
        )
    if s.max_chunk_frames < s.chunk_frames:
        raise HiggsLabError(
            f"max_chunk_frames must be >= chunk_frames ({s.chunk_frames}), got {s.max_chunk_frames}"
        )
    if not s.timeout_s > 0:
        raise HiggsLabError(f"timeout_s must be > 0, got {s.timeout_s}")
    if s.max_new_tokens >= s.max_tokens:
        raise HiggsLabError(
            f"max_new_tokens={s.max_new_tokens} leaves no room for a prompt in max_tokens={s.max_tokens}"
        )
    if s.log_level not in LOG_LEVELS:
        raise HiggsLabError(f"log_level={s.log_level}: takes {' | '.join(LOG_LEVELS)}")
    if s.api_key is not None and not s.api_key.strip():
        raise HiggsLabError("api_key is empty: give a key, or null for none")
    SamplingSettings(s.temperature, s.top_k, s.top_p, s.ras_window, s.ras_max_repeat,
                     1.0 if s.cfg_scale is None else s.cfg_scale).check()  # fmt: skip
    if s.model_path is not None and s.tokenizer_path is None:
        raise HiggsLabError(
            "tokenizer_path is needed with model_path: the audio tokenizer turns codes into audio"
        )
    if s.tokenizer_path is not None and s.model_path is None:
        raise HiggsLabError(f"tokenizer_path={s.tokenizer_path} is used only with model_path=")
    check_model_settings(s)
    voices.list_voices(s.voices_dir)  # a folder
    if s.adapter_path is not None:
        from higgslab.io.adapter import check_adapter_dir

        check_adapter_dir(s.adapter_path)
    return s
