"""Residual vector quantizer (RVQ): the 8 stacked codebooks that turn a 1024-d latent frame into 8 codes.

Level q projects the current residual down to the codebook space (`project_in`, 1024 -> 64), picks the
nearest of `bins` codewords (Euclidean), projects that codeword back up (`project_out`, 64 -> 1024) and
subtracts it from the residual; level q+1 quantizes what is left. Decoding sums the levels' outputs, so the
first k codes alone give a coarser reconstruction of the same frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from higgslab.errors import HiggsLabError


class VQLevel(nn.Module):
    """One codebook: `project_in` -> nearest codeword -> `project_out`."""

    def __init__(self, dim: int, codebook_dim: int, bins: int):
        super().__init__()
        self.project_in = nn.Linear(dim, codebook_dim)
        self.project_out = nn.Linear(codebook_dim, dim)
        self.register_buffer("codebook", torch.zeros(bins, codebook_dim))  # [bins, codebook_dim]

    def nearest(self, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[N, dim]` -> (codes [N], squared distance to the chosen codeword [N])."""
        z = self.project_in(residual)  # [N, codebook_dim]
        # ||z||^2 - 2 z.e + ||e||^2, in the reference's order so that ties break the same way
        dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ self.codebook.t() + self.codebook.pow(2).sum(1)[None]
        codes = (-dist).max(dim=-1).indices
        return codes, dist.gather(1, codes[:, None])[:, 0]

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes `[...]` -> this level's contribution to the latent `[..., dim]`."""
        return self.project_out(self.codebook[codes])


@dataclass
class RVQTrace:
    """What `ResidualVectorQuantizer.trace` saw, level by level (shapes for a `[B, dim, T]` input).

    codes: `[B, n_q, T]`; residuals: `[n_q, B, dim, T]`, the input to each level (residuals[0] is the latent);
    distances: `[B, n_q, T]`, squared distance from each level's projected residual to its chosen codeword;
    reconstructions: `[n_q, B, dim, T]`, the running sum of the first q+1 levels' outputs.
    """

    codes: torch.Tensor
    residuals: torch.Tensor
    distances: torch.Tensor
    reconstructions: torch.Tensor


class ResidualVectorQuantizer(nn.Module):
    """`n_q` VQ levels applied to successive residuals."""

    def __init__(self, dim: int, codebook_dim: int, bins: int, n_q: int):
        super().__init__()
        self.bins = bins
        self.layers = nn.ModuleList(VQLevel(dim, codebook_dim, bins) for _ in range(n_q))

    @property
    def n_q(self) -> int:
        return len(self.layers)

    def trace(self, latent: torch.Tensor) -> RVQTrace:
        """Quantize `[B, dim, T]` and keep every intermediate (see `RVQTrace`)."""
        B, dim, T = latent.shape
        residual = latent.transpose(1, 2).reshape(B * T, dim)
        recon = torch.zeros_like(residual)
        codes, dists, residuals, recons = [], [], [], []
        for level in self.layers:
            residuals.append(residual)
            idx, dist = level.nearest(residual)
            quantized = level.lookup(idx)
            residual = residual - quantized
            recon = recon + quantized
            codes.append(idx)
            dists.append(dist)
            recons.append(recon)

        def frames(x: torch.Tensor) -> torch.Tensor:  # [B*T, dim] -> [B, dim, T]
            return x.reshape(B, T, dim).transpose(1, 2)

        return RVQTrace(
            codes=torch.stack(codes, 1).reshape(B, T, -1).transpose(1, 2),
            residuals=torch.stack([frames(r) for r in residuals]),
            distances=torch.stack(dists, 1).reshape(B, T, -1).transpose(1, 2),
            reconstructions=torch.stack([frames(r) for r in recons]),
        )

    def encode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent `[B, dim, T]` -> codes `[B, n_q, T]` (int64)."""
        B, dim, T = latent.shape
        residual = latent.transpose(1, 2).reshape(B * T, dim)
        codes = []
        for level in self.layers:
            idx, _ = level.nearest(residual)
            residual = residual - level.lookup(idx)
            codes.append(idx)
        return torch.stack(codes, 1).reshape(B, T, -1).transpose(1, 2)

    def decode(self, codes: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """codes `[B, n_q', T]` (n_q' <= n_q) -> latent `[B, dim, T]` from the first `k` levels (default: all given)."""
        k = codes.shape[1] if k is None else k
        if not 1 <= k <= min(codes.shape[1], self.n_q):
            raise HiggsLabError(f"k={k} codebooks: choose 1..{min(codes.shape[1], self.n_q)}")
        out = self.layers[0].lookup(codes[:, 0])
        for q in range(1, k):
            out = out + self.layers[q].lookup(codes[:, q])
        return out.transpose(1, 2)  # [B, T, dim] -> [B, dim, T]
