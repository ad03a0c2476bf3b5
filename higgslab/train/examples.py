"""Fine-tuning examples: one generation prompt + its target audio, with the labels FORMATS.md §10 frames.

    prompt (build_prompt, voice references as generation places them)  …<|audio_out_bos|>
    target: <|AUDIO_OUT|> × S  <|audio_eos|><|eot_id|>           S = F + n_q + 1 delayed columns

Inputs at the S placeholders are `delay.encode_segment(codes)`: stream-bos frame, F frames, stream-eos frame,
delayed, exactly the columns the generator feeds back (column 0, all stream-bos, first). The audio label grid
is the original collator's: `[-100 | codes | stream-eos]` delayed with -100 as both the delay's bos and pad
(`label_grid`), so each codebook's eos is a target once and the delay padding never is. Label column c is
what the audio logits at input column c - 1 predict; `TrainExample.labels` stores it already shifted, at
that position: `labels[t]` is the target of the logits at position t (column 0's labels, all -100, sit on
`<|audio_out_bos|>`, whose logits the generator never samples from).

Text labels (`text_labels`, shifted the same way): the assistant turn's own text, as the original labels
it: `<|audio_out_bos|>`, `<|audio_eos|>` and the turn's closing `<|eot_id|>`; every placeholder and the
whole prompt -100. The references' audio (any number of reference turns) is context: no labels.

The prepared folder (`higgslab.train.prepare` describes it): `prepared.json`, `manifest.jsonl` and int16
code shards `shards/NNNNN.safetensors` keyed by example id; `read_prepared` reads it, version 2 (a list of
references per example) and version 1 (one reference at most).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from higgslab import delay
from higgslab.config import HiggsConfig, StreamIds
from higgslab.errors import HiggsLabError

IGNORE = -100  # cross_entropy's ignore_index


@dataclass
class TrainExample:
    """One prompt + target segment (FORMATS.md §10), labels shifted onto the positions that predict them."""

    input_ids: torch.Tensor  # [T] prompt, <|AUDIO_OUT|> × S, <|audio_eos|>, <|eot_id|>
    audio_codes: torch.Tensor  # [n_q, F_all] every audio segment's delayed input columns, in prompt order
    labels: torch.Tensor  # [T, n_q] audio target of the logits at each position, IGNORE where none
    text_labels: torch.Tensor  # [T] text target (next token) of the logits at each position, or IGNORE

    @property
    def targets(self) -> int:
        """Audio targets (position, codebook) this example holds: its share of a batch's loss."""
        return int((self.labels != IGNORE).sum())


def label_grid(codes: torch.Tensor, ids: StreamIds) -> torch.Tensor:
    """The §10 audio labels of one segment: codes `[n_q, F]` → `[n_q, F + n_q + 1]` (aligned with the input
    columns of `delay.encode_segment`): `[IGNORE | codes | eos]` delayed with IGNORE as bos and pad."""
    column = codes.new_ones((codes.shape[0], 1))
    framed = torch.cat([column * IGNORE, codes, column * ids.eos], 1)
    return delay.apply(framed, StreamIds(ids.codebook_size, bos=IGNORE, eos=IGNORE))


def make_train_example(
    text_tokenizer,
    config: HiggsConfig,
    text: str,
    codes: torch.Tensor,
    *,
    scene: str | None = None,
    references: Sequence = (),
) -> TrainExample:
    """`text` spoken as `codes` `[n_q, F]` → `TrainExample`. `references`: voice references in order
    (`prompt.Reference` or (transcript, codes `[n_q, N]`) pairs), placed in the prompt as generation places
    them (`build_prompt`, reference turns); they get no labels."""
    from higgslab.generate.prompt import AUDIO_EOS, build_prompt

    n_q, ids = config.num_codebooks, config.stream_ids
    if codes.dim() != 2 or codes.shape[0] != n_q:
        raise HiggsLabError(f"target codes must be [n_q={n_q}, F], got {list(codes.shape)}")
    if codes.numel() and (codes.min() < 0 or codes.max() >= ids.codebook_size):
        raise HiggsLabError(
            f"target codes must lie in [0, {ids.codebook_size}): not this checkpoint's codebooks"
        )
    codes = codes.long()
    prompt = build_prompt(text_tokenizer, text, scene, references, n_q=n_q, stream_ids=ids)
    columns = delay.encode_segment(codes, ids)  # [n_q, S]
    S, P = columns.shape[1], len(prompt.input_ids)
    audio_eos, eot = (text_tokenizer.convert_tokens_to_ids(t) for t in (AUDIO_EOS, "<|eot_id|>"))
    tail = torch.tensor([config.audio_out_token_id] * S + [audio_eos, eot], dtype=torch.long)
    input_ids = torch.cat([prompt.input_ids, tail])

    labels = torch.full((len(input_ids), n_q), IGNORE, dtype=torch.long)
    labels[P - 1 : P - 1 + S] = label_grid(
        codes, ids
    ).T  # grid column c at the position of input column c - 1
    text_labels = torch.full((len(input_ids),), IGNORE, dtype=torch.long)
    for at in (
        P - 1,
        P + S,
        P + S + 1,
    ):  # <|audio_out_bos|>, <|audio_eos|>, <|eot_id|>: predicted one earlier
        text_labels[at - 1] = input_ids[at]
    return TrainExample(input_ids, torch.cat([prompt.audio_codes, columns], 1), labels, text_labels)


