"""Audio and pictures as bytes, the form ipywidgets' `Audio`, `Image` and download links take."""

from __future__ import annotations

import base64
import html
import io

import numpy as np


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono float audio `[samples]` → a 16-bit PCM WAV file in memory."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(
        buf,
        np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1, 1),
        sample_rate,
        "PCM_16",
        format="WAV",
    )
    return buf.getvalue()


def download_link(data: bytes, filename: str, mime: str = "audio/wav") -> str:
    """An HTML `<a download>` link carrying `data` inline (works without a server-side file)."""
    b64 = base64.b64encode(data).decode("ascii")
    name = html.escape(filename)
    return f'<a download="{name}" href="data:{mime};base64,{b64}">⬇ {name}</a>'
