"""Audio codes `[n_q, T]` as pictures: the heat map of every code, and how each codebook uses its entries."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from higgslab.tokenizer.stats import codebook_stats, codebook_usage


def plot_codes(
    codes: torch.Tensor | np.ndarray, codebook_size: int = 1024, frame_rate: float = 25.0
) -> Figure:
    """Left: the `[n_q, T]` codes as a heat map (rows = codebooks). Right: each codebook's usage histogram,
    entries sorted by count, with how many distinct entries it used and its perplexity."""
    codes = np.asarray(codes)
    n_q, T = codes.shape
    usage = codebook_usage([codes], codebook_size)
    perplexity = codebook_stats(usage).perplexity
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    heat_ax, hist_ax = fig.subplots(1, 2, width_ratios=(2, 1))
    im = heat_ax.imshow(
        codes,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        vmin=0,
        vmax=codebook_size - 1,
        extent=(0, T / frame_rate, n_q - 0.5, -0.5),
    )
    heat_ax.set(xlabel="time (s)", ylabel="codebook", title=f"codes [{n_q} × {T}]")
    fig.colorbar(im, ax=heat_ax, label="code")
    ranks = np.arange(1, codebook_size + 1)
    for k, counts in enumerate(usage):
        used = int((counts > 0).sum())
        label = f"cb {k}: {used} used, ppl {perplexity[k]:.0f}"
        hist_ax.step(ranks, np.sort(counts)[::-1], where="post", label=label)
    hist_ax.set(xscale="log", xlabel="entry rank", ylabel="count", title="codebook usage (sorted)")
    hist_ax.legend(fontsize=7, ncol=2)
    return fig
