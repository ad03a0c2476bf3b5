"""Data preparation (`higgslab.train.prepare`): inputs, codes, bad data, resuming, two ranks under gloo.

A handful of 1-2 s noise clips at several rates and channel counts, encoded with the tiny random audio
tokenizer (real frame geometry, tiny widths), so every run takes a second or two.
"""

import hashlib
import json
import multiprocessing
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from higgslab.errors import HiggsLabError
from higgslab.generate.prompt import SYSTEM_MESSAGE
from higgslab.io.audio import read_audio
from higgslab.io.load import load_tokenizer
from higgslab.train.prepare import prepare, settings_from, summary
from tests.ranks import free_port, run_ranks
from tests.train.conftest import compose
from tests.train.prepare_rank import rank_main

# name, file type, sample rate, channels, seconds
CLIPS = [("c0", "wav", 24000, 1, 1.0), ("c1", "flac", 16000, 2, 1.5), ("c2", "ogg", 44100, 1, 1.2)]
KIND = {name: kind for name, kind, *_ in CLIPS}
# c1: two voice references (a list of ids), c2: one (an id); a reference is itself an example
META = {
    "c1": {"speaker": "amy", "scene": "a quiet room", "reference": ["c0", "c2"]},
    "c2": {"reference": "c0"},
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from higgslab.tiny.tokenizer import write_tiny_tokenizer

    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), "original", seed=0)


