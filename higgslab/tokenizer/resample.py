"""Band-limited (windowed-sinc) resampling in plain torch: torchaudio's default `resample`, re-derived.

The semantic teacher (HuBERT, 16 kHz) sees the 24 kHz input through torchaudio's default resampler in both
the original Boson code and transformers. Another resampler gives slightly different semantic features and
so, now and then, different codes; this module reproduces that filter without needing torchaudio.

The math: after dividing both rates by their gcd (24000:16000 -> 3:2), output sample j of every group of
`new` samples is a dot product of the input with one fixed kernel, and the kernels repeat every `orig`
input samples, so the whole resampling is one strided conv1d with `new` output channels:

    kernel[j, i] = sinc(pi * f_c * t) * cos(pi * t_c / (2 * w))**2 * f_c / orig,
    t = (i - width) / orig - j / new,  t_c = clamp(f_c * t, -w, w)

with f_c = min(orig, new) * rolloff the cut-off (in reduced units), w = lowpass_filter_width zero crossings of
the Hann-windowed sinc, and width = ceil(w * orig / f_c) the one-sided support in input samples. The
arithmetic runs in the waveform's dtype, in torchaudio's order, so float32 inputs round as torchaudio does.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from higgslab.errors import HiggsLabError


@lru_cache(maxsize=16)
def sinc_kernel(
    orig: int,
    new: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, int]:
    """The Hann-windowed sinc kernels for reduced rates `orig`:`new` -> (kernel [new, 1, 2*width + orig], width).

    Cached: the 24k->16k kernel is built once per process and dtype.
    """
    base_freq = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    idx = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + idx
    t = (t * base_freq).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0, dtype=dtype), t.sin() / t)
    return kernel * (window * (base_freq / orig)), width


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Resample `[..., samples]` from `orig_freq` to `new_freq` Hz -> `[..., ceil(samples * new / orig)]`.

    Same numbers as `torchaudio.functional.resample(waveform, orig_freq, new_freq)` with its defaults.
    """
    if orig_freq <= 0 or new_freq <= 0 or int(orig_freq) != orig_freq or int(new_freq) != new_freq:
        raise HiggsLabError(f"resample needs positive integer rates, got {orig_freq} -> {new_freq}")
    if not waveform.is_floating_point():
        raise HiggsLabError(f"resample needs a floating-point waveform, got {waveform.dtype}")
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // gcd, int(new_freq) // gcd
    kernel, width = sinc_kernel(orig, new, dtype=waveform.dtype)
    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1])
    # zero padding: `width` on the left centres the first kernel on sample 0; `width + orig` on the right
    # lets the last group of `new` outputs be computed, the surplus is cut below
    padded = F.pad(flat, (width, width + orig))
    out = F.conv1d(padded[:, None], kernel.to(waveform.device), stride=orig)  # [N, new, groups]
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    target = math.ceil(new * shape[-1] / orig)
    return out[:, :target].reshape(*shape[:-1], -1)
