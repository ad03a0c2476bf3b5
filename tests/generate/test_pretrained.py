"""`Generator.from_pretrained`: the model a user means, by the CLI's rules; a device not here is one line."""

import pytest
import torch

import higgslab
from higgslab.embedded import ASSETS
from higgslab.errors import HiggsLabError
from higgslab.generate.generator import Generator


def test_no_path_is_the_embedded_mini_with_its_guidance():
    gen = Generator.from_pretrained(device="cpu")
    assert gen.label.startswith("embedded higgslab-mini")
    assert gen.cfg_scale == 2.0  # the shipped generation_config.json's guidance_scale
    direct = Generator.from_paths(ASSETS / "model", ASSETS / "tokenizer", device="cpu")
    kw = dict(text="Hello.", seed=1, max_new_tokens=60, decode_audio=False)
    assert torch.equal(gen.generate(**kw).codes, direct.generate(**kw).codes)


def test_tiny_and_a_path_pick_those_checkpoints(embedded_cache, monkeypatch):
    root, model_dir, tokenizer_dir = embedded_cache
    monkeypatch.setenv("HIGGSLAB_CACHE", str(root))
    tiny = Generator.from_pretrained("tiny", device="cpu")
    assert "tiny RANDOM" in tiny.label and tiny.audio_tokenizer is not None
    assert tiny.config.num_layers == higgslab.load_model(model_dir).config.num_layers
    given = Generator.from_pretrained(model_dir, tokenizer_dir, device="cpu")
    assert given.label == f"checkpoint {model_dir}"
    kw = dict(text="Hi.", seed=2, max_new_tokens=12, decode_audio=False)
    assert torch.equal(tiny.generate(**kw).codes, given.generate(**kw).codes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("load", ["load_model", "load_tokenizer"])
def test_an_unavailable_device_is_one_line_before_any_file_is_read(load, tmp_path):
    # tmp_path holds no checkpoint: reading it first would fail with another message
    with pytest.raises(HiggsLabError, match=r"^device 'cuda' is not available here$"):
        getattr(higgslab, load)(tmp_path, device="cuda")
