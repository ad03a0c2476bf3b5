"""Sentences and the espeak-ng corpus."""

import numpy as np
import pytest

from higgslab.errors import HiggsLabError
from higgslab.train import data
from higgslab.train.data import SAMPLE_RATE, load_audio, plan, read_manifest
from higgslab.train.sentences import make_sentences


def test_sentences_are_distinct_varied_and_seeded():
    a = make_sentences(2000, seed=3)
    assert a == make_sentences(2000, seed=3) != make_sentences(2000, seed=4)
    assert len(set(a)) == 2000
    words = [len(s.split()) for s in a]
    assert min(words) <= 4 and max(words) >= 18  # short and long sentences: durations vary


def test_split_is_fixed_by_position():
    clips = plan(make_sentences(40), seed=0, valid_every=20)
    assert [c.id for c in clips if c.split == "valid"] == ["00019", "00039"]
    assert len({c.voice for c in clips}) > 5


def test_corpus_is_24khz_with_a_manifest(corpus):
    clips = read_manifest(corpus)
    assert len(clips) == 12 and sum(c.split == "valid" for c in clips) == 3
    audio = load_audio(clips[0])
    assert audio.dtype == np.float32 and abs(len(audio) / SAMPLE_RATE - clips[0].seconds) < 1e-3
    assert np.abs(audio).max() > 0.05  # speech, not silence


def test_corpus_grows_by_its_missing_clips_and_refuses_another_plan(corpus, tmp_path):
    """A larger corpus of the same seed keeps the clips already spoken; another seed or size is refused."""
    import shutil

    import pytest

    from higgslab.errors import HiggsLabError
    from higgslab.train.data import build_corpus

    out = tmp_path / "corpus"
    shutil.copytree(corpus.parent, out)
    first = (out / "wav" / "00000.wav").stat().st_mtime_ns
    grown = read_manifest(build_corpus(out, sentences=14, seed=0, valid_every=4))
    assert len(grown) == 14 and [c.id for c in grown[:12]] == [c.id for c in read_manifest(corpus)]
    assert (out / "wav" / "00000.wav").stat().st_mtime_ns == first  # kept, not spoken again
    assert abs(len(load_audio(grown[13])) / SAMPLE_RATE - grown[13].seconds) < 1e-3
    with pytest.raises(HiggsLabError, match="differs from data.seed=1"):
        build_corpus(out, sentences=14, seed=1, valid_every=4)
    with pytest.raises(HiggsLabError, match="holds 14 clips, not the 12"):
        build_corpus(out, sentences=12, seed=0, valid_every=4)


def test_missing_espeak_is_one_line_saying_how_to_install_it_and_nothing_is_run(monkeypatch, tmp_path):
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    monkeypatch.setattr(data.subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))  # no apt-get
    with pytest.raises(
        HiggsLabError, match=r"^espeak-ng is not on PATH: install it \(Debian/Ubuntu: apt-get"
    ):
        data.build_corpus(tmp_path / "corpus", sentences=4)
    assert not (tmp_path / "corpus" / "manifest.jsonl").exists()


def test_speak_folder_writes_prepare_pairs_and_respeaks_only_a_changed_transcript(tmp_path):
    import soundfile as sf

    from tests.train.conftest import espeak_or_skip

    espeak_or_skip()
    out = data.speak_folder(["One two.", "Three four five."], tmp_path / "v", "en-us+Annie", 160, 60)
    assert sorted(p.name for p in out.iterdir()) == ["00000.txt", "00000.wav", "00001.txt", "00001.wav"]
    audio, rate = sf.read(out / "00001.wav", dtype="float32")
    assert rate == SAMPLE_RATE and audio.ndim == 1 and np.abs(audio).max() > 0.01
    kept = (out / "00000.wav").stat().st_mtime_ns
    short = len(audio)
    data.speak_folder(["One two.", "Three."], out, "en-us+Annie", 160, 60)
    assert (out / "00000.wav").stat().st_mtime_ns == kept  # same transcript: not spoken again
    assert len(sf.read(out / "00001.wav")[0]) < short and (out / "00001.txt").read_text() == "Three."
