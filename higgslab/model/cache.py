"""A preallocated (static) KV cache with explicit write positions.

Every attention slot writes its keys/values at the same positions, set once per forward by the model
(`begin`), so a layer that skips a step (fast-forward layers skip audio steps) cannot fall out of step,
and a decode step has fixed shapes: the whole cache is attended to, with not-yet-written or padded
slots masked out. That is what makes a decode step capturable as a CUDA/NPU graph.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Keys/values `[slots, B, kv_heads, max_len, head_dim]` plus per-position facts `[B, max_len]`.

    `valid`: a real token was written there (not padding, not empty); `is_audio`: it was an audio-out
    position (fast-forward and audio-only attention need that); `seen` `[B]`: real tokens so far per
    row, i.e. the next RoPE position.
    """

    def __init__(
        self,
        slots: int,
        batch: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (slots, batch, kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.is_audio = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = torch.zeros((), dtype=torch.long, device=device)  # slots used, same for all rows
        self.write_pos = torch.zeros(1, dtype=torch.long, device=device)
        self.max_len = max_len

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    def begin(self, n: int, valid: torch.Tensor, is_audio: torch.Tensor) -> None:
        """Claim the next `n` positions for this forward; `valid`/`is_audio` are `[B, n]` bools.

        Pure tensor ops: the write position lives on the device, so this runs inside a captured graph.
        """
        self.write_pos = self.length + torch.arange(n, device=self.length.device)
        self.valid.index_copy_(1, self.write_pos, valid)
        self.is_audio.index_copy_(1, self.write_pos, is_audio)
        self.length += n

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """transformers' `Cache.update` contract: store `[B, H, n, D]`, return the whole slot."""
        self.keys[layer_idx].index_copy_(2, self.write_pos, key)
        self.values[layer_idx].index_copy_(2, self.write_pos, value)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.length)

    def reset(self) -> None:
        for t in (self.valid, self.is_audio, self.seen, self.length):
            t.zero_()
