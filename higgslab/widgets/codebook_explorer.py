"""CodebookExplorer: one clip's codes (heat map, per-codebook usage) and a "first k codebooks" slider that
re-decodes and redraws the original-vs-reconstruction spectrograms and the player."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch

from higgslab.viz import plot_codes, png
from higgslab.widgets.spectrogram_compare import SpectrogramCompare


class CodebookExplorer(widgets.VBox):
    """Parts: `codes` `[n_q, T]`, `codes_image` (heat map + usage), `slider` (k = 1..n_q), `compare`
    (a `SpectrogramCompare`; its `last_drawn` is the data behind the current plot), `player` (the
    reconstruction from k codebooks). Setting `slider.value` re-decodes at once."""

    def __init__(
        self, tokenizer, audio: np.ndarray, sample_rate: int = 24000, codes: torch.Tensor | None = None
    ):
        self.tokenizer = tokenizer
        rate = tokenizer.sample_rate
        original = tokenizer.prepare(np.asarray(audio, dtype=np.float32), sample_rate)[0, 0].cpu().numpy()
        self.codes = tokenizer.encode(original, rate) if codes is None else torch.as_tensor(codes)
        n_q = self.codes.shape[0]
        self.codes_image = widgets.Image(
            value=png(plot_codes(self.codes, tokenizer.codebook_size, tokenizer.frame_rate)),
            format="png",
            layout=widgets.Layout(width="100%", max_width="900px"),
        )
        self.slider = widgets.IntSlider(
            value=n_q,
            min=1,
            max=n_q,
            step=1,
            description="codebooks k",
            continuous_update=False,
            style={"description_width": "initial"},
        )
        self.compare = SpectrogramCompare(
            original, tokenizer.decode(self.codes, k=n_q), rate, title=f"k = {n_q}"
        )
        self.player = self.compare.reconstruction_player
        self.slider.observe(self._on_k, names="value")
        super().__init__([self.codes_image, self.slider, self.compare])

    @property
    def k(self) -> int:
        return self.slider.value

    @property
    def last_drawn(self) -> dict:
        return {**self.compare.last_drawn, "k": self.k}

    def _on_k(self, change) -> None:
        k = change["new"]
        self.compare.update(self.tokenizer.decode(self.codes, k=k), title=f"k = {k}")
