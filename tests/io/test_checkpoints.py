"""Loading LM checkpoints: both layouts, shards, split tensors, buffers, and one-line errors for bad input."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import higgslab
from higgslab.config import HiggsConfig
from higgslab.io.lm_format import read_checkpoint, write_checkpoint
from tests.conftest import REAL_CONFIG


def copy(src, tmp_path, name="ckpt"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_both_layouts_load_the_same_weights(lm_checkpoints):
    a = higgslab.load_model(lm_checkpoints["original"]).state_dict()
    b = higgslab.load_model(lm_checkpoints["transformers"]).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sharded_index_split_tensors_and_buffers(lm_checkpoints, tmp_path):
    config, tensors, _ = read_checkpoint(lm_checkpoints["original"])
    sharded = write_checkpoint(tmp_path / "sharded", config, tensors, "original", max_shard_bytes=2**20)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    # a training checkpoint: embedding and head split in frozen/trainable halves, plus buffers
    first = sharded / index["weight_map"]["audio_codebook_embeddings.weight"]
    part = load_file(first)
    emb = part.pop("audio_codebook_embeddings.weight")
    part["audio_codebook_embeddings.embedding_frozen.weight"] = emb[:1000]
    part["audio_codebook_embeddings.embedding_trainable.weight"] = emb[1000:]
    part["audio_codebook_weights"] = torch.ones(8) / 8
    part["layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(part, first)
    for k in part:
        index["weight_map"][k] = first.name
    del index["weight_map"]["audio_codebook_embeddings.weight"]
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    model = higgslab.load_model(sharded)
    assert torch.equal(model.embed_audio.weight, tensors["embed_audio.weight"])


def test_load_in_bfloat16_keeps_rope_frequencies_float32(lm_checkpoints):
    model = higgslab.load_model(lm_checkpoints["original"], dtype=torch.bfloat16)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.rotary.inv_freq.dtype == torch.float32
    model = model.to(torch.float16)
    assert model.rotary.inv_freq.dtype == torch.float32


def test_missing_directory(tmp_path):
    with pytest.raises(higgslab.HiggsLabError, match="no such checkpoint directory"):
        higgslab.load_model(tmp_path / "nope")


def test_unknown_model_type(lm_checkpoints, tmp_path):
    ckpt = copy(lm_checkpoints["original"], tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "llama"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(higgslab.HiggsLabError, match=r"config.json: unknown model_type 'llama'"):
        higgslab.load_model(ckpt)


def rewrite(ckpt, edit):
    f = ckpt / "model.safetensors"
    tensors = load_file(f)
    edit(tensors)
    save_file(tensors, f)
    return f


def test_missing_tensor_is_named(lm_checkpoints, tmp_path):
    ckpt = copy(lm_checkpoints["original"], tmp_path)
    rewrite(ckpt, lambda t: t.pop("layers.1.audio_mlp.up_proj.weight"))
    with pytest.raises(higgslab.HiggsLabError, match=r"lacks tensor layers\.1\.audio_mlp\.up_proj\.weight"):
        higgslab.load_model(ckpt)


def test_extra_tensor_is_named_with_its_file(lm_checkpoints, tmp_path):
    ckpt = copy(lm_checkpoints["transformers"], tmp_path)
    f = rewrite(ckpt, lambda t: t.update({"model.layers.0.surprise.weight": torch.zeros(2)}))
    with pytest.raises(higgslab.HiggsLabError, match=rf"{f}: unexpected tensor model\.layers\.0\.surprise"):
        higgslab.load_model(ckpt)


def test_wrong_shape_is_named(lm_checkpoints, tmp_path):
    ckpt = copy(lm_checkpoints["original"], tmp_path)
    rewrite(ckpt, lambda t: t.update({"norm.weight": torch.zeros(7)}))
    with pytest.raises(
        higgslab.HiggsLabError, match=r"norm\.weight has shape \(7,\), the config asks for \(32,\)"
    ):
        higgslab.load_model(ckpt)


def test_truncated_safetensors(lm_checkpoints, tmp_path):
    ckpt = copy(lm_checkpoints["original"], tmp_path)
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(higgslab.HiggsLabError, match=rf"{f}: unreadable safetensors file"):
        higgslab.load_model(ckpt)


def test_layout_and_config_must_agree(lm_checkpoints, tmp_path):
    ckpt = copy(lm_checkpoints["transformers"], tmp_path)
    cfg = HiggsConfig.from_file(ckpt).to_original_dict()
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(higgslab.HiggsLabError, match="tensors are in the transformers layout"):
        higgslab.load_model(ckpt)


def test_configs_read_real_files_and_rope():
    cfg = HiggsConfig.from_file(REAL_CONFIG)
    assert cfg.layer_kinds == ["dual_ffn"] * 28
    assert cfg.rope["rope_type"] == "llama3" and cfg.rope["low_freq_factor"] == 1.0
    assert cfg.codebook_entries == 1026 and cfg.audio_out_token_id == 128016
    back = HiggsConfig.from_dict(HiggsConfig.from_dict(cfg.to_transformers_dict()).to_original_dict())
    assert back == cfg
    small = cfg.replace(
        vocab_size=1500, eot_token_id=1290, audio_delay_token_id=1295, audio_bos_token_id=1292
    )
    assert HiggsConfig.from_dict(small.to_original_dict()) == small  # small vocabularies keep their ids
    partial = HiggsConfig.from_dict({**cfg.raw, "audio_dual_ffn_layers": [0, 5]})
    assert partial.layer_kind(0) == "dual_ffn" and partial.layer_kind(1) == "fast_forward"
    plain = HiggsConfig.from_dict({**cfg.raw, "audio_adapter_type": "dual_ffn", "audio_dual_ffn_layers": [3]})
    assert plain.layer_kind(1) == "llama"
    with pytest.raises(higgslab.HiggsLabError, match="the transformers format holds only"):
        partial.to_transformers_dict()
