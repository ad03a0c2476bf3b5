"""Continuous batching: requests join a running `DecodeSession` in free rows between steps and leave it when
their stream closes, each with its own seed and sampling settings.

    batcher = ContinuousBatcher(gen.model, rows=16, max_tokens=2560)
    job = batcher.submit(gen.request("Hello.", seed=1), on_frames=print)  # frames [n_q, k] as they complete
    batcher.run_until_idle()          # or batcher.start(): a thread that steps whenever there is work
    job.result.codes                  # [n_q, F], what `Generator.generate` gives for the same request

Alone or beside others, a request is sampled from the same draws of its own seed by the same ops on its own
logits (`DecodeSession`); the logits themselves are computed in a batch and may differ in their last bits
from those of a run alone, in float32 too: the CPU's matrix products take another kernel for one or two
rows than for four or more, attention over a window widened by other rows' (masked) slots sums in another
order, and guidance scales the difference. A draw from a near tie can then fall the other way, and the two
streams part from there: rarely in float32 (the tests' requests keep their alone codes, greedy and sampled:
tests/generate/test_batching.py), often in bf16 (bench/RESULTS.md).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from higgslab.errors import HiggsLabError
from higgslab.generate.result import GenerationResult
from higgslab.generate.session import DecodeSession, Request
from higgslab.model import packing

FIRST_AUDIO_KEPT = 10_000


class QueueFull(HiggsLabError):
    """The batcher's queue holds `max_queue` requests already."""


@dataclass
class Job:
    """One request in a `ContinuousBatcher`: its frames go to `on_frames` as they complete, its result to
    `result` (or its failure to `error`) when it leaves; `done` is set then, and `on_leave` called (both
    callbacks run in the batcher's thread)."""

    request: Request
    on_frames: Callable[[torch.Tensor], object] | None = None
    on_leave: Callable[[], object] | None = None
    result: GenerationResult | None = None
    error: str | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    first_frame_at: float | None = None
    row: int | None = None

    def wait(self, timeout: float | None = None) -> GenerationResult:
        """Block until the job has left the batcher; its result (raises `HiggsLabError` if it failed)."""
        if not self.done.wait(timeout):
            raise HiggsLabError(f"the request did not finish within {timeout} s")
        if self.error is not None:
            raise HiggsLabError(self.error)
        return self.result


@dataclass
class BatcherStats:
    """Counters since the batcher started (what a server's /metrics reports)."""

    submitted: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    steps: int = 0
    row_steps: int = 0  # sum over steps of the requests decoding: occupancy = row_steps / (steps · rows)
    frames: int = 0  # complete frames handed out
    decode_s: float = 0.0
    # per request, submit → its first frame: the latest FIRST_AUDIO_KEPT (a server runs for long)
    first_audio_s: deque[float] = field(default_factory=lambda: deque(maxlen=FIRST_AUDIO_KEPT))


