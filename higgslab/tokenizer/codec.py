"""AudioTokenizer: audio in any rate/channel layout <-> Higgs codes `[n_q, T]` at 25 frames/s.

    tok = higgslab.load_tokenizer("path/to/higgs-audio-v2-tokenizer")   # original or transformers layout
    codes = tok.encode(wav, 44100)      # LongTensor [8, T]; T = frames at 25/s
    audio = tok.decode(codes, k=4)      # float32 [T·960] at 24 kHz, from the first 4 codebooks only

Rates, hops and codebook counts are the checkpoint's (`tok.sample_rate`, 24 kHz for the real one): input
audio is resampled to the tokenizer's own rate.

Lengths follow the ORIGINAL Boson code (320-sample padding when acoustic and semantic frame counts differ,
FORMATS.md §3), not transformers' 480, because the real weights were trained with it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from higgslab.errors import HiggsLabError
from higgslab.io.audio import check_rate, resample_soxr, to_mono
from higgslab.tokenizer.model import HiggsAudioCodec
from higgslab.tokenizer.quantizer import RVQTrace


class AudioTokenizer:
    """The Higgs audio tokenizer. `model` (a `HiggsAudioCodec`) is public for inspection."""

    def __init__(self, model: HiggsAudioCodec, fmt: str = "original", path: str | Path | None = None):
        self.model = model.eval()
        self.format = fmt
        self.path = path

    # ---- geometry
    @property
    def sample_rate(self) -> int:
        return self.model.cfg.sample_rate

    @property
    def hop_length(self) -> int:
        return self.model.cfg.hop_length

    @property
    def frame_rate(self) -> float:
        return self.model.cfg.frame_rate

    @property
    def num_codebooks(self) -> int:
        return self.model.cfg.n_q

    @property
    def codebook_size(self) -> int:
        return self.model.cfg.bins

    @property
    def bitrate(self) -> float:
        """Bits per second: frame rate × codebooks × log2(codebook size) (2000 for the real tokenizer)."""
        return self.frame_rate * self.num_codebooks * math.log2(self.codebook_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        return (
            f"AudioTokenizer({self.format}, {self.num_codebooks}×{self.codebook_size} codes at "
            f"{self.frame_rate:g} frames/s, {self.sample_rate} Hz, {self.bitrate:g} bit/s)"
        )

    # ---- audio -> codes
    def prepare(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Audio `[samples]`, `[channels, samples]` or a batch `[B, channels, samples]` at `sample_rate` ->
        mono `[B, 1, L]` at the tokenizer's own `self.sample_rate`."""
        if isinstance(wav, torch.Tensor):
            wav = wav.detach().cpu().numpy()
        wav = np.asarray(wav)
        clips = list(wav) if wav.ndim == 3 else [wav]
        rate = check_rate(sample_rate)
        mono = [resample_soxr(to_mono(clip), rate, self.sample_rate) for clip in clips]
        if mono[0].shape[0] < self.hop_length:
            raise HiggsLabError(
                f"audio is {mono[0].shape[0]} samples at {self.sample_rate} Hz; need at least {self.hop_length} (one frame)"
            )
        return torch.from_numpy(np.stack(mono))[:, None].to(self.device)

    @torch.no_grad()
    def encode(self, wav: np.ndarray | torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """Audio (see `prepare`; `sample_rate` defaults to the tokenizer's) -> codes LongTensor `[n_q, T]`, or
        `[B, n_q, T]` for a 3-D batch input."""
        x = self.prepare(wav, self.sample_rate if sample_rate is None else sample_rate)
        codes = self.model.encode(x).cpu()
        return codes if np.ndim(wav) == 3 else codes[0]

    def encode_file(self, path: str | Path) -> torch.Tensor:
        """Read an audio file (any format soundfile reads) and encode it -> `[n_q, T]`."""
        from higgslab.io.audio import read_audio

        audio, rate = read_audio(path)
        return self.encode(audio, rate)

    @torch.no_grad()
    def trace(self, wav: np.ndarray | torch.Tensor, sample_rate: int | None = None) -> RVQTrace:
        """The quantizer's view of one clip: per-level residuals, chosen-codeword distances, running reconstruction."""
        x = self.prepare(wav, self.sample_rate if sample_rate is None else sample_rate)
        return self.model.quantizer.trace(self.model.latent(x))

    # ---- codes -> audio
    def check_codes(self, codes: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Validate codes `[n_q, T]` or `[B, n_q, T]` -> LongTensor `[B, n_q, T]` on the model's device."""
        codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise HiggsLabError(f"codes must be integers, got dtype {codes.dtype}")
        if codes.dim() not in (2, 3) or codes.shape[-2] != self.num_codebooks or codes.shape[-1] == 0:
            raise HiggsLabError(
                f"codes of shape {list(codes.shape)}: expected [{self.num_codebooks}, T ≥ 1] or [B, {self.num_codebooks}, T ≥ 1]"
            )
        bad = (codes < 0) | (codes >= self.codebook_size)
        if bad.any():
            where = [int(i) for i in bad.nonzero()[0]]
            raise HiggsLabError(
                f"code {int(codes[tuple(where)])} at {where} is outside [0, {self.codebook_size})"
            )
        codes = codes.long().to(self.device)
        return codes if codes.dim() == 3 else codes[None]

    def check_k(self, k: int | None) -> int:
        k = self.num_codebooks if k is None else k
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= self.num_codebooks:
            raise HiggsLabError(f"k={k!r} codebooks: choose 1..{self.num_codebooks}")
        return int(k)

    @torch.no_grad()
    def decode(self, codes: np.ndarray | torch.Tensor, k: int | None = None) -> np.ndarray:
        """Codes `[n_q, T]` -> float32 audio `[T·hop]` at `self.sample_rate` (`[B, n_q, T]` -> `[B, T·hop]`),
        using the first `k` codebooks only (default: all)."""
        batch = self.check_codes(codes)
        wav = self.model.decode(batch, self.check_k(k))[:, 0].float().cpu().numpy()
        return wav if torch.as_tensor(codes).dim() == 3 else wav[0]

    def streaming_decoder(self, k: int | None = None, **kwargs):
        """A `StreamingDecoder` over this tokenizer (see higgslab.tokenizer.streaming)."""
        from higgslab.tokenizer.streaming import StreamingDecoder

        return StreamingDecoder(self, k=k, **kwargs)
