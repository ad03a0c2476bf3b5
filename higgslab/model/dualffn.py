"""The DualFFN decoder layer: shared attention, separate norms + FFN for audio-out positions.

    text  text  audio audio audio text            positions of one sequence
       \\    \\    |     /     /    /
            shared self-attention                 (audio positions may first pass a separate
       /    /    |     \\     \\    \\               audio-only attention: `audio_self_attention`)
    text FFN  ...  audio FFN  ...  text FFN       each position through its own norm + SwiGLU

Built from transformers' Llama pieces (attention, RMSNorm, MLP). Three kinds of layer (original code), set
only by the config (`HiggsConfig.layer_kind`: `audio_adapter_type` and `audio_dual_ffn_layers`):
- `dual_ffn`: as drawn above.
- `fast_forward`: audio positions skip the layer (their hidden state passes through unchanged) and
  text positions do not attend to them.
- `llama`: a plain Llama layer; audio positions use the text norms and FFN.

Routing is by `Route`: a pure-audio step (every decode step of TTS) runs only the audio path, with no
mask at all; a pure-text batch only the text path; a mixed prefill gathers each side by flat index,
runs it, and scatters it back (`index_select`/`index_copy`), never boolean-mask indexing.

Research switches, no model edits needed:
- `layer.audio_ffn = "audio" | "text" | "skip"`: audio positions use their own FFN (default), the text
  norm + FFN, or no FFN at all.
- `model.config.dual_ffn_layers` / `adapter_type`: a layer's kind is read from the model's config on every
  forward, so editing them turns a DualFFN layer into a fast-forward or plain Llama one (a layer built
  without an audio FFN cannot become a DualFFN one).
- forward hooks on `layer.mlp` / `layer.audio_mlp` see exactly the text / audio positions' FFN outputs
  (`[N_text, D]` / `[N_audio, D]` in a mixed batch, `[B, T, D]` in a pure one).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

from higgslab.config import HiggsConfig, LayerKind
from higgslab.model.packing import PackedProjections


@dataclass
class Route:
    """Which positions of a `[B, T]` batch are audio-out positions, computed once per forward.

    mode: "audio" (all positions), "text" (none) or "mixed"; for "mixed", `order` lists the flat
    positions (`B * T`) text first, then audio, so one gather makes each side a contiguous block.
    `audio_mask` `[B, T]` is kept for the per-position norms and for the layers whose attention must see
    it (fast-forward, audio self-attention).
    """

    mode: Literal["audio", "text", "mixed"]
    audio_mask: torch.Tensor | None = None
    order: torch.Tensor | None = None  # [B*T] flat positions, text ones first, then audio ones
    unorder: torch.Tensor | None = None  # its inverse permutation
    n_text: int = 0

    @classmethod
    def from_mask(cls, audio_mask: torch.Tensor) -> Route:
        """From a bool `[B, T]` mask. Reads the mask on the host once: use `Route.audio()` in decode loops."""
        n_audio = int(audio_mask.sum())
        if n_audio == 0:
            return cls("text", audio_mask)
        if n_audio == audio_mask.numel():
            return cls("audio", audio_mask)
        order = torch.argsort(audio_mask.reshape(-1).to(torch.uint8), stable=True)  # text first, order kept
        return cls("mixed", audio_mask, order, torch.argsort(order), audio_mask.numel() - n_audio)

    @classmethod
    def audio(cls) -> Route:
        """Every position is audio-out: no mask, no host sync (graph-capturable decode step)."""
        return cls("audio")

    @classmethod
    def text(cls) -> Route:
        return cls("text")


# transformers 5.24 renamed LlamaAttention's `past_key_values` to `cache` (the old name warns on every call)
_CACHE_KWARG = (
    "cache" if "cache" in inspect.signature(LlamaAttention.forward).parameters else "past_key_values"
)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`layer(x)` for 2-D `x`: a bare matmul against the weight's transposed view (F.linear's 3-D
    handling costs more than the product itself at decode-step sizes). Quantized layers run their kernel."""
    if not isinstance(layer, nn.Linear):
        return layer(x)
    if layer.bias is not None:
        return F.linear(x, layer.weight, layer.bias)
    return torch.mm(x, layer.weight.t())


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The unscaled half of transformers' LlamaRMSNorm, op for op: normalise in float32, cast back."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """`norm(x)` without the module call (the decode step counts microseconds)."""
    return norm.weight * _normalize(x, norm.variance_epsilon)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def routed(x: torch.Tensor, route: Route, text_fn, audio_fn) -> torch.Tensor:
    """Apply `text_fn` to text positions and `audio_fn` to audio positions of `x` `[B, T, D]`.

    Mixed: one gather puts the text rows, then the audio rows, in two contiguous blocks; each function
    runs on its block (`[N_text, D]`, `[N_audio, D]`); one gather puts the results back in place."""
    if route.mode == "text":
        return text_fn(x)
    if route.mode == "audio":
        return audio_fn(x)
    grouped = x.reshape(-1, x.shape[-1]).index_select(0, route.order)
    out = torch.cat([text_fn(grouped[: route.n_text]), audio_fn(grouped[route.n_text :])])
    return out.index_select(0, route.unorder).view(*x.shape[:-1], -1)


