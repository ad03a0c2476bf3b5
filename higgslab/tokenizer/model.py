"""The Higgs audio codec as one readable nn.Module (xcodec-style; FORMATS.md §3).

    encode: wav 24 kHz [B, 1, L]
        ├─ acoustic_encoder (DAC, hop 960) ────────────────────────────► [B, D=256, T]
        └─ resample 24k→16k → HuBERT → mean of all hidden states → every 2nd frame
             → encoder_semantic (conv blocks) ──────────────────────────► [B, 768, T]
        concat → fc_prior (1024→1024) → ResidualVectorQuantizer ─────────► codes [B, n_q, T]
    decode: codes → sum of the first k levels → fc_post2 (1024→256) → acoustic_decoder (DAC) → [B, 1, T·960]

A codec may have no semantic branch (`CodecConfig.hubert = None`, e.g. the shipped mini, trained without a
teacher): fc_prior then reads the acoustic latent alone, and the frame count follows the same rule as
with the branch (`CodecConfig.frames`). The DAC encoder/decoder and HuBERT are transformers' own modules
(weight norm folded into plain weights); the small pieces specific to this codec live here. Parameter
names are this module's; `higgslab.io.codec_format` maps both on-disk layouts onto them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from higgslab.tokenizer.quantizer import ResidualVectorQuantizer
from higgslab.tokenizer.resample import resample

# HuBERT's feature-extractor convolutions (base and large): they set the codec's frame count
HUBERT_KERNELS = (10, 3, 3, 3, 3, 2, 2)
HUBERT_STRIDES = (5, 2, 2, 2, 2, 2, 2)


@dataclass
class CodecConfig:
    """Geometry of the codec. Defaults are the real `bosonai/higgs-audio-v2-tokenizer`."""

    sample_rate: int = 24000
    ratios: tuple[int, ...] = (8, 5, 4, 2, 3)  # DAC encoder strides; the decoder uses the same list
    encoder_width: int = 64  # DAC encoder channels after its first conv (doubled at every stride)
    latent_dim: int = 256  # D: acoustic latent width
    decoder_width: int = 1024  # DAC decoder channels after its first conv (halved at every stride)
    n_q: int = 8
    bins: int = 1024
    codebook_dim: int = 64
    semantic_sample_rate: int = 16000
    semantic_hop: int = 320  # HuBERT's feature-extractor stride at 16 kHz
    # transformers HubertConfig kwargs ({} = hubert-base); None: no semantic branch at all
    hubert: dict | None = field(default_factory=dict)
    rvq_dim: int | None = None  # fc_prior's output = the RVQ's input; None: its input width (square, as real)
    # semantic conv encoder (xcodec defaults)
    semantic_kernel: int = 3
    semantic_strides: tuple[int, ...] = (1, 1)
    semantic_channel_ratios: tuple[float, ...] = (1, 1)
    semantic_dilations: tuple[int, ...] = (1, 1)
    semantic_unit_kernel: int = 3

    def __post_init__(self):
        if self.rvq_dim is None:
            self.rvq_dim = self.latent_dim + self.semantic_dim

    @property
    def semantic(self) -> bool:
        return self.hubert is not None

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def semantic_dim(self) -> int:
        """Width of the semantic latent fc_prior reads beside the acoustic one (0 without the branch)."""
        return self.hubert_config().hidden_size if self.semantic else 0

    @property
    def semantic_stride(self) -> int:
        """Keep every n-th HuBERT frame: 960 samples at 24k = 640 at 16k = 2 HuBERT frames."""
        return int(self.hop_length / (self.sample_rate / self.semantic_sample_rate) / self.semantic_hop)

    def frames(self, samples: int) -> int:
        """Frames encoded from `samples` samples: the semantic branch's count (HuBERT's convolutions over the
        16 kHz audio padded by half a HuBERT hop per side, every `semantic_stride`-th frame kept). The
        original code lets that branch decide the count; a codec without one follows the same rule."""
        n = math.ceil(samples * self.semantic_sample_rate / self.sample_rate) + 2 * (self.semantic_hop // 2)
        for kernel, stride in zip(HUBERT_KERNELS, HUBERT_STRIDES, strict=True):
            n = (n - kernel) // stride + 1
        return -(-n // self.semantic_stride)

    def hubert_config(self):
        from transformers import HubertConfig

        return HubertConfig(**{"mask_time_prob": 0.0, **self.hubert})

    def dac_config(self):
        from transformers import DacConfig

        return DacConfig(
            encoder_hidden_size=self.encoder_width,
            downsampling_ratios=list(self.ratios),
            decoder_hidden_size=self.decoder_width,
            upsampling_ratios=list(self.ratios),
            hidden_size=self.latent_dim,
        )


class SemanticResidualUnit(nn.Module):
    """x + conv1x1(elu(conv_k(elu(x)))), both convs bias-free."""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv1d(
            channels, channels, kernel, padding=(kernel - 1) // 2 * dilation, dilation=dilation, bias=False
        )
        self.conv2 = nn.Conv1d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


class SemanticBlock(nn.Module):
    """Residual units, then a (possibly strided) conv to `out_ch`."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, cfg: CodecConfig):
        super().__init__()
        self.res_units = nn.ModuleList(
            SemanticResidualUnit(in_ch, cfg.semantic_unit_kernel, d) for d in cfg.semantic_dilations
        )
        kernel = 3 if stride == 1 else 2 * stride
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.res_units:
            x = unit(x)
        return self.conv(x)


