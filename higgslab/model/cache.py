"""A preallocated (static) KV cache with explicit write positions.

Every attention slot writes its keys/values at the same positions, set once per forward by the model
(`begin`), so a layer that skips a step (fast-forward layers skip audio steps) cannot fall out of step,
and a decode step's shapes are fixed but for one: the length of the window of the cache it attends to
(`attend_to`), with padded slots masked out. A window length that changes only in buckets is what makes a
decode step capturable as a CUDA/NPU graph (one graph per bucket).
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Keys/values, `slots` tensors of `[B, kv_heads, max_len, head_dim]`, plus per-position facts `[B, max_len]`.

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
        # one tensor per slot, not one stacked tensor: a compiled step then mutates each in place (a view
        # of a stacked input would be copied whole on every write)
        shape = (batch, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(slots)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(slots)]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.is_audio = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = torch.zeros((), dtype=torch.long, device=device)  # slots used, same for all rows
        self.write_pos = torch.zeros(1, dtype=torch.long, device=device)
        # a compiled step writes these in place; CUDA graphs keep such writes only for inputs whose address
        # is marked static (as transformers' StaticCache does). Unguarded: a new cache re-records the
        # graph instead of recompiling the step.
        for t in (*self.keys, *self.values, self.valid, self.is_audio, self.seen, self.length):
            torch._dynamo.mark_static_address(t)
        self.max_len = max_len
        # The host knows how many positions are used without asking the device. Eager decoding attends
        # to that prefix only; `static=True` (compiled steps) attends to the `window` the host sets, masked.
        self.used = 0
        self.static = False
        self.window: torch.Tensor | None = None  # see `attend_to`
        self._slots = torch.empty(max_len, dtype=torch.bool, device=device)
        self.padded = False  # some row has padding slots: eager steps then need a mask

    def begin(self, n: int, valid: torch.Tensor, is_audio: torch.Tensor, padded: bool = False) -> None:
        """Claim the next `n` positions for this forward; `valid`/`is_audio` are `[B, n]` bools, and
        `padded` says (the caller knows, without asking the device) whether `valid` has a False in it.

        Pure tensor ops: the write position lives on the device, so this runs inside a captured graph.
        """
        self.write_pos = self.length + torch.arange(n, device=self.length.device)
        self.valid.index_copy_(1, self.write_pos, valid)
        self.is_audio.index_copy_(1, self.write_pos, is_audio)
        self.length += n
        if not self.static:  # host-side bookkeeping, for eager steps only (graphs see device tensors)
            self.used += n
            self.padded = self.padded or padded

    def attend_to(self, n: int) -> None:
        """Static steps from now on attend to the first `n` slots (the host knows how many are written).

        The window is the length of a tensor, not an int: torch.compile specialises on ints, but leaves a
        tensor dimension marked dynamic symbolic, so one compiled step serves every window."""
        self.window = self._slots[:n]
        torch._dynamo.mark_dynamic(self.window, 0)

    @property
    def span(self) -> int:
        """How many slots attention looks at: the used prefix, or the window (default: all) when static."""
        if not self.static:
            return self.used
        return self.max_len if self.window is None else self.window.shape[0]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """transformers' `Cache.update` contract: store `[B, H, n, D]`, return the whole slot."""
        if self.static:
            self.keys[layer_idx].index_copy_(2, self.write_pos, key)
            self.values[layer_idx].index_copy_(2, self.write_pos, value)
        else:  # the host knows where: a plain slice copy is several times cheaper
            start = self.used - key.shape[2]
            self.keys[layer_idx][:, :, start : self.used] = key
            self.values[layer_idx][:, :, start : self.used] = value
        return self.keys[layer_idx][:, :, : self.span], self.values[layer_idx][:, :, : self.span]
