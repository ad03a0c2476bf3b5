"""Weight-only quantization at the real size on the CPU: memory while loading and after, decode speed, agreement.

    python bench/quantize.py [--workdir /tmp/higgslab-quantize] [--methods none,int8,int4] [--steps 4 12]
    python bench/quantize.py --methods none,int8,int4,int8-saved,int4-saved   # + quantized checkpoints
    python bench/quantize.py --config higgslab/assets/mini/model/config.json --steps 2 4   # a quick run

1. Writes (once, into --workdir) a checkpoint of the --config architecture (default: the real one,
   tests/data/generation-original.config.json) with random bf16 weights, in the original layout, text head
   included and sharded like the real download, one shard in memory at a time. The audio head's stream-eos
   rows are zeroed, so every run decodes every step.
   `int8-saved` / `int4-saved` first write that checkpoint quantized (`python -m higgslab.quantize`, once)
   and load it as it is; `int8` / `int4` quantize the float checkpoint while loading it.
2. Each method then runs in a process of its own (fresh memory figures), as `Generator.from_paths` loads
   a model: `load_model(dir, dtype=bfloat16, quantize=method, text_head=False)`, tensor by tensor into a
   meta-built model. It reports
   - weights: the bytes of the loaded model's tensors (what a GPU would hold);
   - peak while loading: the process's peak RSS up to the end of loading, less its RSS before loading;
   - resident: RSS after the decode runs (every weight touched), less the RSS before loading;
   - decode ms/step: greedy, eager, the extra steps between a short and a long run, best of --repeats;
   - teacher-forced audio logits for one fixed random prompt + audio, compared here against `none`'s:
     top-1 agreement over positions x codebooks, and the largest logit difference.
Ratios are printed against `none` from the same run. Loading copies every tensor out of the file's mapped
pages into the process's memory, one module at a time, so "resident" is the whole model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REAL_CONFIG = ROOT / "tests/data/generation-original.config.json"
TEXT = [5, 6, 7, 8, 9, 10, 11, 12]  # any text ids: the weights are random; then <|audio_out_bos|>
TARGETS = {"int8": 0.55, "int4": 0.35}  # resident weights, as a share of none's (issue 21)
GB = 2**30


def rss() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def peak_rss() -> int:
    """This process's peak RSS (VmHWM: getrusage's ru_maxrss would carry the parent's over the exec)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024  # KiB


# ---- the random checkpoint -----------------------------------------------------------------------------
def write_random_checkpoint(config_path: Path, directory: Path) -> Path:
    """bf16 random weights of the config's architecture (std 0.02, norms 1, no stream-eos), written shard
    by shard; reused when it is there."""
    from higgslab.config import HiggsConfig
    from higgslab.io.atomic import atomic_dir
    from higgslab.io.lm_format import write_checkpoint
    from higgslab.model.lm import HiggsAudioModel

    if (directory / "config.json").is_file():
        return directory
    config = HiggsConfig.from_file(config_path)
    with torch.device("meta"):
        model = HiggsAudioModel(config, text_head=True).to(torch.bfloat16)
    eos = config.codebook_entries - 1
    gen = torch.Generator().manual_seed(0)

    def fill(key: str, meta: torch.Tensor) -> torch.Tensor:
        if "norm" in key:
            return torch.ones(meta.shape, dtype=meta.dtype)
        t = torch.empty(meta.shape, dtype=torch.float32).normal_(0, 0.02, generator=gen).to(meta.dtype)
        if key.endswith("audio_lm_head.weight"):
            t.view(config.num_codebooks, config.codebook_entries, -1)[:, eos] = 0  # every step runs
        return t

    print(f"writing a random {config_path.name} checkpoint to {directory} ...", flush=True)
    with atomic_dir(directory) as tmp:
        write_checkpoint(tmp, config, model.state_dict(), "original", max_shard_bytes=5 * 10**9, fill=fill)
    return directory


# ---- one method, in its own process --------------------------------------------------------------------
def prompt_ids(config) -> list[int]:
    return [*TEXT, config.audio_out_bos_token_id]


