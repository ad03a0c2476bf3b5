"""Fine-tuning data, the inputs: which clips with which transcripts (the plan `train.prepare` encodes).

- a folder of `name.wav|flac|ogg` + `name.txt` (its transcript, UTF-8), optionally `name.json` with `speaker`,
  `scene` and `reference`: the id of another clip in the folder, or a list of ids, its voice references in
  prompt order (a voice-cloning example). Subfolders are read too; an example's id is its path in the folder
  without the extension ("spk1/utt01").
- a JSONL file in the chat shape of FORMATS.md §10, one sample a line: an optional system message (higgslab's
  system text, with the scene in its scene block), then user text + assistant audio pairs: the last is the
  target, any before it are its voice references, in order (the generation prompt's reference turns).
  `audio_url` is relative to the JSONL's folder or absolute; the id is the audio's path in that folder
  without the extension (its file name when outside). A sample's `speaker` is kept; `start_index` and `misc`
  are not used: references are context, only the target is trained on. Inline `raw_audio`, `offset` /
  `duration` segments and audio in user or system turns are skipped with their reason.

A reference is itself an example (its clip is encoded once, whoever refers to it); an example's references
are one level deep: a reference's own references are not part of the prompt.

`plan(data)` gives every example (sorted by id, each id once, its source hashed, its references present)
and the files or lines skipped, each with a one-line reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from higgslab.errors import HiggsLabError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
FOLDER_META_KEYS = ("speaker", "scene", "reference")


@dataclass
class Example:
    """One clip to encode and its manifest fields (`references`: the ids of its voice reference examples)."""

    id: str
    text: str
    source: str
    speaker: str | None = None
    scene: str | None = None
    references: list[str] = field(default_factory=list)
    sha256: str = ""


def skip(source, reason: str) -> dict:
    return {"source": str(source), "reason": reason}


def read_transcript(path: Path) -> str:
    """A transcript file's text, stripped; one line when it is missing, not UTF-8, empty or holds special tokens."""
    from higgslab.generate.prompt import check_user_text

    if not path.is_file():
        raise HiggsLabError(f"no transcript: {path.name} is missing")
    try:
        text = path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise HiggsLabError(f"transcript {path.name} is not UTF-8 text (byte {e.start})") from None
    check_user_text(text, f"transcript {path.name}")
    return text


def clip_id(path: Path, base: Path) -> str:
    """The example id of an audio file: its path under `base` without the extension, else its file name's stem."""
    try:
        return path.resolve().relative_to(base.resolve()).with_suffix("").as_posix()
    except ValueError:
        return path.stem


def read_folder(folder: Path) -> tuple[list[Example], list[dict]]:
    """The examples of a folder of audio + `.txt` (+ `.json`) files, and the files skipped with why."""
    folder, examples, skipped, seen = folder.resolve(), [], [], {}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".txt" and not any(path.with_suffix(s).is_file() for s in AUDIO_SUFFIXES):
            skipped.append(skip(path, f"no audio beside it ({' / '.join(AUDIO_SUFFIXES)})"))
        if suffix not in AUDIO_SUFFIXES:
            continue
        example_id = clip_id(path, folder)
        if example_id in seen:
            skipped.append(skip(path, f"id {example_id!r} is already {seen[example_id].name}"))
            continue
        seen[example_id] = path
        try:
            meta = read_folder_meta(path.with_suffix(".json"))
            examples.append(Example(example_id, read_transcript(path.with_suffix(".txt")), str(path), **meta))
        except HiggsLabError as e:
            skipped.append(skip(path, str(e)))
    return examples, skipped


