"""The tiny tokenizer writer: real layouts, real frame geometry, fast to load."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load_file

from higgslab import load_tokenizer
from higgslab.tiny.tokenizer import write_tiny_tokenizer


def test_both_layouts_load_and_agree(tiny_dirs, speech_like):
    toks = {}
    for fmt, directory in tiny_dirs.items():
        toks[fmt] = load_tokenizer(directory)
        assert toks[fmt].format == fmt
    codes = toks["original"].encode(speech_like, 24000)
    assert torch.equal(codes, toks["transformers"].encode(speech_like, 24000))
    np.testing.assert_allclose(toks["original"].decode(codes), toks["transformers"].decode(codes), atol=1e-5)


def test_original_layout_keys_and_config(tiny_dirs):
    directory = tiny_dirs["original"]
    config = json.loads((directory / "config.json").read_text())
    assert config["ratios"] == [8, 5, 4, 2, 3] and config["n_q"] == 8 and config["bins"] == 1024
    assert config["sample_rate"] == 24000 and config["semantic_techer"] == "hubert_base_general"
    keys = torch.load(directory / "model.pth", weights_only=True).keys()
    assert {"encoder.block.0.weight_g", "encoder.block.0.weight_v", "decoder_2.model.7.weight_g"} <= keys
    assert "quantizer.vq.layers.7._codebook.embed" in keys and "fc_post1.weight" in keys
    assert not any(k.startswith(("acoustic_", "fc.")) or k.endswith("encoder.block.0.weight") for k in keys)


def test_transformers_layout_loads_strictly_in_transformers(hf_tokenizer_class, tiny_dirs, speech_like):
    model, info = hf_tokenizer_class.from_pretrained(tiny_dirs["transformers"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.num_quantizers == 8 and model.config.hop_length == 960
    assert "quantizer.quantizers.0.codebook.embed" in load_file(
        tiny_dirs["transformers"] / "model.safetensors"
    )
    ours = load_tokenizer(tiny_dirs["transformers"])
    with torch.no_grad():
        expected = model.eval().encode(torch.from_numpy(speech_like)[None, None], return_dict=False)[0]
    assert torch.equal(ours.encode(speech_like, 24000), expected)


def test_seed_changes_weights_and_global_rng_untouched(tmp_path):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_tokenizer(write_tiny_tokenizer(tmp_path / "a", seed=0))
    assert torch.equal(torch.rand(1), before)
    b = load_tokenizer(write_tiny_tokenizer(tmp_path / "b", seed=1))
    assert not torch.equal(a.model.fc_prior.weight, b.model.fc_prior.weight)
