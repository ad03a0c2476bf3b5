"""FrameInbox: a stream's frames cross from the batcher's thread to its coroutine, one wake-up a chunk."""

from __future__ import annotations

import asyncio

import torch

from higgslab.serve.frames import FrameInbox


def frame(i: int) -> torch.Tensor:
    return torch.full((8, 1), i)


def test_inbox_wakes_once_the_chunk_is_in_and_hands_out_every_frame_in_order():
    async def scenario():
        loop = asyncio.get_running_loop()
        inbox, wakes, call = FrameInbox(loop), [], loop.call_soon_threadsafe
        # the inbox's wake-ups (the thread pool's own calls, which deliver `to_thread`'s results, not counted)
        loop.call_soon_threadsafe = lambda f, *a: (f == inbox._ready.set and wakes.append(1)) or call(f, *a)
        assert await inbox.get(10, timeout=0.05) == (None, False)  # nothing yet: the wait times out
        getter = asyncio.create_task(inbox.get(10, timeout=10))
        await asyncio.sleep(0.01)  # the getter waits for 10 frames
        await asyncio.to_thread(lambda: [inbox.put(frame(i)) for i in range(25)])  # the batcher's thread
        chunk, ended = await getter
        assert len(wakes) == 1 and not ended and chunk.shape[1] >= 10  # woken at the 10th frame only
        await asyncio.to_thread(inbox.close)
        rest, ended = await inbox.get(50, timeout=10)  # fewer than asked for: the job has left
        assert ended and len(wakes) == 2
        got = torch.cat([chunk, rest], 1) if rest is not None else chunk
        assert got[0].tolist() == list(range(25))

    asyncio.run(scenario())


def test_a_closed_inbox_with_nothing_left_ends_at_once():
    async def scenario():
        inbox = FrameInbox(asyncio.get_running_loop())
        inbox.close()
        assert await inbox.get(float("inf"), timeout=10) == (None, True)

    asyncio.run(scenario())
