"""Codebook statistics and reconstruction metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higgslab.errors import HiggsLabError
from higgslab.tokenizer.stats import (
    codebook_stats,
    codebook_usage,
    log_mel_distance,
    quality_vs_codebooks,
    si_sdr,
)


def test_usage_perplexity_and_dead_codes():
    a = torch.tensor([[0, 0, 1, 1], [5, 5, 5, 5]])
    b = torch.tensor([[2, 3], [5, 5]])
    usage = codebook_usage([a, b], bins=8)
    assert usage.shape == (2, 8)
    assert usage[0].tolist() == [2, 2, 1, 1, 0, 0, 0, 0] and usage[1, 5] == 6
    stats = codebook_stats(usage)
    p = np.array([2, 2, 1, 1]) / 6
    assert stats.perplexity[0] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert stats.perplexity[1] == pytest.approx(1.0)
    assert stats.dead.tolist() == [4, 7] and stats.top_share.tolist() == pytest.approx([1 / 3, 1.0])


def test_usage_rejects_bad_codes():
    with pytest.raises(HiggsLabError, match="values in"):
        codebook_usage([torch.tensor([[0, 9]])], bins=8)
    with pytest.raises(HiggsLabError, match="at least one"):
        codebook_usage([])


def test_si_sdr_and_log_mel_distance():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(24000).astype(np.float32)
    assert si_sdr(ref, 0.5 * ref) > 100  # scale-invariant
    noisy = ref + 0.1 * rng.standard_normal(24000)
    assert si_sdr(ref, noisy) == pytest.approx(20, abs=0.5)
    assert log_mel_distance(ref, ref) == 0
    assert 0 < log_mel_distance(ref, noisy) < log_mel_distance(ref, ref + rng.standard_normal(24000))


def test_quality_vs_codebooks_rows(tok, speech_like):
    rows = quality_vs_codebooks(tok, [(speech_like[:24000], 24000), speech_like[24000:]])
    assert [r["k"] for r in rows] == list(range(1, 9))
    assert rows[-1]["bitrate"] == 2000 and rows[0]["bitrate"] == 250
    assert all(np.isfinite(r["si_sdr"]) and r["log_mel_distance"] > 0 for r in rows)
    assert len({round(r["log_mel_distance"], 6) for r in rows}) > 1  # k changes the reconstruction
