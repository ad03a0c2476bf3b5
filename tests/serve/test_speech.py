"""The speech endpoint through the real `openai` client and plain httpx: the audio equals the CLI's."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import soundfile as sf

TEXT = "Hello there, how are you?"
N = 80  # max_new_tokens of these requests


@pytest.fixture(scope="module")
def expected(mini, tmp_path_factory):
    """int16 samples of `Generator.generate(text=TEXT, seed=1)` written as the CLI writes its WAV."""
    from higgslab.io.audio import write_wav

    result = mini.generate(text=TEXT, seed=1, max_new_tokens=N)
    path = write_wav(tmp_path_factory.mktemp("cli") / "output_1.wav", result.audio, result.sample_rate)
    samples, rate = sf.read(path, dtype="int16")
    assert rate == 24000 and samples.size > 0
    return samples


def int16(data: bytes) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 24000 and samples.ndim == 1
    return samples


def assert_streamed_equal(got: np.ndarray, want: np.ndarray) -> None:
    """A stream is decoded chunk by chunk (`StreamingDecoder`): the one-shot samples up to float rounding,
    which can move a sample by one step of 16 bits."""
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want).max() <= 1


def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_openai_client_wav_equals_cli(server, expected):
    response = openai_client(server).audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="wav",
        extra_body={"seed": 1, "max_new_tokens": N},
    )  # fmt: skip
    np.testing.assert_array_equal(int16(response.content), expected)


def test_openai_client_streaming(server, expected):
    speech = openai_client(server).audio.speech.with_streaming_response
    with speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav", stream_format="audio",
                       extra_body={"seed": 1, "max_new_tokens": N}) as response:  # fmt: skip
        assert response.headers["x-higgslab-seed"] == "1"
        pieces = list(response.iter_bytes())
    assert len(pieces) > 1  # sent as it decoded
    assert_streamed_equal(int16(b"".join(pieces)), expected)


def speech(server, **body):
    body = {"model": "x", "input": TEXT, "voice": "default", "seed": 1, "max_new_tokens": N, **body}
    return httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=60)


def test_pcm_and_flac(server, expected):
    pcm = speech(server, response_format="pcm")
    assert pcm.status_code == 200 and pcm.headers["content-type"] == "audio/pcm"
    assert pcm.headers["x-higgslab-finished"] == "true"
    np.testing.assert_array_equal(np.frombuffer(pcm.content, "<i2"), expected)
    flac = speech(server, response_format="flac")
    assert flac.status_code == 200
    assert sf.info(io.BytesIO(flac.content)).format == "FLAC"
    np.testing.assert_array_equal(int16(flac.content), expected)


def test_sse(server, expected):
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=60,
                      json={"input": TEXT, "voice": "nova", "seed": 1, "max_new_tokens": N,
                            "response_format": "pcm", "stream_format": "sse"}) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] > 0
    assert events[-1]["finished"] is True
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert_streamed_equal(np.frombuffer(pcm, "<i2"), expected)


def unfinished_count(server) -> int:
    metrics = httpx.get(f"{server.url}/metrics").text
    return int(float(metrics.split('higgslab_requests_total{outcome="unfinished"} ')[1].split()[0]))


def test_a_cut_request_says_so(server, caplog):
    """A request that runs to max_new_tokens before its stream closes is answered with the audio it has,
    and says it was cut: a whole file in a header, an SSE stream in its done event, /metrics in a count,
    the log in a warning."""
    before = unfinished_count(server)
    with caplog.at_level("WARNING", logger="higgslab.serve"):
        whole = speech(server, max_new_tokens=12)
    assert "ran to max_new_tokens=12 before its stream closed" in caplog.text
    assert whole.status_code == 200 and whole.headers["x-higgslab-finished"] == "false"
    assert 0 < int16(whole.content).size <= 12 * 960
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=60,
                      json={"input": TEXT, "seed": 1, "max_new_tokens": 12, "stream_format": "sse"}) as r:  # fmt: skip
        done = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")][-1]
    assert done["type"] == "speech.audio.done" and done["finished"] is False
    assert unfinished_count(server) == before + 2


def test_voice_cloning_equals_cli(server, mini):
    from higgslab.generate.voices import voice_files

    wav, transcript = voice_files("alice")
    want = mini.generate(text=TEXT, ref_audio=str(wav), ref_text=transcript, seed=1, max_new_tokens=N)
    got = speech(server, voice={"id": "alice"}, response_format="pcm")  # OpenAI's custom-voice form
    assert got.status_code == 200
    from higgslab.serve.audio import pcm16

    assert got.content == pcm16(want.audio)


def test_models_health_metrics(server):
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["higgslab-mini"]
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "# TYPE higgslab_requests_total counter" in metrics
    assert "higgslab_rows 16" in metrics and 'higgslab_time_to_first_frame_seconds{quantile="0.5"}' in metrics
