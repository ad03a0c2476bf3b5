"""One torchrun-style rank of `higgslab.train.prepare`, for tests that spawn ranks themselves: a module of
its own so that each spawned interpreter imports only torch and the prepare module."""

import os


def rank_main(rank: int, world: int, port: int, settings) -> None:
    import torch

    from higgslab.train.prepare import prepare

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    prepare(settings)
