"""The plain-torch resampler against a direct float64 evaluation of the windowed-sinc formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higgslab.errors import HiggsLabError
from higgslab.tokenizer.resample import resample, sinc_kernel
from tests.tokenizer.conftest import direct_sinc_resample


@pytest.mark.parametrize(("orig", "new"), [(24000, 16000), (16000, 24000), (44100, 24000)])
def test_matches_direct_formula(orig, new):
    x = np.random.default_rng(1).uniform(-1, 1, 3001)
    ours = resample(torch.from_numpy(x), orig, new).numpy()  # float64 in -> float64 kernel
    expected = direct_sinc_resample(x, orig, new)
    assert ours.shape == expected.shape == (int(np.ceil(len(x) * new / orig)),)
    np.testing.assert_allclose(ours, expected, atol=1e-12, rtol=0)


def test_float32_and_batch_shapes():
    x = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (2, 3, 4800)).astype(np.float32))
    y = resample(x, 24000, 16000)
    assert y.shape == (2, 3, 3200) and y.dtype == torch.float32
    expected = direct_sinc_resample(x[1, 2].double().numpy(), 24000, 16000)
    np.testing.assert_allclose(y[1, 2].numpy(), expected, atol=2e-6, rtol=0)


def test_hubert_frame_count_matches_acoustic_frames():
    """2 s at 24 kHz -> 32,000 samples at 16 kHz; +160 each side gives HuBERT 100 frames, every 2nd = 50 = 48000/960."""
    y = resample(torch.zeros(48000), 24000, 16000)
    n = y.shape[-1] + 320
    for kernel, stride in zip([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2], strict=True):
        n = (n - kernel) // stride + 1
    assert y.shape[-1] == 32000 and n == 100


def test_lowpass_keeps_passband_and_removes_alias():
    t = np.arange(24000) / 24000
    low, high = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 10000 * t)  # 10 kHz folds at 16 kHz
    y_low = resample(torch.from_numpy(low), 24000, 16000).numpy()[200:-200]
    y_high = resample(torch.from_numpy(high), 24000, 16000).numpy()[200:-200]
    assert abs(np.abs(y_low).max() - 1) < 0.01 and np.abs(y_high).max() < 0.01


def test_kernel_is_cached():
    sinc_kernel.cache_clear()
    resample(torch.zeros(100), 24000, 16000)
    resample(torch.zeros(200), 24000, 16000)
    info = sinc_kernel.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    kernel, width = sinc_kernel(3, 2)
    assert kernel.shape == (2, 1, 2 * width + 3) and width == 10


def test_bad_rates_and_dtype():
    with pytest.raises(HiggsLabError, match="0"):
        resample(torch.zeros(10), 0, 16000)
    with pytest.raises(HiggsLabError, match="int64"):
        resample(torch.zeros(10, dtype=torch.long), 24000, 16000)
