"""Codebook statistics and reconstruction quality, for notebooks.

usage = codebook_usage([tok.encode(w, sr) for w, sr in clips])   # [n_q, bins] counts
codebook_stats(usage)            # per codebook: perplexity, dead codes, share of the top code
quality_vs_codebooks(tok, clips) # per k = 1..n_q: log-mel distance and SI-SDR of decode(codes, k)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from higgslab.errors import HiggsLabError


def codebook_usage(codes: Iterable[np.ndarray | torch.Tensor], bins: int = 1024) -> np.ndarray:
    """How often each code occurs in each codebook over a set of clips: list of `[n_q, T]` -> counts `[n_q, bins]`."""
    total = None
    for clip in codes:
        c = torch.as_tensor(clip).long()
        if c.dim() != 2 or (c < 0).any() or (c >= bins).any():
            raise HiggsLabError(f"codes of shape {list(c.shape)} must be [n_q, T] with values in [0, {bins})")
        counts = np.stack([np.bincount(row.numpy(), minlength=bins) for row in c])
        if total is not None and counts.shape != total.shape:
            raise HiggsLabError(f"clips have {counts.shape[0]} and {total.shape[0]} codebooks")
        total = counts if total is None else total + counts
    if total is None:
        raise HiggsLabError("codebook_usage needs at least one clip")
    return total


@dataclass
class CodebookStats:
    """Per-codebook summaries of a usage table `[n_q, bins]` (each field `[n_q]`)."""

    perplexity: np.ndarray  # exp(entropy of the code distribution): 1 = one code only, bins = uniform
    dead: np.ndarray  # codes never used
    top_share: np.ndarray  # fraction of frames taken by the most frequent code


def codebook_stats(usage: np.ndarray) -> CodebookStats:
    """Perplexity, dead-code count and top-code share of each codebook from `codebook_usage` counts."""
    usage = np.asarray(usage, dtype=np.float64)
    p = usage / np.maximum(usage.sum(1, keepdims=True), 1)
    entropy = -(p * np.log(np.where(p > 0, p, 1))).sum(1)
    return CodebookStats(perplexity=np.exp(entropy), dead=(usage == 0).sum(1), top_share=p.max(1))


def si_sdr(reference: np.ndarray, estimate: np.ndarray, eps: float = 1e-12) -> float:
    """Scale-invariant SDR in dB of `estimate` against `reference` (both `[samples]`, trimmed to the shorter)."""
    n = min(len(reference), len(estimate))
    ref, est = np.asarray(reference[:n], np.float64), np.asarray(estimate[:n], np.float64)
    ref, est = ref - ref.mean(), est - est.mean()
    target = (est @ ref) / (ref @ ref + eps) * ref  # projection of the estimate onto the reference
    return float(10 * np.log10((target @ target + eps) / ((est - target) @ (est - target) + eps)))


def log_mel(
    audio: np.ndarray, sample_rate: int = 24000, n_fft: int = 1024, hop: int = 256, n_mels: int = 80
) -> np.ndarray:
    """log10 mel power spectrogram `[n_mels, frames]` (floor 1e-5)."""
    import librosa

    spec = torch.stft(
        torch.as_tensor(np.asarray(audio, np.float32)),
        n_fft,
        hop,
        window=torch.hann_window(n_fft),
        return_complex=True,
    )
    mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels) @ spec.abs().pow(2).numpy()
    return np.log10(np.maximum(mel, 1e-5))


def log_mel_distance(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = 24000) -> float:
    """Mean absolute difference of log-mel spectrograms (0 = identical), trimmed to the shorter signal."""
    n = min(len(reference), len(estimate))
    return float(np.abs(log_mel(reference[:n], sample_rate) - log_mel(estimate[:n], sample_rate)).mean())


def quality_vs_codebooks(
    tokenizer, clips: Sequence[tuple[np.ndarray, int]] | Sequence[np.ndarray]
) -> list[dict]:
    """Reconstruction quality from the first k codebooks, k = 1..n_q, averaged over clips.

    clips: `(audio, sample_rate)` pairs or arrays at the tokenizer's rate. Returns one row per k:
    `{"k", "bitrate", "log_mel_distance", "si_sdr"}` (the reference is the clip as the tokenizer saw it:
    mono at its `sample_rate`).
    """
    inputs = [c if isinstance(c, tuple) else (c, tokenizer.sample_rate) for c in clips]
    prepared = [tokenizer.prepare(wav, rate)[0, 0].cpu().numpy() for wav, rate in inputs]
    codes = [tokenizer.encode(wav, tokenizer.sample_rate) for wav in prepared]
    rows = []
    for k in range(1, tokenizer.num_codebooks + 1):
        pairs = [(wav, tokenizer.decode(c, k=k)) for wav, c in zip(prepared, codes, strict=True)]
        rows.append(
            {
                "k": k,
                "bitrate": tokenizer.bitrate * k / tokenizer.num_codebooks,
                "log_mel_distance": float(
                    np.mean([log_mel_distance(w, d, tokenizer.sample_rate) for w, d in pairs])
                ),
                "si_sdr": float(np.mean([si_sdr(w, d) for w, d in pairs])),
            }
        )
    return rows
