"""Fine-tuning throughput: tokens/s of LoRA steps, one process against `torchrun` with 2 ranks on one machine.

    python bench/finetune_speed.py [--models mini,mid] [--seq 256] [--batch 4] [--steps 8] [--warmup 2]
                                   [--mid-hidden 1024] [--mid-layers 8] [--timeout 300] [--quick]

The steps are `higgslab.finetune`'s own, launched as a user launches them (`method=lora` with its default
settings: rank 16 on q/k/v/o_proj, float32 on the CPU), twice per model, on the same global batch of `--batch`
examples in the same order:
- one process: `python -m higgslab.finetune ... batch_size=G`, every core of this process's affinity a thread;
- `torchrun --nproc_per_node 2 -m higgslab.finetune ... batch_size=G/2 distributed=ddp` (gloo on 127.0.0.1),
  the cores split between the ranks (2 cores: 2 threads against 2 ranks x 1 thread).
tokens/s is what the loop logs per step in `log.csv` (`tokens_per_s`: the global batch's tokens over the
step's wall time, evaluation and checkpoints excluded; under torchrun rank 0's clock, which waits for the
gradient all-reduce), the median over the steps after the first `--warmup`. Scaling = 2 ranks / 1 process:
what a second rank's process buys over giving one process those cores as threads (> 1: data parallelism
beats intra-op threading at this size; < 1: the all-reduce and the second copy of the model cost more).
Both runs must log the same losses (the loop's promise for 2 ranks x b = 1 rank x 2b); the bench checks it.
The environment passes to the launches: on a machine shared with other work, libgomp's threads spin-wait
for each other by default, which costs the multi-threaded process most (`OMP_WAIT_POLICY=PASSIVE` to compare).

Models: `mini` = the embedded higgslab-mini; `mid` = a random DualFFN model of the real checkpoint's shape
(`--real-config`: every layer DualFFN, its head width, FFN/hidden ratio and query heads per key/value head)
at `--mid-hidden` width and `--mid-layers` layers, with the mini's text tokenizer and codebooks. Data: random
codes (a step's speed does not depend on their values) under `make_sentences` texts, every example exactly
`--seq` tokens (no padding), written as a prepared folder. Every process is started and stopped here: a
launch that runs past `--timeout` seconds is killed with its workers.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch

from higgslab.config import HiggsConfig
from higgslab.device import cpu_features

ROOT = Path(__file__).resolve().parents[1]
REAL_CONFIG = ROOT / "tests/data/generation-original.config.json"
QUICK = dict(seq=96, batch=2, steps=3, warmup=1, mid_hidden=256, mid_layers=2)


class BenchError(Exception):
    """A launch that failed or ran out of time: one line for the user."""


# ---- the models and the data ----------------------------------------------------------------------------
def mid_config(mini: HiggsConfig, real: HiggsConfig, hidden: int, layers: int) -> HiggsConfig:
    """The mini's vocabulary and codebooks in the real model's shape at `hidden` width and `layers` layers:
    every layer DualFFN, the real head width and FFN ratio, and the fewest key/value heads that leave at
    most the real number of query heads per key/value head."""
    heads = hidden // real.head_dim
    if heads < 1 or hidden % real.head_dim:
        raise BenchError(f"--mid-hidden {hidden}: must be a multiple of the real head width {real.head_dim}")
    per_kv = real.num_heads // real.num_kv_heads
    kv = next(k for k in range(1, heads + 1) if heads % k == 0 and heads // k <= per_kv)
    return mini.replace(
        hidden_size=hidden,
        intermediate_size=round(hidden * real.intermediate_size / real.hidden_size),
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=real.head_dim,
        num_layers=layers,
        dual_ffn_layers=tuple(range(layers)),
    )


def write_mid_model(config: HiggsConfig, text_dir: Path, out: Path) -> Path:
    """A random float32 checkpoint of `config` (original layout) with the text tokenizer of `text_dir`."""
    from higgslab.model.lm import HiggsAudioModel
    from higgslab.train.lm import export_model

    torch.manual_seed(0)
    return export_model(HiggsAudioModel(config), text_dir, out)


def write_prepared(out: Path, model_dir: Path, n: int, seq: int) -> Path:
    """`n` examples of exactly `seq` tokens each (random codes under `make_sentences` texts), as the prepared
    folder `higgslab.prepare` writes (`higgslab.train.examples.PreparedData` reads it)."""
    from safetensors.torch import save_file

    from higgslab.io.text_tokenizer import load_text_tokenizer
    from higgslab.train.examples import make_train_example
    from higgslab.train.sentences import make_sentences

    config, tok = HiggsConfig.from_file(model_dir / "config.json"), load_text_tokenizer(model_dir)
    g = torch.Generator().manual_seed(0)
    codes, manifest = {}, []
    for i, text in enumerate(make_sentences(n, seed=0)):
        one_frame = torch.zeros(config.num_codebooks, 1, dtype=torch.long)
        frames = seq - len(make_train_example(tok, config, text, one_frame).input_ids) + 1
        if frames < 1:
            raise BenchError(f"--seq {seq} is shorter than the prompt of {text!r}")
        codes[f"ex{i}"] = torch.randint(0, config.codebook_size, (config.num_codebooks, frames), generator=g)
        manifest.append({"id": f"ex{i}", "text": text, "frames": frames, "shard": "shards/00000.safetensors"})
    (out / "shards").mkdir(parents=True)
    save_file({k: c.to(torch.int16) for k, c in codes.items()}, out / "shards/00000.safetensors")
    (out / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in manifest))
    info = {"version": 2, "n_q": config.num_codebooks, "codebook_size": config.codebook_size}
    (out / "prepared.json").write_text(json.dumps(info))
    return out


# ---- launches -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Kill `proc` and every process under it, by id (torchrun puts its workers in sessions of their own)."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def launch(cmd: list[str], threads: int, timeout: float) -> None:
    """Run `cmd` with `threads` CPU threads per process; its output only when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd[:6])} ... did not finish in {timeout:.0f} s (stopped)") from None
    finally:
        if proc.poll() is None:  # timed out, or this bench was interrupted
            stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:6])} ... failed:\n{out[-3000:]}")


