"""The original-vs-reconstruction comparison: log-mels on one colour scale, their difference, the distance.

The log-mel recipe and the distance are `higgslab.tokenizer.stats`' (log10 mel power, hop 256 at 24 kHz),
so the number printed above a plot is the one the tokenizer reports elsewhere, measured on the pixels shown.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from higgslab.tokenizer.stats import log_mel, log_mel_distance

HOP = 256  # stats.log_mel's default hop, for the time axis


def compare_mels(original: np.ndarray, reconstruction: np.ndarray, sample_rate: int = 24000) -> dict:
    """Both clips (trimmed to the shorter) as log-mels `[n_mels, frames]`, their difference, the mel distance."""
    n = min(len(original), len(reconstruction))
    original, reconstruction = original[:n], reconstruction[:n]
    a, b = log_mel(original, sample_rate), log_mel(reconstruction, sample_rate)
    distance = log_mel_distance(original, reconstruction, sample_rate)
    return {"original": a, "reconstruction": b, "difference": b - a, "mel_distance": distance}


def plot_spectrogram_compare(mels: dict, sample_rate: int = 24000, title: str = "") -> Figure:
    """Three panels from `compare_mels`: original and reconstruction on one colour scale, then their difference."""
    fig = Figure(figsize=(10, 6), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    lo = min(mels["original"].min(), mels["reconstruction"].min())
    hi = max(mels["original"].max(), mels["reconstruction"].max())
    seconds = mels["original"].shape[-1] * HOP / sample_rate
    extent = (0, seconds, 0, mels["original"].shape[0])
    for ax, key in zip(axes[:2], ("original", "reconstruction"), strict=True):
        im = ax.imshow(
            mels[key], origin="lower", aspect="auto", vmin=lo, vmax=hi, extent=extent, cmap="magma"
        )
        ax.set_ylabel(f"{key}\nmel band")
    fig.colorbar(im, ax=axes[:2], label="log10 power")
    diff = mels["difference"]
    bound = float(np.abs(diff).max()) or 1.0
    im = axes[2].imshow(
        diff, origin="lower", aspect="auto", vmin=-bound, vmax=bound, extent=extent, cmap="coolwarm"
    )
    axes[2].set_ylabel("difference\nmel band")
    axes[2].set_xlabel("time (s)")
    fig.colorbar(im, ax=axes[2], label="recon − orig")
    fig.suptitle(f"{title}  mel distance {mels['mel_distance']:.3f}".strip())
    return fig
