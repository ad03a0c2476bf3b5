"""`python -m higgslab.synthesize manifest=FILE.jsonl output_dir=DIR`: many texts, one WAV each, batched.

Hydra config `higgslab/conf/synthesize.yaml` (groups model= and generation= as for generate). The manifest
holds one JSON object a line:

    {"text": "Hello there.", "id": "greeting", "voice": "alice", "scene": "A quiet room.", "seed": 7}

Only `text` is required. `id` (the file name) defaults to the line number zero-padded (`00001`), `seed` to
the run's `seed` + line number - 1, `voice` (a name in `voices_dir`), `scene` and `max_new_tokens` to the
run's. The settings and every line are checked before the model loads: a bad one is one `error:` line
naming it, exit code 2, nothing written.

Each item decodes as `Generator.generate(text=..., seed=its seed)` would, to the same codes
(`ContinuousBatcher`), `rows` at a time, and is written as it finishes: `DIR/<id>.wav` (24 kHz mono 16-bit),
then `DIR/<id>.json` (the item, the sampling settings, and what came out: frames, steps, finished), each
atomically. An item with both files is done: a rerun into DIR (after a kill, or with lines added) speaks
only the others, and refuses one whose record says it was made from another text, seed or settings.
Under `torchrun --nproc_per_node N -m higgslab.synthesize ...` rank r speaks items r, r + N, ...: the files
are the same whatever N, since each item has its own seed (given the same CPU threads per process: float
sums depend on their count). Rank 0 writes `DIR/summary.json` once all ranks are done (counts, times, every
item's record), which `python -m higgslab.eval mode=quality audio_dir=DIR` scores. Exit code 1 when an
item failed or ran to its max_new_tokens without ending its stream (its WAV holds what was made), as
generate's for a chunk that gave up.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from higgslab.conf import command
from higgslab.errors import HiggsLabError
from higgslab.generate.settings import settings_class

SUMMARY = "summary.json"
ITEM_KEYS = ("text", "id", "voice", "scene", "seed", "max_new_tokens")
SAMPLING = ("temperature", "top_k", "top_p", "ras_window", "ras_max_repeat", "cfg_scale")
FILE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # a plain file name, never hidden
RESERVED_IDS = ("summary",)  # summary.json is the run's own


@dataclass
class _SynthesizeKeys:
    manifest: str
    output_dir: str
    rows: int
    seed: int  # of an item that names none (max_new_tokens too)
    voices_dir: str | None

    def sampling(self) -> dict:
        return {key: getattr(self, key) for key in SAMPLING}


SynthesizeSettings = settings_class(
    "SynthesizeSettings",
    _SynthesizeKeys,
    __name__,
    "Every key of `python -m higgslab.synthesize` (synthesize.yaml + generation/ + model/), typed; the "
    "defaults live in the yaml.",
)


@dataclass(frozen=True)
class Item:
    """One manifest line, defaults filled in."""

    line: int  # 1-based
    id: str
    text: str
    voice: str | None
    scene: str | None
    seed: int
    max_new_tokens: int


# ---- checks, before anything loads ------------------------------------------------------------------------
def settings_from(cfg: DictConfig) -> SynthesizeSettings:
    """The composed Hydra config as checked `SynthesizeSettings`, or one `HiggsLabError` line."""
    from higgslab.generate.sampling import SamplingSettings
    from higgslab.generate.settings import check_model_settings, check_output_dir, typed_settings

    s = typed_settings(SynthesizeSettings, cfg, "synthesize")
    SamplingSettings(**{**s.sampling(), "cfg_scale": 1.0 if s.cfg_scale is None else s.cfg_scale}).check()
    for key in ("rows", "max_new_tokens"):
        if getattr(s, key) < 1:
            raise HiggsLabError(f"{key} must be >= 1, got {getattr(s, key)}")
    if (s.model_path is None) != (s.tokenizer_path is None):
        raise HiggsLabError(
            "give model_path and tokenizer_path together (the audio tokenizer turns codes into audio), "
            "or neither for the embedded model"
        )
    check_model_settings(s)
    if s.adapter_path is not None:
        from higgslab.io.adapter import check_adapter_dir

        check_adapter_dir(s.adapter_path)
    check_output_dir(s.output_dir)
    return s


def read_manifest(s: SynthesizeSettings) -> list[Item]:
    """Every item of `s.manifest` (blank lines aside), checked: its keys, types, ranges, text, voice, and
    that no id repeats. The first bad line is one `HiggsLabError` naming it."""
    path = Path(s.manifest)
    if not path.is_file():
        raise HiggsLabError(f"manifest {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: JSON strings may hold U+2028
    except UnicodeDecodeError as e:
        raise HiggsLabError(f"manifest {path}: not UTF-8 text (byte {e.start})") from None
    items: list[Item] = []
    first_line: dict[str, int] = {}  # id → its line
    voices_checked: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = _item(n, line, s)
            if item.id in first_line:
                raise HiggsLabError(f"id {item.id!r} repeats line {first_line[item.id]}")
            if item.voice is not None and item.voice not in voices_checked:
                _check_voice(item.voice, s.voices_dir)
                voices_checked.add(item.voice)
        except HiggsLabError as e:
            raise HiggsLabError(f"manifest {path} line {n}: {e}") from None
        first_line[item.id] = n
        items.append(item)
    if not items:
        raise HiggsLabError(f"manifest {path} holds no item (one JSON object a line)")
    return items


def _item(n: int, line: str, s: SynthesizeSettings) -> Item:
    from higgslab.generate.prompt import check_user_text

    try:
        fields = json.loads(line)
    except json.JSONDecodeError as e:
        raise HiggsLabError(f"not JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(fields, dict):
        raise HiggsLabError('takes one JSON object, e.g. {"text": "Hello."}')
    if unknown := [key for key in fields if key not in ITEM_KEYS]:
        raise HiggsLabError(f"unknown key {unknown[0]!r} (the keys: {', '.join(ITEM_KEYS)})")

    def field(key: str, kind: type, default):
        value = fields.get(key, default)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            takes = "an integer" if kind is int else "a string"
            raise HiggsLabError(f"{key} {json.dumps(value)}: takes {takes}")
        return value

    text = field("text", str, None)
    if text is None:
        raise HiggsLabError('no text: each line needs {"text": "what to say"}')
    check_user_text(text, "text")
    scene = field("scene", str, None)
    if scene is not None:
        check_user_text(scene, "scene")
    item_id = fields.get("id", f"{n:05d}")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not (isinstance(item_id, str) and FILE_ID.fullmatch(item_id)) or item_id in RESERVED_IDS:
        raise HiggsLabError(
            f"id {json.dumps(item_id)}: takes a file name of letters, digits, '.', '_' and '-' starting "
            f"with a letter or digit, other than {', '.join(RESERVED_IDS)}"
        )
    seed = field("seed", int, s.seed + n - 1)
    if not 0 <= seed < 2**63:
        raise HiggsLabError(f"seed must be in [0, 2**63), got {seed}")
    max_new_tokens = field("max_new_tokens", int, s.max_new_tokens)
    if max_new_tokens < 1:
        raise HiggsLabError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    return Item(n, item_id, text, field("voice", str, None), scene, seed, max_new_tokens)


def _check_voice(name: str, voices_dir: str | None) -> None:
    """The voice's clip and transcript exist, and the clip is short enough to be a reference (its header)."""
    from higgslab.generate import voices

    wav, _ = voices.voice_files(name, voices_dir)
    voices.check_clip(wav, 30.0, what=f"voice {name!r}:")  # Generator.references' default limit


