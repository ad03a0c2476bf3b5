"""Continuous batching in-process: throughput against requests run one by one, and batched = alone.

    python bench/batching.py [--n 1 4 16] [--dtype float32 bfloat16] [--max-new-tokens 300]

The embedded mini (`Generator.from_pretrained()`), N requests (sentences cycled; even ones greedy, odd ones
sampled at 0.7, each its own seed) submitted at once to a `ContinuousBatcher` with N rows per guided
request, against the same requests through `Generator.generate` one after another, in the same run. Prints
audio seconds per wall second both ways and their ratio (> 1: batching is faster), and how many requests
gave exactly their alone codes (and for the others, the first frame where they part).
No audio decoding: the LM's work only (bench/serve_load.py measures the server end to end).
"""

from __future__ import annotations

import argparse
import time

import torch

from higgslab.device import cpu_features
from higgslab.errors import cli_errors
from higgslab.generate.batching import ContinuousBatcher
from higgslab.generate.generator import Generator

SENTENCES = [
    "Hello there, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "One, two, three.",
    "A long time ago, in a land far away.",
    "Please call me back when you get this message.",
    "The weather is lovely this morning.",
]


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The first frame where codes `[n_q, F]` differ (a length difference counts), or None."""
    n = min(a.shape[1], b.shape[1])
    differ = (a[:, :n] != b[:, :n]).any(0).nonzero()
    if len(differ):
        return int(differ[0])
    return None if a.shape[1] == b.shape[1] else n


def run(gen: Generator, n: int, max_new_tokens: int) -> None:
    kws = [dict(text=SENTENCES[i % len(SENTENCES)], seed=100 + i, max_new_tokens=max_new_tokens,
                temperature=0 if i % 2 == 0 else 0.7) for i in range(n)]  # fmt: skip
    frame_rate = 25.0
    t0 = time.perf_counter()
    alone = [gen.generate(decode_audio=False, **kw).codes for kw in kws]
    t_alone = time.perf_counter() - t0
    rows = n * (2 if gen.cfg_scale != 1 else 1)
    batcher = ContinuousBatcher(gen.model, rows=rows, max_tokens=max_new_tokens + 128, max_queue=n)
    requests = [gen.request(kw.pop("text"), **kw) for kw in (dict(k) for k in kws)]
    t0 = time.perf_counter()
    jobs = [batcher.submit(r) for r in requests]
    batcher.run_until_idle()
    t_batch = time.perf_counter() - t0
    audio_s = sum(a.shape[1] for a in alone) / frame_rate
    parts = [first_difference(j.result.codes, a) for j, a in zip(jobs, alone, strict=True)]
    same = sum(p is None for p in parts)
    print(
        f"N={n:3d}  one by one {audio_s / t_alone:6.2f} audio s/s   batched {audio_s / t_batch:6.2f} audio s/s   "
        f"speed-up {t_alone / t_batch:5.2f}x   same codes as alone: {same}/{n}"
        + ("" if same == n else f" (the others part at frames {[p for p in parts if p is not None]})")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--max-new-tokens", type=int, default=300)
    args = ap.parse_args()
    gen = Generator.from_pretrained(compile=False)
    print(f"torch {torch.__version__}, cpu: {cpu_features()}, {torch.get_num_threads()} threads, {gen.label}")
    for dtype in args.dtype:
        gen.model.to(getattr(torch, dtype))
        print(f"-- {dtype}, guidance {gen.cfg_scale}")
        # first calls of a shape set kernels up: once for both contenders, before either is timed
        gen.generate(text=SENTENCES[0], seed=0, max_new_tokens=40, decode_audio=False)
        warm_up = ContinuousBatcher(gen.model, rows=2 * len(SENTENCES), max_tokens=args.max_new_tokens + 128)
        for text in SENTENCES:
            warm_up.submit(gen.request(text, seed=0, max_new_tokens=40))
        warm_up.run_until_idle()
        for n in args.n:
            run(gen, n, args.max_new_tokens)


if __name__ == "__main__":
    with cli_errors():
        main()
