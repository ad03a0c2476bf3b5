"""Chunked decoding of a growing code sequence, sample-identical to one-shot decoding.

Everything before the DAC decoder is per frame (codebook lookup, `fc_post2`). The DAC decoder is a stack of
non-causal convolutions, so output frame f depends on latent frames f-R … f+R, where R is its receptive-field
radius. `decoder_radius` adds it up layer by layer: the first conv (kernel 7: 3 frames), each transposed conv
(at most 2 input samples), and the residual units (kernel 7, dilations 1/3/9: 39 samples at each block's rate:
39/8, 39/40, … frames). For the real ratios [8, 5, 4, 2, 3] that is ≈ 11.6 frames, so by default

    context = lookahead = ceil(R) = 12 frames (0.48 s)

Each `push` re-runs the decoder on [context frames already emitted] + [pending frames] and returns only the
frames that now have `lookahead` frames of future behind them; `flush` returns the rest (the true end of the
sequence, where the one-shot decode also sees zero padding); `push(codes, last=True)` does both in one
decode. Because every returned frame saw its whole receptive field, the chunks concatenate to the one-shot
output up to float rounding (measured ≤ 1e-6 on the tiny models). A smaller `lookahead` lowers latency at
the cost of an approximation near each chunk's end. (Perturbing one latent frame of the tiny model changes
exactly the 10 output frames on either side, inside the bound.) Cost: pushing 1 frame decodes about 2·12+1 frames; push larger chunks when latency allows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def decoder_radius(decoder: nn.Module) -> float:
    """Receptive-field half-width of a DAC decoder, in input (latent) frames."""
    rate, radius = 1, 0.0  # rate: samples per latent frame at the current layer
    for m in decoder.modules():  # registration order = execution order for DacDecoder
        if isinstance(m, nn.ConvTranspose1d):
            radius += (
                2 / rate
            )  # an output sample sees at most 2 input samples on either side (kernel 2·stride)
            rate *= m.stride[0]
        elif isinstance(m, nn.Conv1d):
            radius += m.dilation[0] * (m.kernel_size[0] - 1) / 2 / rate
    return radius


class StreamingDecoder:
    """`push(codes [n_q, n])` -> new float32 samples; `flush()` -> the remaining samples.

    The concatenation of all returned arrays equals `tokenizer.decode(all codes, k)` (see module docstring).
    """

    def __init__(
        self, tokenizer, k: int | None = None, context: int | None = None, lookahead: int | None = None
    ):
        self.tok = tokenizer
        self.k = tokenizer.check_k(k)
        default = math.ceil(decoder_radius(tokenizer.model.acoustic_decoder))
        self.context = default if context is None else int(context)
        self.lookahead = default if lookahead is None else int(lookahead)
        self.reset()

    def reset(self) -> None:
        """Start a new sequence."""
        self.window = None  # decoder input [1, D, frames] for frames offset … total-1
        self.offset = 0  # absolute index of window[..., 0]
        self.emitted = 0  # frames already returned
        self.total = 0  # frames pushed

    @torch.no_grad()
    def push(self, codes: np.ndarray | torch.Tensor, last: bool = False) -> np.ndarray:
        """Append codes `[n_q, n]` (n ≥ 1); return the samples of every frame that is now final, or with
        `last` (the sequence ends with these codes) of every frame left: `push` + `flush` in one decode."""
        latent = self.tok.model.decoder_input(self.tok.check_codes(codes)[:1], self.k)
        self.window = latent if self.window is None else torch.cat([self.window, latent], dim=-1)
        self.total += latent.shape[-1]
        return self.emit(self.total if last else self.total - self.lookahead)

    def flush(self) -> np.ndarray:
        """Return the samples of all frames not yet returned (the sequence has ended)."""
        return self.emit(self.total)

    @torch.no_grad()
    def emit(self, upto: int) -> np.ndarray:
        if upto <= self.emitted:
            return np.zeros(0, dtype=np.float32)
        hop = self.tok.hop_length
        wav = self.tok.model.acoustic_decoder(self.window)[0, 0]
        out = wav[(self.emitted - self.offset) * hop : (upto - self.offset) * hop].float().cpu().numpy()
        self.emitted = upto
        keep = max(self.offset, self.emitted - self.context)  # left context for the next window
        self.window, self.offset = self.window[..., keep - self.offset :], keep
        return out
