"""Audio file helpers: every soundfile format in, 16-bit mono WAV out (atomically), clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from higgslab.errors import HiggsLabError
from higgslab.io.audio import read_audio, to_mono, to_mono_24k, write_wav

SR = 16000
TONE = (0.5 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "subtype", "tol"),
    [("a.wav", "PCM_U8", 1e-2), ("b.wav", "PCM_16", 1e-4), ("c.wav", "FLOAT", 0), ("d.flac", "PCM_24", 1e-6),
     ("e.ogg", "VORBIS", 0.1)],
)  # fmt: skip
def test_read_formats(tmp_path, name, subtype, tol):
    path = tmp_path / name
    sf.write(path, TONE, SR, subtype=subtype)
    audio, rate = read_audio(path)
    assert rate == SR and audio.dtype == np.float32 and audio.shape == (1, SR)
    assert np.abs(audio[0] - TONE).max() <= tol


def test_read_stereo_is_channels_first(tmp_path):
    stereo = np.stack([TONE, -TONE], axis=1)  # soundfile layout [samples, channels]
    sf.write(tmp_path / "s.wav", stereo, SR, subtype="FLOAT")
    audio, _ = read_audio(tmp_path / "s.wav")
    assert audio.shape == (2, SR) and np.allclose(audio[1], -TONE)
    assert np.abs(to_mono(audio)).max() == 0  # averaged to mono


def test_read_errors(tmp_path):
    with pytest.raises(HiggsLabError, match="not found: .*missing.wav"):
        read_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF....not audio")
    with pytest.raises(HiggsLabError, match="junk.wav: cannot read audio"):
        read_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)
    with pytest.raises(HiggsLabError, match="empty.wav: audio file has no samples"):
        read_audio(tmp_path / "empty.wav")


def test_write_roundtrip_atomic_and_no_overwrite(tmp_path):
    path = write_wav(tmp_path / "out.wav", np.stack([TONE, TONE]), SR)
    info = sf.info(path)
    assert (info.channels, info.samplerate, info.subtype) == (1, SR, "PCM_16")
    audio, _ = read_audio(path)
    assert np.abs(audio[0] - TONE).max() < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temp file left behind
    with pytest.raises(HiggsLabError, match="out.wav already exists"):
        write_wav(path, TONE, SR)
    write_wav(path, 2 * TONE, SR, overwrite=True)  # clipped to [-1, 1]
    assert read_audio(path)[0].max() == pytest.approx(1.0, abs=1e-4)


def test_write_errors_leave_no_file(tmp_path):
    with pytest.raises(HiggsLabError, match="NaN"):
        write_wav(tmp_path / "nan.wav", np.array([0.0, np.nan]), SR)
    with pytest.raises(HiggsLabError, match="sample rate"):
        write_wav(tmp_path / "rate.wav", TONE, -5)
    with pytest.raises(HiggsLabError, match="directory does not exist"):
        write_wav(tmp_path / "no" / "x.wav", TONE, SR)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 24000, 44100, 48000])
def test_to_mono_24k_lengths_and_content(rate):
    t = np.arange(rate) / rate
    audio = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = to_mono_24k(np.stack([audio, audio]), rate)
    assert out.dtype == np.float32 and out.shape == (24000,)
    ref = np.sin(2 * np.pi * 440 * np.arange(24000) / 24000)
    assert np.abs(out[500:-500] - ref[500:-500]).max() < 1e-2


def test_to_mono_integer_pcm_and_layouts():
    assert to_mono(np.array([16384, -32768], np.int16)).tolist() == [0.5, -1.0]
    assert to_mono(np.array([128, 0], np.uint8)).tolist() == [0.0, -1.0]
    samples_first = np.stack([TONE, TONE], axis=1)  # [samples, 2]
    assert np.allclose(to_mono(samples_first), TONE)
    with pytest.raises(HiggsLabError, match="shape"):
        to_mono(np.zeros((20, 30)))
