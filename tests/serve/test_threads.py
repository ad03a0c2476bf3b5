"""How the server splits the CPU: decode steps on the cores its audio threads leave, one intra-op thread
per audio thread (two teams of threads spinning on the same cores slow both)."""

from __future__ import annotations

import pytest
import torch

from tests.serve.conftest import serve_settings


@pytest.mark.parametrize(
    "cores, overrides, threads", [(8, [], 7), (2, ["decode_threads=2"], 1), (8, ["step_threads=3"], 3)]
)
def test_decode_steps_take_the_cores_the_audio_threads_leave(monkeypatch, cores, overrides, threads):
    from higgslab.serve.settings import step_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    assert step_threads(serve_settings(*overrides)) == threads


def test_audio_threads_decode_with_one_thread_each(server):
    torch.set_num_threads(2)  # what a thread starting now would take (the autouse fixture sets 1 again)
    from higgslab.serve.app import SpeechService

    service = SpeechService(server.gen, server.batcher, server.settings)
    try:
        assert service._audio.submit(torch.get_num_threads).result(timeout=10) == 1
    finally:
        service._audio.shutdown()