def read_folder_meta(path: Path) -> dict:
    """`name.json`'s speaker / scene / references (all optional) as `Example` fields, or {} without one."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HiggsLabError(f"{path.name} is not UTF-8 JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise HiggsLabError(f"{path.name}: expected a JSON object with {', '.join(FOLDER_META_KEYS)}")
    for key, value in meta.items():
        if key not in FOLDER_META_KEYS:
            raise HiggsLabError(f"{path.name}: unknown key {key!r} (takes {', '.join(FOLDER_META_KEYS)})")
        if (
            key == "reference"
            and isinstance(value, list)
            and value
            and all(isinstance(v, str) for v in value)
        ):
            continue  # several references, in prompt order
        if value is not None and not isinstance(value, str):
            takes = "an id, a list of ids" if key == "reference" else "a string"
            raise HiggsLabError(f"{path.name}: {key} must be {takes} or null, got {value!r}")
    reference = meta.pop("reference", None)
    return meta | {"references": [reference] if isinstance(reference, str) else reference or []}


def read_jsonl(path: Path) -> tuple[list[Example], list[dict]]:
    """The examples of a §10 chat-shape JSONL file (references included), and the lines skipped with why."""
    path, examples, skipped = path.resolve(), [], []
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise HiggsLabError(f"not UTF-8 text (byte {e.start})") from None
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as e:
                raise HiggsLabError(f"not JSON ({e.msg} at column {e.colno})") from None
            examples += sample_examples(sample, path.parent)
        except HiggsLabError as e:
            skipped.append(skip(f"{path}:{n}", str(e)))
    return examples, skipped


def sample_examples(sample, base: Path) -> list[Example]:
    """One §10 sample -> its reference examples, in order, then its target example."""
    from higgslab.generate.prompt import check_user_text

    if not isinstance(sample, dict) or not isinstance(sample.get("messages"), list):
        raise HiggsLabError('expected an object {"messages": [...]}')
    messages = sample["messages"]
    if not all(isinstance(m, dict) for m in messages):
        raise HiggsLabError('each message must be an object {"role", "content"}')
    scene = None
    if messages and messages[0].get("role") == "system":
        scene = scene_of(message_text(messages[0]))
        messages = messages[1:]
    roles = [m.get("role") for m in messages]
    if not roles or roles != ["user", "assistant"] * (len(roles) // 2):
        raise HiggsLabError(
            f"roles {roles}: expected user, assistant (after an optional system message), "
            "with a user, assistant pair before them per voice reference"
        )
    speaker = sample.get("speaker")
    if speaker is not None and not isinstance(speaker, str):
        raise HiggsLabError(f"speaker must be a string or null, got {speaker!r}")
    pairs = []
    for user, assistant in zip(messages[::2], messages[1::2], strict=True):
        text = message_text(user).strip()
        if not text:
            raise HiggsLabError("no transcript: the user turn before the audio has no text")
        check_user_text(text, "transcript")
        audio = message_audio(assistant, base)
        pairs.append(Example(clip_id(audio, base), text, str(audio.resolve())))
    *references, target = pairs
    target.speaker, target.scene, target.references = speaker, scene, [r.id for r in references]
    return [*references, target]


def message_parts(message: dict) -> list[dict]:
    content = message.get("content")
    parts = content if isinstance(content, list) else [content]
    parts = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    if not all(isinstance(p, dict) and p.get("type") in ("text", "audio") for p in parts):
        raise HiggsLabError(
            f"{message.get('role')} content: expected text, {{'type': 'text'|'audio', ...}} or a list"
        )
    return parts


def message_text(message: dict) -> str:
    parts = message_parts(message)
    if any(p["type"] != "text" for p in parts):
        raise HiggsLabError(f"audio in a {message.get('role')} turn: only assistant turns hold audio here")
    texts = [p.get("text") for p in parts]
    if not all(isinstance(t, str) for t in texts):
        raise HiggsLabError(f"{message.get('role')} text must be a string")
    return "".join(texts)


def message_audio(message: dict, base: Path) -> Path:
    """The audio file of an assistant turn (one audio part, a file path)."""
    parts = message_parts(message)
    if len(parts) != 1 or parts[0]["type"] != "audio":
        raise HiggsLabError("an assistant turn must hold exactly one audio part")
    part = parts[0]
    if part.get("raw_audio") is not None:
        raise HiggsLabError("inline raw_audio is not supported: give the file as audio_url")
    if part.get("offset") is not None or part.get("duration") is not None:
        raise HiggsLabError("offset / duration segments are not supported: cut the clip into its own file")
    url = part.get("audio_url")
    if not isinstance(url, str) or not url:
        raise HiggsLabError("an audio part needs audio_url (a file path)")
    path = base / url
    if not path.is_file():
        raise HiggsLabError(f"audio file not found: {path}")
    return path


def scene_of(system: str) -> str | None:
    """The scene of a system message in higgslab's shape (`generate.prompt.system_message`), else one line."""
    from higgslab.generate.prompt import SYSTEM_MESSAGE

    if system.strip() == SYSTEM_MESSAGE:
        return None
    found = re.fullmatch(
        re.escape(SYSTEM_MESSAGE) + r"\n\n<\|scene_desc_start\|>\n(.*)\n<\|scene_desc_end\|>",
        system.strip(),
        re.S,
    )
    if found is None:
        raise HiggsLabError(
            f"system message {system[:40]!r}...: expected {SYSTEM_MESSAGE!r}, optionally with a scene block"
        )
    return found[1]


def drop_missing_references(kept: dict[str, Example], reason: str) -> list[dict]:
    """Remove from `kept` (id -> example) every example with a reference not in it, until none is left
    (dropping one drops whatever takes it as a reference); returns their skip lines, "its reference 'x'
    {reason}"."""
    skipped = []
    while lost := {i: m for i, ex in kept.items() if (m := [r for r in ex.references if r not in kept])}:
        for i, missing in lost.items():
            skipped.append(skip(kept.pop(i).source, f"its reference {missing[0]!r} {reason}"))
    return skipped


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def plan(data: Path) -> tuple[list[Example], list[dict]]:
    """Every example of `data` (sorted by id, each id once, sources hashed, references present), and the
    skipped ones with their one-line reasons."""
    examples, skipped = read_folder(data) if data.is_dir() else read_jsonl(data)
    by_id: dict[str, Example] = {}
    for ex in examples:
        old = by_id.get(ex.id)
        if old is None:
            by_id[ex.id] = ex
        elif (old.source, old.text) != (ex.source, ex.text):
            skipped.append(skip(ex.source, f"id {ex.id!r} is already {old.source} with another transcript"))
        else:  # the same clip twice (a reference that is also a sample): one example, fields merged
            for name in ("speaker", "scene", "references"):
                if not getattr(old, name):
                    setattr(old, name, getattr(ex, name))
    skipped += drop_missing_references(by_id, "is not an example here")
    for ex in by_id.values():
        ex.sha256 = sha256_of(ex.source)
    return sorted(by_id.values(), key=lambda e: e.id), skipped
