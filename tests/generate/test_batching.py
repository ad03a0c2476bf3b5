"""Continuous batching: requests that join and leave a running DecodeSession give their alone codes."""

import dataclasses

import pytest
import torch

from higgslab.errors import HiggsLabError
from higgslab.generate.batching import ContinuousBatcher, QueueFull
from higgslab.generate.generator import Generator
from higgslab.generate.session import DecodeSession
from tests.generate.test_longform import ASSETS

TEXTS = [
    "Hello there, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "One, two, three.",
    "A long time ago, in a land far away.",
]
# greedy and sampled, with and without guidance and RAS, different filters: each row its own settings
SETTINGS = [
    dict(temperature=0),
    dict(temperature=0.8, top_k=50, top_p=0.95),
    dict(temperature=0.3, cfg_scale=1.0),
    dict(temperature=1.0, top_k=0, top_p=0.8, ras_window=3),
    dict(temperature=0.6, cfg_scale=1.5),
    dict(temperature=0, cfg_scale=1.0, ras_window=0),
]
STEPS = 120


@pytest.fixture(scope="module")
def mini():
    """The shipped mini's LM (float32 on the CPU; guidance 2 by default: a request takes two rows)."""
    return Generator.from_paths(ASSETS / "model", device="cpu", compile=False)


@pytest.fixture(scope="module")
def requests(mini):
    return [
        mini.request(TEXTS[i % 4], seed=10 + i, max_new_tokens=STEPS, **kw) for i, kw in enumerate(SETTINGS)
    ]


@pytest.fixture(scope="module")
def alone(mini):
    return [
        mini.generate(text=TEXTS[i % 4], seed=10 + i, max_new_tokens=STEPS, **kw).codes
        for i, kw in enumerate(SETTINGS)
    ]


def run_session(session, requests, join_every: int) -> dict:
    """Requests join `session` one every `join_every` steps (when their rows are free) and leave as their
    streams close: {request index: codes}."""
    pending, rows, codes, step = list(range(len(requests))), {}, {}, 0
    while pending or not session.idle:
        if pending and step % join_every == 0 and session.can_take(requests[pending[0]]):
            i = pending.pop(0)
            rows[session.prefill([requests[i]])[0]] = i
        if not session.idle:
            session.step()
        step += 1
        for row in session.ended():
            codes[rows.pop(row)] = session.finish(row).codes
        assert session.used <= session.length
    assert session.rows == []
    return codes


def test_rows_joining_a_running_session_give_their_alone_codes(mini, requests, alone):
    """Requests join every few steps into free rows (three: a guided request takes two) and leave as their
    streams close, with their own settings and seeds."""
    longest = max(len(r.ids) for r in requests) + STEPS
    codes = run_session(DecodeSession(mini.model, capacity=3, length=2 * longest), requests, join_every=9)
    for i, expected in enumerate(alone):
        assert torch.equal(codes[i], expected), (i, SETTINGS[i])


def test_slots_before_the_oldest_prompt_are_dropped_under_running_rows(mini, requests, alone):
    """A second request joins late in the first's run: once the first has left, its slots are most of those
    written and are dropped, the second's keys moving left under it, and it still decodes its alone codes."""
    session = DecodeSession(mini.model, capacity=2, length=2 * (max(len(r.ids) for r in requests) + STEPS))
    drops = []
    tidy = session._tidy

    def spy():
        before = session.used
        tidy()
        if session.used < before and session._first:  # rows were running
            drops.append((before, session.used))

    session._tidy = spy
    # no guidance: a row each. The first is greedy without RAS (its length does not hang on a seed's
    # draws); the second joins just before the first's stream closes, when the first's slots are most of
    # those written
    pair = [requests[5], requests[2]]
    codes = run_session(session, pair, join_every=alone[5].shape[1] - 2)
    assert drops, "no slot was dropped under a running row: the test no longer covers it"
    assert torch.equal(codes[0], alone[5]) and torch.equal(codes[1], alone[2])


def test_steps_attend_from_the_oldest_running_prompt(mini, requests, alone, monkeypatch):
    """Between drops, the slots of requests that have left are skipped, not read: every step attends from
    the first slot of the oldest running prompt to the write cursor."""
    session = DecodeSession(mini.model, capacity=2, length=4 * (max(len(r.ids) for r in requests) + STEPS))
    windows = []  # (slots a step attends to, the written slots from the oldest running prompt on, written)
    step = mini.model.decode_audio_step

    def spy(column, cache):
        windows.append((cache.span, session.used - min(session._first.values()), session.used))
        return step(column, cache)

    monkeypatch.setattr(mini.model, "decode_audio_step", spy)
    pair = [requests[5], requests[2]]  # a row each; the second joins early and outlives the first
    assert alone[2].shape[1] > alone[5].shape[1] - 20
    codes = run_session(session, pair, join_every=20)
    assert all(span == wanted for span, wanted, _ in windows)
    assert any(span < written for span, _, written in windows), "no step ran after a request left"
    assert torch.equal(codes[0], alone[5]) and torch.equal(codes[1], alone[2])


