"""The training loop both stages share: resumable checkpoints, a progress bar, a loss curve.

    history = run_training(module, params, step_fn, run_dir, steps=..., lr=..., ...)

Every source of randomness in a step comes from `torch.Generator().manual_seed(seed + step)` handed to
`step_fn`, and the learning rate is a pure function of the step, so a run resumed from `run_dir/last.pt`
(module + optimizer state + step + loss history) continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

CHECKPOINT = "last.pt"
CURVE = "loss.png"


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
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "module": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "history": history,
        },
        tmp,
    )
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
    steps: int,
    lr: float,
    warmup: int = 50,
    seed: int = 0,
    grad_clip: float = 1.0,
    checkpoint_every: int = 100,
    eval_fn: Callable[[int], dict[str, float]] | None = None,
    eval_every: int = 0,
    after_step: Callable[[int, torch.Generator, dict], None] | None = None,
    title: str = "training",
    resume: bool = True,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Train `module` for `steps` optimizer steps; returns the loss history (one dict per step).

    step_fn(step, generator) -> losses, with "loss" the one to minimise (backward is called here).
    after_step(step, generator, losses) runs after the optimizer step (e.g. EMA codebook updates), with the
    same generator. eval_fn(step) -> metrics, logged into the history every `eval_every` steps and at the end.
    weight_decay (AdamW, decoupled) applies to matrices and embedding tables only, not to norms or biases.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in params if p.requires_grad]
    groups = [{"params": params}]  # one group without decay: what checkpoints of runs without it hold
    if weight_decay:
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2]},
        ]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.8, 0.99), weight_decay=0.0)
    start, history = 0, []
    if resume and (run_dir / CHECKPOINT).is_file():
        state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
    module.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=title, unit="step")
    for step in bar:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, lr, warmup, steps)
        losses = step_fn(step, generator)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        if after_step is not None:
            after_step(step, generator, losses)
        row = {"step": step + 1, **{k: float(v.detach()) for k, v in losses.items() if v.dim() == 0}}
        row["grad_norm"] = float(grad_norm)
        last = step + 1 == steps
        if eval_fn is not None and ((eval_every and (step + 1) % eval_every == 0) or last):
            module.eval()
            row.update(eval_fn(step + 1))
            module.train()
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
        if (step + 1) % checkpoint_every == 0 or last:
            save_checkpoint(run_dir / CHECKPOINT, module, optimizer, step + 1, history)
            plot_history(history, run_dir / CURVE, title)
    module.eval()
    return history
