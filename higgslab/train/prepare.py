"""Fine-tuning data: audio + transcripts encoded once with the checkpoint's own audio tokenizer.

    python -m higgslab.prepare data=DIR_OR_JSONL output_dir=DIR [tokenizer_path=... max_clip_s=30 too_long=skip]
    torchrun --nproc_per_node 4 -m higgslab.prepare data=... output_dir=...      # each rank encodes its share

Inputs (`data=`):
- a folder of `name.wav|flac|ogg` + `name.txt` (its transcript, UTF-8), optionally `name.json` with `speaker`,
  `scene` and `reference` (the id of another clip in the folder: a voice-cloning example). Subfolders are
  read too; an example's id is its path in the folder without the extension ("spk1/utt01").
- a JSONL file in the chat shape of FORMATS.md §10, one sample a line: an optional system message (higgslab's
  system text, with the scene in its scene block), then a user text + assistant audio pair (the target),
  optionally preceded by another pair (the voice reference). `audio_url` is relative to the JSONL's folder or
  absolute; the id is the audio's path in that folder without the extension (its file name when outside).
  A sample's `speaker` is kept; `start_index` and `misc` are not used.
Any sample rate, mono or stereo: the tokenizer resamples and mixes (`AudioTokenizer.encode`).

The prepared folder (what `higgslab.train.examples.read_prepared` reads):

    prepared.json     {"version": 1, "n_q", "codebook_size", "sample_rate", "frame_rate", "tokenizer": path,
                       "examples": N, "frames": total, "skipped": [{"source", "reason"}],
                       "cropped": [{"source", "reason"}]}
    manifest.jsonl    one line per example, sorted by id: {"id", "text", "frames", "shard", "source", "sha256",
                       "speaker", "scene", "reference": null | {"text", "id"}}; a reference is itself an example
    shards/NNNNN.safetensors   int16 codes [n_q, F] keyed by example id; the safetensors metadata holds each
                       example's source hash and the settings that made it

Resumable: the shards are the record of what is done. Each is written whole or not at all
(`higgslab.io.atomic`); a rerun encodes only the examples that no finished shard holds with the same source
hash (a changed transcript needs no new codes, a changed audio file does), and leftovers of a killed run
are removed first. Bad data never stops a run: each bad file is skipped with a one-line reason, listed at the
end and in prepared.json. Clips longer than `max_clip_s` are skipped (`too_long=skip`) or keep their first
`max_clip_s` seconds (`too_long=crop`, listed under "cropped").

Under torchrun (RANK / WORLD_SIZE set) every rank plans the same examples, rank r encodes every WORLD_SIZE-th
of those still to do into its own shards, and rank 0 writes the manifest once all are done; the processes meet
through torch.distributed with gloo (`barrier`, `broadcast_object_list`, `gather_object`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from higgslab.errors import HiggsLabError

VERSION = 1
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
TOO_LONG = ("skip", "crop")
FOLDER_META_KEYS = ("speaker", "scene", "reference")
SHARD_META = "higgslab.prepare"  # the safetensors metadata key of a shard's record


@dataclass
class PrepareSettings:
    """Every key of `python -m higgslab.prepare` (prepare.yaml + model/), typed; defaults live in the yaml."""

    data: str
    output_dir: str
    model_path: str | None  # only names the checkpoint: the audio tokenizer (tokenizer_path) is what runs
    tokenizer_path: str | None
    max_clip_s: float | None
    too_long: str
    shard_examples: int
    device: str


def settings_from(cfg: DictConfig) -> PrepareSettings:
    """The composed Hydra config as checked `PrepareSettings`, or one `HiggsLabError` line; nothing loads."""
    from higgslab.device import pick_device
    from higgslab.generate.settings import check_output_dir, typed_settings

    s = typed_settings(PrepareSettings, cfg, "prepare")
    if s.max_clip_s is not None and not s.max_clip_s > 0:
        raise HiggsLabError(f"max_clip_s must be > 0 (or null for no limit), got {s.max_clip_s}")
    if s.too_long not in TOO_LONG:
        raise HiggsLabError(f"too_long={s.too_long}: takes {' | '.join(TOO_LONG)}")
    if s.shard_examples < 1:
        raise HiggsLabError(f"shard_examples must be >= 1, got {s.shard_examples}")
    if s.model_path is not None and s.tokenizer_path is None:
        raise HiggsLabError("tokenizer_path is needed with model_path: the audio tokenizer makes the codes")
    pick_device(s.device)
    data = Path(s.data)
    if not (data.is_dir() or (data.is_file() and data.suffix == ".jsonl")):
        what = "no such file or folder" if not data.exists() else "not a folder or a .jsonl file"
        raise HiggsLabError(f"data={data}: {what} (give a folder of audio + .txt files or a JSONL manifest)")
    if s.tokenizer_path is not None and not Path(s.tokenizer_path).is_dir():
        raise HiggsLabError(f"tokenizer_path={s.tokenizer_path}: no such folder")
    check_output_dir(s.output_dir)
    return s


# ---- the plan: which clips, with which transcripts ------------------------------------------------------
@dataclass
class Example:
    """One clip to encode and its manifest fields (`reference`: the id of its voice reference example)."""

    id: str
    text: str
    source: str
    speaker: str | None = None
    scene: str | None = None
    reference: str | None = None
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
    """`name.json`'s speaker / scene / reference (all optional) or {} without one."""
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
        if value is not None and not isinstance(value, str):
            raise HiggsLabError(f"{path.name}: {key} must be a string or null, got {value!r}")
    return meta


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
    """One §10 sample -> its target example (+ its reference example first)."""
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
    if roles not in (["user", "assistant"], ["user", "assistant"] * 2):
        raise HiggsLabError(
            f"roles {roles}: expected user, assistant (after an optional system message), "
            "with one more user, assistant pair before them for a voice reference"
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
    *reference, target = pairs
    target.speaker, target.scene = speaker, scene
    target.reference = reference[0].id if reference else None
    return [*reference, target]


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
            for field in ("speaker", "scene", "reference"):
                if getattr(old, field) is None:
                    setattr(old, field, getattr(ex, field))
    for ex in sorted(by_id.values(), key=lambda e: e.id):
        if ex.reference is not None and ex.reference not in by_id:
            skipped.append(skip(ex.source, f"its reference {ex.reference!r} is not an example here"))
            del by_id[ex.id]
    for ex in by_id.values():
        ex.sha256 = sha256_of(ex.source)
    return sorted(by_id.values(), key=lambda e: e.id), skipped


# ---- encoding ------------------------------------------------------------------------------------------
def encode_clip(
    tokenizer, ex: Example, max_clip_s: float | None, too_long: str
) -> tuple[torch.Tensor, str | None]:
    """int16 codes `[n_q, F]` of one clip, and why it was cropped (or None); a bad clip is one line."""
    from higgslab.io.audio import read_audio

    try:
        audio, rate = read_audio(ex.source)  # [channels, samples]
    except HiggsLabError as e:
        raise HiggsLabError(str(e).removeprefix(f"{ex.source}: ")) from None
    seconds, cropped = audio.shape[1] / rate, None
    if max_clip_s is not None and seconds > max_clip_s:
        if too_long == "skip":
            raise HiggsLabError(f"too long: {seconds:.2f} s > max_clip_s={max_clip_s:g} (too_long=skip)")
        audio = audio[:, : round(max_clip_s * rate)]
        cropped = f"cropped to its first {max_clip_s:g} s of {seconds:.2f} s (max_clip_s, too_long=crop)"
    return tokenizer.encode(audio, rate).to(torch.int16), cropped


def write_shard(path: Path, codes: dict[str, torch.Tensor], record: dict) -> None:
    """One shard, whole or not at all: `codes` by example id, `record` (JSON) in the metadata."""
    from safetensors.torch import save_file

    from higgslab.io.atomic import atomic_write

    tensors = {k: v.contiguous() for k, v in codes.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={SHARD_META: json.dumps(record)}))