class ContinuousBatcher:
    """Admits `Request`s into a continuous `DecodeSession` of `rows` rows (a request with guidance takes two),
    `max_tokens` prompt + new tokens each, queueing up to `max_queue` more."""

    def __init__(self, model, rows: int = 16, max_tokens: int = 2560, max_queue: int = 64):
        if rows < 1 or max_tokens < 2 or max_queue < 0:
            raise HiggsLabError(
                f"rows, max_tokens, max_queue must be >= 1, 2, 0; got {rows}, {max_tokens}, {max_queue}"
            )
        self.model, self.rows, self.max_tokens, self.max_queue = model, rows, max_tokens, max_queue
        if model.device.type == "cpu":
            packing.pack_for_decode(model)  # as Generator does on the CPU (model/packing.py)
        self.session = DecodeSession(model, capacity=rows, length=2 * max_tokens)
        self.queue: deque[Job] = deque()
        self.running: dict[int, Job] = {}  # row → job
        self.stats = BatcherStats()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stop = False

    # ---- requests in ----------------------------------------------------------------------------------------
    def submit(
        self,
        request: Request,
        on_frames: Callable[[torch.Tensor], object] | None = None,
        on_leave: Callable[[], object] | None = None,
    ) -> Job:
        """Queue `request` (its `Job` calls `on_frames` and `on_leave`); raises `QueueFull` when `max_queue`
        requests wait already, `HiggsLabError` for one that could never run here."""
        request.settings.check()
        need = len(request.ids) + request.max_new_tokens
        if request.guided:
            need = max(need, len(request.unconditional) + request.max_new_tokens)
        if need > self.max_tokens:
            raise HiggsLabError(
                f"prompt ({len(request.ids)} tokens) + max_new_tokens ({request.max_new_tokens}) exceeds "
                f"the batcher's {self.max_tokens} tokens per request"
            )
        if request.guided and self.rows < 2:
            raise HiggsLabError(
                "a request with guidance (cfg_scale != 1) needs two rows; this batcher has one"
            )
        job = Job(request, on_frames, on_leave)
        with self._lock:
            if len(self.queue) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
            self.queue.append(job)
            self.stats.submitted += 1
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Drop `job`: out of the queue, or its row freed before the next step."""
        with self._lock:
            job.cancelled = True
            self._wake.notify()

    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def busy_rows(self) -> int:
        jobs = list(self.running.values())  # one copy: a server reads this while the loop's thread steps
        return sum(2 if j.request.guided else 1 for j in jobs)

    # ---- the loop -------------------------------------------------------------------------------------------
    def step(self) -> bool:
        """Retire cancelled jobs, admit queued ones into free rows, run one decode step, hand out frames,
        retire finished jobs. False when there was nothing to do."""
        with self._lock:
            for job in [j for j in self.queue if j.cancelled]:
                self.queue.remove(job)
                self._leave(job, cancelled=True)
            for row, job in list(self.running.items()):
                if job.cancelled:
                    self.session.finish(row)
                    del self.running[row]
                    self._leave(job, cancelled=True)
        while True:  # admit from the queue's head while its request finds its rows free
            with self._lock:
                if not self.queue or not self.session.can_take(self.queue[0].request):
                    break
                job = self.queue.popleft()
            self._admit(job)
        if not self.running:
            return False
        t0 = time.perf_counter()
        # rows freed below running ones and not taken by a new request: moved out of the steps' way
        self._follow(self.session.compact())
        self.session.step()
        rows = sorted(self.running)
        # one host copy per step: whether each running row completed a frame, its codes, its done flag
        host = self.session.newest_frames(rows).tolist()
        n_q = self.model.config.num_codebooks
        self.stats.steps += 1
        self.stats.row_steps += len(rows)
        for row, (kept, *codes, done) in zip(rows, host, strict=True):
            job = self.running[row]
            if kept:
                self.stats.frames += 1
                if job.first_frame_at is None:
                    job.first_frame_at = time.perf_counter()
                    self.stats.first_audio_s.append(job.first_frame_at - job.submitted_at)
                if job.on_frames is not None:
                    job.on_frames(torch.tensor(codes).view(n_q, 1))
            if done or self.session.rows[row].t >= job.request.max_new_tokens:
                job.result = self.session.finish(row)
                del self.running[row]
                self._leave(job)
        self.stats.decode_s += time.perf_counter() - t0
        return True

    def _follow(self, moved: dict[int, int]) -> None:
        """The running jobs in the rows `DecodeSession.compact` moved them to."""
        jobs = {new: self.running.pop(old) for old, new in moved.items()}
        for row, job in jobs.items():
            job.row = row
        self.running.update(jobs)

    def _admit(self, job: Job) -> None:
        try:
            job.row = self.session.prefill([job.request])[0]
        except Exception as e:  # noqa: BLE001 - out of the queue already: it must leave, failed
            job.error = str(e) if isinstance(e, HiggsLabError) else f"prefill failed: {type(e).__name__}: {e}"
            self._leave(job, failed=True)
            return
        job.started_at = time.perf_counter()
        self.running[job.row] = job

    def _leave(self, job: Job, cancelled: bool = False, failed: bool = False) -> None:
        if cancelled:
            self.stats.cancelled += 1
        elif failed:
            self.stats.failed += 1
        else:
            self.stats.finished += 1
        job.done.set()
        if job.on_leave is not None:
            job.on_leave()

    def run_until_idle(self) -> None:
        """Step until the queue is empty and no request is decoding (in this thread)."""
        while self.step() or self.queue:
            pass

    def start(self, threads: int | None = None) -> None:
        """Step in a daemon thread whenever there is work, until `stop`; with `threads` intra-op threads
        (None: torch's count when the thread starts)."""
        if self._thread is not None:
            return
        self._stop = False
        self._thread = threading.Thread(
            target=self._loop, args=(threads,), name="higgslab-batcher", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self, threads: int | None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)  # this thread's own count (torch keeps one per thread)
        while True:
            with self._lock:
                while not self._stop and not self.queue and not self.running:
                    self._wake.wait()
                if self._stop:
                    return
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a failed step fails its requests, not the thread
                self._fail_all(f"decoding failed: {type(e).__name__}: {e}")

    def _fail_all(self, message: str) -> None:
        for row, job in list(self.running.items()):
            job.error = message
            self.session.finish(row)
            del self.running[row]
            self._leave(job, failed=True)
