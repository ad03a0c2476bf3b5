"""16 concurrent streaming clients, 2 of them gone midway: the others complete and equal their requests
served alone, the two jobs are cancelled, rows come back, the server stays up and serves again."""

from __future__ import annotations

import io
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from higgslab.serve.audio import pcm16

CLIENTS, GONE = 16, (3, 11)
N = 60  # max_new_tokens of a client that stays
TEXTS = ["Good morning.", "The cat sat on the mat.", "It is raining today.", "See you soon."]
# the mini may end a long sentence early (a short take), but takes 0.5 s or more to say this one
GOING_ON = (
    "This sentence keeps going for a while, and then it goes on and on, so that the client can leave in "
    "the middle of it."
)


def body(i: int) -> dict:
    if i in GONE:  # long enough to be still decoding when its client leaves
        text, n = GOING_ON, 400
    else:
        text, n = TEXTS[i % len(TEXTS)], N
    # 8 distinct requests, each twice: clients i and i + 8 ask the same in rows of their own
    return {"input": text, "voice": "alloy", "seed": 10 + i % 8, "max_new_tokens": n, "response_format": "wav",
            "stream": True}  # fmt: skip


def client(url: str, i: int, out: dict) -> None:
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body(i), timeout=120) as r:
        assert r.status_code == 200
        data = b""
        for piece in r.iter_bytes():
            data += piece
            if i in GONE and len(data) > 44:  # the header and some audio: leave
                out[i] = None
                return
        out[i] = data


def test_sixteen_streams_two_leave(server):
    batcher, url = server.batcher, server.url
    before = batcher.stats.cancelled, batcher.stats.finished
    gone_before = disconnected(url)
    out: dict[int, bytes | None] = {}
    threads = [threading.Thread(target=client, args=(url, i, out)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    health = []
    while any(t.is_alive() for t in threads):
        health.append(httpx.get(f"{url}/health", timeout=10).status_code)
        time.sleep(0.2)
    assert sorted(out) == list(range(CLIENTS)) and health and set(health) == {200}

    deadline = time.monotonic() + 30  # a cancelled row is freed at the batcher's next step
    while batcher.busy_rows or batcher.queued:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert batcher.stats.cancelled - before[0] == len(GONE)
    assert batcher.stats.finished - before[1] == CLIENTS - len(GONE)

    alone = {}
    for i in sorted(set(range(CLIENTS)) - set(GONE)):  # each equals the same request served alone
        b = body(i)
        if b["seed"] not in alone:
            result = server.gen.generate(text=b["input"], seed=b["seed"], max_new_tokens=N)
            alone[b["seed"]] = np.frombuffer(pcm16(result.audio), "<i2")
        got, rate = sf.read(io.BytesIO(out[i]), dtype="int16")
        want = alone[b["seed"]]
        assert rate == 24000 and got.shape == want.shape, i
        assert np.abs(got.astype(int) - want).max() <= 1, i  # streamed decoding: float rounding

    assert disconnected(url) - gone_before == len(GONE)
    again = httpx.post(f"{url}/v1/audio/speech", json={**body(0), "stream": False}, timeout=60)
    assert again.status_code == 200  # the freed rows serve the next request
    want = sf.read(io.BytesIO(out[0]), dtype="int16")[0]
    assert np.abs(sf.read(io.BytesIO(again.content), dtype="int16")[0].astype(int) - want).max() <= 1


def disconnected(url: str) -> float:
    line = 'higgslab_requests_total{outcome="disconnected"} '
    metrics = httpx.get(f"{url}/metrics").text
    return float(next(x for x in metrics.splitlines() if x.startswith(line))[len(line) :])


def test_whole_file_client_leaves(server):
    """A client that stops waiting for a whole file frees its rows too."""
    batcher = server.batcher
    before = batcher.stats.cancelled
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/audio/speech", json={**body(GONE[0]), "stream": False}, timeout=0.2)
    deadline = time.monotonic() + 30
    while batcher.stats.cancelled == before or batcher.busy_rows:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert batcher.stats.cancelled == before + 1


def test_an_idle_batcher_starts_again_at_slot_zero(mini):
    """A server's bursts do not pile up in the cache: a request joining an idle session writes from slot 0,
    as the first one did (steps attend up to the write cursor), and decodes the same codes."""
    import torch

    from higgslab.generate.batching import ContinuousBatcher

    batcher = ContinuousBatcher(mini.model, rows=2, max_tokens=256, max_queue=1)
    cursors, codes = [], []
    for _ in range(2):
        job = batcher.submit(mini.request("Good morning.", seed=3, max_new_tokens=30))
        batcher.run_until_idle()
        cursors.append(batcher.session.used)
        codes.append(job.result.codes)
    assert cursors[0] == cursors[1] < 256
    assert torch.equal(codes[0], codes[1])
