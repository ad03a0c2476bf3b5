"""The fine-tuning loop on the tiny random checkpoint: outputs, gradient accumulation and checkpointing that
change no numbers, resuming to the uninterrupted losses, and 2 ranks × batch b = 1 rank × batch 2b under
torchrun with gloo on 127.0.0.1 (DDP and FSDP2)."""

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from higgslab.errors import HiggsLabError
from higgslab.train.finetune import FinetuneSettings, Ranks, finetune, global_batch, micro_batches
from tests.train.test_examples import random_codes, write_prepared

TEXTS = ["one two", "three four five", "six", "seven eight", "nine ten eleven twelve", "thirteen"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    items = {f"ex{i}": (t, random_codes(i, 3 + 2 * i)) for i, t in enumerate(TEXTS)}
    return write_prepared(tmp_path_factory.mktemp("prepared"), items, reference={"ex5": "ex0"})


def settings(prepared, model_dir, out, **kw) -> FinetuneSettings:
    base = dict(data=str(prepared), output_dir=str(out), method="full", model_path=str(model_dir), steps=4,
                batch_size=2, lr=1e-3, warmup=1, checkpoint_every=2, threads=1)  # fmt: skip
    return FinetuneSettings(**{**base, **kw})


def losses(history: list[dict]) -> list[float]:
    return [row["loss"] for row in history]


def test_data_order_is_disjoint_slices_of_one_global_batch():
    picked = global_batch(0, 10, 8, seed=0)  # within one epoch: no repeats
    assert len(set(picked)) == 8 and picked == global_batch(0, 10, 8, seed=0) != global_batch(
        0, 10, 8, seed=1
    )
    epoch = [i for step in range(5) for i in global_batch(step, 10, 2, seed=0)]
    assert sorted(epoch) == list(range(10))  # every example once an epoch
    ranks = [micro_batches(list(range(8)), 2, Ranks(rank=r, world=2)) for r in range(2)]
    assert ranks == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]


def test_a_run_writes_log_curve_checkpoint_and_model(prepared, embedded_cache, tmp_path):
    _, model_dir, _ = embedded_cache
    history = finetune(settings(prepared, model_dir, tmp_path, eval_examples=2))
    assert [r["step"] for r in history] == [1, 2, 3, 4] and "eval_loss" in history[-1]
    assert all(torch.isfinite(torch.tensor(losses(history))))
    with open(tmp_path / "log.csv") as f:
        logged = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in logged] == pytest.approx(losses(history))
    assert all(float(r["tokens_per_s"]) > 0 for r in logged)  # what bench/finetune_speed.py reads
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "last.pt").is_file()
    assert (tmp_path / "model").is_dir()


def test_accumulation_and_checkpointing_change_no_losses(prepared, embedded_cache, tmp_path):
    _, model_dir, _ = embedded_cache
    s = settings(prepared, model_dir, tmp_path / "a", batch_size=4, steps=3, text_weight=0.5)
    reference = losses(finetune(s))
    accumulated = finetune(replace(s, output_dir=str(tmp_path / "b"), batch_size=2, grad_accum=2))
    recomputed = finetune(replace(s, output_dir=str(tmp_path / "c"), gradient_checkpointing=True))
    assert losses(accumulated) == pytest.approx(reference, rel=1e-5)
    assert losses(recomputed) == pytest.approx(reference, rel=1e-5)
    assert reference[-1] < reference[0]


LORA = {"rank": 4, "alpha": 8, "dropout": 0.1, "targets": ["attention", "audio_ffn"]}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resume_gives_the_uninterrupted_losses(method, prepared, embedded_cache, tmp_path):
    """Also for a LoRA with dropout: its init and its dropout masks come from the seed and the step."""
    _, model_dir, _ = embedded_cache
    s = settings(prepared, model_dir, tmp_path / "a", steps=4, checkpoint_every=1, method=method,
                 method_settings=LORA if method == "lora" else {}, lr=1e-2)  # fmt: skip
    uninterrupted = losses(finetune(s))
    cut = replace(s, output_dir=str(tmp_path / "b"))
    finetune(cut, stop_after=2)
    assert losses(finetune(cut)) == pytest.approx(uninterrupted, rel=1e-6)


def test_bad_settings_are_one_line(prepared, tmp_path):
    with pytest.raises(HiggsLabError, match="method='x'"):
        finetune(FinetuneSettings(data=str(prepared), output_dir=str(tmp_path), method="x"))
    with pytest.raises(HiggsLabError, match="not a prepared folder"):
        finetune(FinetuneSettings(data=str(tmp_path), output_dir=str(tmp_path), method="full"))
    with pytest.raises(HiggsLabError, match="needs torchrun"):
        finetune(
            FinetuneSettings(data=str(prepared), output_dir=str(tmp_path), method="full", distributed="ddp")
        )


