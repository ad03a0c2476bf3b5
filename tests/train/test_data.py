"""Sentences and the espeak-ng corpus."""

import numpy as np

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
