"""Codec training pieces: training forward = stock inference path, overfitting, codebook upkeep."""

import torch

from higgslab.tokenizer.codec import AudioTokenizer
from higgslab.tokenizer.stats import si_sdr
from higgslab.train.codec import CodecTrainer, SpectralLoss, mini_codec, negative_si_sdr

TINY = dict(encoder_width=2, latent_dim=16, decoder_width=32, codebook_dim=4, bins=64)


def test_training_codes_equal_the_stock_encode():
    """The training forward's quantisation loop picks the codes the stock inference path (`AudioTokenizer`) does."""
    trainer = CodecTrainer(mini_codec(0, **TINY))
    wav = torch.randn(2, 1, 960 * 6) * 0.1
    trainer.init_codebooks(wav, torch.Generator().manual_seed(0))
    with torch.no_grad():
        codes = trainer(wav).codes
    assert torch.equal(codes, AudioTokenizer(trainer.codec).encode(wav[:, 0].numpy()[:, None]))


def test_tiny_overfit_loss_decreases():
    torch.manual_seed(0)
    trainer = CodecTrainer(mini_codec(0, **TINY))
    spectral, g = SpectralLoss(windows=(512, 128)), torch.Generator().manual_seed(0)
    wav = torch.sin(torch.arange(960 * 2) * 0.05)[None, None].repeat(2, 1, 1) * 0.3
    trainer.init_codebooks(wav, g)
    opt = torch.optim.Adam([p for p in trainer.parameters() if p.requires_grad], 3e-3)
    losses = []
    for _ in range(8):
        out = trainer(wav)
        parts = spectral(out.recon, wav)
        loss = parts["mel"] + parts["stft"] + out.commitment
        opt.zero_grad()
        loss.backward()
        opt.step()
        trainer.update_codebooks(out, g)
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


def test_dead_codes_are_restarted_on_batch_vectors():
    trainer = CodecTrainer(mini_codec(0, **TINY), dead_after=0.5)
    wav = torch.randn(1, 1, 960 * 3) * 0.1
    g = torch.Generator().manual_seed(0)
    trainer.init_codebooks(wav, g)
    trainer.cluster_size.fill_(0.0)  # nothing used: every code is dead
    with torch.no_grad():
        restarted = trainer.update_codebooks(trainer(wav), g)
    n_q, bins = trainer.cluster_size.shape
    assert restarted.tolist() == [bins] * n_q  # every level restarts all its codes ...
    average = 3 / bins  # ... with the average count of a batch of 3 frames
    assert torch.allclose(trainer.cluster_size, torch.full_like(trainer.cluster_size, average))
    out = trainer(wav)  # restarted on this batch's vectors
    for level, z in zip(trainer.codec.quantizer.layers, out.projected, strict=True):
        assert torch.cdist(level.codebook, z).min(1).values.max() < 0.05 * z.norm(dim=1).mean()


def test_warm_up_passes_projections_not_codewords():
    """quantize=False: each level hands project_in(residual) itself to project_out (no codebook yet, no
    commitment), so the reconstruction is the decoder of that linear bottleneck."""
    trainer = CodecTrainer(mini_codec(0, **TINY)).eval()
    wav = torch.randn(1, 1, 960 * 3) * 0.1
    codec = trainer.codec
    with torch.no_grad():
        out = trainer(wav, quantize=False)
        residual = trainer.codec.latent(wav)[0].T
        total = torch.zeros_like(residual)
        for level in codec.quantizer.layers:
            step = level.project_out(level.project_in(residual))
            total, residual = total + step, residual - step
        expected = codec.acoustic_decoder(codec.fc_post2(total).T[None])[..., : wav.shape[-1]]
        quantized = trainer(wav)  # codebooks still all zero: a different reconstruction
    assert float(out.commitment) == 0.0
    torch.testing.assert_close(out.recon, expected)
    assert not torch.allclose(quantized.recon, out.recon)


def latent_on_off_gap(codec) -> float:
    """How far a fresh codec's latent moves between tone bursts and silence, relative to its mean."""
    t = torch.arange(960 * 24) / 24000
    on = ((torch.arange(24) // 3) % 2).bool()
    wav = 0.1 * torch.sign(torch.sin(2 * torch.pi * 150 * t)) * on.float().repeat_interleave(960)
    with torch.no_grad():
        latent = codec.latent(wav[None, None])[0]
    return float((latent[:, on].mean(1) - latent[:, ~on].mean(1)).norm() / latent.mean(1).norm())


def test_input_gain_makes_the_fresh_latent_follow_the_audio():
    """At speech levels (0.1) a unit-gain encoder is nearly linear and its latent hardly tells sound from
    silence; the default input gain must make it several times more responsive (mini widths, 3 seeds)."""
    gained = sum(latent_on_off_gap(mini_codec(s)) for s in range(3))
    plain = sum(latent_on_off_gap(mini_codec(s, input_gain=1.0)) for s in range(3))
    assert gained > 3 * plain


def test_fixed_codes_train_the_decoder_alone():
    """The recipe's last `decoder_steps`: only fc_post2 and the decoder move, so the codes stay what the LM
    was trained on."""
    torch.manual_seed(0)
    trainer = CodecTrainer(mini_codec(0, **TINY))
    wav = torch.randn(2, 1, 960 * 4) * 0.1
    trainer.init_codebooks(wav, torch.Generator().manual_seed(0))
    with torch.no_grad():
        codes = trainer(wav).codes
    before = {k: v.clone() for k, v in trainer.state_dict().items()}
    opt = torch.optim.Adam([p for p in trainer.parameters() if p.requires_grad], 1e-2)
    out = trainer(wav, 3, codes_fixed=True)
    SpectralLoss(windows=(512, 128))(out.recon, wav)["mel"].backward()
    opt.step()
    moved = {k for k, v in trainer.state_dict().items() if not torch.equal(before[k], v)}
    assert moved and all(k.startswith(("codec.acoustic_decoder.", "codec.fc_post2.")) for k in moved), moved
    with torch.no_grad():
        assert torch.equal(trainer(wav).codes, codes)


def test_negative_si_sdr_is_the_eval_metric_negated():
    """The training loss (torch, batched) and the evaluation metric (numpy) are the same SI-SDR."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 1, 2400, generator=g)
    est = 0.5 * ref + 0.3 * torch.randn(3, 1, 2400, generator=g) + 0.2  # scaled, noisy, offset
    expected = [si_sdr(r[0].numpy(), e[0].numpy()) for r, e in zip(ref, est, strict=True)]
    assert abs(float(negative_si_sdr(est, ref)) + sum(expected) / 3) < 1e-3
    assert float(negative_si_sdr(3 * ref, ref)) < -60  # a scaled copy is near-perfect
