"""STAND-IN by helper C for helper P's `voices.py` (issue 19 contract P): the same names and signatures, the
minimum the CLI's settings checks need. The lead takes P's version at merge.

Voices: a folder of `name.wav` + `name.txt` (its transcript), like the official `voice_prompts/`.
"""

from __future__ import annotations

from pathlib import Path

from higgslab.errors import HiggsLabError

SHIPPED_VOICES = Path(__file__).resolve().parents[1] / "assets" / "voices"


def list_voices(voices_dir: Path | None = None) -> list[str]:
    folder = Path(voices_dir) if voices_dir is not None else SHIPPED_VOICES
    return sorted(p.stem for p in folder.glob("*.wav") if p.with_suffix(".txt").is_file())


def voice_files(name: str, voices_dir: Path | None = None) -> tuple[Path, str]:
    folder = Path(voices_dir) if voices_dir is not None else SHIPPED_VOICES
    wav, txt = folder / f"{name}.wav", folder / f"{name}.txt"
    if not (wav.is_file() and txt.is_file()):
        held = ", ".join(list_voices(folder)) or "none"
        raise HiggsLabError(f"voice {name!r}: no {name}.wav + {name}.txt in {folder} (it holds: {held})")
    try:
        transcript = txt.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise HiggsLabError(f"{txt}: not UTF-8 text") from None
    if not transcript:
        raise HiggsLabError(f"{txt}: the transcript is empty")
    return wav, transcript


def check_clip(path: Path, max_s: float | None, too_long: str = "refuse") -> float:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError on files it cannot read
        raise HiggsLabError(f"{path}: cannot read audio ({str(e).splitlines()[0][:120]})") from None
    seconds = info.frames / info.samplerate
    if max_s is not None and seconds > max_s and too_long == "refuse":
        raise HiggsLabError(
            f"ref_audio {path} is {seconds:.1f} s, longer than ref_max_s={max_s:g} "
            f"(pass ref_too_long=cut to use its first {max_s:g} s)"
        )
    return seconds