def read_shards(out: Path) -> dict[str, dict]:
    """The records of the finished shards under `out/shards`, by shard path relative to `out`."""
    from safetensors import safe_open

    records = {}
    for path in sorted((out / "shards").glob("[0-9]*.safetensors")):
        with safe_open(str(path), "pt") as f:
            records[path.relative_to(out).as_posix()] = json.loads(f.metadata()[SHARD_META])
    return records


def made_with(s: PrepareSettings, tokenizer_dir: Path) -> dict:
    """What a shard's codes depend on besides the audio: a rerun must match it to reuse them."""
    return {"tokenizer": str(tokenizer_dir), "max_clip_s": s.max_clip_s, "too_long": s.too_long}


def check_resumable(out: Path, records: dict[str, dict], wanted: dict) -> None:
    for shard, record in records.items():
        if record["made_with"] != wanted:
            raise HiggsLabError(
                f"output_dir {out} holds {shard} made with {record['made_with']}, not {wanted}: "
                "use another output_dir, or the same settings to resume"
            )


def done_codes(records: dict[str, dict]) -> dict[tuple[str, str], tuple[str, dict]]:
    """(id, source sha256) -> (shard, its entry) for every example already encoded."""
    return {(i, e["sha256"]): (shard, e) for shard, r in records.items() for i, e in r["examples"].items()}