class SemanticEncoder(nn.Module):
    """HuBERT features `[B, 768, T]` -> semantic latent `[B, 768·ratio, T/∏strides]` (identity geometry for real)."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        dim = cfg.semantic_dim
        self.conv = nn.Conv1d(dim, dim, cfg.semantic_kernel, padding=cfg.semantic_kernel // 2, bias=False)
        blocks, ch = [], dim
        for stride, ratio in zip(cfg.semantic_strides, cfg.semantic_channel_ratios, strict=True):
            blocks.append(SemanticBlock(ch, int(dim * ratio), stride, cfg))
            ch = int(dim * ratio)
        self.conv_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        for block in self.conv_blocks:
            x = block(x)
        return x


def conv_output_length(module: nn.Module, length: int) -> int:
    """Length after every Conv1d inside `module`, in order (valid for the DAC encoder: its residual convs keep length)."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d):
            k, s, p, d = m.kernel_size[0], m.stride[0], m.padding[0], m.dilation[0]
            length = (length + 2 * p - d * (k - 1) - 1) // s + 1
    return length


class Snake(nn.Module):
    """Snake activation x + sin²(αx)/α, per channel. Same numbers as transformers' `Snake1d` (same operations in
    the same order), but without grad it reuses one buffer instead of five: the DAC spends much of its time here."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv_alpha = (self.alpha + 1e-9).reciprocal()
        if torch.is_grad_enabled():
            return x + inv_alpha * torch.sin(self.alpha * x).pow(2)
        return (self.alpha * x).sin_().pow_(2).mul_(inv_alpha).add_(x)


def build_acoustic(cfg: CodecConfig) -> tuple[nn.Module, nn.Module]:
    """(DAC encoder, DAC decoder) as in the original: decoder transposed convs get output_padding = stride % 2
    (so T frames decode to exactly T·hop samples) and there is no final tanh. transformers' Snake1d modules
    are swapped for `Snake` (same parameter, same numbers, less memory traffic)."""
    from transformers.models.dac.modeling_dac import DacDecoder, DacEncoder, Snake1d

    dac = cfg.dac_config()
    encoder, decoder = DacEncoder(dac), DacDecoder(dac)
    for m in decoder.modules():
        if isinstance(m, nn.ConvTranspose1d):
            m.output_padding = (m.stride[0] % 2,)
    decoder.tanh = nn.Identity()
    for parent in list(encoder.modules()) + list(decoder.modules()):
        for name, child in parent.named_children():
            if isinstance(child, Snake1d):
                setattr(parent, name, Snake(child.alpha.shape[1]))
    return encoder, decoder


class HiggsAudioCodec(nn.Module):
    """All weights of the tokenizer and the tensor-level encode/decode. Inputs are already mono 24 kHz."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.acoustic_encoder, self.acoustic_decoder = build_acoustic(cfg)
        if cfg.semantic:
            from transformers import HubertModel

            self.semantic_model = HubertModel(cfg.hubert_config())
            self.encoder_semantic = SemanticEncoder(cfg)
        self.fc_prior = nn.Linear(cfg.latent_dim + cfg.semantic_dim, cfg.rvq_dim)
        self.quantizer = ResidualVectorQuantizer(cfg.rvq_dim, cfg.codebook_dim, cfg.bins, cfg.n_q)
        self.fc_post2 = nn.Linear(cfg.rvq_dim, cfg.latent_dim)
        self.eval()

    def semantic_features(self, wav: torch.Tensor) -> torch.Tensor:
        """wav `[B, 1, L]` at 24 kHz -> semantic latent `[B, 768, T_s]`."""
        cfg = self.cfg
        x = resample(wav[:, 0], cfg.sample_rate, cfg.semantic_sample_rate)
        # half a HuBERT hop on each side centres its frames on multiples of 320 samples (as the original)
        x = F.pad(x, (cfg.semantic_hop // 2, cfg.semantic_hop // 2))
        hidden = self.semantic_model(x, output_hidden_states=True).hidden_states  # 1 + layers × [B, T', 768]
        feats = torch.stack(hidden, dim=1).mean(dim=1)[:, :: cfg.semantic_stride]
        return self.encoder_semantic(feats.transpose(1, 2))

    def acoustic_features(self, wav: torch.Tensor, frames: int) -> torch.Tensor:
        """wav `[B, 1, L]` -> acoustic latent `[B, D, frames]`, with the ORIGINAL's length rule (FORMATS.md §3).

        If the unpadded encoder would not give `frames` (the semantic count), the audio is padded by
        160 × semantic_stride = 320 samples per side (transformers uses hop/2 = 480: other codes), and the
        longer of the two latents is trimmed afterwards. The unpadded count is computed, not run.
        """
        if conv_output_length(self.acoustic_encoder, wav.shape[-1]) != frames:
            pad = self.cfg.semantic_hop // 2 * self.cfg.semantic_stride
            wav = F.pad(wav, (pad, pad))
        return self.acoustic_encoder(wav)

    def latent(self, wav: torch.Tensor) -> torch.Tensor:
        """wav `[B, 1, L]` -> fused latent `[B, rvq_dim, T]` (the RVQ input; 1024 wide for real)."""
        semantic = self.semantic_features(wav) if self.cfg.semantic else None
        frames = self.cfg.frames(wav.shape[-1]) if semantic is None else semantic.shape[-1]
        acoustic = self.acoustic_features(wav, frames)
        frames = min(frames, acoustic.shape[-1])
        parts = [acoustic] if semantic is None else [acoustic, semantic]
        fused = torch.cat([x[..., :frames] for x in parts], dim=1)
        return self.fc_prior(fused.transpose(1, 2)).transpose(1, 2)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav `[B, 1, L]` at 24 kHz -> codes `[B, n_q, T]`."""
        return self.quantizer.encode(self.latent(wav))

    def decoder_input(self, codes: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """codes `[B, n_q, T]` -> DAC decoder input `[B, D, T]` (per frame: no context needed)."""
        quantized = self.quantizer.decode(codes, k)
        return self.fc_post2(quantized.transpose(1, 2)).transpose(1, 2)

    def decode(self, codes: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """codes `[B, n_q, T]` -> wav `[B, 1, T·hop]` from the first `k` codebooks."""
        return self.acoustic_decoder(self.decoder_input(codes, k))
