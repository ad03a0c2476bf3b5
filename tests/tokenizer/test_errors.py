"""Bad input gives one clear HiggsLabError naming the offending file, key or value."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from higgslab import load_tokenizer
from higgslab.errors import HiggsLabError


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("audio", "rate", "needle"),
    [
        (np.array([0.1, np.nan] * 24000, np.float32), 24000, "NaN"),
        (np.array([0.1, np.inf] * 24000, np.float32), 24000, "Inf"),
        (np.zeros(0, np.float32), 24000, "0 samples"),
        (np.zeros(500, np.float32), 24000, "at least 960"),
        (np.zeros(24000, np.float32), 0, "sample rate"),
        (np.zeros(24000, np.float32), 22050.5, "22050.5"),
        (np.zeros((2, 3, 4, 5), np.float32), 24000, "shape"),
        (np.array(["a"] * 10), 24000, "numeric"),
    ],
)
def test_bad_audio(tok, audio, rate, needle):
    with pytest.raises(HiggsLabError) as e:
        tok.encode(audio, rate)
    assert needle in one_line(e)


@pytest.mark.parametrize(
    ("codes", "needle"),
    [
        (torch.full((8, 5), 1024), "1024"),
        (torch.full((8, 5), -1), "-1"),
        (torch.zeros(7, 5, dtype=torch.long), "[7, 5]"),
        (torch.zeros(5, 8, dtype=torch.long), "[5, 8]"),
        (torch.zeros(8, 0, dtype=torch.long), "[8, 0]"),
        (torch.zeros(8, 5), "float32"),
        (torch.zeros(8, dtype=torch.long), "[8]"),
    ],
)
def test_bad_codes(tok, codes, needle):
    with pytest.raises(HiggsLabError) as e:
        tok.decode(codes)
    assert needle in one_line(e)
    with pytest.raises(HiggsLabError):
        tok.streaming_decoder().push(codes)


@pytest.mark.parametrize("k", [0, 9, 2.5])
def test_bad_k(tok, k):
    with pytest.raises(HiggsLabError) as e:
        tok.decode(torch.zeros(8, 3, dtype=torch.long), k=k)
    assert f"k={k}" in one_line(e)


def edit_checkpoint(src, dst, edit):
    shutil.copytree(src, dst)
    weights = torch.load(dst / "model.pth", weights_only=True)
    edit(weights)
    torch.save(weights, dst / "model.pth")
    return dst


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (
            lambda w: w.pop("quantizer.vq.layers.3.project_in.weight"),
            "missing tensor 'quantizer.vq.layers.3.project_in.weight'",
        ),
        (lambda w: w.pop("fc_prior.bias"), "missing tensor 'fc_prior.bias'"),
        (lambda w: w.update(surprise=torch.zeros(1)), "unexpected tensor 'surprise'"),
        (
            lambda w: w.update({"fc_post2.weight": torch.zeros(3, 3)}),
            "'fc_post2.weight' has shape [3, 3], expected [16, 48]",
        ),
        (lambda w: w.pop("encoder.block.2.block.4.weight_v"), "encoder.block.2.block.4.weight_g"),
        (  # a width-giving tensor, missing, is named as the file names it
            lambda w: [w.pop(f"encoder.block.0.weight_{x}") for x in "gv"],
            "missing tensor 'encoder.block.0.weight'",
        ),
        (
            lambda w: w.pop("semantic_model.feature_projection.projection.weight"),
            "semantic_model.feature_projection",
        ),
    ],
)
def test_bad_checkpoint_tensors(tiny_dirs, tmp_path, edit, needle):
    directory = edit_checkpoint(tiny_dirs["original"], tmp_path / "ckpt", edit)
    with pytest.raises(HiggsLabError) as e:
        load_tokenizer(directory)
    assert needle in one_line(e)


def test_fewer_quantizers_are_read_from_the_weights(tiny_dirs, tmp_path):
    def drop_last_two(w):
        for key in [k for k in w if k.startswith(("quantizer.vq.layers.6.", "quantizer.vq.layers.7."))]:
            del w[key]

    tok6 = load_tokenizer(edit_checkpoint(tiny_dirs["original"], tmp_path / "six", drop_last_two))
    assert tok6.num_codebooks == 6 and tok6.bitrate == 1500
    assert tok6.encode(np.zeros(4800, np.float32)).shape == (6, 5)


def test_bad_directories_and_files(tiny_dirs, tmp_path):
    with pytest.raises(HiggsLabError, match="not found"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HiggsLabError, match="config.json"):
        load_tokenizer(tmp_path / "empty")
    corrupt = shutil.copytree(tiny_dirs["original"], tmp_path / "corrupt")
    (corrupt / "model.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(HiggsLabError, match="model.pth: cannot read"):
        load_tokenizer(corrupt)
    truncated = shutil.copytree(tiny_dirs["transformers"], tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(HiggsLabError, match="model.safetensors: cannot read"):
        load_tokenizer(truncated)
    bad_json = shutil.copytree(tiny_dirs["original"], tmp_path / "bad_json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(HiggsLabError, match="config.json: not valid JSON"):
        load_tokenizer(bad_json)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"n_q": 8}))
    with pytest.raises(HiggsLabError, match="neither model.pth"):
        load_tokenizer(no_weights)
