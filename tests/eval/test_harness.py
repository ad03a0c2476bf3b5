"""`generator_fn`: what the eval modes and train.listen generate is what `Generator.generate` gives."""

import numpy as np
import torch

from higgslab.embedded import ASSETS
from higgslab.eval.harness import generator_fn
from higgslab.generate.generator import Generator


def test_generator_fn_gives_generate_s_own_codes_and_audio_with_guidance():
    gen = Generator.from_paths(ASSETS / "model", ASSETS / "tokenizer", device="cpu")
    assert gen.cfg_scale != 1  # the shipped mini guides: the textless prompt must be the one generate cuts
    text = "It is cloudy today."
    for scale in (None, 1.0):
        speak = generator_fn(gen, None, None, None, None, {"cfg_scale": scale})
        ours = speak(seed=3, temperature=0.3, max_new_tokens=40, text=text)
        direct = gen.generate(text=text, seed=3, temperature=0.3, max_new_tokens=40, cfg_scale=scale)
        assert torch.equal(ours.columns, direct.columns) and ours.codes.shape[1] > 0
        assert np.array_equal(ours.audio, direct.audio)