def made_with(item: Item, s: SynthesizeSettings) -> dict:
    """What an item's record must match for its WAV to count as done on a rerun."""
    fields = ("text", "voice", "scene", "seed", "max_new_tokens")
    return {key: getattr(item, key) for key in fields} | {"settings": s.sampling()}


def done_items(items: list[Item], s: SynthesizeSettings) -> set[str]:
    """The ids whose WAV and record are both in `s.output_dir` already; one `HiggsLabError` line for a
    record made from another line or other settings than the manifest and run now ask for."""
    out = Path(s.output_dir)
    names = set(os.listdir(out)) if out.is_dir() else set()
    done = set()
    for item in items:
        if not {f"{item.id}.wav", f"{item.id}.json"} <= names:
            continue
        try:
            record = json.loads((out / f"{item.id}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        for key, value in made_with(item, s).items():
            if record.get(key) != value:
                raise HiggsLabError(
                    f"output_dir {out}: {item.id}.wav was made with another {key} than manifest line "
                    f"{item.line} asks for; remove {item.id}.wav and {item.id}.json, or use another output_dir"
                )
        done.add(item.id)
    return done


# ---- the run --------------------------------------------------------------------------------------------
def synthesize(s: SynthesizeSettings, items: list[Item], done: set[str]) -> dict | None:
    """Speak this rank's share of the items not `done` (see the module docstring). Returns the summary on
    rank 0, None on the other ranks of a torchrun."""
    import torch.distributed as dist
    from tqdm import tqdm

    from higgslab.train.prepare import distributed, rank_device
    from higgslab.train.sync import barrier

    t0 = time.perf_counter()
    rank, world, joined = distributed()
    mine = [item for i, item in enumerate(items) if i % world == rank and item.id not in done]
    gen, model = load(s, rank_device(s.device, world))
    if rank == 0:
        print(f"model: {model['label']}\ndevice: {model['device']} ({model['dtype']})")
        print(f"{len(items)} items, {len(done)} already in {s.output_dir}; {len(items) - len(done)} to speak"
              + (f" on {world} ranks" if world > 1 else ""))  # fmt: skip
    out = Path(s.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out, {item.id for item in mine} | ({"summary"} if rank == 0 else set()))
    outcomes: dict[str, str | None] = {}  # id → None, or why it failed
    desc = "synthesizing" if world == 1 else f"rank {rank}"
    with tqdm(
        total=len(mine), desc=desc, unit="item", position=rank, file=sys.stdout, disable=not mine
    ) as bar:
        for item, job in decode(gen, mine, s):
            outcomes[item.id] = write_item(out, item, s, gen, job)
            bar.update()

    reports = [outcomes]
    if world > 1:
        reports = [None] * world if rank == 0 else None
        dist.gather_object(outcomes, reports, dst=0)
    summary = None
    if rank == 0:
        made = {key: value for report in reports for key, value in report.items()}
        settings = {**s.sampling(), "cfg_scale": gen.cfg_scale if s.cfg_scale is None else s.cfg_scale}
        summary = write_summary(out, items, made, s, model, settings, world, time.perf_counter() - t0)
    barrier(world)  # every rank returns once the summary is written
    if joined:
        dist.destroy_process_group()
    return summary


def load(s: SynthesizeSettings, device: str):
    """(the `Generator`, the model as eval's report describes it: `eval.report.model_info`)."""
    from higgslab.embedded import resolve_paths
    from higgslab.eval.report import model_info
    from higgslab.generate.generator import Generator
    from higgslab.generate.settings import load_settings

    model_path, tokenizer_path, label = resolve_paths(s.model_path, s.tokenizer_path)
    gen = Generator.from_paths(model_path, tokenizer_path, device=device, compile=False, **load_settings(s))
    return gen, model_info(gen, label, model_path, tokenizer_path, s.adapter_path)


def decode(gen, items: list[Item], s: SynthesizeSettings) -> Iterator[tuple[Item, object]]:
    """Each item with its finished `batching.Job`, as it leaves the batcher: `s.rows` rows decoding, as
    many requests queued to take a row the moment one frees."""
    from higgslab.generate.batching import ContinuousBatcher

    if not items:
        return
    references: dict[str | None, list] = {}  # voice → its references, encoded once

    def request(item: Item):
        if item.voice not in references:
            references[item.voice] = gen.references(item.voice, s.voices_dir)
        return gen.request(item.text, scene=item.scene, references=references[item.voice],
                           max_new_tokens=item.max_new_tokens, seed=item.seed, **s.sampling())  # fmt: skip

    todo = deque((item, request(item)) for item in items)
    longest = max(
        max(len(r.ids), len(r.unconditional if r.guided else r.ids)) + r.max_new_tokens for _, r in todo
    )
    batcher = ContinuousBatcher(gen.model, rows=s.rows, max_tokens=longest, max_queue=2 * s.rows)
    running = []
    while todo or running:
        while todo and len(running) < 2 * s.rows:
            item, req = todo.popleft()
            running.append((item, batcher.submit(req)))
        batcher.step()
        for pair in [pair for pair in running if pair[1].done.is_set()]:
            running.remove(pair)
            yield pair


def write_item(out: Path, item: Item, s: SynthesizeSettings, gen, job) -> str | None:
    """A finished job's WAV, then its record (the pair marks it done); a failed job's message, nothing written."""
    from higgslab.io.audio import write_wav

    if job.error is not None:
        return job.error
    result = job.result
    audio = gen._decode(result.codes)
    write_wav(out / f"{item.id}.wav", audio, result.sample_rate, overwrite=True)  # a killed run's, unrecorded
    record = {"id": item.id, "line": item.line, **made_with(item, s), "file": f"{item.id}.wav",
              "frames": result.codes.shape[1], "steps": result.stats.steps,
              "duration_s": len(audio) / result.sample_rate, "finished": result.finished}  # fmt: skip
    write_json(out / f"{item.id}.json", record)
    return None


def write_json(path: Path, value: dict) -> None:
    from higgslab.io.atomic import atomic_write

    text = json.dumps(value, indent=1, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def remove_leftovers(out: Path, ids: set[str]) -> None:
    """The temporary files a killed run left while writing these ids' files (`atomic_write` names them
    `.<name>.<random>.tmp`); another rank's are its own business."""
    for tmp in out.glob(".*.tmp"):
        target = Path(tmp.name[1:].rsplit(".", 2)[0])
        if target.suffix in (".wav", ".json") and target.stem in ids:
            tmp.unlink(missing_ok=True)


def write_summary(out: Path, items: list[Item], made: dict[str, str | None], s: SynthesizeSettings,
                  model: dict, settings: dict, world: int, wall_s: float) -> dict:  # fmt: skip
    """`out/summary.json`: the counts and every item's record in manifest order, `status` done (now),
    skipped (by an earlier run) or failed (with its `error`)."""
    records = []
    for item in items:
        if made.get(item.id) is not None:
            fields = {key: v for key, v in made_with(item, s).items() if key != "settings"}
            records.append(
                {"id": item.id, "line": item.line, **fields, "status": "failed", "error": made[item.id]}
            )
            continue
        record = json.loads((out / f"{item.id}.json").read_text(encoding="utf-8"))
        del record["settings"]  # the run's, below
        records.append({**record, "status": "done" if item.id in made else "skipped"})
    count = {status: sum(r["status"] == status for r in records) for status in ("done", "skipped", "failed")}
    summary = {
        "manifest": s.manifest,
        "output_dir": str(out),
        "model": model,
        "settings": {**settings, "seed": s.seed, "max_new_tokens": s.max_new_tokens, "rows": s.rows},
        "world_size": world,
        "items": len(items),
        **count,
        "unfinished": sum(r.get("finished") is False for r in records),
        "wall_s": wall_s,
        "audio_s": sum(r.get("duration_s", 0.0) for r in records),
        "records": records,
    }
    write_json(out / SUMMARY, summary)
    return summary


def read_summary(output_dir: str | Path) -> dict:
    """A synthesize folder's summary.json, or one `HiggsLabError` line."""
    path = Path(output_dir) / SUMMARY
    if not path.is_file():
        raise HiggsLabError(f"{output_dir} holds no {SUMMARY} (python -m higgslab.synthesize writes it)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HiggsLabError(f"{path}: not JSON ({e})") from None


def problems(summary: dict) -> str | None:
    """The end-of-run warning: the failed items and those that ran to max_new_tokens; None when neither."""

    def named(records: list[dict], show: int = 5) -> str:
        ids = ", ".join(r["id"] + (f" ({r['error']})" if "error" in r else "") for r in records[:show])
        return ids + (f" and {len(records) - show} more" if len(records) > show else "")

    failed = [r for r in summary["records"] if r["status"] == "failed"]
    unfinished = [r for r in summary["records"] if r.get("finished") is False]
    found = []
    if failed:
        found.append(f"failed: {named(failed)}, no WAV (a rerun tries again)")
    if unfinished:
        found.append(f"unfinished: {named(unfinished)} ran to max_new_tokens without ending their stream "
                     "(their WAVs hold what was made)")  # fmt: skip
    return "; ".join(found) or None


def run(cfg: DictConfig) -> int:
    """One CLI run (one rank); returns the exit code: 0, or 1 when an item failed or did not end."""
    s = settings_from(cfg)
    items = read_manifest(s)
    summary = synthesize(s, items, done_items(items, s))
    if summary is None:  # a rank other than 0: rank 0 reports
        return 0
    print(f"{summary['done']} spoken, {summary['skipped']} skipped (done before), {summary['failed']} failed: "
          f"{summary['audio_s']:.1f} s of audio in {summary['wall_s']:.1f} s; wrote {Path(s.output_dir) / SUMMARY}")  # fmt: skip
    warning = problems(summary)
    if warning:
        print(warning)
    return 1 if warning else 0


main = command("synthesize", run)


if __name__ == "__main__":
    main()
