"""Where torchrun's ranks wait for each other: shared by `train.prepare` and `train.finetune`."""

from __future__ import annotations

import torch


def barrier(world: int) -> None:
    """Return once every rank of the default process group has called it (at once for one process).

    An all-reduce of one number on the group's device (this rank's GPU for NCCL, the CPU for gloo), read
    back so that the CPU waits for it too, rather than `dist.barrier()`: that asks torch for the machine's
    accelerator first, which raises ("Please register PrivateUse1HooksInterface") in a process whose
    privateuse1 backend was renamed without hooks, such as a rank forked after tests/test_device.py ran."""
    if world > 1:
        import torch.distributed as dist

        nccl = dist.get_backend() == "nccl"
        token = torch.zeros(1, device=f"cuda:{torch.cuda.current_device()}" if nccl else "cpu")
        dist.all_reduce(token)
        token.item()
