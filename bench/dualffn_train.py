"""Training throughput of a DualFFN decoder stack vs the same stack as plain Llama layers, in one run.

    python bench/dualffn_train.py [--layers 2] [--seq 512] [--audio-share 0.7] [--dtype float32] [--repeats 5]
                                  [--methods full,lora,audio] [--threads 1]

Both stacks are built from `higgslab.model.dualffn.DualFFNLayer` at the real layer width (3072 hidden,
8192 FFN, 24/8 heads): kind "dual_ffn" (shared attention, audio positions through their own norms +
FFN, routed by flat index) vs kind "llama" (every position through the one FFN). Same FLOPs per token;
the difference is the routing (gather/scatter and their backward) and two smaller GEMMs instead of one.

One step = forward + backward of a batch whose positions are `audio-share` audio, in alternating
text/audio segments as in a TTS training sample, for each fine-tuning method (`--methods`):
- `full`: every weight trained.
- `lora`: base weights frozen, peft's LoRA (rank 16, contract C's default) on q/k/v/o_proj of both stacks.
- `audio`: DualFFN trains its audio path only (audio FFN + norms; text weights frozen); its Llama
  counterpart trains its FFN only (attention frozen), the weights the audio positions pass through.
Gradients flow back to the stack's input in every method, as they do through a model's lower layers.

Timing on a shared CPU: the steps of the two stacks are interleaved in pairs (a DualFFN step and a Llama
step back to back, who goes first alternating: ABBAAB...), and each pair gives a ratio, so a load that
drifts over the run slows both halves of a pair alike. Printed: every pair's ratio, the median of the
pairs' ratios (the robust figure) and the ratio of the best steps, in wall time and in this process's
CPU time (`time.process_time`, which other processes' load does not inflate; pin the process, e.g.
`taskset -c 1` with `--threads 1`). Target: >= 0.95 (the seed article's figure: 0.91). `--profile` adds
the top operators of one step of each stack.

Memory: by default the process asks glibc to keep freed memory for reuse (`mallopt`), as the caching
allocators of real training set-ups (jemalloc, tcmalloc, a GPU's) do. Under glibc's defaults every
gradient buffer above 32 MB is a fresh `mmap`, page-faulted and zeroed on each step: that costs time in
proportion to the parameter count (DualFFN has 1.75x a Llama layer's), measured here as up to 2/3 of a
step, and hides the routing cost this bench is about. `--system-malloc` keeps glibc's defaults.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from statistics import median

import torch
from torch import nn

from higgslab.config import HiggsConfig
from higgslab.device import cpu_features
from higgslab.model.dualffn import AttentionMasks, DualFFNLayer, Route
from higgslab.model.lm import Rotary


def audio_mask(batch: int, seq: int, audio_share: float, segments: int = 4) -> torch.Tensor:
    """`[B, T]` bool: `segments` text/audio pairs per row (text first), audio making up `audio_share`."""
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    bounds = torch.linspace(0, seq, segments + 1).round().long().tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        text = round((end - start) * (1 - audio_share))
        mask[:, start + text : end] = True
    return mask


def keep_freed_memory() -> bool:
    """glibc: serve every allocation from the heap (no per-buffer mmap) and never trim it back."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))


def build_stack(config: HiggsConfig, kind: str, dtype: torch.dtype) -> nn.ModuleList:
    torch.manual_seed(0)
    every = tuple(range(config.num_layers)) if kind == "dual_ffn" else ()  # "llama": no audio FFN anywhere
    config = config.replace(adapter_type="dual_ffn", dual_ffn_layers=every)
    layers = [DualFFNLayer(config, i, attn_slot=i) for i in range(config.num_layers)]
    return nn.ModuleList(layers).to(dtype).train()


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def apply_method(stack: nn.ModuleList, kind: str, method: str) -> nn.ModuleList:
    """requires_grad as `method` sets it on a stack of `kind` (see the module docstring)."""
    if method == "lora":
        from peft import LoraConfig, inject_adapter_in_model  # freezes the base weights

        return inject_adapter_in_model(LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS), stack)
    trained = {"full": "", "audio": "audio_" if kind == "dual_ffn" else "mlp."}[method]
    for name, p in stack.named_parameters():
        p.requires_grad_(trained in name)
    return stack


def train_step(stack: nn.ModuleList, h: torch.Tensor, mask: torch.Tensor, rope) -> None:
    """Forward + backward of the stack on a mixed batch; the route is computed per step, as a model does."""
    route = Route.from_mask(mask)
    masks = AttentionMasks(shared=None)  # causal, no padding: sdpa's fused path
    x = h
    for layer in stack:
        x = layer(x, route, rope, masks)
    x.float().square().mean().backward()
    for p in stack.parameters():
        p.grad = None
    h.grad = None


def timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time (all threads of this process) is steadier on a shared machine."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def profile(name: str, fn, rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    print(f"\n--- {name}: top operators by self CPU time ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    print(f"--- {name}: matrix products by shape ---")
    table = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows)
    print(
        "\n".join(
            line for line in table.splitlines() if "aten::mm" in line or "---" in line or "Name" in line
        )
    )


def compare(steps: dict, repeats: int, tokens: int) -> None:
    """Interleaved timed repeats of the two stacks' steps; prints per-repeat and summary ratios."""
    for fn in steps.values():  # warm-up: allocator, kernel choice
        fn()
    times = {kind: [] for kind in steps}  # [(wall, CPU)]
    for r in range(repeats):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]  # alternate who goes first
        t = {kind: timed(steps[kind]) for kind in order}
        for kind in steps:
            times[kind].append(t[kind])
        print(
            f"  pair {r + 1}: "
            + ", ".join(f"{k} {t[k][0]:.3f} s wall / {t[k][1]:.3f} s CPU" for k in steps)
            + f"; ratio {t['llama'][0] / t['dual_ffn'][0]:.3f} wall, {t['llama'][1] / t['dual_ffn'][1]:.3f} CPU"
        )
    for clock, i in (("wall", 0), ("CPU", 1)):
        best = {k: min(x[i] for x in v) for k, v in times.items()}
        per = sorted(a[i] / b[i] for a, b in zip(times["llama"], times["dual_ffn"], strict=True))
        print(
            f"  {clock:4s} DualFFN {tokens / best['dual_ffn']:.1f} / Llama {tokens / best['llama']:.1f} tokens/s "
            f"(best); ratio {best['llama'] / best['dual_ffn']:.3f} best, {median(per):.3f} median of {repeats} "
            f"pairs ({per[0]:.3f}-{per[-1]:.3f}); target >= 0.95"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--audio-share", type=float, default=0.7)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", default="full,lora,audio", help="comma-separated: full, lora, audio")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--hidden", type=int, default=None, help="a narrower stack (smoke tests), not the real width"
    )
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--system-malloc", action="store_true", help="keep glibc's default mmap/trim behaviour")
    args = ap.parse_args()
    methods = args.methods.split(",")
    if unknown := set(methods) - {"full", "lora", "audio"}:
        sys.exit(f"error: unknown method(s) {sorted(unknown)}; choose from full, lora, audio")
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = False if args.system_malloc else keep_freed_memory()
    print(f"memory: {'freed memory kept for reuse (mallopt)' if kept else 'glibc defaults'}")
    print(f"CPU: {cpu_features()}, torch {torch.__version__}")

    dtype = getattr(torch, args.dtype)
    config = HiggsConfig(num_layers=args.layers, dual_ffn_layers=tuple(range(args.layers)))
    if args.hidden:
        config = config.replace(hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3, head_dim=32)
        config = config.replace(num_heads=args.hidden // 32, num_kv_heads=args.hidden // 96 or 1)
    g = torch.Generator().manual_seed(0)
    h = (
        torch.randn(args.batch, args.seq, config.hidden_size, generator=g)
        .mul_(0.5)
        .to(dtype)
        .requires_grad_()
    )
    mask = audio_mask(args.batch, args.seq, args.audio_share)
    rope = Rotary(config.to_llama_config())(h, torch.arange(args.seq)[None].expand(args.batch, -1))
    tokens = args.batch * args.seq
    print(
        f"{args.layers} layers, hidden {config.hidden_size}, FFN {config.intermediate_size}, {args.dtype}, "
        f"batch {args.batch} x {args.seq} tokens, {mask.float().mean():.0%} audio, "
        f"{torch.get_num_threads()} threads"
    )
    for method in methods:
        stacks = {
            kind: apply_method(build_stack(config, kind, dtype), kind, method)
            for kind in ("dual_ffn", "llama")
        }
        trained = {k: sum(p.numel() for p in s.parameters() if p.requires_grad) for k, s in stacks.items()}
        print(f"\n{method}: trained parameters DualFFN {trained['dual_ffn']:,}, Llama {trained['llama']:,}")
        steps = {kind: (lambda s=stack: train_step(s, h, mask, rope)) for kind, stack in stacks.items()}
        compare(steps, args.repeats, tokens)
        if args.profile:
            for kind, fn in steps.items():
                profile(f"{method} {kind}", fn)
        del stacks, steps


if __name__ == "__main__":
    main()
