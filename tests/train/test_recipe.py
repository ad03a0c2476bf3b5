"""The whole recipe on a handful of clips: tokenizer stage, LM stage, export, speech through the real path."""

import json

import numpy as np
import pytest
import torch

from higgslab.errors import HiggsLabError

from .conftest import compose, tiny_overrides


def test_recipe_end_to_end(corpus, tmp_path):
    from higgslab.generate.generator import Generator
    from higgslab.generate.longform import LongForm
    from higgslab.io.load import load_tokenizer
    from higgslab.train.export import export_mini
    from higgslab.train.lm import train_lm
    from higgslab.train.tokenizer import train_tokenizer

    overrides = tiny_overrides(corpus, tmp_path / "run")
    tok_dir = train_tokenizer(compose("train/tokenizer", overrides))
    assert (tmp_path / "run/tokenizer/loss.png").is_file()
    quality = json.loads((tmp_path / "run/tokenizer/quality.json").read_text())["quality"]
    assert [row["k"] for row in quality] == list(range(1, 9))
    assert load_tokenizer(tok_dir).format == "original"

    with pytest.raises(HiggsLabError, match=r"lm.codebook_weights must be 8 non-negative numbers"):
        train_lm(compose("train/lm", [*overrides, "lm.codebook_weights=[1,2]", "lm.name=bad"]))
    train_lm(compose("train/lm", [*overrides, "lm.guidance_scale=2.5", "lm.text_dropout=0.5"]))
    history = torch.load(tmp_path / "run/lm/last.pt", weights_only=False)["history"]
    assert {"valid_loss", "valid_guide", "text_gain"} <= history[-1].keys()
    assert (tmp_path / "run/lm/loss.png").is_file()

    dest = export_mini(tmp_path / "run", tmp_path / "assets/mini")
    gen = Generator.from_paths(dest / "model", dest / "tokenizer", device="cpu")
    assert gen.cfg_scale == 2.5  # the recipe's guidance scale travels with the shipped model
    assert gen.long_form == LongForm(context_chunks=0, speaker_tags=False)  # and its long-form defaults

    def speak(**kw):
        return gen.generate(text="Anna found the key.", max_new_tokens=30, seed=1, **kw)

    result = speak()  # and is applied by default: the same codes as asking for 2.5, others than without it
    assert torch.equal(result.columns, speak(cfg_scale=2.5).columns)
    assert not torch.equal(result.columns, speak(cfg_scale=1.0).columns)
    # the speech is the shipped tokenizer's decoding of those codes (stage 1's, copied beside the LM)
    shipped = load_tokenizer(dest / "tokenizer")
    assert result.codes.numel() and np.array_equal(result.audio, shipped.decode(result.codes))
