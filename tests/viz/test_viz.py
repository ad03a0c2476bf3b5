"""viz: the data behind each plot (what a reader would trust), and that the plots mark what they claim."""

import numpy as np
import pytest
import torch

import higgslab
from higgslab import delay
from higgslab.viz import (
    compare_mels,
    demo_clip,
    ffn_norms,
    frames_at_step,
    plot_codes,
    plot_ffn_norms,
    plot_spectrogram_compare,
    plot_token_stream,
    png,
)

IDS = delay.StreamIds.after_codes(1024)  # the real checkpoint's


def test_compare_mels_identical_is_zero_and_noise_is_not():
    clip = demo_clip(1.0)
    same = compare_mels(clip, clip.copy())
    assert same["mel_distance"] == 0 and not same["difference"].any()
    noisy = clip + 0.1 * np.random.default_rng(0).standard_normal(clip.size).astype(np.float32)
    other = compare_mels(clip, noisy[:-500])  # different lengths: trimmed to the shorter
    assert other["mel_distance"] > 0.05
    assert other["original"].shape == other["reconstruction"].shape == other["difference"].shape
    np.testing.assert_allclose(other["difference"], other["reconstruction"] - other["original"])


def test_spectrogram_panels_share_one_colour_scale():
    clip = demo_clip(1.0)
    fig = plot_spectrogram_compare(compare_mels(clip, 0.1 * clip))
    original, recon, diff = (ax.images[0] for ax in fig.axes[:3])
    assert original.get_clim() == recon.get_clim()
    lo, hi = diff.get_clim()
    assert lo == -hi  # the difference is centred on zero
    assert png(fig).startswith(b"\x89PNG")


def test_codes_plot_shows_the_codes_and_usage():
    codes = torch.randint(0, 1024, (8, 30))
    fig = plot_codes(codes)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), codes.numpy())
    assert len(fig.axes[1].lines) == 8  # one usage curve per codebook


def test_frames_at_step_grow_to_the_final_frames():
    codes = torch.randint(0, 1024, (8, 6))
    columns = delay.apply(torch.cat([torch.full((8, 1), 1024), codes, torch.full((8, 1), 1025)], 1), IDS)
    counts = [frames_at_step(columns, s, IDS).shape[1] for s in range(columns.shape[1] + 1)]
    assert counts[:8] == [0] * 8 and counts == sorted(counts)
    assert torch.equal(frames_at_step(columns, columns.shape[1], IDS), codes)


def test_token_stream_marks_stream_tokens_and_hides_future_columns():
    columns = torch.randint(0, 1024, (8, 12))
    for k in range(8):  # the opening staircase: codebook k starts at column k + 1
        columns[k, : k + 1] = 1024
    columns[:3, -1] = 1025
    step = columns.shape[1] - 2
    fig = plot_token_stream(columns, IDS, step)
    real, bos, eos = (im.get_array() for im in fig.axes[0].images)
    shown = columns[:, :step].numpy()
    assert np.array_equal(~np.ma.getmaskarray(bos[:, :step]), shown == 1024)
    assert np.ma.getmaskarray(eos).all()  # the eos column is past `step`
    assert np.ma.getmaskarray(real[:, step:]).all()
    _, _, eos_all = (im.get_array() for im in plot_token_stream(columns, IDS).axes[0].images)
    assert (~np.ma.getmaskarray(eos_all)).sum() == 3


@pytest.fixture(scope="module")
def tiny_lm(lm_checkpoints):
    return higgslab.load_model(lm_checkpoints["original"])


def test_ffn_norms_follow_the_audio_ffn_switch(tiny_lm):
    c = tiny_lm.config
    ids = torch.tensor([128000, 5, 6, 7, 128013] + [c.audio_out_token_id] * 12)
    codes = delay.apply(torch.randint(0, 1024, (8, 5)), IDS)
    on = ffn_norms(tiny_lm, ids, codes)
    assert (on.text > 0).all() and (on.audio > 0).all()
    try:
        tiny_lm.layers[1].audio_ffn = "skip"
        off = ffn_norms(tiny_lm, ids, codes)
        tiny_lm.layers[1].audio_ffn = "text"
        via_text = ffn_norms(tiny_lm, ids, codes)
    finally:
        tiny_lm.layers[1].audio_ffn = "audio"
    assert off.audio[1] == 0 and off.audio[0] == on.audio[0] and off.switches == ["audio", "skip"]
    assert off.text[0] == on.text[0]
    assert via_text.audio[1] > 0 and via_text.audio[1] != on.audio[1]
    is_audio = ids == c.audio_out_token_id
    assert not torch.allclose(off.audio_logits[is_audio], on.audio_logits[is_audio])
    assert torch.equal(off.audio_logits[~is_audio][:4], on.audio_logits[~is_audio][:4])  # causal: text first
    assert png(plot_ffn_norms(off, on)).startswith(b"\x89PNG")
