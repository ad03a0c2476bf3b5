"""Matplotlib views of every stage: spectrograms, codes, delayed token streams, DualFFN norms.

Each function returns a `matplotlib.figure.Figure` built without pyplot, so it displays once in a notebook
cell and can be rendered to PNG for a widget (`png`) without leaking figures.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

from higgslab.viz.codes import plot_codes
from higgslab.viz.demo import demo_clip
from higgslab.viz.dualffn import FFNNorms, ffn_norms, plot_ffn_norms
from higgslab.viz.spectrogram import compare_mels, plot_spectrogram_compare
from higgslab.viz.tokens import frames_at_step, plot_token_stream


def png(fig: Figure, dpi: int = 80) -> bytes:
    """A figure rendered to PNG bytes (for `ipywidgets.Image`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


__all__ = [
    "FFNNorms",
    "compare_mels",
    "demo_clip",
    "ffn_norms",
    "frames_at_step",
    "plot_codes",
    "plot_ffn_norms",
    "plot_spectrogram_compare",
    "plot_token_stream",
    "png",
]
