"""Processes standing in for torchrun's ranks in tests: a free port on 127.0.0.1, and ranks run to their end."""

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(context, target, args: tuple, world: int = 2, timeout: float = 120) -> list[int]:
    """`target(rank, *args)` in `world` processes of the multiprocessing `context`; their exit codes once all
    have ended, those still running after `timeout` s killed (exit code -9)."""
    ranks = [context.Process(target=target, args=(rank, *args)) for rank in range(world)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=timeout)
    for p in ranks:
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in ranks]
