"""Where torchrun's ranks wait for each other: shared by `train.prepare` and `train.finetune`."""

from __future__ import annotations

import torch


def barrier(world: int, device: torch.device | str = "cpu") -> None:
    """Return once every rank of the default process group has called it (at once for one process).

    An all-reduce of one number on `device` (the rank's own device: its GPU for NCCL, its NPU for HCCL, the
    CPU for gloo), read back so that the CPU waits for it too, rather than `dist.barrier()`: that asks torch
    for the machine's accelerator first, which raises ("Please register PrivateUse1HooksInterface") in a
    process whose privateuse1 backend was renamed without hooks, such as a rank forked after
    tests/test_device.py ran."""
    if world > 1:
        import torch.distributed as dist

        token = torch.zeros(1, device=device)
        dist.all_reduce(token)
        token.item()
