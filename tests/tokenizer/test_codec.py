"""Quantizer pieces, k-codebook decoding, streaming decode and the public AudioTokenizer surface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higgslab.errors import HiggsLabError
from higgslab.tokenizer.streaming import bucket, decoder_radius


def test_encode_decode_shapes_and_batch(tok, speech_like):
    codes = tok.encode(speech_like, 24000)
    assert codes.dtype == torch.int64 and codes.shape == (8, 50)
    audio = tok.decode(codes)
    assert audio.dtype == np.float32 and audio.shape == (48000,)
    batch = np.stack([speech_like[None], -speech_like[None]])  # [2, 1, L]
    both = tok.encode(batch, 24000)
    assert both.shape == (2, 8, 50) and torch.equal(both[0], codes) and not torch.equal(both[1], codes)
    np.testing.assert_allclose(tok.decode(both)[0], audio, atol=1e-5)


def test_other_rates_and_stereo(tok, speech_like):
    codes = tok.encode(speech_like, 24000)
    stereo = np.stack([speech_like, speech_like])  # averaging identical channels changes nothing
    assert torch.equal(tok.encode(stereo, 24000), codes)
    for rate in (8000, 16000, 22050, 44100, 48000):
        n = len(speech_like) * rate // 24000
        assert tok.encode(np.zeros(n, np.float32) + 0.01, rate).shape == (8, 50)


def test_silence_encodes_and_decodes(tok):
    codes = tok.encode(np.zeros(24000, np.float32), 24000)
    assert codes.shape == (8, 25) and ((codes >= 0) & (codes < 1024)).all()
    assert np.isfinite(tok.decode(codes)).all()


def test_trace_exposes_residuals_distances_and_running_reconstruction(tok, speech_like):
    tr = tok.trace(speech_like, 24000)
    assert torch.equal(tr.codes[0], tok.encode(speech_like, 24000))
    latent = tr.residuals[0]
    # each residual is the latent minus the running reconstruction before it
    torch.testing.assert_close(tr.residuals[3], latent - tr.reconstructions[2], atol=1e-5, rtol=0)
    # the chosen codeword is the nearest one: no codeword is closer
    level = tok.model.quantizer.layers[0]
    z = level.project_in(latent[0].T)
    all_d = torch.cdist(z, level.codebook).pow(2)
    torch.testing.assert_close(tr.distances[0, 0], all_d.min(1).values, atol=1e-3, rtol=1e-4)
    # the running reconstruction after all levels is exactly what decode feeds to fc_post2
    torch.testing.assert_close(
        tr.reconstructions[-1], tok.model.quantizer.decode(tr.codes), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("k", range(1, 9))
def test_decode_first_k_codebooks(tok, speech_like, k):
    codes = tok.encode(speech_like[:24000], 24000)
    audio = tok.decode(codes, k=k)
    assert audio.shape == (24000,) and np.isfinite(audio).all()
    # equals decoding a copy whose later codebooks contribute nothing: compare latents directly
    latent = tok.model.quantizer.decode(codes[None], k)
    expected = sum(tok.model.quantizer.layers[q].lookup(codes[q]) for q in range(k)).T[None]
    torch.testing.assert_close(latent, expected, atol=1e-5, rtol=0)
    if k < 8:
        assert not np.allclose(audio, tok.decode(codes, k=k + 1), atol=1e-4)


def test_radius_bounds_the_decoder_dependence(tok):
    """Changing latent frame 30 may only change output frames within the computed radius."""
    radius = decoder_radius(tok.model.acoustic_decoder)
    x = torch.randn(1, tok.model.cfg.latent_dim, 60)
    with torch.no_grad():
        y0 = tok.model.acoustic_decoder(x)[0, 0].reshape(60, 960)
        x[..., 30] += 1
        y1 = tok.model.acoustic_decoder(x)[0, 0].reshape(60, 960)
    changed = torch.nonzero((y1 - y0).abs().amax(1) > 0)[:, 0]
    assert 30 - radius <= changed.min() and changed.max() <= 30 + radius
    assert changed.max() - changed.min() >= 10  # the bound is not vacuous


def pushed(stream, codes: torch.Tensor, sizes: list[int]) -> list[np.ndarray]:
    """What `stream` returns for `codes` pushed in pieces of `sizes` (the rest last), then a flush."""
    bounds = np.cumsum([0, *sizes, codes.shape[1] - sum(sizes)])
    parts = [stream.push(codes[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    return parts + [stream.flush()]


@pytest.mark.parametrize("sizes", [[1] * 39, [4] * 9, [25], [3, 7, 1, 13, 2]])
def test_streaming_matches_one_shot(tok, sizes):
    codes = torch.randint(0, 1024, (8, 40), generator=torch.Generator().manual_seed(len(sizes)))
    full = tok.decode(codes)
    parts = pushed(tok.streaming_decoder(), codes, sizes)
    out = np.concatenate(parts)
    assert out.shape == full.shape
    assert np.abs(out - full).max() < 1e-5 * max(1.0, np.abs(full).max())
    assert sum(len(p) for p in parts[:-1]) > 0, "chunks must be emitted before the flush"


def test_streaming_returns_samples_as_soon_as_the_radius_allows(tok):
    """After n frames, every sample of the frames that lie a receptive-field radius before the end is out."""
    radius, hop = decoder_radius(tok.model.acoustic_decoder), tok.hop_length
    codes = torch.randint(0, 1024, (8, 30), generator=torch.Generator().manual_seed(5))
    stream, out = tok.streaming_decoder(), 0
    for n in range(1, 31):
        out += len(stream.push(codes[:, n - 1 : n]))
        assert out >= (n - radius) * hop
        assert out < n * hop, "a sample came out before its whole receptive field had"


def test_streaming_last_push_is_push_and_flush(tok):
    codes = torch.randint(0, 1024, (8, 40), generator=torch.Generator().manual_seed(3))
    a, b = tok.streaming_decoder(), tok.streaming_decoder()
    split = np.concatenate([a.push(codes[:, :25]), a.push(codes[:, 25:]), a.flush()])
    joined = np.concatenate([b.push(codes[:, :25]), b.push(codes[:, 25:], last=True)])
    np.testing.assert_allclose(joined, split, atol=1e-6)
    assert b.flush().size == 0
    with pytest.raises(HiggsLabError, match="has ended"):
        b.push(codes[:, :1])


def test_bucket_rounds_up_by_at_most_a_quarter_to_a_few_lengths_an_octave():
    sizes = [bucket(n) for n in range(1, 4097)]
    assert all(n <= b <= max(n, 1.25 * n) for n, b in enumerate(sizes, 1))
    assert all(bucket(b) == b for b in sizes)
    assert len(set(sizes)) <= 8 + 4 * 9  # 1..8, then four a power of two up to 4096


def test_streaming_convolutions_run_at_bucketed_lengths(tok, monkeypatch):
    """Pushes of any length run each convolution at `bucket` lengths only: a few shapes for oneDNN to build."""
    lengths = []  # the output lengths each convolution computes
    conv, conv_t = torch.nn.functional.conv1d, torch.nn.functional.conv_transpose1d

    def seen_conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        d = dilation if isinstance(dilation, int) else dilation[0]
        lengths.append(x.shape[-1] + 2 * (padding if isinstance(padding, int) else padding[0])
                       - d * (w.shape[-1] - 1))  # fmt: skip
        return conv(x, w, b, stride, padding, dilation, groups)

    def seen_conv_t(x, w, b=None, stride=1, *args):
        # its new inputs (after the first push, behind the one held from before): the outputs follow them
        lengths.append(x.shape[-1] if bucket(x.shape[-1]) == x.shape[-1] else x.shape[-1] - 1)
        return conv_t(x, w, b, stride, *args)

    monkeypatch.setattr(torch.nn.functional, "conv1d", seen_conv)
    monkeypatch.setattr(torch.nn.functional, "conv_transpose1d", seen_conv_t)
    codes = torch.randint(0, 1024, (8, 60), generator=torch.Generator().manual_seed(11))
    pushed(tok.streaming_decoder(), codes, [3, 7, 1, 13, 2, 9, 5])
    assert len(lengths) > 100
    assert [n for n in lengths if bucket(n) != n] == []


def test_streaming_with_k_and_reset(tok):
    codes = torch.randint(0, 1024, (8, 30), generator=torch.Generator().manual_seed(7))
    stream = tok.streaming_decoder(k=3)
    first = np.concatenate([stream.push(codes[:, :10]), stream.push(codes[:, 10:]), stream.flush()])
    np.testing.assert_allclose(first, tok.decode(codes, k=3), atol=1e-5)
    stream.reset()
    again = np.concatenate([stream.push(codes), stream.flush()])
    np.testing.assert_allclose(again, first, atol=1e-5)


def test_geometry(tok):
    assert (tok.sample_rate, tok.frame_rate, tok.hop_length) == (24000, 25, 960)
    assert (tok.num_codebooks, tok.codebook_size, tok.bitrate) == (8, 1024, 2000)


def test_audio_is_brought_to_the_tokenizer_s_own_rate(speech_like):
    """A 16 kHz tokenizer takes 16 kHz audio as it is and resamples 24 kHz audio to 16 kHz."""
    from higgslab.tiny.tokenizer import tiny_codec
    from higgslab.tokenizer.codec import AudioTokenizer

    tok16 = AudioTokenizer(tiny_codec(sample_rate=16000))
    assert (tok16.sample_rate, tok16.frame_rate) == (16000, 16000 / 960)
    at16 = speech_like[::3][: 2 * 16000 // 3 * 3]  # any 16 kHz signal: every 3rd sample of 2 s at 24 kHz
    np.testing.assert_array_equal(tok16.prepare(at16, 16000)[0, 0].numpy(), at16)
    assert tok16.prepare(speech_like, 24000).shape[-1] == 32000  # 2 s at 16 kHz
    codes = tok16.encode(speech_like, 24000)
    assert codes.shape == (8, 34) and torch.equal(  # ceil(32000 / 960) frames
        codes, tok16.encode(tok16.prepare(speech_like, 24000)[0, 0].numpy())
    )
    assert tok16.decode(codes).shape == (34 * 960,)