def write_clip(path, rate, channels, seconds, seed=0):
    audio = 0.1 * np.random.default_rng(seed).standard_normal((round(rate * seconds), channels))
    sf.write(path, audio.astype(np.float32), rate)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A folder of the CLIPS with transcripts and META (c1: speaker, scene, c0 and c2 as its voice references)."""
    folder = tmp_path_factory.mktemp("clips")
    for i, (name, kind, rate, channels, seconds) in enumerate(CLIPS):
        write_clip(folder / f"{name}.{kind}", rate, channels, seconds, seed=i)
        (folder / f"{name}.txt").write_text(f"Clip number {i}, ünïcode.\n", encoding="utf-8")
    for name, meta in META.items():
        (folder / f"{name}.json").write_text(json.dumps(meta))
    return folder


def as_jsonl(folder, path):
    """The same clips as a §10 chat-shape JSONL file (a user text + assistant audio pair per reference before
    the target pair, the references' audio_url relative to the file)."""
    lines = []
    for name, kind, *_ in CLIPS:
        text = (folder / f"{name}.txt").read_text(encoding="utf-8").strip()
        meta = META.get(name, {})
        messages = [{"role": "user", "content": text},
                    {"role": "assistant", "content": {"type": "audio", "audio_url": str(folder / f"{name}.{kind}")}}]  # fmt: skip
        references = meta.get("reference") or []
        for ref in reversed([references] if isinstance(references, str) else references):
            messages = [{"role": "user", "content": [{"type": "text", "text": f"Clip number {ref[1:]}, ünïcode."}]},
                        {"role": "assistant", "content": [{"type": "audio", "audio_url": os.path.relpath(folder / f"{ref}.{KIND[ref]}", path.parent),
                                                           "raw_audio": None, "offset": None}]}, *messages]  # fmt: skip
        if meta.get("scene"):
            scene = f"{SYSTEM_MESSAGE}\n\n<|scene_desc_start|>\n{meta['scene']}\n<|scene_desc_end|>"
            messages = [{"role": "system", "content": scene}, *messages]
        lines.append(json.dumps({"messages": messages, "speaker": meta.get("speaker"), "start_index": None}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def settings(data, out, tokenizer_dir, *overrides):
    cfg = compose("prepare", [f"data={data}", f"output_dir={out}", f"tokenizer_path={tokenizer_dir}",
                              "device=cpu", *overrides])  # fmt: skip
    return settings_from(cfg)


def read_folder_content(out):
    """(manifest entries without their shard, codes by id) of a prepared folder."""
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    codes = {e["id"]: load_file(out / e["shard"])[e["id"]] for e in entries}
    return [{k: v for k, v in e.items() if k != "shard"} for e in entries], codes


def test_folder_and_jsonl_give_the_same_manifest_and_the_tokenizers_codes(clips, tokenizer_dir, tmp_path):
    from_folder = prepare(settings(clips, tmp_path / "a", tokenizer_dir))
    (tmp_path / "data").mkdir()
    jsonl = as_jsonl(clips, tmp_path / "data" / "train.jsonl")
    from_jsonl = prepare(settings(jsonl, tmp_path / "b", tokenizer_dir))
    assert from_folder.skipped == from_jsonl.skipped == []
    manifest = (tmp_path / "a" / "manifest.jsonl").read_text()
    assert manifest == (tmp_path / "b" / "manifest.jsonl").read_text()
    info = json.loads((tmp_path / "a" / "prepared.json").read_text())
    assert info == json.loads((tmp_path / "b" / "prepared.json").read_text())

    entries = [json.loads(line) for line in manifest.splitlines()]
    assert [e["id"] for e in entries] == ["c0", "c1", "c2"]
    c1 = entries[1]
    assert (c1["speaker"], c1["scene"]) == ("amy", "a quiet room")
    c0_ref, c2_ref = ({"text": f"Clip number {i}, ünïcode.", "id": f"c{i}"} for i in (0, 2))
    assert [e["references"] for e in entries] == [[], [c0_ref, c2_ref], [c0_ref]]
    assert entries[0]["text"] == "Clip number 0, ünïcode."
    tok = load_tokenizer(tokenizer_dir)
    total = 0
    for e, (_, kind, _, _, seconds) in zip(entries, CLIPS, strict=True):
        codes = load_file(tmp_path / "a" / e["shard"])[e["id"]]
        expected = tok.encode(*read_audio(e["source"]))
        assert codes.dtype == torch.int16 and torch.equal(codes.long(), expected)
        assert e["frames"] == codes.shape[1] == round(seconds * 25)
        assert e["source"] == str(clips / f"{e['id']}.{kind}")
        assert e["sha256"] == hashlib.sha256((clips / f"{e['id']}.{kind}").read_bytes()).hexdigest()
        total += e["frames"]
    assert {k: info[k] for k in ("version", "n_q", "codebook_size", "sample_rate", "frame_rate")} == {
        "version": 2, "n_q": 8, "codebook_size": 1024, "sample_rate": 24000, "frame_rate": 25.0}  # fmt: skip
    assert (info["examples"], info["frames"], info["tokenizer"]) == (3, total, str(tokenizer_dir))


def bad_folder(root):
    """One good clip and one of each kind of bad data -> (folder, {file name: expected reason})."""
    folder = root / "bad"
    folder.mkdir()
    write_clip(folder / "good.wav", 24000, 1, 1.0)
    (folder / "good.txt").write_text("A good clip.")
    write_clip(folder / "no_text.wav", 24000, 1, 1.0)
    sf.write(folder / "empty.wav", np.zeros((0, 1), np.float32), 24000)
    (folder / "unreadable.wav").write_bytes(b"RIFF, but not really")
    sf.write(folder / "nan.wav", np.full(24000, np.nan, np.float32), 24000, subtype="FLOAT")
    write_clip(folder / "long.wav", 24000, 1, 2.0)
    write_clip(folder / "latin1.flac", 24000, 1, 1.0)
    (folder / "latin1.txt").write_bytes("Café au lait.".encode("latin-1"))
    write_clip(folder / "special.wav", 24000, 1, 1.0)
    (folder / "special.txt").write_text("Hello <|eot_id|> there.")
    (folder / "orphan.txt").write_text("A transcript without audio.")
    write_clip(folder / "clone.wav", 24000, 1, 1.0)
    (folder / "clone.json").write_text(json.dumps({"reference": "nan"}))
    write_clip(folder / "typo.wav", 24000, 1, 1.0)
    (folder / "typo.json").write_text(json.dumps({"speakr": "amy"}))
    write_clip(folder / "clones.wav", 24000, 1, 1.0)
    (folder / "clones.json").write_text(json.dumps({"reference": ["good", "nowhere"]}))
    write_clip(folder / "refs.wav", 24000, 1, 1.0)
    (folder / "refs.json").write_text(json.dumps({"reference": ["good", 3]}))
    for name in ("empty", "unreadable", "nan", "long", "clone", "typo", "clones", "refs"):
        (folder / f"{name}.txt").write_text(f"The {name} clip.")
    reasons = {
        "no_text.wav": "no transcript: no_text.txt is missing",
        "empty.wav": "audio file has no samples",
        "unreadable.wav": "cannot read audio (Error opening",
        "nan.wav": "audio contains NaN or Inf samples (first at sample 0)",
        "long.wav": "too long: 2.00 s > max_clip_s=1.5 (too_long=skip)",
        "latin1.flac": "transcript latin1.txt is not UTF-8 text (byte 3)",
        "special.wav": "transcript special.txt holds the special token string '<|eot_id|>'",
        "orphan.txt": "no audio beside it (.wav / .flac / .ogg)",
        "clone.wav": "its reference 'nan' was skipped",
        "typo.wav": "typo.json: unknown key 'speakr' (takes speaker, scene, reference)",
        "clones.wav": "its reference 'nowhere' is not an example here",
        "refs.wav": "refs.json: reference must be an id, a list of ids or null, got ['good', 3]",
    }
    return folder, reasons


def test_bad_data_is_skipped_with_a_one_line_reason_each(tokenizer_dir, tmp_path):
    folder, reasons = bad_folder(tmp_path)
    result = prepare(settings(folder, tmp_path / "out", tokenizer_dir, "max_clip_s=1.5", "too_long=skip"))
    assert result.examples == 1 and result.cropped == []
    got = {d["source"].rsplit("/", 1)[1]: d["reason"] for d in result.skipped}
    assert got.keys() == reasons.keys()
    for name, reason in reasons.items():
        assert got[name].startswith(reason) and "\n" not in got[name], name
    info = json.loads((tmp_path / "out" / "prepared.json").read_text())
    assert info["skipped"] == result.skipped and info["examples"] == 1
    lines = summary(result).splitlines()
    assert len(lines) == len(reasons) + 1 and lines[-1].startswith("prepared 1 examples (25 frames")
    assert f"skipped {folder / 'nan.wav'}: audio contains NaN" in summary(result)


def test_too_long_crop_keeps_the_first_seconds(tokenizer_dir, tmp_path):
    folder, _ = bad_folder(tmp_path)
    result = prepare(settings(folder, tmp_path / "out", tokenizer_dir, "max_clip_s=1.5", "too_long=crop"))
    assert [d["source"] for d in result.cropped] == [str(folder / "long.wav")]
    assert result.cropped[0]["reason"] == "cropped to its first 1.5 s of 2.00 s (max_clip_s, too_long=crop)"
    assert "long.wav" not in " ".join(d["source"] for d in result.skipped)
    _, codes = read_folder_content(tmp_path / "out")
    audio, rate = read_audio(folder / "long.wav")
    expected = load_tokenizer(tokenizer_dir).encode(audio[:, : round(1.5 * rate)], rate)
    assert codes["long"].shape[1] == 38 and torch.equal(codes["long"].long(), expected)


def test_bad_jsonl_lines_are_skipped_with_a_one_line_reason_each(clips, tokenizer_dir, tmp_path):
    good = as_jsonl(clips, tmp_path / "good.jsonl").read_bytes().splitlines()[0]
    audio = {"role": "assistant", "content": {"type": "audio", "audio_url": "missing.wav"}}
    lines = [
        good,
        b'{"messages": [',
        '{"messages": [], "speaker": "café"}'.encode("latin-1"),
        json.dumps({"messages": [{"role": "user", "content": " "}, audio]}).encode(),
        json.dumps({"messages": [{"role": "user", "content": "Hi."}, audio]}).encode(),
        json.dumps(
            {"messages": [{"role": "system", "content": "Speak."}, *json.loads(good)["messages"]]}
        ).encode(),
    ]
    (tmp_path / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    result = prepare(settings(tmp_path / "data.jsonl", tmp_path / "out", tokenizer_dir))
    assert result.examples == 1
    assert [d["source"] for d in result.skipped] == [f"{tmp_path / 'data.jsonl'}:{n}" for n in range(2, 7)]
    reasons = [d["reason"] for d in result.skipped]
    assert reasons[0].startswith("not JSON (Expecting value at column")
    assert reasons[1] == "not UTF-8 text (byte 32)"
    assert reasons[2] == "no transcript: the user turn before the audio has no text"
    assert reasons[3] == f"audio file not found: {tmp_path / 'missing.wav'}"
    assert reasons[4].startswith(
        "system message 'Speak.'...: expected 'Generate audio following instruction.'"
    )


def test_a_sample_with_two_references_trains_on_the_prompt_the_generator_builds(
    clips, tokenizer_dir, embedded_cache, tmp_path
):
    """The JSONL sample of c1 (reference pairs c0, c2, then its own pair) prepared and read back: its prompt is
    `Generator.build_prompt` with those two references (token ids, audio placeholders and their columns),
    and only the target segment (and its closing text tokens) has labels."""
    from transformers import AutoTokenizer

    from higgslab import delay
    from higgslab.generate.generator import Generator
    from higgslab.generate.prompt import Reference
    from higgslab.io.load import load_model
    from higgslab.train.examples import IGNORE, label_grid, read_prepared

    (tmp_path / "data").mkdir()
    prepare(settings(as_jsonl(clips, tmp_path / "data" / "train.jsonl"), tmp_path / "out", tokenizer_dir))
    model_dir = embedded_cache[1]
    model, tok = load_model(model_dir, dtype=torch.float32), AutoTokenizer.from_pretrained(str(model_dir))
    c = model.config
    data = read_prepared(tmp_path / "out")
    data.check(c)
    c1 = next(e for e in data.entries if e.id == "c1")
    ex = data.example(c1, tok, c)

    audio_tokenizer = load_tokenizer(tokenizer_dir)
    codes = {n: audio_tokenizer.encode(*read_audio(clips / f"{n}.{KIND[n]}")) for n in ("c0", "c1", "c2")}
    references = [Reference(f"Clip number {i}, ünïcode.", codes[f"c{i}"]) for i in (0, 2)]
    prompt = Generator(model, None, tok, compile=False).build_prompt(
        "Clip number 1, ünïcode.", "a quiet room", references=references
    )
    P, placeholders = len(prompt.input_ids), prompt.audio_codes.shape[1]
    assert torch.equal(ex.input_ids[:P], prompt.input_ids)
    assert torch.equal(ex.audio_codes[:, :placeholders], prompt.audio_codes)
    assert int((prompt.input_ids == c.audio_out_token_id).sum()) == placeholders  # both references' columns
    assert placeholders == sum(codes[f"c{i}"].shape[1] + c.num_codebooks + 1 for i in (0, 2))

    target = delay.encode_segment(codes["c1"], c.stream_ids)  # [n_q, S]
    S = target.shape[1]
    assert torch.equal(ex.audio_codes[:, placeholders:], target)
    assert ex.input_ids[P:].tolist() == [c.audio_out_token_id] * S + tok.convert_tokens_to_ids(
        ["<|audio_eos|>", "<|eot_id|>"]
    )
    labelled = (ex.labels != IGNORE).any(1).nonzero()[:, 0]
    assert labelled.min() >= P - 1 and labelled.max() < P - 1 + S  # the target's columns, nothing before
    assert torch.equal(ex.labels[P - 1 : P - 1 + S], label_grid(codes["c1"], c.stream_ids).T)
    assert ex.text_labels.ne(IGNORE).nonzero()[:, 0].tolist() == [P - 2, P + S - 1, P + S]


def test_unsupported_jsonl_features_are_one_line_skips(clips, tmp_path):
    """Each §10 feature this reader does not take, and each malformed sample, is skipped with its reason."""
    from higgslab.train.sources import read_jsonl

    wav = str(clips / "c0.wav")
    user = {"role": "user", "content": "Hello."}

    def said(**part):
        return {"role": "assistant", "content": [{"type": "audio", "audio_url": wav, **part}]}

    cases = [
        ([user, said(raw_audio="UklGRg==")], "inline raw_audio is not supported: give the file as audio_url"),
        ([user, said(offset=0.5)], "offset / duration segments are not supported: cut the clip into its own file"),
        ([user, said(duration=1.0)], "offset / duration segments are not supported: cut the clip into its own file"),
        ([{"role": "user", "content": [{"type": "audio", "audio_url": wav}]}, said()],
         "audio in a user turn: only assistant turns hold audio here"),
        ([{"role": "system", "content": {"type": "audio", "audio_url": wav}}, user, said()],
         "audio in a system turn: only assistant turns hold audio here"),
        ([user, {"role": "assistant", "content": "Hi."}], "an assistant turn must hold exactly one audio part"),
        ([user, {"role": "assistant", "content": [*said()["content"]] * 2}],
         "an assistant turn must hold exactly one audio part"),
        ([user, said(audio_url=None)], "an audio part needs audio_url (a file path)"),
        ([user, {"role": "assistant", "content": {"type": "image"}}],
         "assistant content: expected text, {'type': 'text'|'audio', ...} or a list"),
        ([{"role": "user", "content": {"type": "text", "text": 3}}, said()], "user text must be a string"),
        ([{"role": "user", "content": "Hello <|eot_id|>."}, said()],
         "transcript holds the special token string '<|eot_id|>'"),
        ([user], "roles ['user']: expected user, assistant (after an optional system message), with a user, "
                 "assistant pair before them per voice reference"),
        ([user, said(), user], "roles ['user', 'assistant', 'user']: expected user, assistant"),
        ([said(), user], "roles ['assistant', 'user']: expected user, assistant"),
        ([user, "not a message"], 'each message must be an object {"role", "content"}'),
    ]  # fmt: skip
    samples = [{"messages": messages} for messages, _ in cases]
    samples += [{"messages": [user, said()], "speaker": 7}, ["not", "an object"]]
    reasons = [reason for _, reason in cases]
    reasons += ["speaker must be a string or null, got 7", 'expected an object {"messages": [...]}']
    path = tmp_path / "unsupported.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    examples, skipped = read_jsonl(path)
    assert examples == []
    assert [d["source"] for d in skipped] == [f"{path}:{n}" for n in range(1, len(samples) + 1)]
    for got, reason in zip((d["reason"] for d in skipped), reasons, strict=True):
        assert got.startswith(reason) and "\n" not in got, (got, reason)


def test_an_interrupted_run_resumes_with_only_the_missing_examples(
    clips, tokenizer_dir, tmp_path, monkeypatch
):
    import safetensors.torch

    save_file, calls = safetensors.torch.save_file, []

    def killed_after_one_shard(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) > 1:  # the second shard: half written, then the process "dies"
            open(path, "wb").write(b"partial")
            raise KeyboardInterrupt
        save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", killed_after_one_shard)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(settings(clips, out, tokenizer_dir, "shard_examples=1"))
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.safetensors"]  # no partial, no temp
    assert not (out / "manifest.jsonl").exists() and not (out / "prepared.json").exists()
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    (out / "shards" / ".00001.safetensors.x1y2.tmp").write_bytes(b"left by a kill -9")

    resumed = prepare(settings(clips, out, tokenizer_dir, "shard_examples=1"))
    assert resumed.encoded == ["c1", "c2"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"0000{i}.safetensors" for i in range(3)]
    whole = prepare(settings(clips, tmp_path / "whole", tokenizer_dir, "shard_examples=1"))
    assert (out / "manifest.jsonl").read_text() == (tmp_path / "whole" / "manifest.jsonl").read_text()
    assert read_folder_content(out)[1].keys() == read_folder_content(tmp_path / "whole")[1].keys()
    assert whole.encoded == ["c0", "c1", "c2"]
    assert prepare(settings(clips, out, tokenizer_dir, "shard_examples=1")).encoded == []  # all done


def test_a_rerun_encodes_a_clip_again_only_when_its_audio_changed(clips, tokenizer_dir, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    for path in clips.iterdir():
        (data / path.name).write_bytes(path.read_bytes())
    assert prepare(settings(data, out, tokenizer_dir)).encoded == ["c0", "c1", "c2"]
    (data / "c2.txt").write_text("A corrected transcript.")
    assert prepare(settings(data, out, tokenizer_dir)).encoded == []
    entries, _ = read_folder_content(out)
    assert entries[2]["text"] == "A corrected transcript."
    write_clip(data / "c2.ogg", 24000, 1, 1.0, seed=7)
    assert prepare(settings(data, out, tokenizer_dir)).encoded == ["c2"]
    entries, codes = read_folder_content(out)
    assert entries[2]["frames"] == 25
    assert torch.equal(codes["c2"].long(), load_tokenizer(tokenizer_dir).encode(*read_audio(data / "c2.ogg")))


@pytest.mark.slow  # two fresh interpreters each import torch and transformers (the tokenizer's DAC)
def test_two_ranks_prepare_what_one_rank_does(clips, tokenizer_dir, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    for path in clips.iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    (bad / "nan.txt").write_text("Not a number.")
    sf.write(bad / "nan.wav", np.full(24000, np.nan, np.float32), 24000, subtype="FLOAT")
    one = prepare(settings(bad, tmp_path / "one", tokenizer_dir, "shard_examples=1"))

    args = (2, free_port(), settings(bad, tmp_path / "two", tokenizer_dir, "shard_examples=1"))
    assert run_ranks(multiprocessing.get_context("spawn"), rank_main, args) == [0, 0]

    entries_one, codes_one = read_folder_content(tmp_path / "one")
    entries_two, codes_two = read_folder_content(tmp_path / "two")
    assert entries_one == entries_two and codes_one.keys() == codes_two.keys() == {"c0", "c1", "c2"}
    assert all(torch.equal(codes_one[k], codes_two[k]) for k in codes_one)
    info_one, info_two = (json.loads((tmp_path / d / "prepared.json").read_text()) for d in ("one", "two"))
    assert info_one == info_two and len(one.skipped) == 1
    shards = {
        json.loads(line)["shard"] for line in (tmp_path / "two" / "manifest.jsonl").read_text().splitlines()
    }
    assert len(shards) == 3  # each rank wrote its own


@pytest.mark.parametrize(
    "override, message",
    [
        ("too_long=cut", "too_long=cut: takes skip | crop"),
        ("max_clip_s=0", "max_clip_s must be > 0 (or null for no limit), got 0"),
        ("max_clip_s=abc", "max_clip_s=abc: takes a number or null"),
        ("shard_examples=0", "shard_examples must be >= 1, got 0"),
        ("device=tpu", "unknown device 'tpu'"),
        ("+batch=4", "batch: not a setting of prepare (the keys: --cfg job)"),
    ],
)
def test_bad_settings_are_one_line(override, message, clips, tokenizer_dir, tmp_path):
    with pytest.raises(HiggsLabError, match="^" + re.escape(message)):
        settings(clips, tmp_path / "out", tokenizer_dir, override)


def test_bad_paths_and_a_changed_setting_are_one_line(clips, tokenizer_dir, tmp_path):
    with pytest.raises(HiggsLabError, match=r"^data=.*nowhere: no such file or folder"):
        settings(tmp_path / "nowhere", tmp_path / "out", tokenizer_dir)
    with pytest.raises(HiggsLabError, match=r"^data=.*c0.txt: not a folder or a .jsonl file"):
        settings(clips / "c0.txt", tmp_path / "out", tokenizer_dir)
    with pytest.raises(HiggsLabError, match=r"^tokenizer_path=.*nowhere: no such folder"):
        settings(clips, tmp_path / "out", tmp_path / "nowhere")
    with pytest.raises(HiggsLabError, match="^tokenizer_path is needed with model_path"):
        settings_from(compose("prepare", [f"data={clips}", "output_dir=x", "model_path=m"]))
    with pytest.raises(HiggsLabError, match="^data is not set: pass data=..."):
        settings_from(compose("prepare", ["output_dir=x"]))
    prepare(settings(clips, tmp_path / "out", tokenizer_dir, "max_clip_s=10"))
    with pytest.raises(
        HiggsLabError, match=r"holds shards/00000.safetensors made with .*use another output_dir"
    ):
        prepare(settings(clips, tmp_path / "out", tokenizer_dir, "max_clip_s=20"))


def test_cli_bad_setting_is_one_line_and_exit_code_2(clips, tmp_path):
    cmd = [sys.executable, "-m", "higgslab.prepare", f"data={clips}", f"output_dir={tmp_path}", "too_long=no"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == "error: too_long=no: takes skip | crop\n"
    assert not list(tmp_path.iterdir())


def test_dropping_an_example_drops_the_ones_that_take_it_as_a_reference(tmp_path):
    """a -> b -> (missing): b is skipped for its reference, and a for b, whatever the id order."""

    from higgslab.train.sources import plan

    for name, ref in [("a", "b"), ("b", "zz"), ("c", None)]:
        (tmp_path / f"{name}.wav").write_bytes(b"not read by the plan")
        (tmp_path / f"{name}.txt").write_text(f"Clip {name}.")
        if ref:
            (tmp_path / f"{name}.json").write_text(json.dumps({"reference": ref}))
    examples, skipped = plan(tmp_path)
    assert [e.id for e in examples] == ["c"]
    reasons = {os.path.basename(s["source"]).removesuffix(".wav"): s["reason"] for s in skipped}
    assert reasons == {
        "a": "its reference 'b' is not an example here",
        "b": "its reference 'zz' is not an example here",
    }
