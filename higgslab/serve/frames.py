"""A request's frames on their way from the batcher's thread to the request's coroutine.

The batcher hands out every running request's new frames after each decode step. Waking the event loop
for each of them (one `call_soon_threadsafe` per request per step, then a task to take the frame) cost the
loop as much CPU as a stream's audio writing; a `FrameInbox` wakes its coroutine only once the frames it
asked for wait, or the job has left: once a chunk.
"""

from __future__ import annotations

import asyncio
import threading

import torch


class FrameInbox:
    """`put` and `close` run in the batcher's thread (a job's `on_frames` and `on_leave`); `get` in the
    request's coroutine."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop, self._lock, self._ready = loop, threading.Lock(), asyncio.Event()
        self._frames: list[torch.Tensor] = []
        self._count, self._closed = 0, False
        self._want = float("inf")  # frames the waiting coroutine asked for (none waits: never reached)

    def put(self, frames: torch.Tensor) -> None:
        """Frames `[n_q, k]` in; wakes the coroutine when the frames it waits for are all in (once)."""
        with self._lock:
            self._frames.append(frames)
            self._count += frames.shape[1]
            wake = self._count >= self._want > self._count - frames.shape[1]
        if wake:
            self._wake()

    def close(self) -> None:
        """The job has left the batcher: no frame follows."""
        with self._lock:
            self._closed = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    async def get(self, want: float, timeout: float) -> tuple[torch.Tensor | None, bool]:
        """(every frame waiting, `[n_q, k ≥ want]`; whether the job has left and these are its last), once
        `want` frames wait or the job has left; (None, False) after `timeout` seconds without."""
        with self._lock:
            waiting = self._count < want and not self._closed
            if waiting:
                self._want = want
                self._ready.clear()
        if waiting:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                pass
        with self._lock:
            if self._count < want and not self._closed:
                return None, False
            frames, self._frames, self._count, closed = self._frames, [], 0, self._closed
            self._want = float("inf")
        return (torch.cat(frames, 1) if frames else None), closed
