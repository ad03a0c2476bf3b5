"""Every bad request: a 4xx in OpenAI's error shape with a one-line message; a bad server setting: one line,
exit code 2, before the model loads."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient

from higgslab.serve.app import running
from tests.serve.conftest import serve_settings

GOOD = {"model": "tts-1", "input": "Hello.", "voice": "alloy", "max_new_tokens": 20}


def assert_error(response: httpx.Response, status: int, says: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "\n" not in error["message"] and says in error["message"], error["message"]
    assert error["param"] == param


@pytest.mark.parametrize(
    "change, says, param",
    [
        ({"input": ""}, "input is empty", "input"),
        ({"input": "x" * 301}, "input has 301 characters; this server takes at most 300", "input"),
        ({"voice": "nobody"}, "voice 'nobody' not found", "voice"),
        ({"voice": "../alice"}, "must be a file name", "voice"),
        (
            {"response_format": "mp3"},
            "response_format='mp3': this server gives wav, pcm, flac",
            "response_format",
        ),
        ({"response_format": "flac", "stream": True}, "flac' cannot be streamed", "response_format"),
        ({"temperature": -1}, "temperature must be >= 0, got -1", "temperature"),
        ({"temperature": "hot"}, "temperature: Input should be a valid number", "temperature"),
        ({"speed": 2.0}, "speed=2.0: only 1.0 is supported", "speed"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0", "seed"),
        ({"max_new_tokens": 401}, "max_new_tokens=401: this server takes 1..400", "max_new_tokens"),
        ({"input": None}, "input: Input should be a valid string", "input"),
    ],
)
def test_bad_request(server, change, says, param):
    response = httpx.post(f"{server.url}/v1/audio/speech", json={**GOOD, **change}, timeout=30)
    assert_error(response, 400, says, param)


def test_malformed_json_and_unknown_path(server):
    bad = httpx.post(f"{server.url}/v1/audio/speech", content=b'{"input": "Hi",', timeout=30,
                     headers={"content-type": "application/json"})  # fmt: skip
    assert_error(bad, 400, "malformed JSON body")
    assert_error(httpx.get(f"{server.url}/v1/nothing"), 404, "Not Found")


def test_unknown_fields_are_ignored(server):
    response = httpx.post(f"{server.url}/v1/audio/speech", timeout=60,
                          json={**GOOD, "instructions": "Speak calmly.", "something_new": 1})  # fmt: skip
    assert response.status_code == 200 and response.content[:4] == b"RIFF"


@pytest.fixture(scope="module")
def side_app(mini):
    """A second app on the same model: an API key, no queue (every request is refused with 429)."""
    from higgslab.generate.batching import ContinuousBatcher
    from higgslab.serve.app import create_app

    s = serve_settings("api_key=secret", "max_queue=0", "max_tokens=256", "max_new_tokens=100")
    batcher = ContinuousBatcher(mini.model, rows=2, max_tokens=s.max_tokens, max_queue=s.max_queue)
    return TestClient(create_app(mini, batcher, s))


def test_api_key_and_queue_full(side_app):
    assert_error(side_app.post("/v1/audio/speech", json=GOOD), 401, "missing or wrong API key")
    wrong = {"Authorization": "Bearer nope"}
    assert_error(side_app.post("/v1/audio/speech", json=GOOD, headers=wrong), 401, "wrong API key")
    assert_error(side_app.get("/v1/models", headers=wrong), 401, "wrong API key")
    right = {"Authorization": "Bearer secret"}
    full = side_app.post("/v1/audio/speech", json=GOOD, headers=right)
    assert_error(full, 429, "the queue is full (0 requests waiting)")
    assert full.json()["error"]["code"] == "queue_full"
    assert side_app.get("/health").status_code == 503  # its batcher was never started
    assert 'higgslab_requests_total{outcome="queue_full"} 1' in side_app.get("/metrics").text


def test_timeout(mini):
    """A batcher that never steps: the request times out (504; an SSE stream ends with an error event, a
    raw one is cut) and its job is cancelled."""
    from higgslab.generate.batching import ContinuousBatcher
    from higgslab.serve.app import create_app

    s = serve_settings("timeout_s=0.2", "max_tokens=256", "max_new_tokens=100")
    batcher = ContinuousBatcher(mini.model, rows=2, max_tokens=s.max_tokens, max_queue=4)
    app = TestClient(create_app(mini, batcher, s))
    assert_error(app.post("/v1/audio/speech", json=GOOD), 504, "did not finish within timeout_s=0.2")
    sse = app.post("/v1/audio/speech", json={**GOOD, "stream_format": "sse"})
    assert sse.status_code == 200 and sse.text.rstrip().endswith('"type": "timeout_error"}}')
    with running(app.app) as url, pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        with httpx.stream("POST", f"{url}/v1/audio/speech", json={**GOOD, "stream": True}) as r:
            assert r.status_code == 200
            r.read()  # a raw stream is cut short: the client cannot take it for a complete one
    assert all(job.cancelled for job in batcher.queue) and len(batcher.queue) == 3
    batcher.step()  # the cancelled jobs leave
    assert not batcher.queue and batcher.stats.cancelled == 3
    assert 'higgslab_requests_total{outcome="timeout"} 3' in app.get("/metrics").text


@pytest.mark.parametrize(
    "override, says",
    [
        ("port=http", "port=http: takes an integer"),
        ("+nonsense=1", "nonsense: not a setting of serve (the keys: --cfg job)"),
        ("max_new_tokens=4000", "max_new_tokens=4000 leaves no room for a prompt in max_tokens=2560"),
        ("voices_dir=/no/such/folder", "voices_dir /no/such/folder is not a folder"),
        ("log_level=loud", "log_level=loud: takes critical | error | warning | info | debug"),
        ("step_threads=0", "step_threads must be >= 1 (null: the cores the audio threads leave), got 0"),
    ],
)
def test_bad_setting(override, says):
    from higgslab.errors import HiggsLabError

    with pytest.raises(HiggsLabError) as e:
        serve_settings(override)
    assert str(e.value) == says


def test_cli_bad_setting():
    run = subprocess.run([sys.executable, "-m", "higgslab.serve", "rows=0"], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert (run.returncode, run.stdout, run.stderr) == (2, "", "error: rows must be >= 1, got 0\n")


def test_cli_without_the_serve_extra_says_what_to_install():
    # uvicorn absent (None in sys.modules: its import fails) in a process of its own
    code = ("import runpy, sys; sys.modules['uvicorn'] = None; sys.argv = ['serve']; "
            "runpy.run_module('higgslab.serve', run_name='__main__')")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == "error: the server needs uvicorn: pip install 'higgslab[serve]'\n"
