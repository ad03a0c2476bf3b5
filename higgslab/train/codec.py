"""Training pieces for a mini audio tokenizer: the codec's own modules plus what only training needs.

    trainer = CodecTrainer(mini_codec(widths))      # trainer.codec is a plain `HiggsAudioCodec`
    out = trainer(wav [B, 1, L], n_active=k)        # reconstruction from the first k codebooks + commitment
    trainer.update_codebooks(out, generator)        # EMA codebook update + dead-code restarts (no grad)

No semantic branch: there are no HuBERT weights here, so the codec has none (`CodecConfig.hubert = None`):
`fc_prior` reads the acoustic latent alone, and the stock inference path (`load_tokenizer` → encode)
computes exactly the codes that training saw.

RVQ training as in EnCodec/xcodec: nearest codeword chosen exactly as at inference (`VQLevel.nearest`),
straight-through gradient to the encoder, commitment loss pulling `project_in(residual)` to its codeword,
codebooks (buffers, not parameters) moved by an exponential moving average of the vectors assigned to them,
and codes unused for a while restarted on random vectors of the current batch. Quantizer dropout (decoding
from a random prefix of k codebooks) teaches the decoder every k = 1..n_q, so quality rises with k.

Warm-up (`quantize=False`): each level passes `project_in(residual)` itself to `project_out`, a linear
bottleneck with no codeword, so encoder, projections and decoder first learn a latent that carries the
audio. Quantising from the first step collapses here: an untrained encoder's latent is nearly constant, the
codebooks seeded from it all sit together, and the decoder learns to ignore the codes (two codes in use per
level after 1000 steps, reconstruction no better with 8 codebooks than with 1). Codebooks are seeded from
the warmed-up latent, and every code starts with the average count, so one left unused is soon restarted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from higgslab.tokenizer.model import CodecConfig, HiggsAudioCodec


def mini_codec(
    seed: int = 0,
    encoder_width: int = 8,
    latent_dim: int = 64,
    decoder_width: int = 128,
    codebook_dim: int = 8,
    n_q: int = 8,
    bins: int = 1024,
    rvq_dim: int = 96,
    input_gain: float = 10.0,
) -> HiggsAudioCodec:
    """A fresh codec with the real frame geometry (24 kHz, hop 960, 25 frames/s), narrow widths and no
    semantic branch; `fc_prior` maps the acoustic latent to the `rvq_dim`-wide RVQ input (96: the shipped
    mini's, trained when 32 of its columns read a zeroed-out HuBERT branch).

    `input_gain` scales the encoder's first convolution at init. Speech at ~0.1 RMS leaves the Snake
    activations (α = 1) almost linear, and a linear encoder with strides averages the waveform away: the
    latent barely moves with the audio and the decoder settles on the corpus' mean spectrum. With gain 10
    the first Snakes rectify and the latent follows the speech from the start (bench/RESULTS.md,
    *higgslab-mini*: "the encoder's first convolution starts with gain 10")."""
    cfg = CodecConfig(
        encoder_width=encoder_width,
        latent_dim=latent_dim,
        decoder_width=decoder_width,
        codebook_dim=codebook_dim,
        n_q=n_q,
        bins=bins,
        hubert=None,
        rvq_dim=rvq_dim,
    )
    with torch.random.fork_rng(devices=[], device_type="cpu"):
        torch.manual_seed(seed)
        codec = HiggsAudioCodec(cfg)
    with torch.no_grad():
        codec.acoustic_encoder.conv1.weight.mul_(input_gain)
    return codec.train()


@dataclass
class CodecOutput:
    recon: torch.Tensor  # [B, 1, L] decoded from the first n_active codebooks
    commitment: torch.Tensor  # scalar: mean ||project_in(residual) - codeword||² over active levels
    codes: torch.Tensor  # [B, n_q, T]
    projected: list[torch.Tensor]  # per level [B·T, codebook_dim], detached: what the EMA moves towards


class CodecTrainer(nn.Module):
    """`HiggsAudioCodec` + EMA statistics of each codebook (`cluster_size` [n_q, bins], `embed_sum`
    [n_q, bins, codebook_dim]); everything a resumed run needs is in this module's state dict."""

    def __init__(self, codec: HiggsAudioCodec, decay: float = 0.99, dead_after: float = 0.5):
        super().__init__()
        cfg = codec.cfg
        self.codec = codec
        self.decay = decay
        self.dead_after = dead_after  # restart a code whose EMA count (assignments per step) drops below this
        self.register_buffer("cluster_size", torch.ones(cfg.n_q, cfg.bins))
        self.register_buffer("embed_sum", torch.zeros(cfg.n_q, cfg.bins, cfg.codebook_dim))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def forward(
        self, wav: torch.Tensor, n_active: int | None = None, quantize: bool = True, codes_fixed: bool = False
    ) -> CodecOutput:
        """Reconstruction from the first `n_active` levels; quantize=False is the warm-up's linear bottleneck.
        codes_fixed: encoder and quantizer run without gradient, so training moves the decoder alone."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not codes_fixed):
            quantized, codes, commitment, projected = self._quantize(wav, n_active, quantize)
        recon = self.codec.acoustic_decoder(self.codec.fc_post2(quantized).transpose(1, 2))
        return CodecOutput(recon[..., : wav.shape[-1]], commitment, codes, projected)

    def _quantize(self, wav, n_active, quantize):
        """(sum of the first n_active levels' outputs `[B, T, D]`, codes `[B, n_q, T]`, commitment, projected)"""
        B = wav.shape[0]
        latent = self.codec.latent(wav)
        T = latent.shape[-1]
        residual = latent.transpose(1, 2).reshape(B * T, -1)
        levels = self.codec.quantizer.layers
        n_active = len(levels) if n_active is None else n_active
        quantized = torch.zeros_like(residual)
        commitment, codes, projected = residual.new_zeros(()), [], []
        for q, level in enumerate(levels):
            with torch.no_grad():
                idx, _ = level.nearest(residual.detach())
            z = level.project_in(residual)
            codeword = level.codebook[idx]
            # straight-through: the encoder sees the codeword's gradient
            z_q = z + (codeword - z).detach() if quantize else z
            out = level.project_out(z_q)
            codes.append(idx)
            projected.append(z.detach())
            if q < n_active:
                commitment = commitment + (F.mse_loss(z, codeword) if quantize else 0.0)
                quantized = quantized + out
            residual = residual - out
        codes = torch.stack(codes, 1).reshape(B, T, -1).transpose(1, 2)
        return quantized.reshape(B, T, -1), codes, commitment / n_active, projected

    @torch.no_grad()
    def init_codebooks(self, wav: torch.Tensor, generator: torch.Generator) -> None:
        """Seed every codebook with projected residuals of a batch (level by level, as RVQ sees them), each
        code counted as used an average amount."""
        levels = self.codec.quantizer.layers
        latent = self.codec.latent(wav)
        residual = latent.transpose(1, 2).reshape(-1, latent.shape[1])
        average = residual.shape[0] / levels[0].codebook.shape[0]
        for q, level in enumerate(levels):
            level.codebook.copy_(sample_rows(level.project_in(residual), level.codebook.shape[0], generator))
            self.embed_sum[q].copy_(level.codebook * average)
            residual = residual - level.lookup(level.nearest(residual)[0])
        self.cluster_size.fill_(average)
        self.initialised.fill_(True)

    @torch.no_grad()
    def update_codebooks(self, out: CodecOutput, generator: torch.Generator) -> torch.Tensor:
        """EMA step of every codebook towards the mean of its assigned vectors; restart dead codes on random
        vectors of this batch. Returns the number of restarted codes per level `[n_q]`."""
        restarted = []
        for q, level in enumerate(self.codec.quantizer.layers):
            z, idx = out.projected[q], out.codes[:, q].reshape(-1)
            onehot = F.one_hot(idx, level.codebook.shape[0]).type_as(z)  # [N, bins]
            self.cluster_size[q].mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
            self.embed_sum[q].mul_(self.decay).add_(onehot.t() @ z, alpha=1 - self.decay)
            level.codebook.copy_(self.embed_sum[q] / self.cluster_size[q].clamp(min=1e-5)[:, None])
            dead = self.cluster_size[q] < self.dead_after
            n_dead = int(dead.sum())
            if n_dead:
                fresh = sample_rows(z, n_dead, generator)
                average = z.shape[0] / level.codebook.shape[0]
                level.codebook[dead] = fresh
                self.embed_sum[q][dead] = fresh * average
                self.cluster_size[q][dead] = average
            restarted.append(n_dead)
        return torch.tensor(restarted)


def sample_rows(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """`n` rows of `x` `[N, d]` drawn at random (with replacement when N < n), plus a little noise."""
    idx = torch.randint(0, x.shape[0], (n,), generator=generator)
    return x[idx] + 1e-3 * torch.randn(n, x.shape[1], generator=generator) * x.std()


def negative_si_sdr(estimate: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean negative scale-invariant SDR in dB of `[B, 1, L]` batches: a loss that only phase-true
    waveforms can lower (the spectral losses are blind to phase)."""
    est, ref = (x[:, 0] - x[:, 0].mean(-1, keepdim=True) for x in (estimate, target))  # zero-mean [B, L]
    scale = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    projected = scale * ref
    ratio = projected.pow(2).sum(-1) / ((est - projected).pow(2).sum(-1) + eps)
    return -(10 * torch.log10(ratio + eps)).mean()


class SpectralLoss(nn.Module):
    """Multi-resolution reconstruction loss: L1 of log-mel spectrograms (DAC's main term) plus the
    log-magnitude STFT L1 and spectral convergence of each resolution. Inputs `[B, 1, L]`."""

    def __init__(
        self, sample_rate: int = 24000, windows: tuple[int, ...] = (2048, 512, 128), n_mels: int = 64
    ):
        super().__init__()
        import librosa

        self.windows = windows
        for n in windows:
            mel = librosa.filters.mel(sr=sample_rate, n_fft=n, n_mels=min(n_mels, n // 4), fmin=0.0)
            self.register_buffer(f"mel_{n}", torch.from_numpy(mel).float(), persistent=False)
            self.register_buffer(f"window_{n}", torch.hann_window(n), persistent=False)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        mel_loss = stft_loss = estimate.new_zeros(())
        for n in self.windows:
            window, mel = getattr(self, f"window_{n}"), getattr(self, f"mel_{n}")
            est, ref = (
                torch.stft(x[:, 0], n, n // 4, window=window, return_complex=True).abs()
                for x in (estimate, target)
            )
            stft_loss = stft_loss + (est - ref).norm() / ref.norm().clamp(min=1e-5)  # spectral convergence
            stft_loss = stft_loss + (est.clamp(min=1e-5).log() - ref.clamp(min=1e-5).log()).abs().mean()
            mel_est, mel_ref = (torch.einsum("mf,bft->bmt", mel, s.pow(2)) for s in (est, ref))
            mel_loss = (
                mel_loss + (mel_est.clamp(min=1e-5).log10() - mel_ref.clamp(min=1e-5).log10()).abs().mean()
            )
        k = len(self.windows)
        return {"mel": mel_loss / k, "stft": stft_loss / k}
