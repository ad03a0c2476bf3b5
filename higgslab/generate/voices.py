"""Voice references on disk: a voices folder holds `<name>.wav` + `<name>.txt` (its exact transcript, UTF-8),
like the official example's `voice_prompts/`. Pure file checks, no model: the CLI calls them before loading
anything, and a clip's length comes from its header, so a 10-minute file is refused without decoding it.

Shipped sample voices (`SHIPPED_VOICES`), 24 kHz mono 16-bit, made with `higgslab.train.data.synthesize`
(espeak-ng at 22.05 kHz, resampled with soxr like the mini's training corpus), i.e.

    espeak-ng -v en-us+f3 -s 150 -p 60 -w alice.wav "$(cat alice.txt)"    # alice: female, American
    espeak-ng -v en-gb+m3 -s 150 -p 40 -w bob.wav "$(cat bob.txt)"        # bob: male, British

then resampled to 24 kHz and written as PCM_16 with soundfile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from higgslab.errors import HiggsLabError
from higgslab.generate.prompt import check_user_text

SHIPPED_VOICES = Path(__file__).resolve().parents[1] / "assets" / "voices"
TOO_LONG = ("refuse", "cut")  # what to do with a reference clip longer than the maximum


def _folder(voices_dir: str | Path | None) -> Path:
    folder = SHIPPED_VOICES if voices_dir is None else Path(voices_dir)
    if not folder.is_dir():
        raise HiggsLabError(f"voices_dir {folder} is not a folder")
    return folder


def list_voices(voices_dir: str | Path | None = None) -> list[str]:
    """Names of the voices in `voices_dir` (None = the shipped ones): each `.wav` with a `.txt` beside it."""
    folder = _folder(voices_dir)
    return sorted(p.stem for p in folder.glob("*.wav") if p.with_suffix(".txt").is_file())


def voice_files(name: str, voices_dir: str | Path | None = None) -> tuple[Path, str]:
    """(wav path, transcript) of voice `name` in `voices_dir` (None = the shipped voices)."""
    folder = _folder(voices_dir)
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
        raise HiggsLabError(f"voice name {name!r} must be a file name without folders or extension")
    wav, txt = folder / f"{name}.wav", folder / f"{name}.txt"
    if not (wav.is_file() and txt.is_file()):
        held = ", ".join(list_voices(folder)) or "none"
        raise HiggsLabError(
            f"voice {name!r} not found in {folder}: it needs {wav.name} and {txt.name} (voices there: {held})"
        )
    try:
        transcript = txt.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise HiggsLabError(f"voice {name!r}: its transcript {txt} is not UTF-8 text") from None
    check_user_text(transcript, f"voice {name!r}: its transcript {txt}")
    return wav, transcript


def _info(path: Path, what: str):
    import soundfile as sf

    if not path.is_file():
        raise HiggsLabError(f"{what} {path}: no such file")
    try:
        info = sf.info(str(path))  # the header only
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError on bad files
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise HiggsLabError(f"{what} {path}: not an audio file soundfile can read ({reason})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise HiggsLabError(f"{what} {path} holds no audio")
    return info


def check_clip(
    path: str | Path, max_s: float | None, too_long: str = "refuse", what: str = "ref_audio"
) -> float:
    """The clip's duration in seconds, from its header only (never decoding it). Longer than `max_s`
    (None = no limit): `too_long="refuse"` → one-line `HiggsLabError`; `"cut"` → returned as it is, for
    the caller to read only the first `max_s` seconds (`read_clip`). Unreadable → one line."""
    check_limit(max_s, too_long)
    duration = clip_seconds(path, what)
    clip_limit(duration, max_s, too_long, f"{what} {path}")
    return duration


def clip_seconds(path: str | Path, what: str = "ref_audio") -> float:
    """An audio file's duration from its header only; unreadable → one line naming `what` and the path."""
    info = _info(Path(path), what)
    return info.frames / info.samplerate


def clip_limit(duration: float, max_s: float | None, too_long: str, what: str) -> float | None:
    """The seconds to cut a reference of `duration` s to, or None to keep all of it; longer than `max_s`
    with `too_long="refuse"` → one line naming `what`."""
    if max_s is None or duration <= max_s:
        return None
    if too_long == "refuse":
        raise HiggsLabError(
            f"{what} is {duration:.1f} s, longer than ref_max_s={max_s:g} "
            f"(pass ref_too_long=cut to use its first {max_s:g} s)"
        )
    return max_s


def check_limit(max_s: float | None, too_long: str) -> None:
    """One line for a bad `ref_max_s` / `ref_too_long`."""
    if too_long not in TOO_LONG:
        raise HiggsLabError(f"ref_too_long must be one of {', '.join(TOO_LONG)}, got {too_long!r}")
    if max_s is not None and not max_s > 0:
        raise HiggsLabError(f"ref_max_s must be > 0 seconds (or None for no limit), got {max_s!r}")


def read_clip(
    path: str | Path, max_s: float | None = None, what: str = "ref_audio"
) -> tuple[np.ndarray, int]:
    """(float32 `[channels, samples]`, sample rate) of at most the first `max_s` seconds of the file:
    only those frames are read (as `io.audio.read_audio` reads a whole file)."""
    import soundfile as sf

    info = _info(Path(path), what)
    frames = -1 if max_s is None else min(info.frames, round(max_s * info.samplerate))
    data, rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)  # [samples, channels]
    return np.ascontiguousarray(data.T), int(rate)
