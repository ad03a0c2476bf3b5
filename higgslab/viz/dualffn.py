"""How much each DualFFN layer's text FFN and audio FFN write into the residual stream on one sequence.

`ffn_norms` runs one forward with hooks on every layer's `mlp` (text positions) and `audio_mlp` (audio
positions) and reports the mean L2 norm per position of what each FFN returned. A layer whose audio FFN
is switched to "text" routes audio positions through `mlp`: that second call counts as its audio output;
"skip" writes nothing (norm 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure


@dataclass
class FFNNorms:
    text: np.ndarray  # [L] mean ‖FFN output‖ over text positions (nan: no text position reached the FFN)
    audio: np.ndarray  # [L] the same over audio-out positions (0 for a skipped audio FFN)
    audio_logits: torch.Tensor  # [T, n_q, codebook_entries] of the forward, to compare switch settings
    switches: list[str]  # each layer's `audio_ffn` during the forward


def _mean_norm(outputs: list[torch.Tensor]) -> float:
    if not outputs:
        return float("nan")
    flat = torch.cat([o.reshape(-1, o.shape[-1]).float() for o in outputs])
    return float(flat.norm(dim=-1).mean())


@torch.inference_mode()
def ffn_norms(model, input_ids: torch.Tensor, audio_codes: torch.Tensor | None = None) -> FFNNorms:
    """One forward of `input_ids` `[T]` (+ `audio_codes` `[n_q, F]`) with FFN hooks → `FFNNorms`."""
    calls: dict[tuple[int, str], list[torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(model.layers):
        for name in ("mlp", "audio_mlp"):
            if hasattr(layer, name):
                hook = lambda _m, _in, out, key=(i, name): calls.setdefault(key, []).append(out)  # noqa: E731
                handles.append(getattr(layer, name).register_forward_hook(hook))
    try:
        codes = None if audio_codes is None else audio_codes[None].to(model.device)
        out = model(input_ids[None].to(model.device), codes)
    finally:
        for h in handles:
            h.remove()
    text, audio = [], []
    for i, layer in enumerate(model.layers):
        mlp_calls = calls.get((i, "mlp"), [])
        text.append(_mean_norm(mlp_calls[:1]))  # routed() calls the text side first
        if layer.kind != "dual_ffn":  # audio positions share the text FFN (llama) or skip the layer
            audio.append(float("nan"))
        elif layer.audio_ffn == "audio":
            audio.append(_mean_norm(calls.get((i, "audio_mlp"), [])))
        elif layer.audio_ffn == "text":
            audio.append(_mean_norm(mlp_calls[1:]))
        else:
            audio.append(0.0)
    return FFNNorms(
        np.array(text),
        np.array(audio),
        out.audio_logits[0].float().cpu(),
        [layer.audio_ffn for layer in model.layers],
    )


def plot_ffn_norms(norms: FFNNorms, baseline: FFNNorms | None = None) -> Figure:
    """Per-layer bars of text vs audio FFN output norms; layers whose audio FFN is not "audio" are labelled."""
    L = len(norms.text)
    x = np.arange(L)
    fig = Figure(figsize=(max(6, 0.5 * L + 3), 3.4), layout="constrained")
    ax = fig.subplots()
    ax.bar(x - 0.2, norms.text, 0.4, label="text FFN (text positions)", color="#1f77b4")
    ax.bar(x + 0.2, norms.audio, 0.4, label="audio FFN (audio positions)", color="#ff7f0e")
    if baseline is not None:
        ax.scatter(x + 0.2, baseline.audio, marker="_", s=200, color="k", label="audio FFN, all on")
    for i, switch in enumerate(norms.switches):
        if switch != "audio":
            ax.annotate(
                switch, (i + 0.2, 0), ha="center", va="bottom", color="#d62728", fontsize=8, rotation=90
            )
    ax.set(xticks=x, xlabel="layer", ylabel="mean ‖FFN output‖", title="DualFFN: what each FFN writes")
    ax.legend(fontsize=8)
    return fig
