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


# every key of the real files that sets a shape, an id or a number the forward pass uses
ORIGINAL_REQUIRED = [
    "audio_adapter_type", "audio_dual_ffn_layers", "use_audio_out_self_attention", "audio_num_codebooks",
    "audio_codebook_size", "audio_stream_bos_id", "audio_stream_eos_id", "pad_token_id", "audio_eos_token_id",
    "audio_out_bos_token_id", "audio_in_token_idx", "audio_out_token_idx",
    "text_config.vocab_size", "text_config.hidden_size", "text_config.intermediate_size",
    "text_config.num_hidden_layers", "text_config.num_attention_heads", "text_config.num_key_value_heads",
    "text_config.head_dim", "text_config.rms_norm_eps", "text_config.max_position_embeddings",
    "text_config.rope_theta", "text_config.bos_token_id",
]  # fmt: skip
TRANSFORMERS_REQUIRED = [
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "num_codebooks",
    "codebook_size", "audio_stream_bos_id", "audio_stream_eos_id", "pad_token_id", "audio_token_id",
    "audio_bos_token_id",
]  # fmt: skip


def without(d: dict, dotted: str) -> dict:
    d = json.loads(json.dumps(d))
    *parents, key = dotted.split(".")
    inner = d
    for p in parents:
        inner = inner[p]
    del inner[key]
    return d


@pytest.mark.parametrize(
    "fmt, key",
    [("original", k) for k in ORIGINAL_REQUIRED] + [("transformers", k) for k in TRANSFORMERS_REQUIRED],
)
def test_a_missing_shape_or_id_key_is_one_line_naming_it(tmp_path, fmt, key):
    real = HiggsConfig.from_file(REAL_CONFIG)
    d = real.raw if fmt == "original" else real.to_transformers_dict()
    assert HiggsConfig.from_dict(d) == real  # the full file reads
    path = tmp_path / "config.json"
    path.write_text(json.dumps(without(d, key)))
    with pytest.raises(higgslab.HiggsLabError) as e:
        HiggsConfig.from_file(path)
    assert str(e.value) == f"{path}: missing key '{key}'"


def test_optional_keys_take_their_documented_defaults():
    real = json.loads(REAL_CONFIG.read_text())
    bare = real
    for key in ("text_config.attention_bias", "text_config.mlp_bias", "text_config.hidden_act",
                "text_config.tie_word_embeddings", "text_config.rope_scaling", "audio_ffn_hidden_size",
                "audio_ffn_intermediate_size"):  # fmt: skip
        bare = without(bare, key)
    cfg = HiggsConfig.from_dict(bare)
    assert (cfg.attention_bias, cfg.mlp_bias, cfg.hidden_act, cfg.tie_word_embeddings) == (
        False,
        False,
        "silu",
        False,
    )
    assert cfg.rope == {"rope_type": "default", "rope_theta": 500000.0}
    # the ids Boson's file does not name are the Llama-3 reserved slots (FORMATS.md §5)
    assert (cfg.eot_token_id, cfg.audio_bos_token_id, cfg.audio_delay_token_id) == (128009, 128011, 128014)
    assert cfg.hidden_size == 3072 and cfg.num_layers == 28  # the shapes are still the file's


def test_the_real_config_is_written_back_as_read():
    raw = json.loads(REAL_CONFIG.read_text())
    written = HiggsConfig.from_file(REAL_CONFIG).to_original_dict()
    assert {k: written[k] for k in raw if k != "text_config"} == {
        k: v for k, v in raw.items() if k != "text_config"
    }
    assert {k: written["text_config"][k] for k in raw["text_config"]} == raw["text_config"]


@pytest.mark.parametrize("content", ["[1, 2]", '"config"', "null"])
def test_a_config_that_is_not_an_object_is_one_line(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(higgslab.HiggsLabError, match=rf"^{path}: expected a JSON object, got \w+$"):
        HiggsConfig.from_file(path)
