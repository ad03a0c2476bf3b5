"""The delayed token grid as the LM emits it (one column per step), beside the frames it reverts to.

Stream tokens are drawn in their own colours: stream-bos (codebook not started) light grey, stream-eos
(codebook ended) red; real codes use the viridis scale. Columns not generated yet stay blank.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from higgslab import delay

BOS_COLOR, EOS_COLOR = "#d9d9d9", "#d62728"


def frames_at_step(columns: torch.Tensor, step: int, ids: delay.StreamIds) -> torch.Tensor:
    """The complete frames `[n_q, F]` once the first `step` columns (the all-bos column included) exist;
    `ids`: the model's stream ids (`GenerationResult.stream_ids`)."""
    step = max(0, min(step, columns.shape[1]))
    if step < columns.shape[0]:  # fewer columns than codebooks: nothing can be complete
        return columns.new_zeros((columns.shape[0], 0))
    return delay.finished_frames(columns[:, :step], ids)


def _draw_grid(ax, grid: np.ndarray, ids: delay.StreamIds) -> None:
    real = np.ma.masked_where(grid >= ids.codebook_size, grid)
    ax.imshow(
        real, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=ids.codebook_size - 1
    )
    for token, color in ((ids.bos, BOS_COLOR), (ids.eos, EOS_COLOR)):
        ax.imshow(
            np.ma.masked_where(grid != token, grid),
            aspect="auto",
            interpolation="nearest",
            cmap=ListedColormap([color]),
        )


def plot_token_stream(columns: torch.Tensor, ids: delay.StreamIds, step: int | None = None) -> Figure:
    """`columns` `[n_q, S]` as generated (column 0 all stream-bos; `ids` the model's stream ids); show the
    first `step` of them (default all) and, beside them, the reverted complete frames."""
    columns = torch.as_tensor(columns)
    n_q, S = columns.shape
    step = S if step is None else max(0, min(step, S))
    frames = frames_at_step(columns, step, ids)
    grid = np.full((n_q, S), -1, dtype=np.int64)
    grid[:, :step] = columns[:, :step].numpy()
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    _draw_grid(left, np.ma.masked_less(grid, 0), ids)
    left.set(
        xlim=(-0.5, S - 0.5),
        xlabel="LM step (column)",
        ylabel="codebook",
        title=f"delayed columns as generated: {step} / {S}",
    )
    left.legend(
        handles=[Patch(color=BOS_COLOR, label="stream-bos"), Patch(color=EOS_COLOR, label="stream-eos")],
        loc="upper right",
        fontsize=7,
    )
    total = max(S - n_q, 1)
    shown = np.full((n_q, total), -1, dtype=np.int64)
    shown[:, : frames.shape[1]] = frames.numpy()[:, :total]
    _draw_grid(right, np.ma.masked_less(shown, 0), ids)
    right.set(xlim=(-0.5, total - 0.5), xlabel="frame", title=f"reverted frames: {frames.shape[1]} complete")
    return fig
