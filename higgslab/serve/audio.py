"""Float audio → the bytes of a response: a whole file (wav, flac, raw pcm) or a stream's pieces.

Samples become 16-bit by libsndfile (soundfile) everywhere, as `higgslab.io.audio.write_wav` writes the
CLI's files, so a response holds exactly the CLI's samples. A streamed WAV starts with a header whose sizes
are unknown (0xFFFFFFFF, as OpenAI sends): readers take the data up to the end of the stream.
"""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np

MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}


def pcm16(audio: np.ndarray) -> bytes:
    """float32 samples `[n]` → raw little-endian 16-bit PCM."""
    import soundfile as sf

    if audio.size == 0:
        return b""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), 24000, format="RAW", subtype="PCM_16", endian="LITTLE")
    return buffer.getvalue()


def whole_file(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """float32 mono samples → a complete response body in `fmt` (wav | flac | pcm). FLAC is written from
    the 16-bit samples: libsndfile's FLAC encoder would round floats its own way."""
    import soundfile as sf

    pcm = pcm16(audio)
    if fmt == "pcm":
        return pcm
    buffer = io.BytesIO()
    sf.write(buffer, np.frombuffer(pcm, "<i2"), sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buffer.getvalue()


def streaming_wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header with unknown (maximal) RIFF and data sizes."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, 2 * sample_rate, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + (b"data" + struct.pack("<I", unknown))
    )


def sse_event(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def sse_delta(data: bytes) -> bytes:
    """OpenAI's `speech.audio.delta` event: a piece of the audio, base64."""
    return sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
