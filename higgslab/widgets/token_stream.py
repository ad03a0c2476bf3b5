"""TokenStreamViewer: step through a generation column by column: the delayed grid as emitted (stream
bos/eos marked) and the complete frames it reverts to so far."""

from __future__ import annotations

import ipywidgets as widgets
import torch

from higgslab.delay import StreamIds
from higgslab.viz import frames_at_step, plot_token_stream, png


class TokenStreamViewer(widgets.VBox):
    """Parts: `columns` `[n_q, S]` (with the model's stream `ids`), `step` (slider 0..S: columns emitted so
    far), `play` (animates the slider), `image`, `label`; `last_drawn` = {"step", "frames" `[n_q, F]`}
    behind the current image."""

    def __init__(self, columns: torch.Tensor, ids: StreamIds, step: int | None = None):
        self.columns = torch.as_tensor(columns).cpu()
        self.ids = ids
        S = self.columns.shape[1]
        self.step = widgets.IntSlider(value=S if step is None else step, min=0, max=S, description="step")
        self.play = widgets.Play(min=0, max=S, interval=150, description="play")
        widgets.jslink((self.play, "value"), (self.step, "value"))
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width="1000px"))
        self.label = widgets.HTML()
        self.last_drawn: dict = {}
        self.step.observe(lambda change: self.draw(change["new"]), names="value")
        super().__init__([widgets.HBox([self.play, self.step]), self.label, self.image])
        self.draw(self.step.value)

    @classmethod
    def from_result(cls, result) -> TokenStreamViewer:
        """From a `GenerationResult` (its `.columns` and `.stream_ids`)."""
        return cls(result.columns, result.stream_ids)

    def draw(self, step: int) -> None:
        frames = frames_at_step(self.columns, step, self.ids)
        self.image.value = png(plot_token_stream(self.columns, self.ids, step))
        column = self.columns[:, step - 1] if step else None
        what = "" if column is None else " ".join(_token_name(int(t), self.ids) for t in column)
        self.label.value = f"step {step}: {frames.shape[1]} complete frames. last column: <code>{what}</code>"
        self.last_drawn = {"step": step, "frames": frames}


def _token_name(token: int, ids: StreamIds) -> str:
    return {ids.bos: "BOS", ids.eos: "EOS"}.get(token, str(token))