def test_prompts_prefilled_together_with_their_own_settings(mini, requests, alone):
    """A fresh session takes prompts with different settings and seeds together (left-padded): each row
    is sampled on its own, as alone."""
    session = DecodeSession(mini.model)
    picked = [i for i in range(len(requests)) if not requests[i].guided]
    rows = session.prefill([requests[i] for i in picked])
    results = {}
    while len(results) < len(rows):
        session.step()
        for row in session.ended():
            results[row] = session.finish(row)
    for row, i in zip(rows, picked, strict=True):
        assert torch.equal(results[row].codes, alone[i]), SETTINGS[i]


def test_batcher_streams_frames_and_frees_cancelled_rows(mini, requests, alone):
    """Two rows: one guided request at a time, the rest queue. A cancelled request leaves at once and the
    next takes its rows; the frames handed out as they complete are the result's codes."""
    batcher = ContinuousBatcher(mini.model, rows=2, max_tokens=max(len(r.ids) for r in requests) + STEPS)
    frames: dict[int, list] = {i: [] for i in range(3)}
    left = []  # (job index, its done flag) as `on_leave` sees them

    def on_leave(i):
        return lambda: left.append((i, jobs[i].done.is_set()))

    jobs = [
        batcher.submit(r, on_frames=frames[i].append, on_leave=on_leave(i))
        for i, r in enumerate(requests[:3])
    ]
    assert batcher.queued == 3
    for _ in range(5):
        batcher.step()
    assert jobs[0].row is not None and batcher.queued == 2  # guided: both rows taken
    batcher.cancel(jobs[0])
    batcher.step()
    assert jobs[0].done.is_set() and jobs[0].result is None and jobs[1].row == 0
    assert left == [(0, True)]
    batcher.run_until_idle()
    assert left == [(0, True), (1, True), (2, True)]  # each once, when it left, done already
    for i in (1, 2):
        assert torch.equal(jobs[i].wait(0).codes, alone[i])
        assert torch.equal(torch.cat(frames[i], 1), alone[i])
    s = batcher.stats
    assert (s.submitted, s.finished, s.cancelled, s.failed) == (3, 2, 1, 0)
    assert (
        batcher.busy_rows == 0 and batcher.session.rows == [] and len(s.first_audio_s) == 2
    )  # the cancelled one had none yet


def test_compact_moves_the_last_requests_into_freed_rows(mini, requests, alone):
    """Rows 0-2 are freed under a guided request (rows 3-4) and another (row 5): the last moves to row 0, the
    guided one to rows 1-2, their cache rows and decode state with them, and both still decode their alone
    codes."""
    longest = max(len(r.ids) for r in requests) + STEPS
    session = DecodeSession(mini.model, capacity=6, length=2 * longest)
    rows = [session.prefill([requests[i]])[0] for i in (5, 2, 2, 4, 2)]
    assert rows == [0, 1, 2, 3, 5]
    for _ in range(6):
        session.step()
    assert session.compact() == {}  # no free row below a running one
    for row in (0, 1, 2):
        session.finish(row)
    assert session.compact() == {5: 0, 3: 1}
    assert session.compact() == {} and len(session.rows) == 3
    results = {}
    while not session.idle:
        session.step()
        for row in session.ended():
            results[row] = session.finish(row).codes
    assert torch.equal(results[0], alone[2]) and torch.equal(results[1], alone[4])


def test_batcher_follows_its_requests_into_compacted_rows(mini, requests, alone):
    """A request cancelled under two running ones frees its row; the batcher moves the last one down into
    it before the next step, its job follows, and both finish with their alone codes."""
    batcher = ContinuousBatcher(mini.model, rows=3, max_tokens=max(len(r.ids) for r in requests) + STEPS)
    jobs = [batcher.submit(requests[i]) for i in (2, 5, 2)]
    batcher.step()
    assert [j.row for j in jobs] == [0, 1, 2]
    batcher.cancel(jobs[0])
    batcher.step()
    assert jobs[2].row == 0 and sorted(batcher.running) == [0, 1] and len(batcher.session.rows) == 2
    batcher.run_until_idle()
    assert torch.equal(jobs[1].wait(0).codes, alone[5]) and torch.equal(jobs[2].wait(0).codes, alone[2])


