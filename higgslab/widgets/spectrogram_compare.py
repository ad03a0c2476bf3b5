"""SpectrogramCompare: original vs reconstruction log-mels on one colour scale, their difference, the mel
distance, and both clips playable."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np

from higgslab.viz import compare_mels, plot_spectrogram_compare, png
from higgslab.widgets.media import wav_bytes


class SpectrogramCompare(widgets.VBox):
    """Parts: `image` (the three-panel plot), `label` (mel distance), `original_player`,
    `reconstruction_player`; `last_drawn` holds the mels and distance behind the current image.
    Call `update(reconstruction)` to redraw against the same original."""

    def __init__(
        self, original: np.ndarray, reconstruction: np.ndarray, sample_rate: int = 24000, title: str = ""
    ):
        self.original = np.asarray(original, dtype=np.float32).reshape(-1)
        self.sample_rate = sample_rate
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width="900px"))
        self.label = widgets.HTML()
        self.original_player = widgets.Audio(
            value=wav_bytes(self.original, sample_rate), format="wav", autoplay=False
        )
        self.reconstruction_player = widgets.Audio(format="wav", autoplay=False)
        self.last_drawn: dict = {}
        players = widgets.HBox(
            [
                widgets.VBox([widgets.Label("original"), self.original_player]),
                widgets.VBox([widgets.Label("reconstruction"), self.reconstruction_player]),
            ]
        )
        super().__init__([self.label, self.image, players])
        self.update(reconstruction, title)

    def update(self, reconstruction: np.ndarray, title: str = "") -> None:
        """Redraw with a new reconstruction `[samples]` of the same original."""
        reconstruction = np.asarray(reconstruction, dtype=np.float32).reshape(-1)
        mels = compare_mels(self.original, reconstruction, self.sample_rate)
        self.image.value = png(plot_spectrogram_compare(mels, self.sample_rate, title))
        self.reconstruction_player.value = wav_bytes(reconstruction, self.sample_rate)
        self.label.value = f"<b>{title}</b> mel distance: <code>{mels['mel_distance']:.4f}</code>"
        self.last_drawn = {**mels, "audio": reconstruction}
