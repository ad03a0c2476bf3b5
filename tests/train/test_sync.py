"""`train.sync.barrier`, the ranks' meeting point of prepare and finetune: it waits for every rank, also in
ranks forked after the privateuse1 backend was renamed (tests/test_device.py does it for the rest of the
process, as torch_npu does), where `torch.distributed.barrier` raises. Run in a fresh interpreter so that
the rename stays out of this one."""

import subprocess
import sys

from tests.train.test_prepare import free_port

RANKS = """
import os, sys, time
import torch
import torch.multiprocessing as mp

def rank(r, port, marker):
    import torch.distributed as dist
    from higgslab.train.sync import barrier

    os.environ.update(RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo")
    try:
        if r == 0:
            time.sleep(0.5)  # rank 1 reaches the barrier first: it must wait for the marker
            open(marker, "w").close()
        barrier(2)
        assert os.path.exists(marker), f"rank {r} left the barrier before rank 0 reached it"
        barrier(2)
    finally:
        dist.destroy_process_group()

torch.utils.rename_privateuse1_backend("npu")
mp.start_processes(rank, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2, start_method="fork")
print("met")
"""


def test_barrier_waits_for_every_rank_in_ranks_forked_after_a_privateuse1_rename(tmp_path):
    cmd = [sys.executable, "-c", RANKS, str(free_port()), str(tmp_path / "marker")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "met\n", done.stderr[-2000:]


def test_barrier_of_one_process_needs_no_process_group():
    from higgslab.train.sync import barrier

    barrier(1)  # no torch.distributed group exists here: it would raise if it were asked