def collate(examples: list[TrainExample], config: HiggsConfig) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids `[B, T]` (pad_token_id), audio_codes `[B, n_q, F]` (stream-eos),
    labels `[B, T, n_q]` and text_labels `[B, T]` (IGNORE). Right padding needs no attention mask: causal
    attention never lets a real position see the padding after it."""
    B, n_q = len(examples), config.num_codebooks
    T, F = max(len(e.input_ids) for e in examples), max(e.audio_codes.shape[1] for e in examples)
    batch = {
        "input_ids": torch.full((B, T), config.pad_token_id, dtype=torch.long),
        "audio_codes": torch.full((B, n_q, F), config.stream_eos_id, dtype=torch.long),
        "labels": torch.full((B, T, n_q), IGNORE, dtype=torch.long),
        "text_labels": torch.full((B, T), IGNORE, dtype=torch.long),
    }
    for b, e in enumerate(examples):
        t, f = len(e.input_ids), e.audio_codes.shape[1]
        batch["input_ids"][b, :t] = e.input_ids
        batch["audio_codes"][b, :, :f] = e.audio_codes
        batch["labels"][b, :t] = e.labels
        batch["text_labels"][b, :t] = e.text_labels
    return batch


# ---- the prepared folder ----------------------------------------------------------------------------------
@dataclass
class PreparedEntry:
    """One manifest line of a prepared folder."""

    id: str
    text: str
    frames: int
    shard: str  # relative to the folder
    speaker: str | None = None
    scene: str | None = None
    # [{"text", "id"}]: the voice references in prompt order, each itself an example of the folder
    references: list[dict] = field(default_factory=list)


class PreparedData:
    """A prepared folder: `entries` (the manifest, in order) and `codes(id)` → `[n_q, F]` int64."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        info_path, manifest = self.dir / "prepared.json", self.dir / "manifest.jsonl"
        for path in (info_path, manifest):
            if not path.is_file():
                raise HiggsLabError(
                    f"{self.dir}: not a prepared folder ({path.name} missing; run higgslab.prepare)"
                )
        self.info = json.loads(info_path.read_text())
        version = self.info.get("version")
        if version not in (1, 2):
            raise HiggsLabError(f"{info_path}: version {version!r}, this higgslab reads 1 and 2")
        fields = set(PreparedEntry.__dataclass_fields__)
        self.entries = []
        for n, line in enumerate(manifest.read_text().splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if not {"id", "text", "frames", "shard"} <= row.keys():
                    raise HiggsLabError(f"{manifest}:{n}: a manifest line needs id, text, frames and shard")
                if version == 1:  # "reference": null | {"text", "id"}
                    reference = row.pop("reference", None)
                    row["references"] = [] if reference is None else [reference]
                self.entries.append(PreparedEntry(**{k: v for k, v in row.items() if k in fields}))
        if not self.entries:
            raise HiggsLabError(f"{manifest}: no examples")
        self._by_id = {e.id: e for e in self.entries}
        self._shards: dict[str, dict[str, torch.Tensor]] = {}

    def check(self, config: HiggsConfig) -> None:
        """One line when the codes were made with other codebooks than this model's."""
        n_q, size = self.info.get("n_q"), self.info.get("codebook_size")
        if (n_q, size) != (config.num_codebooks, config.codebook_size):
            raise HiggsLabError(
                f"{self.dir}: prepared with {n_q} x {size} codes, the model takes "
                f"{config.num_codebooks} x {config.codebook_size}: prepare it with this model's tokenizer"
            )

    def codes(self, example_id: str) -> torch.Tensor:
        from safetensors.torch import load_file

        entry = self._by_id[example_id]
        if entry.shard not in self._shards:
            self._shards[entry.shard] = load_file(self.dir / entry.shard)
        return self._shards[entry.shard][example_id].long()

    def example(self, entry: PreparedEntry, text_tokenizer, config: HiggsConfig) -> TrainExample:
        """The entry as a `TrainExample` (with its voice references, if it has any)."""
        references = [(r["text"], self.codes(r["id"])) for r in entry.references]
        return make_train_example(
            text_tokenizer, config, entry.text, self.codes(entry.id), scene=entry.scene, references=references
        )


def read_prepared(directory: str | Path) -> PreparedData:
    """The prepared folder at `directory` (manifest entries + a codes loader)."""
    return PreparedData(directory)


def loss_sums(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Summed cross-entropy of a collated batch and how many targets it holds: `audio` over every labelled
    (position, codebook), `text` over the text labels (zero without a text head). Sums, not means, so that a
    caller can normalise by the targets of a whole global batch (gradient accumulation, several ranks). The
    heads run only on the positions that have a target."""
    import torch.nn.functional as F

    hidden = model(batch["input_ids"], batch["audio_codes"], logits="none").last_hidden_state  # [B, T, D]
    labels, text_labels = batch["labels"], batch["text_labels"]
    at = (labels != IGNORE).any(-1)  # [B, T]
    logits = model.audio_logits(hidden[at]).float()  # [N, n_q, codebook_size + 2]
    audio = F.cross_entropy(logits.transpose(1, 2), labels[at], ignore_index=IGNORE, reduction="sum")
    text = audio.new_zeros(())
    head = getattr(model, "text_head", None)
    if head is not None:
        at = text_labels != IGNORE
        text = F.cross_entropy(head(hidden[at]).float(), text_labels[at], reduction="sum")
    return {
        "audio": audio,
        "audio_targets": (labels != IGNORE).sum(),
        "text": text,
        "text_targets": (text_labels != IGNORE).sum() * (head is not None),
    }
