"""DualFFNInspector: per layer, how much the text FFN and the audio FFN write on one generated sequence;
switch a layer's audio FFN off and see (norms, logits) and hear (a re-generation, same seed) the effect.

The sequence is a prompt followed by a short generation of the model itself, teacher-forced in one
forward, so the audio positions are the ones the model would really process.
"""

from __future__ import annotations

import ipywidgets as widgets
import torch

from higgslab.viz import ffn_norms, plot_ffn_norms, png
from higgslab.widgets.media import wav_bytes


class DualFFNInspector(widgets.VBox):
    """Parts: `switches` (a checkbox per layer: audio FFN on; disabled for non-DualFFN layers), `off_mode`
    ("skip" or "text": what a switched-off audio FFN becomes), `image`, `label`, `listen` (button),
    `player`; `baseline` (FFNNorms with every audio FFN on) and `last_drawn` = {"norms", "logit_change",
    "argmax_agreement"}; `last_audio` after `listen`. The switches act on `generator.model` itself."""

    def __init__(
        self,
        generator,
        prompt_ids: torch.Tensor,
        prompt_codes: torch.Tensor | None = None,
        max_new_tokens: int = 40,
        seed: int = 0,
        **sampling,
    ):
        self.generator, self.model = generator, generator.model
        for layer in self.model.layers:
            layer.audio_ffn = "audio"
        self.settings = dict(
            prompt_ids=prompt_ids,
            audio_codes=prompt_codes,
            max_new_tokens=max_new_tokens,
            seed=seed,
            **sampling,
        )
        first = generator.generate(**self.settings)
        self.input_ids, self.audio_codes = _teacher_forced(
            self.model.config, prompt_ids, prompt_codes, first.columns
        )
        self.baseline = ffn_norms(self.model, self.input_ids, self.audio_codes)
        self.switches = [
            widgets.Checkbox(
                value=True,
                description=f"layer {i}",
                indent=False,
                disabled=layer.kind != "dual_ffn",
                layout=widgets.Layout(width="auto"),
            )
            for i, layer in enumerate(self.model.layers)
        ]
        self.off_mode = widgets.ToggleButtons(options=["skip", "text"], description="off =")
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width="900px"))
        self.label = widgets.HTML()
        self.listen = widgets.Button(description="Listen (same seed)", icon="volume-up")
        self.player = widgets.Audio(format="wav", autoplay=False)
        self.last_drawn: dict = {}
        self.last_audio = first.audio
        if first.audio is not None:
            self.player.value = wav_bytes(first.audio, first.sample_rate)
        for box in self.switches:
            box.observe(lambda _: self.refresh(), names="value")
        self.off_mode.observe(lambda _: self.refresh(), names="value")
        self.listen.on_click(lambda _: self.hear())
        super().__init__(
            [
                widgets.HTML("<b>audio FFN on:</b>"),
                widgets.HBox(self.switches, layout=widgets.Layout(flex_flow="row wrap")),
                self.off_mode,
                self.label,
                self.image,
                widgets.HBox([self.listen, self.player]),
            ]
        )
        self.refresh()

    def refresh(self) -> None:
        """Apply the switches to the model, re-measure, redraw."""
        for layer, box in zip(self.model.layers, self.switches, strict=True):
            if layer.kind == "dual_ffn":
                layer.audio_ffn = "audio" if box.value else self.off_mode.value
        norms = ffn_norms(self.model, self.input_ids, self.audio_codes)
        audio_at = self.baseline_mask
        new, old = norms.audio_logits[audio_at], self.baseline.audio_logits[audio_at]
        change = float((new - old).abs().mean())
        agreement = float((new.argmax(-1) == old.argmax(-1)).float().mean())
        off = [i for i, s in enumerate(norms.switches) if s != "audio"]
        self.image.value = png(plot_ffn_norms(norms, self.baseline))
        self.label.value = (
            f"audio FFN off in layers {off or 'none'}; audio logits vs all on: mean |Δ| <code>{change:.4g}</code>, "
            f"argmax agreement <code>{agreement:.1%}</code>"
        )
        self.last_drawn = {"norms": norms, "logit_change": change, "argmax_agreement": agreement}

    @property
    def baseline_mask(self) -> torch.Tensor:
        """`[T]` bool: the audio-out positions of the inspected sequence."""
        return self.input_ids == self.model.config.audio_out_token_id

    def hear(self) -> None:
        """Generate again with the current switches and the same seed; play it."""
        result = self.generator.generate(**self.settings)
        self.last_audio = result.audio
        if result.audio is not None:
            self.player.value = wav_bytes(result.audio, result.sample_rate)

    def reset(self) -> None:
        """Every audio FFN back on."""
        for box in self.switches:
            box.value = True


def _teacher_forced(config, prompt_ids, prompt_codes, columns) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt `[T]` + one `<|AUDIO_OUT|>` per generated column `[n_q, S]` → (ids `[T + S]`, codes `[n_q, F + S]`)."""
    prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.long).cpu()
    ids = torch.cat(
        [prompt_ids, torch.full((columns.shape[1],), config.audio_out_token_id, dtype=torch.long)]
    )
    codes = columns.cpu() if prompt_codes is None else torch.cat([prompt_codes.cpu(), columns.cpu()], dim=1)
    return ids, codes