# ---- the run -------------------------------------------------------------------------------------------
@dataclass
class PrepareResult:
    output_dir: Path
    examples: int  # in the manifest
    frames: int
    frame_rate: float
    encoded: list[str]  # ids encoded by this run (all ranks)
    skipped: list[dict]
    cropped: list[dict]


def distributed() -> tuple[int, int, bool]:
    """(rank, world size, whether this call joined the process group): torchrun's RANK / WORLD_SIZE, and
    the gloo group joined when there are several processes and no group yet."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    joined = world > 1 and not dist.is_initialized()
    if joined:
        dist.init_process_group("gloo")
    return int(os.environ.get("RANK", "0")), world, joined


def rank_device(name: str, world: int) -> str:
    """Each rank on its own accelerator under torchrun (LOCAL_RANK) when the device names none."""
    from higgslab.device import pick_device

    device = pick_device(name)
    if world > 1 and device.type in ("cuda", "npu") and device.index is None:
        return f"{device.type}:{os.environ.get('LOCAL_RANK', '0')}"
    return str(device)


def prepare(s: PrepareSettings) -> PrepareResult | None:
    """Encode `s.data` into `s.output_dir` (see the module docstring); returns what the run did (on rank 0;
    the other ranks of a torchrun return None once rank 0 has written the manifest)."""
    import torch.distributed as dist
    from tqdm import tqdm

    from higgslab.embedded import resolve_paths
    from higgslab.io.load import load_tokenizer

    rank, world, joined = distributed()
    out = Path(s.output_dir)
    tokenizer_dir = Path(s.tokenizer_path) if s.tokenizer_path else resolve_paths(None, None)[1]
    wanted = made_with(s, tokenizer_dir)
    examples, skipped = plan(Path(s.data))

    shared = [None]
    if rank == 0:  # leftovers of a killed run go before anyone writes; then one listing for every rank
        try:
            (out / "shards").mkdir(parents=True, exist_ok=True)
            for tmp in (out / "shards").glob(".*.tmp"):
                tmp.unlink()
            shared = [read_shards(out)]
            check_resumable(out, shared[0], wanted)
        except HiggsLabError as e:  # every rank stops with it, none waits for the others
            shared = [e]
    if world > 1:
        dist.broadcast_object_list(shared, src=0)
    if isinstance(shared[0], HiggsLabError):
        raise shared[0]
    records = shared[0]
    done = done_codes(records)
    todo = [ex for ex in examples if (ex.id, ex.sha256) not in done]
    mine = todo[rank::world]

    tokenizer = load_tokenizer(tokenizer_dir, device=rank_device(s.device, world))
    if tokenizer.codebook_size > torch.iinfo(torch.int16).max + 1:
        raise HiggsLabError(f"codebook size {tokenizer.codebook_size} does not fit the int16 shards")
    first = 1 + max((int(Path(p).stem) for p in records), default=-1)
    bad, encoded = [], []
    batch: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    shard_no = 0

    def flush() -> None:
        nonlocal shard_no
        path = out / "shards" / f"{first + shard_no * world + rank:05d}.safetensors"
        write_shard(path, batch, {"version": VERSION, "made_with": wanted, "examples": dict(entries)})
        encoded.extend(entries)
        batch.clear()
        entries.clear()
        shard_no += 1

    for ex in tqdm(mine, desc="encoding", unit="clip", disable=rank != 0 or not mine):
        try:
            codes, crop = encode_clip(tokenizer, ex, s.max_clip_s, s.too_long)
        except HiggsLabError as e:
            bad.append(skip(ex.source, str(e)))
            continue
        batch[ex.id] = codes
        entries[ex.id] = {"sha256": ex.sha256, "frames": codes.shape[1], "cropped": crop}
        if len(batch) == s.shard_examples:
            flush()
    if batch:
        flush()

    reports = [(bad, encoded)]
    if world > 1:
        reports = [None] * world if rank == 0 else None
        dist.gather_object((bad, encoded), reports, dst=0)
    result = None
    if rank == 0:
        bad = sorted((line for rank_bad, _ in reports for line in rank_bad), key=lambda d: d["source"])
        result = write_manifest(out, examples, skipped + bad, tokenizer, tokenizer_dir)
        result.encoded = sorted(i for _, rank_encoded in reports for i in rank_encoded)
    if world > 1:
        dist.barrier()  # every rank returns once the manifest is written
    if joined:
        dist.destroy_process_group()
    return result


def write_manifest(out: Path, examples: list[Example], skipped: list[dict], tokenizer, tokenizer_dir: Path):
    """manifest.jsonl and prepared.json (last: it marks a finished folder) from the finished shards."""
    from higgslab.io.atomic import atomic_write

    done = done_codes(read_shards(out))
    kept = {ex.id: ex for ex in examples if (ex.id, ex.sha256) in done}
    lost = True
    while lost:  # an example whose reference was skipped goes too (and then whatever references it)
        lost = [ex for ex in kept.values() if ex.reference is not None and ex.reference not in kept]
        for ex in lost:
            skipped.append(skip(ex.source, f"its reference {ex.reference!r} was skipped"))
            del kept[ex.id]
    lines, cropped, frames = [], [], 0
    for ex in kept.values():
        shard, entry = done[ex.id, ex.sha256]
        frames += entry["frames"]
        if entry["cropped"]:
            cropped.append(skip(ex.source, entry["cropped"]))
        reference = None if ex.reference is None else {"text": kept[ex.reference].text, "id": ex.reference}
        fields = dataclasses.asdict(ex) | {"frames": entry["frames"], "shard": shard, "reference": reference}
        order = ("id", "text", "frames", "shard", "source", "sha256", "speaker", "scene", "reference")
        lines.append(json.dumps({k: fields[k] for k in order}, ensure_ascii=False) + "\n")
    info = {
        "version": VERSION,
        "n_q": tokenizer.num_codebooks,
        "codebook_size": tokenizer.codebook_size,
        "sample_rate": tokenizer.sample_rate,
        "frame_rate": tokenizer.frame_rate,
        "tokenizer": str(tokenizer_dir),
        "examples": len(lines),
        "frames": frames,
        "skipped": skipped,
        "cropped": cropped,
    }
    atomic_write(out / "manifest.jsonl", lambda tmp: Path(tmp).write_text("".join(lines), encoding="utf-8"))
    atomic_write(out / "prepared.json", lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1) + "\n"))
    return PrepareResult(out, len(lines), frames, tokenizer.frame_rate, [], skipped, cropped)


def summary(result: PrepareResult) -> str:
    """The end-of-run report: one line per skipped or cropped file, then the totals."""
    lines = [f"skipped {d['source']}: {d['reason']}" for d in result.skipped]
    lines += [f"cropped {d['source']}: {d['reason']}" for d in result.cropped]
    lines.append(
        f"prepared {result.examples} examples ({result.frames} frames, {result.frames / result.frame_rate:.1f} s) in "
        f"{result.output_dir}: {len(result.encoded)} encoded now, {len(result.skipped)} skipped"
    )
    return "\n".join(lines)
