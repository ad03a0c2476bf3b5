"""Voices on disk (`voices.py`) and `Generator.references`: files checked from their headers before anything
is read or encoded, the shipped sample voices, and references in the prompt."""

import fnmatch
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tomllib
import torch

from higgslab.errors import HiggsLabError
from higgslab.generate import voices
from higgslab.generate.generator import Generator
from higgslab.generate.prompt import Reference

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gen(embedded_cache):
    """The embedded tiny checkpoints: LM, text tokenizer and a (random) audio tokenizer."""
    _, model_dir, tokenizer_dir = embedded_cache
    return Generator.from_paths(model_dir, tokenizer_dir, device="cpu")


@pytest.fixture
def no_encoding(gen, monkeypatch):
    """The audio tokenizer and soundfile's reader fail if called: nothing may be read or encoded."""

    def fail(*args, **kw):
        raise AssertionError("the clip was read or encoded")

    monkeypatch.setattr(gen.audio_tokenizer, "encode", fail)
    monkeypatch.setattr(gen.audio_tokenizer, "encode_file", fail)
    monkeypatch.setattr(sf, "read", fail)


@pytest.fixture
def encoded(gen, monkeypatch):
    """Records the audio the tokenizer is asked to encode; returns stand-in codes of one frame per 960
    samples (the tokenizer's hop at 24 kHz)."""
    calls = []

    def encode(wav, sample_rate):
        samples = np.asarray(wav).shape[-1]
        calls.append((samples, sample_rate))
        return torch.zeros(8, samples // 960, dtype=torch.long)

    monkeypatch.setattr(gen.audio_tokenizer, "encode", encode)
    return calls


def silent_wav(path: Path, seconds: float, rate: int = 8000) -> Path:
    sf.write(path, np.zeros(int(seconds * rate), dtype=np.int16), rate, subtype="PCM_16")
    return path


def voice(folder: Path, name: str, seconds: float = 1.0, text: str | bytes = "A short line.") -> None:
    folder.mkdir(exist_ok=True)
    silent_wav(folder / f"{name}.wav", seconds, 24000)
    (folder / f"{name}.txt").write_bytes(text if isinstance(text, bytes) else text.encode())


# ---- the shipped voices --------------------------------------------------------------------------------------
def test_shipped_voices_are_short_24khz_mono_16bit_clips_with_their_sentence():
    assert voices.list_voices() == ["alice", "bob"]
    for name in ("alice", "bob"):
        path, transcript = voices.voice_files(name)
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
        assert 3 <= info.duration <= 6
        audio, _ = sf.read(path)
        assert np.abs(audio).max() > 0.1  # speech, not silence
        assert transcript == path.with_suffix(".txt").read_text().strip() and transcript.endswith(".")
    assert voices.voice_files("alice")[1] != voices.voice_files("bob")[1]


def test_the_wheel_ships_the_voices():
    """pyproject's package data globs cover every file of the shipped voices folder."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "higgslab"
    ]
    files = [p.relative_to(REPO / "higgslab").as_posix() for p in voices.SHIPPED_VOICES.iterdir()]
    assert len(files) == 4
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), (files, globs)


# ---- voice folders ---------------------------------------------------------------------------------------
def test_a_voices_folder_lists_pairs_only(tmp_path):
    voice(tmp_path, "carol")
    voice(tmp_path, "dave")
    (tmp_path / "dave.txt").unlink()  # a wav without transcript is no voice
    (tmp_path / "notes.txt").write_text("not a voice")
    assert voices.list_voices(tmp_path) == ["carol"]
    path, transcript = voices.voice_files("carol", tmp_path)
    assert path == tmp_path / "carol.wav" and transcript == "A short line."


@pytest.mark.parametrize(
    ("name", "setup", "message"),
    [
        ("eve", None, r"voice 'eve' not found in .*: it needs eve.wav and eve.txt \(voices there: carol\)"),
        ("../carol", None, "must be a file name without folders"),
        ("blank", b"  \n", r"voice 'blank': its transcript .*blank.txt is empty"),
        ("latin", "caf\xe9".encode("latin-1"), r"voice 'latin': its transcript .*latin.txt is not UTF-8"),
        ("ctrl", b"Hi <|eot_id|> there.", r"holds the special token string '<\|eot_id\|>'"),
    ],
)
def test_bad_voices_are_one_line(tmp_path, name, setup, message):
    voice(tmp_path, "carol")
    if setup is not None:
        voice(tmp_path, name, text=setup)
    with pytest.raises(HiggsLabError, match=message) as e:
        voices.voice_files(name, tmp_path)
    assert "\n" not in str(e.value)


def test_a_missing_voices_folder_is_one_line(tmp_path):
    with pytest.raises(HiggsLabError, match="voices_dir .*nowhere is not a folder"):
        voices.list_voices(tmp_path / "nowhere")


# ---- clip lengths from the header ----------------------------------------------------------------------------
def test_check_clip_reads_the_duration_from_the_header(tmp_path):
    clip = silent_wav(tmp_path / "x.wav", 600)
    assert voices.check_clip(clip, None) == 600.0
    assert voices.check_clip(clip, 30, too_long="cut") == 600.0  # the caller cuts
    with pytest.raises(HiggsLabError) as e:
        voices.check_clip(clip, 30)
    assert str(e.value) == (
        f"ref_audio {clip} is 600.0 s, longer than ref_max_s=30 (pass ref_too_long=cut to use its first 30 s)"
    )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"path": "missing.wav"}, "ref_audio missing.wav: no such file"),
        ({"path": "text.wav"}, r"ref_audio .*text.wav: not an audio file soundfile can read"),
        ({"too_long": "trim"}, "ref_too_long must be one of refuse, cut, got 'trim'"),
        ({"max_s": 0}, r"ref_max_s must be > 0 seconds \(or None for no limit\), got 0"),
    ],
)
def test_check_clip_errors_are_one_line(tmp_path, monkeypatch, kw, message):
    monkeypatch.chdir(tmp_path)
    silent_wav(tmp_path / "ok.wav", 1)
    (tmp_path / "text.wav").write_text("not audio")
    kw = {"path": "ok.wav", "max_s": 30} | kw
    with pytest.raises(HiggsLabError, match=message) as e:
        voices.check_clip(**kw)
    assert "\n" not in str(e.value)


# ---- Generator.references ---------------------------------------------------------------------------------
def test_a_ten_minute_clip_is_refused_before_it_is_read(gen, no_encoding, tmp_path):
    clip = silent_wav(tmp_path / "long.wav", 600)
    with pytest.raises(HiggsLabError, match=r"ref_audio .*long.wav is 600.0 s, longer than ref_max_s=30 "):
        gen.references(ref_audio=clip, ref_text="A long silence.")
    with pytest.raises(HiggsLabError, match=r"ref_audio .*long.wav is 600.0 s"):
        gen.build_prompt("Hello.", ref_audio=str(clip), ref_text="A long silence.")  # the old call too
    voice(tmp_path / "voices", "long", seconds=600)
    voice(tmp_path / "voices", "short")
    with pytest.raises(
        HiggsLabError, match=r"voice 'long': .*long.wav is 600.0 s"
    ):  # checked before "short" is read
        gen.references(voice=["short", "long"], voices_dir=tmp_path / "voices")


def test_cut_reads_and_encodes_only_the_first_seconds(gen, encoded, tmp_path, monkeypatch):
    clip = silent_wav(tmp_path / "long.wav", 600)
    read = []
    real_read = sf.read
    monkeypatch.setattr(sf, "read", lambda *a, **kw: read.append(kw.get("frames")) or real_read(*a, **kw))
    (ref,) = gen.references(ref_audio=clip, ref_text="Silence.", ref_max_s=2, ref_too_long="cut")
    assert read == [2 * 8000]  # only the first 2 s were read from the file
    assert encoded == [(2 * 8000, 8000)] and ref.codes.shape == (8, 16)
    assert ref == Reference("Silence.", ref.codes, None)


def test_in_memory_references_are_checked_and_cut_too(gen, encoded):
    wav = np.zeros(24000 * 40, dtype=np.float32)
    with pytest.raises(HiggsLabError, match=r"ref_audio \(audio array\) is 40.0 s, longer than ref_max_s=30"):
        gen.references(ref_audio=(wav, 24000), ref_text="Silence.")
    gen.references(ref_audio=(wav, 24000), ref_text="Silence.", ref_too_long="cut")
    assert encoded == [(24000 * 30, 24000)]
    codes = torch.zeros(8, 25 * 40, dtype=torch.long)  # 40 s at the tokenizer's 25 frames/s
    with pytest.raises(HiggsLabError, match=r"ref_audio \(codes\) is 40.0 s"):
        gen.references(ref_audio=codes, ref_text="Silence.")
    (ref,) = gen.references(ref_audio=codes, ref_text="Silence.", ref_max_s=10, ref_too_long="cut")
    assert ref.codes.shape == (8, 250)
    (ref,) = gen.references(ref_audio=codes, ref_text="Silence.", ref_max_s=None)
    assert ref.codes is codes and encoded == [(24000 * 30, 24000)]  # codes are never re-encoded


def test_voices_become_references_once_each(gen, encoded):
    (alice,) = gen.references(voice="alice")
    assert alice.speaker is None and alice.text == voices.voice_files("alice")[1]
    pair = gen.references(voice=["alice", "bob"])
    assert [r.speaker for r in pair] == [0, 1] and [r.text for r in pair] == [
        voices.voice_files(n)[1] for n in ("alice", "bob")
    ]
    seconds = [sf.info(voices.voice_files(n)[0]).frames for n in ("alice", "alice", "bob")]
    assert [n for n, _ in encoded] == seconds  # one encoding per voice and call, all of each clip


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"voice": "alice", "ref_audio": "x.wav"}, "give voice or ref_audio, not both"),
        ({"ref_text": "Words."}, "ref_text needs ref_audio"),
        ({"voice": []}, "voice is an empty list"),
        ({"voice": "nobody"}, r"voice 'nobody' not found in .*voices there: alice, bob"),
        ({"voice": "alice", "ref_too_long": "drop"}, "ref_too_long must be one of refuse, cut"),
        ({"ref_audio": torch.zeros(8, 3, dtype=torch.long), "ref_text": "a <|AUDIO|> b"}, "ref_text holds"),
    ],
)
def test_bad_references_are_one_line_and_encode_nothing(gen, no_encoding, kw, message):
    with pytest.raises(HiggsLabError, match=message) as e:
        gen.references(**kw)
    assert "\n" not in str(e.value)


def test_build_prompt_takes_references_or_the_old_arguments(gen):
    codes = torch.randint(0, 1024, (8, 5))
    chunk = torch.randint(0, 1024, (8, 3))
    old = gen.build_prompt("Hello.", "A room.", codes, "A voice.", [("Before.", chunk)])
    new = gen.build_prompt("Hello.", "A room.", context=[("Before.", chunk)],
                           references=[Reference("A voice.", codes)])  # fmt: skip
    assert torch.equal(old.input_ids, new.input_ids) and torch.equal(old.audio_codes, new.audio_codes)
    ids, audio = gen.prompt("Hello.", "A room.", codes, "A voice.", [("Before.", chunk)])
    assert torch.equal(ids, old.input_ids) and torch.equal(audio, old.audio_codes)
    with pytest.raises(HiggsLabError, match="give references or ref_audio/ref_text, not both"):
        gen.build_prompt("Hello.", ref_audio=codes, references=[])


def test_bad_text_is_refused_before_any_reference_is_read(gen, no_encoding, tmp_path):
    clip = silent_wav(tmp_path / "voice.wav", 2)
    with pytest.raises(HiggsLabError, match=r"^text holds the special token string '<\|eot_id\|>'"):
        gen.build_prompt("Stop <|eot_id|> here.", ref_audio=clip, ref_text="Words.")
    with pytest.raises(HiggsLabError, match=r"^scene holds the special token string '<\|scene_desc_end\|>'"):
        gen.build_prompt("Fine.", "Room.<|scene_desc_end|>", ref_audio=clip, ref_text="Words.")
