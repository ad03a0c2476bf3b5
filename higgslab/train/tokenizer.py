"""Stage 1 of higgslab-mini: train the mini audio tokenizer on the synthetic corpus.

    python -m higgslab.train.tokenizer                      # experiment=mini (higgslab/conf/experiment/mini.yaml)
    python -m higgslab.train.tokenizer tokenizer.steps=20   # any key of the experiment can be overridden

Synthesises the corpus if needed, trains `CodecTrainer` on random crops (multi-resolution mel/STFT loss,
waveform L1, commitment; an unquantised warm-up, then EMA codebooks seeded from the warmed-up latent, with
dead-code restarts and quantizer dropout; the last `decoder_steps` train the decoder alone on fixed codes,
every prefix of k codebooks in turn), evaluates quality per number of codebooks on validation clips, and
writes into `<run_dir>/tokenizer/`:

    last.pt             resumable training state (rerun the same command to continue)
    loss.png            loss curves
    tokenizer/          the trained codec in the ORIGINAL on-disk layout (config.json + model.pth)
    quality.json        log-mel distance and SI-SDR for k = 1..n_q codebooks, codebook usage
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from higgslab.train.codec import CodecTrainer, SpectralLoss, mini_codec, negative_si_sdr
from higgslab.train.data import Clip, build_corpus, load_audio, read_manifest


def random_crops(clips: list[Clip], batch: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """`batch` crops of `samples` samples from random clips (zero-padded when shorter), with a random gain
    of -6..0 dB -> `[batch, 1, samples]`."""
    out = torch.zeros(batch, 1, samples)
    for b in range(batch):
        audio = torch.from_numpy(load_audio(clips[int(torch.randint(len(clips), (1,), generator=generator))]))
        start = int(torch.randint(max(1, len(audio) - samples + 1), (1,), generator=generator))
        piece = audio[start : start + samples]
        gain = 10 ** (-6 * float(torch.rand((), generator=generator)) / 20)
        out[b, 0, : len(piece)] = piece * gain
    return out


def evaluate(trainer: CodecTrainer, clips: list[Clip]) -> list[dict]:
    """Quality per number of codebooks through the stock inference path (`AudioTokenizer`)."""
    from higgslab.tokenizer.codec import AudioTokenizer
    from higgslab.tokenizer.stats import quality_vs_codebooks

    return quality_vs_codebooks(AudioTokenizer(trainer.codec), [load_audio(c) for c in clips])


def train_tokenizer(cfg: DictConfig) -> Path:
    """Run stage 1 as configured (see higgslab/conf/experiment/mini.yaml); returns the exported tokenizer directory."""
    from higgslab.io.codec_format import write_codec
    from higgslab.train.loop import TrainSettings, run_training

    torch.set_num_threads(cfg.threads)
    t = cfg.tokenizer
    manifest = build_corpus(cfg.data.dir, cfg.data.sentences, cfg.data.seed, cfg.data.valid_every)
    train, valid = read_manifest(manifest, "train"), read_manifest(manifest, "valid")[: t.eval_clips]
    trainer = CodecTrainer(mini_codec(cfg.seed, **t.widths), t.ema_decay, t.dead_after)
    spectral = SpectralLoss(trainer.codec.cfg.sample_rate, tuple(t.stft_windows))
    n_q, samples = trainer.codec.cfg.n_q, t.crop_frames * trainer.codec.cfg.hop_length
    last_out = {}

    def decoder_only(i: int) -> bool:  # the last steps: decoder alone, on codes that no longer move
        return i >= t.steps - t.decoder_steps

    def step(i: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        wav = random_crops(train, t.batch_size, samples, generator)
        quantize = i >= t.continuous_steps
        if quantize and not bool(trainer.initialised):
            trainer.init_codebooks(wav, generator)
        # quantizer dropout: sometimes decode from the first k codebooks only, so every k is trained
        drop = float(torch.rand((), generator=generator)) < t.quantizer_dropout
        k = int(torch.randint(1, n_q + 1, (1,), generator=generator)) if drop else n_q
        if decoder_only(i):
            k = i % n_q + 1  # every prefix in turn, so each added codebook is worth something to the decoder
        out = trainer(wav, k, quantize, codes_fixed=decoder_only(i))
        last_out["out"] = out
        losses = spectral(out.recon, wav)
        losses["wave_l1"] = (out.recon - wav).abs().mean()
        losses["neg_si_sdr"] = negative_si_sdr(out.recon, wav)
        losses["commitment"] = out.commitment
        losses["loss"] = (
            t.loss.mel * losses["mel"]
            + t.loss.stft * losses["stft"]
            + t.loss.wave_l1 * losses["wave_l1"]
            + t.loss.si_sdr * losses["neg_si_sdr"]
            + t.loss.commitment * losses["commitment"]
        )
        return losses

    def after_step(i: int, generator: torch.Generator, losses: dict) -> None:
        out = last_out.pop("out")
        if bool(trainer.initialised) and not decoder_only(i):  # codebooks exist only once the warm-up is over
            losses["dead_restarts"] = trainer.update_codebooks(out, generator).sum().float()

    def eval_fn(i: int) -> dict[str, float]:
        if not bool(trainer.initialised):
            return {}  # still in the unquantised warm-up: no codebooks to decode from yet
        rows = evaluate(trainer, valid)
        return {"valid_mel_k1": rows[0]["log_mel_distance"], "valid_mel": rows[-1]["log_mel_distance"],
                "valid_si_sdr": rows[-1]["si_sdr"]}  # fmt: skip

    run_dir = Path(cfg.run_dir) / "tokenizer"
    params = list(trainer.parameters())
    settings = TrainSettings(steps=t.steps, lr=t.lr, warmup=t.warmup, seed=cfg.seed, grad_clip=t.grad_clip,
                             checkpoint_every=t.checkpoint_every, eval_every=t.eval_every,
                             title="mini tokenizer")  # fmt: skip
    run_training(trainer, params, step, run_dir, settings, eval_fn, after_step)
    exported = write_codec(trainer.codec, run_dir / "tokenizer", "original")
    report = {"quality": evaluate(trainer, valid), "codebook_usage": usage_summary(trainer, valid)}
    (run_dir / "quality.json").write_text(json.dumps(report, indent=2))
    return exported


def usage_summary(trainer: CodecTrainer, clips: list[Clip]) -> dict[str, list[float]]:
    """Per-codebook perplexity and dead-code count on `clips` (encoded by the stock path)."""
    from higgslab.tokenizer.codec import AudioTokenizer
    from higgslab.tokenizer.stats import codebook_stats, codebook_usage

    tok = AudioTokenizer(trainer.codec)
    stats = codebook_stats(codebook_usage([tok.encode(load_audio(c)) for c in clips], tok.codebook_size))
    return {"perplexity": np.round(stats.perplexity, 1).tolist(), "dead": stats.dead.tolist()}


def cli(cfg: DictConfig) -> None:
    print(f"wrote {train_tokenizer(cfg)}")


def main() -> None:
    from higgslab.conf import command

    command("train/tokenizer", cli)()


if __name__ == "__main__":
    main()