def routed_norm(h: torch.Tensor, route: Route, text_norm: nn.Module, audio_norm: nn.Module) -> torch.Tensor:
    """Each position through its own RMSNorm, without moving rows: the statistics are the same
    computation for both, only the scale differs, so a mixed batch picks the scale per position.
    Bit-identical to applying each LlamaRMSNorm to its rows."""
    if route.mode == "text":
        return text_norm(h)
    if route.mode == "audio":
        return audio_norm(h)
    scale = torch.where(route.audio_mask.unsqueeze(-1), audio_norm.weight, text_norm.weight)
    return scale * _normalize(h, text_norm.variance_epsilon)


@dataclass
class AttentionMasks:
    """Bool attention masks `[B, 1, T, S]` (True = attend) for one forward, shared by all layers.

    `shared`: causal + padding. `text_only`: also hides audio keys (fast-forward layers).
    `audio_only`: audio queries see only audio keys (separate audio attention). None means "causal,
    no padding" (sdpa's fused causal path) for `shared`, and "not needed" for the other two.
    """

    shared: torch.Tensor | None
    text_only: torch.Tensor | None = None
    audio_only: torch.Tensor | None = None


class DualFFNLayer(nn.Module):
    """One decoder layer of kind `dual_ffn`, `fast_forward` or `llama` (module names = checkpoint keys)."""

    def __init__(self, config: HiggsConfig, layer_idx: int, attn_slot: int):
        super().__init__()
        llama = config.to_llama_config()
        self.config = config  # the model's: `kind` is read from it, never stored here
        self.layer_idx = layer_idx
        self.self_attn = LlamaAttention(llama, layer_idx=attn_slot)
        self.mlp = LlamaMLP(llama)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.audio_ffn: Literal["audio", "text", "skip"] = "audio"
        self.packed: PackedProjections | None = None  # fused decode matrices: model/packing.py
        self.has_audio_attn = self.kind == "dual_ffn" and config.audio_self_attention
        if self.kind == "dual_ffn":
            self.audio_mlp = LlamaMLP(llama)
            self.audio_input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.audio_post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if self.has_audio_attn:
            # the original numbers this attention's cache slot right after the shared one
            self.audio_attn = LlamaAttention(llama, layer_idx=attn_slot + 1)
            self.audio_post_audio_attn_layer_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    @property
    def kind(self) -> LayerKind:
        """What this layer does with audio positions: `config.layer_kind(layer_idx)` (set it there)."""
        return self.config.layer_kind(self.layer_idx)

    def _apply(self, fn, recurse=True):
        # casting or moving gives the weights new storage: the fused matrices would be stale copies
        self.packed = None
        return super()._apply(fn, recurse)

    @property
    def attn_slots(self) -> int:
        """KV-cache slots this layer uses (2 with a separate audio attention)."""
        return 2 if self.has_audio_attn else 1

    def _audio_path(self):
        """(input norm, post-attention norm, FFN) for audio positions, as `audio_ffn` says."""
        if self.audio_ffn == "text":
            return self.input_layernorm, self.post_attention_layernorm, self.mlp
        ffn = torch.zeros_like if self.audio_ffn == "skip" else self.audio_mlp
        return self.audio_input_layernorm, self.audio_post_attention_layernorm, ffn

    def _attend(self, attn: LlamaAttention, x, rope, mask, cache) -> torch.Tensor:
        out, _ = attn(hidden_states=x, position_embeddings=rope, attention_mask=mask, **{_CACHE_KWARG: cache})
        return out

    def forward(
        self,
        h: torch.Tensor,
        route: Route,
        rope: tuple[torch.Tensor, torch.Tensor],
        masks: AttentionMasks,
        cache=None,
    ) -> torch.Tensor:
        """`h` `[B, T, D]` → `[B, T, D]`; `rope` = (cos, sin) `[B, T, head_dim]`; `cache` duck-types
        transformers' `Cache.update(key, value, layer_idx)`."""
        kind = self.kind
        if kind == "fast_forward":
            # audio positions skip the layer; on a pure-audio step nothing else is there
            return h if route.mode == "audio" else self._plain(h, route, rope, masks, cache)
        if kind == "llama" or route.mode == "text":
            return self._plain(h, route, rope, masks, cache)

        in_norm, post_norm, ffn = self._audio_path()
        x = routed_norm(h, route, self.input_layernorm, in_norm)
        residual = h
        if self.has_audio_attn:
            # audio positions first attend among themselves; their residual and input are updated
            a = residual + self._attend(self.audio_attn, x, rope, masks.audio_only, cache)
            is_audio = self._audio_positions(route, h)
            residual = torch.where(is_audio, a, residual)
            x = torch.where(is_audio, self.audio_post_audio_attn_layer_norm(a), x)
        h = residual + self._attend(self.self_attn, x, rope, masks.shared, cache)
        return h + routed(
            routed_norm(h, route, self.post_attention_layernorm, post_norm), route, self.mlp, ffn
        )

    def _plain(self, h, route, rope, masks, cache) -> torch.Tensor:
        """A Llama layer over all positions. Fast-forward layers hide every audio key from text queries
        (`masks.text_only`, set whenever the sequence holds audio) and leave audio rows unchanged."""
        ff = self.kind == "fast_forward"
        mask = masks.text_only if ff and masks.text_only is not None else masks.shared
        out = h + self._attend(self.self_attn, self.input_layernorm(h), rope, mask, cache)
        out = out + self.mlp(self.post_attention_layernorm(out))
        if ff and route.mode == "mixed":
            out = torch.where(route.audio_mask.unsqueeze(-1), h, out)
        return out

    def decode_audio(self, h: torch.Tensor, rope, mask: torch.Tensor, cache, audio_mask=None) -> torch.Tensor:
        """The decode-step fast path: one audio position per row, `h` `[B, D]` → `[B, D]`.

        Same math as `forward` with `Route.audio()`, in as few ops as possible (at small widths a decode
        step is all dispatch overhead): 2-D matmuls against transposed weight views (one for q/k/v and
        one for gate/up when the layer is packed: `model/packing.py`), attention with the query heads
        that share a key/value head folded into the query length (no key/value repeat), the cache
        written in place. `rope` = (cos, sin) `[B, head_dim]`.
        """
        kind = self.kind
        if kind == "fast_forward":
            return h
        if self.has_audio_attn or self.audio_ffn != "audio" or kind == "llama":
            masks = AttentionMasks(shared=mask, audio_only=audio_mask)
            cos, sin = (t[:, None] for t in rope)
            return self.forward(h[:, None], Route.audio(), (cos, sin), masks, cache)[:, 0]
        h = h + self._decode_attention(_rms_norm(h, self.audio_input_layernorm), rope, mask, cache)
        mlp, packed = self.audio_mlp, self.packed
        x = _rms_norm(h, self.audio_post_attention_layernorm)
        if packed is None:
            gate, up = _linear(x, mlp.gate_proj), _linear(x, mlp.up_proj)
        else:  # one product for both
            gate, up = torch.mm(x, packed.gate_up).split(packed.intermediate, dim=1)
        return h + _linear(mlp.act_fn(gate) * up, mlp.down_proj)

    def _decode_attention(self, x, rope, mask, cache) -> torch.Tensor:
        attn, packed = self.self_attn, self.packed
        B, D = x.shape[0], attn.head_dim
        cos, sin = (t[:, None] for t in rope)  # [B, 1, D]
        if packed is None:
            q, k, v = _linear(x, attn.q_proj), _linear(x, attn.k_proj), _linear(x, attn.v_proj)
        else:  # one product for all three
            q, k, v = torch.mm(x, packed.qkv).split([packed.q, packed.kv, packed.kv], dim=1)
        q, k = q.view(B, -1, D), k.view(B, -1, D)  # [B, H, D], [B, H_kv, D]
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        keys, values = cache.update(k[:, :, None], v.reshape(B, -1, 1, D), attn.layer_idx)
        # the query heads sharing a key/value head become that head's query rows: [B, H_kv, n_rep, D]
        q = q.view(B, keys.shape[1], -1, D)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling)
        return _linear(out.reshape(B, -1), attn.o_proj)

    @staticmethod
    def _audio_positions(route: Route, h: torch.Tensor) -> torch.Tensor:
        if route.mode == "audio":
            return torch.ones_like(h[..., :1], dtype=torch.bool)
        return route.audio_mask.unsqueeze(-1)
