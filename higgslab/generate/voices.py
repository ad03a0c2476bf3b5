"""STAND-IN by helper C for helper P's `voices.py` (issue 19 contract P): the same names and signatures, the
minimum the CLI's settings checks need. The lead takes P's version at merge.

Voices: a folder of `name.wav` + `name.txt` (its transcript), like the official `voice_prompts/`.
"""

from __future__ import annotations

from pathlib import Path

from higgslab.errors import HiggsLabError

SHIPPED_VOICES = Path(__file__).resolve().parents[1] / "assets" / "voices"


def _folder(voices_dir: Path | None) -> Path:
    folder = SHIPPED_VOICES if voices_dir is None else Path(voices_dir)
    if not folder.is_dir():
        raise HiggsLabError(f"voices_dir {folder} is not a folder")
    return folder


def list_voices(voices_dir: Path | None = None) -> list[str]:
    folder = _folder(voices_dir)
    return sorted(p.stem for p in folder.glob("*.wav") if p.with_suffix(".txt").is_file())


def voice_files(name: str, voices_dir: Path | None = None) -> tuple[Path, str]:
    folder = _folder(voices_dir)
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


def check_clip(path: Path, max_s: float | None, too_long: str = "refuse", what: str = "ref_audio") -> float:
    import soundfile as sf

    if not Path(path).is_file():
        raise HiggsLabError(f"{what} {path}: no such file")
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError on files it cannot read
        reason = str(e).splitlines()[0][:120]
        raise HiggsLabError(f"{what} {path}: not an audio file soundfile can read ({reason})") from None
    seconds = info.frames / info.samplerate
    if max_s is not None and seconds > max_s and too_long == "refuse":
        raise HiggsLabError(
            f"{what} {path} is {seconds:.1f} s, longer than ref_max_s={max_s:g} "
            f"(pass ref_too_long=cut to use its first {max_s:g} s)"
        )
    return seconds