def teacher_forced_input(config, frames: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.tensor(prompt_ids(config) + [config.audio_out_token_id] * frames)[None]
    codes = torch.randint(0, config.codebook_size, (1, config.num_codebooks, frames), generator=gen)
    return ids, codes


def measure(checkpoint: Path, method: str, group_size: int, steps: tuple[int, int], repeats: int, out: Path):
    from higgslab.generate.generator import Generator
    from higgslab.io.load import load_model

    quantize = None if method.endswith("-saved") else method  # a saved one loads as it is
    before = rss()
    t0 = time.perf_counter()
    model = load_model(
        checkpoint, dtype=torch.bfloat16, quantize=quantize, group_size=group_size, text_head=False
    )
    load_s = time.perf_counter() - t0
    peak_load = peak_rss() - before
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))

    ids, codes = teacher_forced_input(model.config)
    with torch.inference_mode():
        logits = model(ids, codes).audio_logits[0, -codes.shape[-1] :].float()  # [frames, n_q, entries]
    torch.save(logits, out.with_suffix(".logits.pt"))

    gen = Generator(model, compile=False)
    prompt = torch.tensor(prompt_ids(model.config))

    def run(n: int) -> float:
        t = time.perf_counter()
        gen.generate(prompt_ids=prompt, max_new_tokens=n, temperature=0, seed=0)
        return time.perf_counter() - t

    short, long = steps
    run(short)  # warm-up: the first touch of every weight
    best = [min(run(n) for _ in range(repeats)) for n in (short, long)]
    result = {
        "method": method,
        "weights": weights,
        "peak_load": peak_load,
        "resident": rss() - before,
        "load_s": load_s,
        "ms_per_step": 1000 * (best[1] - best[0]) / (long - short),
    }
    out.write_text(json.dumps(result))


def saved_checkpoint(args, checkpoint: Path, method: str) -> Path:
    """`checkpoint` quantized by `python -m higgslab.quantize` into the workdir (once)."""
    spec = method.removesuffix("-saved")
    out = Path(args.workdir) / f"{checkpoint.name}-{spec}-g{args.group_size}"
    if not out.is_dir():
        cmd = [sys.executable, "-m", "higgslab.quantize", f"model_path={checkpoint}", f"output_dir={out}",
               f"quantize={spec}", f"group_size={args.group_size}"]  # fmt: skip
        subprocess.run(cmd, check=True)
    return out


def run_child(args, checkpoint: Path, method: str) -> dict:
    if method.endswith("-saved"):
        checkpoint = saved_checkpoint(args, checkpoint, method)
    out = Path(args.workdir) / f"{method}.json"
    if args.reuse and out.is_file():
        return json.loads(out.read_text())
    cmd = [sys.executable, __file__, "--child", method, "--checkpoint", str(checkpoint), "--workdir", args.workdir,
           "--group-size", str(args.group_size), "--steps", *map(str, args.steps), "--repeats", str(args.repeats)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def agreement(workdir: Path, method: str) -> tuple[float, float]:
    ref = torch.load(workdir / "none.logits.pt")
    got = torch.load(workdir / f"{method}.logits.pt")
    return float((got.argmax(-1) == ref.argmax(-1)).float().mean()), float((got - ref).abs().max())


def main() -> None:
    from higgslab.device import cpu_features, device_name

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REAL_CONFIG), help="the architecture (a config.json)")
    ap.add_argument("--workdir", default="/tmp/higgslab-quantize")
    ap.add_argument("--methods", default="none,int8,int4")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--steps", type=int, nargs=2, default=(4, 12), help="short and long run, in decode steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="keep the methods already measured in --workdir")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = Path(args.workdir)
    if args.child:
        measure(Path(args.checkpoint), args.child, args.group_size, tuple(args.steps), args.repeats,
                workdir / f"{args.child}.json")  # fmt: skip
        return

    methods = args.methods.split(",")
    if methods[0] != "none":
        raise SystemExit("--methods must start with none: the ratios are against it")
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = write_random_checkpoint(
        Path(args.config), workdir / f"random-{Path(args.config).parent.name}"
    )
    print(f"{device_name(torch.device('cpu'))} ({cpu_features()}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {args.config}; int4 group {args.group_size}")  # fmt: skip
    results = {m: run_child(args, checkpoint, m) for m in methods}
    none = results["none"]
    print(f"\n{'':11}{'weights GB':>11}{'resident GB':>12}{'peak load GB':>13}{'load s':>8}{'ms/step':>9}"
          f"{'weights':>9}{'resident':>9}{'peak/final':>11}{'speed-up':>9}{'top-1':>7}{'max |dlogit|':>13}")  # fmt: skip
    for m, r in results.items():
        top1, diff = agreement(workdir, m) if m != "none" else (1.0, 0.0)
        print(f"{m:11}{r['weights'] / GB:11.2f}{r['resident'] / GB:12.2f}{r['peak_load'] / GB:13.2f}"
              f"{r['load_s']:8.1f}{r['ms_per_step']:9.1f}{r['weights'] / none['weights']:9.3f}"
              f"{r['resident'] / none['resident']:9.3f}{r['peak_load'] / r['weights']:11.2f}"
              f"{none['ms_per_step'] / r['ms_per_step']:9.2f}{top1:7.3f}{diff:13.3f}")  # fmt: skip
    print("\ntargets: resident weights int8 <= 0.55x and int4 <= 0.35x of none; peak while loading <= 1.2x the"
          " final size; decode int8 >= 1.6x faster than none")  # fmt: skip


if __name__ == "__main__":
    with torch.inference_mode(False):
        main()
