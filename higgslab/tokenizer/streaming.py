"""Chunked decoding of a growing code sequence, equal to one-shot decoding, each sample computed once.

Everything before the DAC decoder is per frame (codebook lookup, `fc_post2`). The DAC decoder is a stack of
non-causal convolutions, so output frame f depends on latent frames f-R … f+R, where R is its receptive-field
radius. `decoder_radius` adds it up layer by layer: the first conv (kernel 7: 3 frames), each transposed conv
(at most 2 input samples), and the residual units (kernel 7, dilations 1/3/9: 39 samples at each block's rate:
39/8, 39/40, … frames). For the real ratios [8, 5, 4, 2, 3] that is ≈ 11.6 frames (0.46 s): the latency
of a stream.

`StreamingDecoder` runs the decoder layer by layer on the new samples only. Each layer keeps the inputs its
next outputs still need (a convolution its last `dilation·(kernel-1)` inputs, a transposed one its last
input, a residual unit the skip samples its branch has not caught up with) and returns every output whose
inputs have all arrived; the zero padding of the one-shot decode enters at the true start and, at `flush`,
at the true end. So the chunks concatenate to the one-shot output up to float rounding (the same products,
summed in blocks of other lengths), whatever the chunk sizes, and no sample is decoded twice. Each
convolution runs at `bucket` lengths (its input zero-padded on the right, the extra outputs dropped), so
that pushes of any size meet a few shapes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from higgslab.errors import HiggsLabError


def decoder_radius(decoder: nn.Module) -> float:
    """Receptive-field half-width of a DAC decoder, in input (latent) frames."""
    rate, radius = 1, 0.0  # rate: samples per latent frame at the current layer
    for m in decoder.modules():  # registration order = execution order for DacDecoder
        if isinstance(m, nn.ConvTranspose1d):
            # an output sample sees at most 2 input samples on either side (kernel 2·stride)
            radius += 2 / rate
            rate *= m.stride[0]
        elif isinstance(m, nn.Conv1d):
            radius += m.dilation[0] * (m.kernel_size[0] - 1) / 2 / rate
    return radius


def bucket(n: int) -> int:
    """`n` rounded up to a multiple of an eighth of the power of two at or above it (up to 8: `n`). A stream's
    convolutions run at these lengths: oneDNN builds a kernel for each input shape it meets (milliseconds
    each, and it keeps 1024), so pushes of every length kept building them. Padded, each convolution meets
    a few dozen lengths, at most 25% longer than its own."""
    if n <= 8:
        return n
    eighth = 1 << ((n - 1).bit_length() - 3)
    return -(-n // eighth) * eighth


class _Conv:
    """A stride-1 `nn.Conv1d` with symmetric zero padding, on `[1, C, n]` pieces of its input."""

    def __init__(self, conv: nn.Conv1d):
        self.conv, self.span = conv, conv.dilation[0] * (conv.kernel_size[0] - 1)
        self.held: torch.Tensor | None = None  # the last `span` inputs (the left padding at first)

    def __call__(self, x: torch.Tensor, last: bool) -> torch.Tensor:
        y, n = self.run(x, last)
        return y[..., :n]

    def run(self, x: torch.Tensor, last: bool) -> tuple[torch.Tensor, int]:
        """(the outputs at `bucket(n)` length, n): the first n are those whose inputs have all arrived."""
        pad = x.new_zeros(x.shape[0], x.shape[1], self.conv.padding[0])
        parts = [pad if self.held is None else self.held, x] + ([pad] if last else [])
        n = sum(p.shape[-1] for p in parts) - self.span
        if n <= 0:
            self.held = torch.cat(parts, -1)
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0), 0
        if bucket(n) > n:  # the bucket's zeros in the same copy
            parts.append(x.new_zeros(x.shape[0], x.shape[1], bucket(n) - n))
        z = torch.cat(parts, -1)
        self.held = z[..., n : n + self.span]
        return F.conv1d(z, self.conv.weight, self.conv.bias, dilation=self.conv.dilation), n


class _ConvTranspose:
    """An `nn.ConvTranspose1d` with kernel 2·stride (DAC's upsampling), on pieces of its input. Output j of
    the unpadded transposed conv sums inputs j//s - 1 and j//s, so it is final once input j//s has arrived;
    the one-shot output is the unpadded one from `padding` to `padding` before its end, plus `output_padding`."""

    def __init__(self, conv: nn.ConvTranspose1d):
        self.conv, self.s = conv, conv.stride[0]
        self.prev: torch.Tensor | None = None  # the last input (its outputs with the next are not out yet)
        self.seen = 0  # inputs so far
        self.next = conv.padding[0]  # the unpadded output index to return next

    def __call__(self, x: torch.Tensor, last: bool) -> torch.Tensor:
        parts = [x] if self.prev is None else [self.prev, x]
        first = self.seen - (len(parts) - 1)  # input index of the first sample of `parts`
        m = x.shape[-1]
        self.seen += m
        end = self.seen * self.s
        if last:
            end += self.s - self.conv.padding[0] + self.conv.output_padding[0]
        if self.seen == 0 or end <= self.next:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        if bucket(m) > m:  # the new inputs counted in buckets, their zeros in the same copy
            parts.append(x.new_zeros(x.shape[0], x.shape[1], bucket(m) - m))
        z = torch.cat(parts, -1) if len(parts) > 1 else x
        y = F.conv_transpose1d(z, self.conv.weight, self.conv.bias, stride=self.s)
        out = y[..., self.next - first * self.s : end - first * self.s]
        if m:
            self.prev = x[..., -1:]
        self.next = end
        return out


class _Residual:
    """A DAC residual unit: x + conv2(snake2(conv1(snake1(x)))), the skip delayed to meet its branch."""

    def __init__(self, unit: nn.Module):
        self.unit, self.conv1 = unit, _Conv(unit.conv1)
        self.skip: torch.Tensor | None = None  # inputs whose branch outputs are not out yet

    def __call__(self, x: torch.Tensor, last: bool) -> torch.Tensor:
        self.skip = x if self.skip is None else torch.cat([self.skip, x], -1)
        y, n = self.conv1.run(self.unit.snake1(x), last)  # y: at the bucket's length, like conv2 then
        if n == 0:
            return y
        out = self.skip[..., :n] + self.unit.conv2(self.unit.snake2(y))[..., :n]
        self.skip = self.skip[..., n:]
        return out


def _layers(decoder: nn.Module) -> list:
    """transformers' `DacDecoder` (as `build_acoustic` makes it) as streaming steps `(x, last) -> y`."""

    def pointwise(m):
        return lambda x, last: m(x) if x.shape[-1] else x

    steps = [_Conv(decoder.conv1)]
    for block in decoder.block:
        steps += [pointwise(block.snake1), _ConvTranspose(block.conv_t1)]
        steps += [_Residual(block.res_unit1), _Residual(block.res_unit2), _Residual(block.res_unit3)]
    return steps + [pointwise(decoder.snake1), _Conv(decoder.conv2), pointwise(decoder.tanh)]


class StreamingDecoder:
    """`push(codes [n_q, n])` -> new float32 samples; `flush()` -> the remaining samples.

    The concatenation of all returned arrays equals `tokenizer.decode(all codes, k)` (see module docstring).
    """

    def __init__(self, tokenizer, k: int | None = None):
        self.tok = tokenizer
        self.k = tokenizer.check_k(k)
        self.reset()

    def reset(self) -> None:
        """Start a new sequence."""
        self.layers = _layers(self.tok.model.acoustic_decoder)
        self.started, self.ended = False, False

    @torch.no_grad()
    def push(self, codes: np.ndarray | torch.Tensor, last: bool = False) -> np.ndarray:
        """Append codes `[n_q, n]` (n ≥ 1); return every sample that is now final, or with `last` (the
        sequence ends with these codes) every sample left: `push` + `flush` in one pass."""
        if self.ended:
            raise HiggsLabError("this stream has ended (flushed, or pushed with last=True): reset() it first")
        return self._run(self.tok.model.decoder_input(self.tok.check_codes(codes)[:1], self.k), last)

    @torch.no_grad()
    def flush(self) -> np.ndarray:
        """Return the samples not yet returned (the sequence has ended)."""
        if not self.started or self.ended:
            return np.zeros(0, dtype=np.float32)
        w = self.tok.model.acoustic_decoder.conv1.weight  # [out, D, kernel]
        return self._run(w.new_zeros(1, w.shape[1], 0), True)

    def _run(self, x: torch.Tensor, last: bool) -> np.ndarray:
        self.started, self.ended = True, last
        for layer in self.layers:
            x = layer(x, last)
        return x[0, 0].float().cpu().numpy()
