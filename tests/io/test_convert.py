"""`python -m higgslab.convert`: both directions, sharded, bit-exact round trip, nothing written on error."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import higgslab
from higgslab.config import READER_DEFAULTS, HiggsConfig
from higgslab.convert import main
from higgslab.io.lm_format import convert, read_weights
from higgslab.tiny.text import write_tiny_text_tokenizer
from tests.conftest import REAL_CONFIG


def test_round_trip_original_transformers_original_is_bit_exact(lm_checkpoints, tmp_path):
    src = lm_checkpoints["original"]
    (src / "tokenizer.json").write_text("{}")  # other files travel along
    main([str(src), str(tmp_path / "hf"), "--to", "transformers", "--max-shard-gb", "0.004"])
    main([str(tmp_path / "hf"), str(tmp_path / "back"), "--to", "original"])
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert (tmp_path / "back" / "tokenizer.json").is_file()
    before, _ = read_weights(src)
    after, _ = read_weights(tmp_path / "back")
    assert before.keys() == after.keys()
    for k in before:
        assert before[k].dtype == after[k].dtype and torch.equal(
            before[k].view(torch.uint8), after[k].view(torch.uint8)
        )
    # and the transformers copy is exactly what transformers itself saved
    ref = load_file(lm_checkpoints["transformers"] / "model.safetensors")
    ours, _ = read_weights(tmp_path / "hf")
    assert ref.keys() == ours.keys() and all(torch.equal(ref[k], ours[k]) for k in ref)
    assert higgslab.load_model(tmp_path / "hf").config == higgslab.load_model(src).config


def test_existing_destination_is_not_touched(lm_checkpoints, tmp_path, capsys):
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        main([str(lm_checkpoints["original"]), str(dst), "--to", "transformers"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]


def test_bad_source_fails_in_one_line_and_writes_nothing(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "higgslab.convert",
            str(tmp_path / "missing"),
            str(tmp_path / "out"),
            "--to",
            "original",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such checkpoint directory" in proc.stderr
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


# ---- the config round trip: both directions give back the file read, key for key ---------------------------

MINI = Path(higgslab.__file__).parent / "assets" / "mini" / "model"
# the documented renames (higgslab.config module docstring): (original key, transformers key), the values equal
# except codebook_size (+ the two stream tokens) and rope (rope_theta + rope_scaling = rope_parameters)
RENAMED = [
    ("text_config.vocab_size", "vocab_size"), ("text_config.hidden_size", "hidden_size"),
    ("text_config.num_hidden_layers", "num_hidden_layers"), ("text_config.head_dim", "head_dim"),
    ("text_config.bos_token_id", "bos_token_id"), ("audio_num_codebooks", "num_codebooks"),
    ("audio_stream_bos_id", "audio_stream_bos_id"), ("audio_stream_eos_id", "audio_stream_eos_id"),
    ("pad_token_id", "pad_token_id"), ("eot_token_id", "eos_token_id"),
    ("audio_out_bos_token_id", "audio_bos_token_id"), ("audio_delay_token_id", "audio_delay_token_id"),
    ("audio_out_token_idx", "audio_token_id"),
]  # fmt: skip


def config_of(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


def same_json(a, b) -> bool:
    """Equal key for key, and as JSON types (`0` is not `false`)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def check_renames(original: dict, transformers: dict):
    """The keys the two layouts share say the same thing in both files."""
    for o, t in RENAMED:
        if o in original or o.startswith("text_config."):
            assert get(original, o) == transformers[t], (o, t)
    assert transformers["codebook_size"] == original["audio_codebook_size"] + 2
    rope = transformers["rope_parameters"]
    assert rope["rope_theta"] == original["text_config"]["rope_theta"]
    scaling = original["text_config"].get("rope_scaling") or {"rope_type": "default"}
    assert scaling == {k: v for k, v in rope.items() if k != "rope_theta"}


@pytest.fixture(params=["tiny original", "tiny transformers", "mini"])
def source(request, lm_checkpoints, tmp_path):
    """A checkpoint with a text tokenizer and a generation config beside it, and its layout."""
    if request.param == "mini":
        return MINI, "original"
    fmt = request.param.split()[1]
    directory = tmp_path / "src"
    shutil.copytree(lm_checkpoints[fmt], directory)
    write_tiny_text_tokenizer(directory)
    (directory / "generation_config.json").write_text('{"guidance_scale": 2.0, "ras_win_len": 7}\n')
    return directory, fmt


def test_convert_and_back_gives_the_same_config_and_files(source, tmp_path):
    src, fmt = source
    other = {"original": "transformers", "transformers": "original"}[fmt]
    convert(src, tmp_path / "there", other)
    convert(tmp_path / "there", tmp_path / "back", fmt)
    assert same_json(config_of(tmp_path / "back"), config_of(src))
    original, transformers = (src, tmp_path / "there") if fmt == "original" else (tmp_path / "there", src)
    check_renames(config_of(original), config_of(transformers))
    copied = [f.name for f in src.iterdir() if f.name != "config.json" and not f.name.endswith("safetensors")]
    assert "generation_config.json" in copied and "tokenizer.json" in copied
    for name in copied:
        assert (tmp_path / "there" / name).read_bytes() == (src / name).read_bytes()
        assert (tmp_path / "back" / name).read_bytes() == (src / name).read_bytes()
    # every copy reads as the same model
    assert HiggsConfig.from_file(tmp_path / "there") == HiggsConfig.from_file(src)
    assert HiggsConfig.from_file(tmp_path / "back") == HiggsConfig.from_file(src)


