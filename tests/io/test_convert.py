"""`python -m higgslab.convert`: both directions, sharded, bit-exact round trip, nothing written on error."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import higgslab
from higgslab.convert import main
from higgslab.io.lm_format import read_weights


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