def test_frames_handed_out_are_each_requests_codes_in_any_row(mini, requests, alone):
    """Six requests in eight rows (guided ones take two), one cut at max_new_tokens mid-stream, one cancelled
    under the others so that the last ones move down: every job's frames, as the steps hand them out, are
    its result's codes."""
    cut = dataclasses.replace(requests[1], max_new_tokens=40)  # still speaking at step 40
    batch = [*requests[:5], cut]
    batcher = ContinuousBatcher(mini.model, rows=8, max_tokens=max(len(r.ids) for r in requests) + STEPS)
    frames: dict[int, list] = {i: [] for i in range(len(batch))}
    jobs = [batcher.submit(r, on_frames=frames[i].append) for i, r in enumerate(batch)]
    for _ in range(12):
        batcher.step()
    batcher.cancel(jobs[0])
    batcher.run_until_idle()
    assert jobs[5].result.finished is False and jobs[5].result.codes.shape[1] > 0
    for i, job in enumerate(jobs[1:], 1):
        assert torch.equal(torch.cat(frames[i], 1), job.wait(0).codes), i
    for i in range(1, 5):
        assert torch.equal(jobs[i].result.codes, alone[i]), SETTINGS[i]


def test_batcher_runs_in_its_thread(mini, requests, alone):
    batcher = ContinuousBatcher(mini.model, rows=8, max_tokens=200)
    batcher.start()
    try:
        jobs = [batcher.submit(r) for r in requests[:4]]
        assert [torch.equal(j.wait(60).codes, a) for j, a in zip(jobs, alone, strict=False)] == [True] * 4
    finally:
        batcher.stop()
    assert batcher.session.rows == []


def test_batcher_steps_with_the_threads_it_is_given(mini, requests):
    seen = set()
    batcher = ContinuousBatcher(mini.model, rows=2, max_tokens=200)
    batcher.start(threads=2)  # the caller's count is 1 (tests/conftest.py)
    try:
        batcher.submit(requests[0], on_frames=lambda f: seen.add(torch.get_num_threads())).wait(60)
    finally:
        batcher.stop()
    assert seen == {2} and torch.get_num_threads() == 1


def test_batcher_refuses_what_it_cannot_run(mini, requests):
    batcher = ContinuousBatcher(mini.model, rows=1, max_tokens=60, max_queue=1)
    with pytest.raises(HiggsLabError, match=r"exceeds the batcher's 60 tokens per request"):
        batcher.submit(requests[2])
    short = mini.request("Hi.", seed=1, max_new_tokens=8, cfg_scale=1.0)
    with pytest.raises(HiggsLabError, match="needs two rows"):
        batcher.submit(mini.request("Hi.", seed=1, max_new_tokens=8))
    batcher.submit(short)
    with pytest.raises(QueueFull, match=r"the queue is full \(1 requests waiting\)"):
        batcher.submit(short)
    with pytest.raises(HiggsLabError, match="temperature must be >= 0"):
        mini.request("Hi.", temperature=-1)
    with pytest.raises(HiggsLabError, match="rows, max_tokens, max_queue must be"):
        ContinuousBatcher(mini.model, rows=0)


def test_session_refuses_joins_it_cannot_take(mini, requests):
    together = DecodeSession(mini.model)
    together.prefill([requests[2]])
    with pytest.raises(HiggsLabError, match="decodes one batch together"):
        together.prefill([requests[5]])
    session = DecodeSession(mini.model, capacity=1, length=400)
    with pytest.raises(HiggsLabError, match=r"no 2 free row\(s\) side by side: 0 of 1 rows"):
        session.prefill([requests[0]])  # guided: two rows
    with pytest.raises(HiggsLabError, match="exceeds half of this session's cache"):
        DecodeSession(mini.model, capacity=1, length=100).prefill([requests[2]])


def test_in_bf16_a_request_alone_in_a_running_session_is_its_generate_run(mini):
    """bf16 rounds a row's logits differently beside other rows (their masked slots widen its attention), so
    batched codes can part from alone ones at a near tie; what holds is that a request decoding alone in a
    continuous session (its prompt and text-free twin prefilled together, as `generate` does) gives the
    `generate` codes."""
    model = Generator.from_paths(ASSETS / "model", device="cpu", compile=False).model.to(torch.bfloat16)
    gen = Generator(model, text_tokenizer=mini.text_tokenizer, cfg_scale=mini.cfg_scale, compile=False)
    for i, kw in enumerate([dict(temperature=0), dict(temperature=0.8)]):
        expected = gen.generate(text=TEXTS[1], seed=i, max_new_tokens=STEPS, **kw).codes
        session = DecodeSession(model, capacity=4, length=400)
        # a short request first: the next one joins a cache with slots written before it
        session.prefill([gen.request(TEXTS[2], seed=9, max_new_tokens=3, cfg_scale=1.0)])
        while not session.ended():
            session.step()
        session.finish(0)
        row = session.prefill([gen.request(TEXTS[1], seed=i, max_new_tokens=STEPS, **kw)])[0]
        while row not in session.ended():
            session.step()
        assert torch.equal(session.finish(row).codes, expected), kw
