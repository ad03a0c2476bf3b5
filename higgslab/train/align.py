"""Guided attention: a training-only prior that some heads read the text at the pace of the speech.

A decoder-only TTS model has to discover by itself which text token each audio frame speaks. The mini LM
did not within an hour of this CPU: the right text instead of another sentence's barely lowered its held-out
loss on codebook 0, and its speech was English-like but not the sentence asked for (bench/RESULTS.md,
*LM: making it read the text*).
Guided attention (Tachibana et al., 2017) makes the alignment part of the objective. For each guided head
and each audio query that predicts frame j of N, with text token i of M at n_i = (i + ½) / M:

    loss = 1 − mean over queries of  Σ_i A[query, text token i] · exp(−(n_i − j / N)² / 2 g²)

It is 0 when the head puts all its weight on the text token under the diagonal, 1 when it ignores the
text. Only training changes: generation runs the same model, which has learnt to look there by itself.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from higgslab.errors import HiggsLabError


def diagonal_prior(
    spans: list[tuple[int, int, int, int]], T: int, width: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian band of every example of a right-padded batch.

    spans: per example (text_start, text_end, first_audio, frames): the text tokens' positions
    [text_start, text_end), the first audio position, and the clip's length N in frames.
    Returns prior `[B, T, T]` (query × key; non-zero only for audio queries × text keys) and the
    bool `[B, T]` of the queries that count (the audio positions that predict a frame of codebook 0).
    """
    prior = torch.zeros(len(spans), T, T)
    queries = torch.zeros(len(spans), T, dtype=torch.bool)
    for b, (t0, t1, a0, frames) in enumerate(spans):
        if t1 == t0:  # no text (an unconditional example): nothing to align, its queries do not count
            continue
        # audio position a0 + j predicts column j + 1, which holds codebook 0's frame j (column 0 is bos)
        progress = torch.arange(frames) / frames  # [N]
        where = (torch.arange(t1 - t0) + 0.5) / (t1 - t0)  # [M]
        band = torch.exp(-((where[None, :] - progress[:, None]) ** 2) / (2 * width**2))  # [N, M]
        prior[b, a0 : a0 + frames, t0:t1] = band
        queries[b, a0 : a0 + frames] = True
    return prior, queries


class GuidedAttention:
    """Records the input of chosen layers' shared attention, then scores their heads against the prior.

        guide = GuidedAttention(model, layers=[1, 2, 3], heads=[0])
        hidden = model(ids, codes).last_hidden_state      # the hooks record each layer's input
        loss = audio_loss + weight * guide.loss(prior, queries)

    The attention weights are recomputed from the recorded input (q and k of the guided heads only, with the
    layer's own projections and rotary embedding), so the model keeps its fused attention kernel.
    """

    def __init__(self, model: nn.Module, layers: list[int], heads: list[int]):
        n_layers, n_heads = len(model.layers), model.config.num_heads
        if not all(0 <= i < n_layers for i in layers) or not all(0 <= h < n_heads for h in heads):
            raise HiggsLabError(
                f"guided attention: layers {list(layers)} / heads {list(heads)} do not exist in a model "
                f"of {n_layers} layers × {n_heads} heads"
            )
        self.heads = list(heads)
        self.inputs: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.attentions = {i: model.layers[i].self_attn for i in layers}
        for i, attn in self.attentions.items():
            attn.register_forward_pre_hook(self._recorder(i), with_kwargs=True)

    def _recorder(self, i: int):
        def record(module, args, kwargs):
            self.inputs[i] = (kwargs["hidden_states"], kwargs["position_embeddings"])

        return record

    def weights(self, i: int) -> torch.Tensor:
        """Causal attention weights `[B, heads, T, T]` of the guided heads of layer `i` in the last forward."""
        attn, (x, (cos, sin)) = self.attentions[i], self.inputs[i]
        B, T, d = *x.shape[:2], attn.head_dim
        heads = torch.tensor(self.heads)
        q = attn.q_proj(x).view(B, T, -1, d).transpose(1, 2)[:, heads]  # [B, h, T, d]
        k = attn.k_proj(x).view(B, T, -1, d).transpose(1, 2)[:, heads // attn.num_key_value_groups]
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        scores = (q @ k.transpose(-1, -2)).float() * attn.scaling
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(-1)

    def loss(self, prior: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """1 − the mean attention mass inside the band, over guided layers, heads and counted queries."""
        if not queries.any():  # a batch without text
            self.inputs.clear()
            return prior.new_zeros(())
        per_layer = []
        for i in self.attentions:
            inside = (self.weights(i) * prior[:, None]).sum(-1)  # [B, h, T]
            per_layer.append(inside.transpose(1, 2)[queries].mean())
        self.inputs.clear()  # the recorded activations belong to this forward's graph only
        return 1 - torch.stack(per_layer).mean()