# ---- torchrun ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(overrides: list[str], nproc: int = 2) -> subprocess.Popen:
    """`torchrun --nproc_per_node nproc -m higgslab.finetune overrides` on 127.0.0.1, in its own process group."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "higgslab.finetune", *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers, by process id (torchrun starts each worker in a session of its own,
    so killing its process group would leave them running)."""

    def children(pid: int) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                found.append(int(stat.parent.name))
        return found + [d for c in found for d in children(c)]

    for pid in [proc.pid, *children(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate()


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        pytest.fail(f"torchrun did not finish in {timeout} s")
    assert proc.returncode == 0, out.decode()[-3000:]
    return out.decode()


def overrides(s: FinetuneSettings) -> list[str]:
    keys = ("data", "output_dir", "method", "model_path", "steps", "batch_size", "lr", "warmup",
            "checkpoint_every", "threads", "distributed", "seed")  # fmt: skip
    return [f"{k}={getattr(s, k)}" for k in keys]


def logged_losses(out_dir) -> list[float]:
    return losses(torch.load(out_dir / "last.pt", weights_only=False)["history"])


def run_ranks(s: FinetuneSettings, world: int = 2, timeout: float = 120) -> None:
    """`finetune(s)` on `world` ranks forked from this process (everything is imported already: seconds,
    where torchrun's fresh interpreters take most of a minute), gloo on 127.0.0.1."""
    import torch.multiprocessing as mp

    # tests/test_device.py names the privateuse1 backend "npu" for good (as torch_npu does); children forked
    # after that see an accelerator without hooks, which torch.distributed asks for: spawn fresh ones then
    renamed = torch._C._get_privateuse1_backend_name() != "privateuseone"
    context = mp.start_processes(_rank, args=(world, free_port(), s), nprocs=world, join=False,
                                 start_method="spawn" if renamed else "fork")  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"{world} ranks did not finish in {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def _rank(rank: int, world: int, port: int, s: FinetuneSettings) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    import torch.distributed as dist

    finetune(s)
    dist.destroy_process_group()


# fsdp's forked variant runs with the slow set (beside its torchrun test): the default run's time budget
@pytest.mark.parametrize("kind", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_forked_ranks_follow_one_rank_with_twice_the_batch(kind, prepared, embedded_cache, tmp_path):
    """The fast variant of the torchrun test below: 3 steps, ranks forked from the test process; FSDP2 with
    gradient checkpointing too (recomputing a sharded layer must gather its weights again)."""
    _, model_dir, _ = embedded_cache
    s = settings(prepared, model_dir, tmp_path / "one", steps=3, batch_size=2, checkpoint_every=3)
    reference = losses(finetune(s))
    two = replace(s, output_dir=str(tmp_path / "two"), batch_size=1, distributed=kind)
    run_ranks(replace(two, gradient_checkpointing=kind == "fsdp"))
    assert logged_losses(tmp_path / "two") == pytest.approx(reference, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_ranks_follow_one_rank_with_twice_the_batch(kind, prepared, embedded_cache, tmp_path):
    """The issue's check through the CLI: torchrun, 2 ranks x batch 1 = 1 rank x batch 2, 20 steps."""
    _, model_dir, _ = embedded_cache
    s = settings(prepared, model_dir, tmp_path / "one", steps=20, batch_size=2, checkpoint_every=20)
    reference = losses(finetune(s))
    two = replace(s, output_dir=str(tmp_path / "two"), batch_size=1, distributed=kind)
    finish(torchrun(overrides(two)))
    assert logged_losses(tmp_path / "two") == pytest.approx(reference, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_ranks_resume_after_a_kill(kind, prepared, embedded_cache, tmp_path):
    """torchrun killed (SIGKILL, the whole process group) once a checkpoint of step >= 2 exists; the rerun
    resumes from it and logs the uninterrupted run's losses."""
    _, model_dir, _ = embedded_cache
    s = settings(prepared, model_dir, tmp_path / "one", steps=8, checkpoint_every=1)
    reference = losses(finetune(replace(s, checkpoint_every=8)))
    two = replace(s, output_dir=str(tmp_path / "two"), batch_size=1, distributed=kind)
    proc = torchrun(overrides(two))
    try:
        for _ in range(2400):  # at most 240 s
            if proc.poll() is not None:
                break
            log = tmp_path / "two" / "log.csv"  # rewritten after each checkpoint
            if log.is_file() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
    finally:
        kill_tree(proc)
    killed_at = torch.load(tmp_path / "two" / "last.pt", weights_only=False)["step"]
    assert killed_at < 8, "the run finished before it could be killed"
    finish(torchrun(overrides(two)))
    assert logged_losses(tmp_path / "two") == pytest.approx(reference, rel=1e-5)


def test_the_cli_config_is_checked_before_anything_loads(prepared, tmp_path):
    from higgslab.train.finetune import settings_from
    from tests.train.conftest import compose

    s = settings_from(compose("finetune", [f"data={prepared}", f"output_dir={tmp_path}", "method=audio"]))
    assert (s.method, s.method_settings) == ("audio", {})
    s = settings_from(compose("finetune", [f"data={prepared}", f"output_dir={tmp_path}", "lora.rank=4"]))
    assert (s.method, s.method_settings["rank"]) == ("lora", 4)
    with pytest.raises(HiggsLabError, match="output_dir=... is required"):
        settings_from(compose("finetune", [f"data={prepared}"]))
    with pytest.raises(HiggsLabError, match="grad_accum must be >= 1"):
        settings_from(compose("finetune", [f"data={prepared}", f"output_dir={tmp_path}", "grad_accum=0"]))


def test_the_cli_says_bad_data_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "higgslab.finetune", f"data={tmp_path}", f"output_dir={out}", "method=full"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path}: not a prepared folder (prepared.json missing; run higgslab.prepare)"
    ]
    assert not out.exists()
