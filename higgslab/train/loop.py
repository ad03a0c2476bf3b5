"""The training loop both stages share: resumable checkpoints, a progress bar, a loss curve.

    history = run_training(module, params, step_fn, run_dir, TrainSettings(steps=..., lr=...))

Every source of randomness in a step comes from `torch.Generator().manual_seed(seed + step)` handed to
`step_fn`, and the learning rate is a pure function of the step, so a run resumed from `run_dir/last.pt`
(module + optimizer state + step + loss history) continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

CHECKPOINT = "last.pt"
CURVE = "loss.png"


@dataclass(frozen=True)
class TrainSettings:
    """How `run_training` runs: the schedule, the seed, clipping, checkpoints and evaluation cadence."""

    steps: int  # optimizer steps in all (a resumed run stops here too)
    lr: float  # peak learning rate (`learning_rate`)
    warmup: int = 50
    seed: int = 0
    grad_clip: float = 1.0  # max global gradient norm
    weight_decay: float = 0.0  # AdamW, decoupled: matrices and embedding tables only, not norms or biases
    checkpoint_every: int = 100
    eval_every: int = 0  # 0: evaluate at the last step only
    title: str = "training"  # progress bar and loss-curve title
    resume: bool = True  # continue from `run_dir/last.pt` when it exists


def learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to 10% of it at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(
    path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, step: int, history: list
) -> None:
    """Written to a temporary file and renamed, so an interrupted save leaves the previous checkpoint."""
    state = {
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "history": history,
    }
    write_state(path, state)


def write_state(path: Path, state: dict) -> None:
    """`torch.save(state)` into a temporary file renamed onto `path`: never a half-written checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """Every logged quantity against the step, one panel each, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for row in history for k in row if k != "step"})
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        rows = [r for r in history if key in r]
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="." if len(rows) < 50 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_training(
    module: nn.Module,
    params: Iterable[nn.Parameter],
    step_fn: Callable[[int, torch.Generator], dict[str, torch.Tensor]],
    run_dir: str | Path,
    settings: TrainSettings,
    eval_fn: Callable[[int], dict[str, float]] | None = None,
    after_step: Callable[[int, torch.Generator, dict], None] | None = None,
) -> list[dict]:
    """Train `module` for `settings.steps` optimizer steps; returns the loss history (one dict per step).

    step_fn(step, generator) -> losses, with "loss" the one to minimise (backward is called here).
    after_step(step, generator, losses) runs after the optimizer step (e.g. EMA codebook updates), with the
    same generator. eval_fn(step) -> metrics, logged into the history every `settings.eval_every` steps and
    at the end.
    """
    from tqdm import tqdm

    s = settings
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in params if p.requires_grad]
    groups = [{"params": params}]  # one group without decay: what checkpoints of runs without it hold
    if s.weight_decay:
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
            {"params": [p for p in params if p.dim() < 2]},
        ]
    optimizer = torch.optim.AdamW(groups, lr=s.lr, betas=(0.8, 0.99), weight_decay=0.0)
    start, history = 0, []
    if s.resume and (run_dir / CHECKPOINT).is_file():
        state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
    module.train()
    bar = tqdm(range(start, s.steps), initial=start, total=s.steps, desc=s.title, unit="step")
    for step in bar:
        generator = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, s.lr, s.warmup, s.steps)
        losses = step_fn(step, generator)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        optimizer.step()
        if after_step is not None:
            after_step(step, generator, losses)
        row = {"step": step + 1, **{k: float(v.detach()) for k, v in losses.items() if v.dim() == 0}}
        row["grad_norm"] = float(grad_norm)
        last = step + 1 == s.steps
        if eval_fn is not None and ((s.eval_every and (step + 1) % s.eval_every == 0) or last):
            module.eval()
            row.update(eval_fn(step + 1))
            module.train()
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
        if (step + 1) % s.checkpoint_every == 0 or last:
            save_checkpoint(run_dir / CHECKPOINT, module, optimizer, step + 1, history)
            plot_history(history, run_dir / CURVE, s.title)
    module.eval()
    return history
