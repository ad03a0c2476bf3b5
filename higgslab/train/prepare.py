"""Fine-tuning data: audio + transcripts encoded once with the checkpoint's own audio tokenizer.

    python -m higgslab.prepare data=DIR_OR_JSONL output_dir=DIR [tokenizer_path=... max_clip_s=30 too_long=skip]
    torchrun --nproc_per_node 4 -m higgslab.prepare data=... output_dir=...      # each rank encodes its share

Inputs (`data=`): a folder of audio + transcript files or a §10 chat-shape JSONL file, read (and checked) by
`higgslab.train.sources`, which describes both. Any sample rate, mono or stereo: the tokenizer resamples and
mixes (`AudioTokenizer.encode`).

The prepared folder (what `higgslab.train.examples.read_prepared` reads):

    prepared.json     {"version": 2, "n_q", "codebook_size", "sample_rate", "frame_rate", "tokenizer": path,
                       "examples": N, "frames": total, "skipped": [{"source", "reason"}],
                       "cropped": [{"source", "reason"}]}
    manifest.jsonl    one line per example, sorted by id: {"id", "text", "frames", "shard", "source", "sha256",
                       "speaker", "scene", "references": [{"text", "id"}, ...]}: its voice references in prompt
                       order ([] for none), each itself an example. Version 1 (still read) had "reference":
                       null | {"text", "id"}, one at most
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
through torch.distributed with gloo (`broadcast_object_list`, `gather_object`, `train.sync.barrier`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from higgslab.errors import HiggsLabError
from higgslab.train.sources import Example, drop_missing_references, plan, skip
from higgslab.train.sync import barrier

VERSION = 2  # of prepared.json and the manifest (2: a list of references per example)
TOO_LONG = ("skip", "crop")
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
    quantize: str | None  # the model group's LM settings: prepare loads no LM, so they must stay unset
    group_size: int
    tokenizer_device: str | None


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
    for key in ("quantize", "tokenizer_device"):
        if getattr(s, key) is not None:
            raise HiggsLabError(
                f"{key}={getattr(s, key)}: prepare loads no LM (the tokenizer runs on device=)"
            )
    data = Path(s.data)
    if not (data.is_dir() or (data.is_file() and data.suffix == ".jsonl")):
        what = "no such file or folder" if not data.exists() else "not a folder or a .jsonl file"
        raise HiggsLabError(f"data={data}: {what} (give a folder of audio + .txt files or a JSONL manifest)")
    if s.tokenizer_path is not None and not Path(s.tokenizer_path).is_dir():
        raise HiggsLabError(f"tokenizer_path={s.tokenizer_path}: no such folder")
    check_output_dir(s.output_dir)
    return s


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
    barrier(world)  # every rank returns once the manifest is written
    if joined:
        dist.destroy_process_group()
    return result


def write_manifest(out: Path, examples: list[Example], skipped: list[dict], tokenizer, tokenizer_dir: Path):
    """manifest.jsonl and prepared.json (last: it marks a finished folder) from the finished shards."""
    from higgslab.io.atomic import atomic_write

    done = done_codes(read_shards(out))
    kept = {ex.id: ex for ex in examples if (ex.id, ex.sha256) in done}
    skipped = skipped + drop_missing_references(kept, "was skipped")
    lines, cropped, frames = [], [], 0
    for ex in kept.values():
        shard, entry = done[ex.id, ex.sha256]
        frames += entry["frames"]
        if entry["cropped"]:
            cropped.append(skip(ex.source, entry["cropped"]))
        references = [{"text": kept[r].text, "id": r} for r in ex.references]
        fields = dataclasses.asdict(ex) | {
            "frames": entry["frames"],
            "shard": shard,
            "references": references,
        }
        order = ("id", "text", "frames", "shard", "source", "sha256", "speaker", "scene", "references")
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
