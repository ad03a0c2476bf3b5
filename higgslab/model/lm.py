"""`HiggsAudioModel`: text + audio embeddings → DualFFN layers → norm → audio head (+ text head).

Audio frames enter where the text holds placeholders: the F frames of `audio_codes[b]` `[n_q, F]` fill,
in order, the positions of row b whose token is `<|AUDIO_OUT|>` (routed through the audio path) or
`<|AUDIO|>` (embedded the same way, but a text position: FORMATS.md §5). A frame's embedding is the sum
of its codebooks' rows in one table of `n_q × (codebook_size + 2)` rows.

Two entry points: `forward` (any mix of text/audio, with or without a cache) and `decode_audio_step`
(one audio column per row, fixed shapes, no host sync: the generator's hot loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

from higgslab.config import HiggsConfig
from higgslab.errors import HiggsLabError
from higgslab.model.cache import StaticKVCache
from higgslab.model.dualffn import AttentionMasks, DualFFNLayer, Route
from higgslab.model.quant import QuantLinear


@dataclass
class HiggsOutput:
    audio_logits: torch.Tensor | None  # [B, T, n_q, codebook_size + 2] (T = 1 with logits="last")
    last_hidden_state: torch.Tensor  # [B, T, D], after the final norm
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + each layer's output, [B, T, D]
    text_logits: torch.Tensor | None = None  # [B, T, vocab]
    audio_out_mask: torch.Tensor | None = None  # [B, T] bool: which positions took the audio path


class Rotary(LlamaRotaryEmbedding):
    """transformers' Llama RoPE whose frequencies stay float32 whatever dtype the model is cast to
    (a bf16 `inv_freq` shifts every rotary angle: FORMATS.md §9)."""

    def _apply(self, fn, recurse=True):
        keep = {name: buf for name, buf in self._buffers.items() if buf is not None and not buf.is_meta}
        super()._apply(fn, recurse)
        for name, buf in keep.items():
            self._buffers[name] = buf.to(device=self._buffers[name].device, dtype=torch.float32)
        return self


class HiggsAudioModel(nn.Module):
    def __init__(self, config: HiggsConfig, text_head: bool = True):
        super().__init__()
        self.config = config
        c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.embed_audio = nn.Embedding(c.num_codebooks * c.codebook_entries, c.hidden_size)
        layers, slot = [], 0
        for i in range(c.num_layers):
            layers.append(DualFFNLayer(c, i, attn_slot=slot))
            slot += layers[-1].attn_slots
        self.layers = nn.ModuleList(layers)
        self.attn_slots = slot
        self.norm = LlamaRMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.rotary = Rotary(c.to_llama_config())
        self.audio_head = nn.Linear(c.hidden_size, c.num_codebooks * c.codebook_entries, bias=False)
        self.text_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False) if text_head else None
        self.register_buffer(
            "codebook_offsets", torch.arange(c.num_codebooks) * c.codebook_entries, persistent=False
        )

    # ---- pieces ----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Audio codes `[..., n_q]` (values in `[0, codebook_size + 2)`) → summed embeddings `[..., D]`."""
        return self.embed_audio(codes + self.codebook_offsets).sum(-2)

    def audio_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states `[..., D]` → `[..., n_q, codebook_size + 2]`."""
        return self.audio_head(h).unflatten(-1, (self.config.num_codebooks, self.config.codebook_entries))

    def new_cache(self, batch: int, max_len: int) -> StaticKVCache:
        c = self.config
        return StaticKVCache(
            self.attn_slots, batch, c.num_kv_heads, max_len, c.head_dim, self.dtype, self.device
        )

    def materialize_buffers(self) -> None:
        """(Re)build the non-persistent buffers, e.g. after construction on the meta device."""
        c = self.config
        self.rotary = Rotary(c.to_llama_config()).to(self.device)
        self.codebook_offsets = torch.arange(c.num_codebooks, device=self.device) * c.codebook_entries

    def num_parameters(self, text_head: bool = True) -> int:
        """The model's weights counted as the float model's (a quantized Linear counts its `[N, K]`)."""
        n = sum(p.numel() for p in self.parameters())
        n += sum(m.in_features * m.out_features for m in self.modules() if isinstance(m, QuantLinear))
        return n if text_head or self.text_head is None else n - self.text_head.weight.numel()

    # ---- full forward ------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        audio_codes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        cache: StaticKVCache | None = None,
        position_ids: torch.Tensor | None = None,
        logits: str = "all",
        text_logits: bool = False,
        output_hidden_states: bool = False,
    ) -> HiggsOutput:
        """`input_ids` `[B, T]`, `audio_codes` `[B, n_q, F]`, `attention_mask` `[B, T]` (1 = real token,
        left padding) → `HiggsOutput`. With `cache`, the tokens are appended to it (prefill or a text
        step); RoPE positions count real tokens only. `logits`: "all", "last" or "none"."""
        c = self.config
        if input_ids.dim() != 2:
            raise HiggsLabError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        is_audio_out = input_ids == c.audio_out_token_id
        h = self._embed(input_ids, audio_codes, is_audio_out)
        valid = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )

        if position_ids is None:
            start = cache.seen[:, None] if cache is not None else 0
            position_ids = (start + valid.long().cumsum(1) - 1).clamp(min=0)
        if cache is not None:
            cache.begin(T, valid, is_audio_out, padded=attention_mask is not None and not bool(valid.all()))
            cache.seen += valid.long().sum(1)
            key_valid, key_audio = cache.valid[:, : cache.span], cache.is_audio[:, : cache.span]
            query_at = cache.write_pos
        else:
            key_valid, key_audio, query_at = valid, is_audio_out, torch.arange(T, device=h.device)

        route = Route.from_mask(is_audio_out)
        masks = self._masks(
            route, key_valid, key_audio, query_at, padded=attention_mask is not None, cached=cache
        )
        rope = self.rotary(h, position_ids)
        hidden = [h] if output_hidden_states else None
        for layer in self.layers:
            h = layer(h, route, rope, masks, cache)
            if hidden is not None:
                hidden.append(h)
        h = self.norm(h)
        out_h = h[:, -1:] if logits == "last" else h
        return HiggsOutput(
            audio_logits=None if logits == "none" else self.audio_logits(out_h),
            last_hidden_state=h,
            hidden_states=tuple(hidden) if hidden is not None else None,
            text_logits=self.text_head(out_h) if text_logits and self.text_head is not None else None,
            audio_out_mask=is_audio_out,
        )

    def _embed(self, input_ids: torch.Tensor, audio_codes: torch.Tensor | None, is_audio_out) -> torch.Tensor:
        c = self.config
        is_audio = is_audio_out | (input_ids == c.audio_in_token_id)
        text_ids = torch.where(is_audio, 0, input_ids)
        if int(text_ids.max()) >= c.vocab_size or int(text_ids.min()) < 0:
            raise HiggsLabError(f"input_ids hold token ids outside [0, {c.vocab_size})")
        h = self.embed_tokens(text_ids)
        n_slots = int(is_audio.sum(1).max())
        if n_slots == 0:
            return h
        if audio_codes is None:
            raise HiggsLabError(f"input_ids hold {n_slots} audio placeholders but no audio_codes were given")
        if audio_codes.dim() != 3 or audio_codes.shape[:2] != (input_ids.shape[0], c.num_codebooks):
            raise HiggsLabError(
                f"audio_codes must be [B={input_ids.shape[0]}, n_q={c.num_codebooks}, F], "
                f"got {tuple(audio_codes.shape)}"
            )
        if audio_codes.shape[2] < n_slots:
            raise HiggsLabError(
                f"input_ids hold {n_slots} audio placeholders but audio_codes has only "
                f"{audio_codes.shape[2]} frames"
            )
        if int(audio_codes.min()) < 0 or int(audio_codes.max()) >= c.codebook_entries:
            raise HiggsLabError(f"audio_codes hold values outside [0, {c.codebook_entries})")
        frames = self.embed_codes(audio_codes.transpose(1, 2))  # [B, F, D]
        rank = (is_audio.long().cumsum(1) - 1).clamp(min=0)  # which frame each placeholder takes
        gathered = frames.gather(1, rank.unsqueeze(-1).expand(-1, -1, frames.shape[-1]))
        return torch.where(is_audio.unsqueeze(-1), gathered.to(h.dtype), h)

    def _masks(self, route, key_valid, key_audio, query_at, padded: bool, cached) -> AttentionMasks:
        """Bool masks `[B, 1, T, S]`; every query sees itself, so no row is empty (padding rows included)."""
        # fast-forward layers hide audio keys from text queries whenever the sequence (cache included) has any
        needs_text_only = (
            "fast_forward" in self.config.layer_kinds and route.mode != "audio" and bool(key_audio.any())
        )
        needs_audio_only = route.mode != "text" and self.config.audio_self_attention
        if not (padded or cached is not None or needs_text_only or needs_audio_only):
            return AttentionMasks(shared=None)  # plain causal: sdpa's fused path
        S = key_valid.shape[1]
        key_at = torch.arange(S, device=key_valid.device)
        causal = key_at[None, :] <= query_at[:, None]  # [T, S]
        itself = key_at[None, :] == query_at[:, None]

        def build(keys: torch.Tensor) -> torch.Tensor:  # keys [B, S] → [B, 1, T, S]
            return ((keys[:, None, :] & causal) | itself)[:, None]

        audio_only = None
        if needs_audio_only:
            audio_only = build(key_valid & key_audio)
            if (
                route.audio_mask is not None
            ):  # text queries of the audio attention are discarded: any row works
                audio_only = audio_only | ~route.audio_mask[:, None, :, None]
        return AttentionMasks(
            shared=build(key_valid),
            text_only=build(key_valid & ~key_audio) if needs_text_only else None,
            audio_only=audio_only,
        )

    # ---- the generator's hot loop ---------------------------------------------------------------------------
    def decode_audio_step(self, codes: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """One audio column per row, `codes` `[B, n_q]` → next-column logits `[B, n_q, codebook_size + 2]`.

        Fixed shapes and no host sync: only the audio path runs (fast-forward layers are skipped), the
        attention mask is the cache's `valid` row (everything written so far), the write position lives
        on the device.
        """
        h = self.embed_codes(codes)  # [B, D]
        ones = torch.ones(codes.shape[0], 1, dtype=torch.bool, device=codes.device)
        position_ids = cache.seen[:, None].clone()
        cache.begin(1, ones, ones)
        cache.seen += 1
        valid = cache.valid[:, : cache.span]
        # eager and unpadded, every slot in the span is a real earlier token: no mask (sdpa's fast path)
        mask = valid[:, None, None, :] if cache.static or cache.padded else None
        audio_mask = (
            (valid & cache.is_audio[:, : cache.span])[:, None, None, :]
            if self.config.audio_self_attention
            else None
        )
        cos, sin = self.rotary(h, position_ids)
        rope = (cos[:, 0], sin[:, 0])  # [B, head_dim]
        for layer in self.layers:
            h = layer.decode_audio(h, rope, mask, cache, audio_mask)
        return self.audio_logits(self.norm(h))