def finetune_run(model_dir: Path, data: Path, out: Path, a, ranks: int, threads: int) -> list[dict]:
    """LoRA steps of the global batch `a.batch` on `ranks` processes (1: no torchrun); log.csv's rows."""
    settings = [f"data={data}", f"output_dir={out}", f"model_path={model_dir}", "method=lora",
                f"steps={a.steps}", f"checkpoint_every={a.steps}", f"batch_size={a.batch // ranks}",
                f"threads={threads}"]  # fmt: skip
    if ranks == 1:
        cmd = [sys.executable, "-m", "higgslab.finetune", *settings]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "higgslab.finetune", *settings, "distributed=ddp"]  # fmt: skip
    launch(cmd, threads, a.timeout)
    with open(out / "log.csv") as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def table_row(name: str, model_dir: Path, logs: dict[int, list[dict]], warmup: int) -> str:
    """One model's row: median tokens/s (range over the timed steps) per launch, their ratio, and whether
    the two launches logged the same losses (relative 1e-5, as tests/train/test_finetune.py asks)."""
    c = HiggsConfig.from_file(model_dir / "config.json")
    shape = f"{c.num_layers} layers, hidden {c.hidden_size}, FFN {c.intermediate_size}, {c.num_heads}/{c.num_kv_heads} heads"
    speeds = {n: [r["tokens_per_s"] for r in rows[warmup:]] for n, rows in logs.items()}
    one, two = (median(speeds[n]) for n in (1, 2))
    drift = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(logs[1], logs[2], strict=True))
    cells = [f"{name} ({shape})", f"{parameters(model_dir) / 1e6:.1f} M"]
    cells += [f"{median(v):.0f} ({min(v):.0f}-{max(v):.0f})" for v in speeds.values()]
    cells += [f"{two / one:.2f}", f"{'yes' if drift < 1e-5 else 'NO'} (max rel. diff {drift:.1e})"]
    return "| " + " | ".join(cells) + " |"


def parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mini,mid", help="comma-separated: mini, mid")
    ap.add_argument("--seq", type=int, default=256, help="tokens per example")
    ap.add_argument("--batch", type=int, default=4, help="global batch (examples per step), even")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    ap.add_argument("--mid-hidden", type=int, default=1024)
    ap.add_argument("--mid-layers", type=int, default=8)
    ap.add_argument("--real-config", default=str(REAL_CONFIG), help="the shape the mid model follows")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per launch")
    ap.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    a = ap.parse_args()
    if a.quick:
        vars(a).update(QUICK)
    models = a.models.split(",")
    try:
        if unknown := set(models) - {"mini", "mid"}:
            raise BenchError(f"unknown model(s) {sorted(unknown)}; choose from mini, mid")
        if a.batch < 2 or a.batch % 2 or a.steps <= a.warmup:
            raise BenchError(f"--batch must be even (got {a.batch}) and --steps above --warmup")
        run(a, models)
    except BenchError as e:
        sys.exit(f"error: {e}")


def run(a, models: list[str]) -> None:
    from higgslab.embedded import resolve_paths

    cores = len(os.sched_getaffinity(0))
    threads = {1: cores, 2: max(1, cores // 2)}  # per process
    print(f"CPU: {cpu_features()}, {cores} cores for this bench, torch {torch.__version__}")
    print(
        f"threads: 1 process x {threads[1]}; torchrun 2 ranks x {threads[2]} (OMP_NUM_THREADS and threads=; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    mini_dir = resolve_paths(None, None)[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="finetune_speed_") as tmp:
        tmp = Path(tmp)
        dirs = {"mini": mini_dir}
        if "mid" in models:
            mini, real = (HiggsConfig.from_file(p) for p in (mini_dir / "config.json", a.real_config))
            dirs["mid"] = write_mid_model(
                mid_config(mini, real, a.mid_hidden, a.mid_layers), mini_dir, tmp / "mid"
            )
        data = write_prepared(tmp / "data", mini_dir, n=max(8, 2 * a.batch), seq=a.seq)
        print(
            f"LoRA (finetune/lora.yaml defaults), float32, global batch {a.batch} x {a.seq} tokens, "
            f"median of steps {a.warmup + 1}-{a.steps}\n"
        )
        print(
            "| model | parameters | 1 process tokens/s | 2 ranks (DDP) tokens/s | scaling 2 ranks / 1 | same losses |"
        )
        print("|---|---|---|---|---|---|")
        for name in models:
            logs = {n: finetune_run(dirs[name], data, tmp / f"{name}-{n}", a, n, threads[n]) for n in (1, 2)}
            print(table_row(name, dirs[name], logs, a.warmup), flush=True)
    load = os.getloadavg()
    print(
        f"\nload average at end: {' '.join(f'{x:.2f}' for x in load)}; {time.monotonic() - started:.0f} s in all"
    )
    if load[1] > cores:  # other processes wanted more than the cores: a multi-threaded process suffers most
        print(
            f"busy machine (load above {cores} cores): the processes competed with others for the cores (a "
            "multi-threaded one most, its OpenMP threads wait for each other), so a dedicated machine's "
            "figures differ"
        )


if __name__ == "__main__":
    main()
