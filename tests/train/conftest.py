"""Shared fixtures: a handful of espeak-ng clips and tiny recipe settings (runs in seconds on a CPU)."""

import pytest


def espeak_or_skip() -> str:
    """espeak-ng's path; the test is skipped when it is not installed (`.ci/run` installs it)."""
    from higgslab.errors import HiggsLabError
    from higgslab.train.data import find_espeak

    try:
        return find_espeak()
    except HiggsLabError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Manifest of 12 generated clips (every 4th is validation); skipped when espeak-ng is not installed."""
    from higgslab.train.data import build_corpus

    espeak_or_skip()
    return build_corpus(tmp_path_factory.mktemp("corpus"), sentences=12, seed=0, valid_every=4)


TINY_WIDTHS = "{encoder_width: 2, latent_dim: 16, decoder_width: 32, codebook_dim: 4, n_q: 8, bins: 1024}"
TINY_LM = "{hidden: 32, intermediate: 64, layers: 2, heads: 2, kv_heads: 1, max_positions: 1024}"


def tiny_overrides(corpus, run_dir) -> list[str]:
    """Hydra overrides turning experiment=mini into a few-second smoke run."""
    return [
        f"data.dir={corpus.parent}",
        "data.sentences=12",  # the fixture corpus (build_corpus refuses a directory of another plan)
        "data.valid_every=4",
        f"run_dir={run_dir}",
        "threads=1",
        f"tokenizer.widths={TINY_WIDTHS}",
        "tokenizer.steps=3",
        "tokenizer.continuous_steps=1",
        "tokenizer.decoder_steps=1",
        "tokenizer.batch_size=2",
        "tokenizer.crop_frames=5",
        "tokenizer.eval_clips=1",
        "tokenizer.stft_windows=[512,128]",
        f"lm.sizes={TINY_LM}",
        "lm.steps=3",
        "lm.batch_size=2",
        "lm.bpe_merges=100",
        "lm.eval_clips=2",
        "lm.guide.layers=[1]",
    ]


def compose(name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from higgslab.conf import CONF_DIR

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return hydra_compose(name, overrides=overrides)


@pytest.fixture(scope="session")
def trained(embedded_cache, tmp_path_factory):
    """A LoRA on the tiny random LM trained a few steps and saved: (adapter dir, inputs, its logits)."""
    from tests.train.lora_run import trained_adapter

    return trained_adapter(embedded_cache[1], tmp_path_factory.mktemp("run") / "adapter")