def test_a_small_vocabulary_keeps_its_ids_in_the_transformers_layout(tmp_path):
    """The mini's ids (vocab 1239) used to come back as the real model's, outside its vocabulary."""
    convert(MINI, tmp_path / "hf", "transformers")
    mini, hf = HiggsConfig.from_file(MINI), HiggsConfig.from_file(tmp_path / "hf")
    ids = (
        "eot_token_id",
        "audio_bos_token_id",
        "audio_eos_token_id",
        "audio_in_token_id",
        "audio_out_token_id",
    )
    assert [getattr(hf, i) for i in ids] == [992, 994, 995, 998, 999] == [getattr(mini, i) for i in ids]
    assert hf.adapter_type == "dual_ffn"
    edited = HiggsConfig.from_dict(hf.replace(audio_eos_token_id=5).to_original_dict())
    assert edited == mini.replace(audio_eos_token_id=5)  # a field changed since wins over the carried key
    assert config_of(tmp_path / "hf")["higgslab_original_keys"] == {
        "audio_adapter_type": "dual_ffn",
        "audio_bos_token_id": 994,
        "audio_eos_token_id": 995,
        "audio_in_token_idx": 998,
        "text_config": {"rope_scaling": None},
    }


def test_the_real_config_round_trips_both_ways():
    real = json.loads(REAL_CONFIG.read_text())
    there = HiggsConfig.from_dict(real).to_transformers_dict()
    assert same_json(HiggsConfig.from_dict(there).to_original_dict(), real)
    check_renames(real, there)
    # Boson's keys the transformers layout has no name for travel along, nothing else
    assert set(there["higgslab_original_keys"]) == {
        "audio_decoder_proj_num_layers", "audio_bos_token", "audio_eos_token", "audio_out_bos_token",
        "audio_in_token", "audio_out_token", "audio_tokenizer_config", "encode_whisper_embed",
        "use_audio_out_embed_projector", "use_rq_transformer", "torch_dtype", "transformers_version",
        "text_config",
    }  # fmt: skip
    assert there["higgslab_original_keys"]["text_config"] == {
        "eos_token_id": 128001,
        "torch_dtype": "bfloat16",
    }
    assert "eos_token_id" not in there and "audio_delay_token_id" not in there  # Boson's file names neither
    # a real-size transformers file (no carried keys) round-trips the other way
    plain = {k: v for k, v in there.items() if k != "higgslab_original_keys"}
    back = HiggsConfig.from_dict(HiggsConfig.from_dict(plain).to_original_dict()).to_transformers_dict()
    assert same_json(back, plain)


def test_values_a_reader_normalises_travel_along(lm_checkpoints):
    """transformers allows a null bos and a list of eos ids; ours reads 128000 and 128009 for them."""
    theirs = config_of(lm_checkpoints["transformers"]) | {
        "bos_token_id": None,
        "eos_token_id": [128001, 128009],
    }
    original = HiggsConfig.from_dict(theirs).to_original_dict()
    assert (original["text_config"]["bos_token_id"], original["eot_token_id"]) == (128000, 128009)
    assert original["higgslab_transformers_keys"] == {
        "bos_token_id": None,
        "eos_token_id": [128001, 128009],
        "dtype": "float32",
        "transformers_version": theirs["transformers_version"],
    }
    assert same_json(HiggsConfig.from_dict(original).to_transformers_dict(), theirs)


@pytest.mark.parametrize("key", ["higgslab_original_keys", "higgslab_transformers_keys"])
def test_a_carried_block_that_is_not_an_object_is_one_line(lm_checkpoints, tmp_path, capsys, key):
    src = tmp_path / "src"
    shutil.copytree(lm_checkpoints["transformers"], src)
    (src / "config.json").write_text(json.dumps(config_of(src) | {key: [1]}))
    with pytest.raises(SystemExit) as e:
        main([str(src), str(tmp_path / "out"), "--to", "original"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {src / 'config.json'}: '{key}' must be a JSON object, got list\n"
    assert not (tmp_path / "out").exists()


def test_omitted_keys_mean_the_same_to_transformers():
    """A converted file leaves out keys whose value is the reader's default; transformers' defaults agree."""
    from transformers import HiggsAudioV2Config

    defaults = HiggsAudioV2Config()
    for key, value in READER_DEFAULTS["transformers"].items():
        assert getattr(defaults, key) == value, key


@pytest.mark.parametrize("which", ["tiny", "mini"])
def test_transformers_loads_the_converted_checkpoint(which, lm_checkpoints, oracle, tmp_path):
    from transformers import HiggsAudioV2ForConditionalGeneration

    src = lm_checkpoints["original"] if which == "tiny" else MINI
    convert(src, tmp_path / "hf", "transformers")
    theirs = HiggsAudioV2ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    ours = higgslab.load_model(src)
    cfg = ours.config
    ids = torch.tensor(
        [[cfg.bos_token_id, 11, 12, cfg.audio_out_bos_token_id, *[cfg.audio_out_token_id] * 5, 13]]
    )
    codes = torch.randint(
        0, cfg.codebook_entries, (1, cfg.num_codebooks, 5), generator=torch.Generator().manual_seed(0)
    )
    frames = dict(
        audio_input_ids=codes.transpose(1, 2), audio_input_ids_mask=torch.ones(1, 5, dtype=torch.bool)
    )
    with torch.no_grad():
        out = theirs(input_ids=ids, **frames)
        logits = out.logits.view(*ids.shape, cfg.num_codebooks, cfg.codebook_entries)
        assert (logits - ours(ids, codes).audio_logits).abs().max() < 1e-4
        assert logits.abs().max() > 0.1
        if which == "tiny":  # the very weights and config transformers wrote
            assert torch.equal(out.logits, oracle(input_ids=ids, **frames).logits)
