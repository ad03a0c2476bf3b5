"""The synthetic speech corpus: generated sentences spoken by Debian's `espeak-ng`, resampled to 24 kHz.

    python -m higgslab.train.data --out data/mini --sentences 3000     # or called by the training stages

Each sentence gets a voice (accent + variant), a speed and a pitch drawn from a seeded RNG, so the corpus is
the same on every machine for the same seed. Layout of `out/`:

    manifest.jsonl   one JSON object per clip: id, split ("train" | "valid"), text, voice, speed, pitch,
                     path (relative), seconds
    wav/NNNNN.wav    16-bit mono 24 kHz

The split is fixed by id (every `valid_every`-th clip is validation), not by chance. `espeak-ng` must be on
PATH (README: *Training higgslab-mini*; `.ci/run` installs it); this module only looks for it.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from higgslab.errors import HiggsLabError

SAMPLE_RATE = 24000
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
VARIANTS = ["m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f4", "f5"]
SPEED_WPM = (130, 195)  # espeak-ng -s
PITCH = (25, 75)  # espeak-ng -p, 0..99


@dataclass
class Clip:
    id: str
    split: str
    text: str
    voice: str
    speed: int
    pitch: int
    path: str
    seconds: float = 0.0


def find_espeak() -> str:
    """Path of the `espeak-ng` program; one line saying how to install it when it is not on PATH."""
    found = shutil.which("espeak-ng")
    if found is None:
        raise HiggsLabError(
            "espeak-ng is not on PATH: install it (Debian/Ubuntu: apt-get install espeak-ng; "
            "macOS: brew install espeak-ng)"
        )
    return found


def synthesize(text: str, voice: str, speed: int, pitch: int, espeak: str = "espeak-ng") -> np.ndarray:
    """Speak `text` -> float32 mono `[samples]` at 24 kHz (espeak-ng writes 22.05 kHz; soxr resamples)."""
    import soundfile as sf
    import soxr

    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        cmd = [espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", f.name, text]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise HiggsLabError(f"espeak-ng failed for voice {voice!r}: {done.stderr.strip()[:200]}")
        audio, rate = sf.read(f.name, dtype="float32")
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def plan(sentences: list[str], seed: int, valid_every: int = 20) -> list[Clip]:
    """One `Clip` per sentence: voice, speed and pitch drawn from `seed`; every `valid_every`-th is validation."""
    rng = random.Random(seed)
    clips = []
    for i, text in enumerate(sentences):
        voice = f"{rng.choice(ACCENTS)}+{rng.choice(VARIANTS)}"
        split = "valid" if i % valid_every == valid_every - 1 else "train"
        speed, pitch = rng.randint(*SPEED_WPM), rng.randint(*PITCH)
        clips.append(Clip(f"{i:05d}", split, text, voice, speed, pitch, f"wav/{i:05d}.wav"))
    return clips


def build_corpus(out: str | Path, sentences: int = 3000, seed: int = 0, valid_every: int = 20) -> Path:
    """Synthesise the corpus into `out`; returns the manifest path.

    Sentences and voices are drawn in order from `seed`, so a smaller corpus of the same seed is a prefix of
    a larger one: clips already in `out`'s manifest are kept and only the missing ones are spoken. A manifest
    that disagrees with this plan (another seed or split) is refused rather than silently reused. The
    manifest is written last, so an interrupted run is simply redone."""
    import soundfile as sf
    from tqdm import tqdm

    from higgslab.train.sentences import make_sentences

    out = Path(out)
    manifest = out / "manifest.jsonl"
    clips = plan(make_sentences(sentences, seed), seed, valid_every)
    done = {c.id: c for c in read_manifest(manifest)} if manifest.is_file() else {}
    for clip in clips:
        old = done.get(clip.id)
        if old is None:
            continue
        if (old.text, old.voice, old.split) != (clip.text, clip.voice, clip.split):
            raise HiggsLabError(
                f"{manifest}: clip {clip.id} differs from data.seed={seed}, valid_every={valid_every}; "
                "use another data directory"
            )
        clip.seconds = old.seconds  # already spoken: kept as it is
    if all(c.id in done for c in clips):
        if len(done) == len(clips):
            return manifest
        raise HiggsLabError(
            f"{manifest}: holds {len(done)} clips, not the {len(clips)} asked for (data.sentences)"
        )
    espeak = find_espeak()
    (out / "wav").mkdir(parents=True, exist_ok=True)
    for clip in tqdm([c for c in clips if c.id not in done], desc="espeak-ng", unit="clip"):
        audio = synthesize(clip.text, clip.voice, clip.speed, clip.pitch, espeak)
        clip.seconds = round(len(audio) / SAMPLE_RATE, 3)
        sf.write(out / clip.path, audio, SAMPLE_RATE, subtype="PCM_16")
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(asdict(c)) + "\n" for c in clips))
    tmp.replace(manifest)
    return manifest


def speak_folder(
    texts: list[str], out: str | Path, voice: str, speed: int, pitch: int, prefix: str = ""
) -> Path:
    """Speak each text in one espeak-ng voice into `out` as `{prefix}NNNNN.wav` + `.txt` pairs: the folder
    shape `python -m higgslab.prepare` reads. Clips already there with the same transcript are kept, so a
    rerun speaks only what is missing; each WAV is written whole (`atomic_write`) before its transcript."""
    import soundfile as sf
    from tqdm import tqdm

    from higgslab.io.atomic import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    espeak = find_espeak()
    for i, text in enumerate(tqdm(texts, desc=f"espeak-ng {voice}", unit="clip")):
        wav, txt = out / f"{prefix}{i:05d}.wav", out / f"{prefix}{i:05d}.txt"
        if wav.is_file() and txt.is_file() and txt.read_text(encoding="utf-8") == text:
            continue
        audio = synthesize(text, voice, speed, pitch, espeak)
        atomic_write(wav, lambda tmp, a=audio: sf.write(tmp, a, SAMPLE_RATE, subtype="PCM_16", format="WAV"))
        txt.write_text(text, encoding="utf-8")
    return out


def read_manifest(manifest: str | Path, split: str | None = None) -> list[Clip]:
    """Clips of `manifest` (all, or one split), with `path` made absolute."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise HiggsLabError(f"{manifest}: no corpus manifest (run python -m higgslab.train.data first)")
    clips = [Clip(**json.loads(line)) for line in manifest.read_text().splitlines() if line.strip()]
    for c in clips:
        c.path = str(manifest.parent / c.path)
    return [c for c in clips if split is None or c.split == split]


def load_audio(clip: Clip) -> np.ndarray:
    """float32 `[samples]` at 24 kHz."""
    import soundfile as sf

    audio, rate = sf.read(clip.path, dtype="float32")
    if rate != SAMPLE_RATE:
        raise HiggsLabError(f"{clip.path}: {rate} Hz, expected {SAMPLE_RATE}")
    return audio


def main(argv: list[str] | None = None) -> None:
    import argparse

    from higgslab.errors import cli_errors

    parser = argparse.ArgumentParser(description="Synthesise the higgslab-mini speech corpus with espeak-ng")
    parser.add_argument("--out", default="data/mini")
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with cli_errors():
        print(build_corpus(args.out, args.sentences, args.seed))


if __name__ == "__main__":
    main()
