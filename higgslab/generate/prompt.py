"""The generation prompt of FORMATS.md §5 (the official example's `prepare_generation_context` and the turns
its chunk loop adds; the chunks themselves come from `longform.split_text`).

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{system message}<|eot_id|>   (see below)
    per reference:  <|start_header_id|>user<|end_header_id|>\\n\\n[SPEAKERn] {ref_text}<|eot_id|>   ([SPEAKERn] only
                    <|start_header_id|>assistant<|end_header_id|>\\n\\n<|audio_out_bos|>    with a speaker)
                    <|AUDIO_OUT|> × (N + 9)<|audio_eos|><|eot_id|>
    per context chunk: the same pair with the chunk's text and its generated frames (earlier long-form chunks)
    then:           <|start_header_id|>user<|end_header_id|>\\n\\n{text}<|eot_id|>
                    <|start_header_id|>assistant<|end_header_id|>\\n\\n<|audio_out_bos|>      ← generation starts

The system message, as the official example chooses it:
- references in the system message (`references_in_system`): "Generate audio following instruction." and a
  scene block holding the scene, a blank line, then one line per reference
  `SPEAKERn: <|audio_bos|><|AUDIO|> × (N + 9)<|audio_eos|>`; no reference turns follow. `<|AUDIO|>` is audio
  in: embedded from the codes like `<|AUDIO_OUT|>`, but a text position (the model's text FFN);
- references as turns: a system turn only with a scene ("Generate audio following instruction." + scene block);
- no references and more than one speaker tag: `MULTISPEAKER_SYSTEM_MESSAGE` with the scene and
  "SPEAKER0: feminine", "SPEAKER1: masculine", ... in the scene block;
- otherwise "Generate audio following instruction." (+ the scene block with a scene).

An audio segment of N frames is stored as `delay.encode_segment` (bos frame + N frames + eos frame, delayed:
N + n_q + 1 columns) with one placeholder per column; the model fills the placeholders (`<|AUDIO|>` and
`<|AUDIO_OUT|>` alike) in prompt order from `audio_codes`. The original writes one placeholder and expands it;
transformers writes N + 2 `<|AUDIO_OUT|>` and n_q - 1 delay tokens (128014); the columns are the same.

User text (the text to speak, reference transcripts, the scene) never holds a special-token string such as
`<|eot_id|>`: it would act as a control token, so `check_user_text` refuses it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from higgslab import delay
from higgslab.errors import HiggsLabError

SYSTEM_MESSAGE = "Generate audio following instruction."
# the official example's text for multi-speaker prompts without voice references (its training text is unknown)
MULTISPEAKER_SYSTEM_MESSAGE = (
    "You are an AI assistant designed to convert text into speech.\n"
    "If the user's message includes a [SPEAKER*] tag, do not read out the tag and generate speech for the "
    "following text, using the specified voice.\n"
    "If no speaker tag is present, select a suitable voice on your own."
)
AUDIO_OUT = "<|AUDIO_OUT|>"  # token names; their ids come from the tokenizer
AUDIO_OUT_BOS = "<|audio_out_bos|>"
AUDIO_IN = "<|AUDIO|>"
AUDIO_IN_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
SPECIAL_TOKEN = re.compile(r"<\|[^|\s]+\|>")  # the shape of every Llama-3 / Higgs special token string
SPEAKER_TAG = re.compile(r"\[SPEAKER(\d+)\]")


def check_user_text(text: str, what: str) -> None:
    """One-line `HiggsLabError` when `text` is empty or holds a special-token string (`what` names it)."""
    if not text or not text.strip():
        raise HiggsLabError(f"{what} is empty")
    refuse_special_tokens(text, what)


def refuse_special_tokens(text: str, what: str) -> None:
    """One-line `HiggsLabError` when `text` holds a special-token string such as `<|eot_id|>`."""
    found = SPECIAL_TOKEN.search(text)
    if found:
        raise HiggsLabError(
            f"{what} holds the special token string {found.group()!r}: it would act as a control token "
            "in the prompt; remove it"
        )


def speaker_tags(text: str) -> list[str]:
    """The distinct speaker tags of a transcript, by number: "[SPEAKER1] a [SPEAKER0] b" → ["SPEAKER0", "SPEAKER1"]."""
    return [f"SPEAKER{n}" for n in sorted({int(n) for n in SPEAKER_TAG.findall(text)})]


@dataclass
class Reference:
    """One voice reference, encoded once and reused for every prompt."""

    text: str  # its transcript
    codes: torch.Tensor  # [n_q, N] its frames
    speaker: int | None = None  # n of [SPEAKERn] in multi-speaker prompts, else None


@dataclass
class Prompt:
    input_ids: (
        torch.Tensor
    )  # [T] ending with <|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>
    audio_codes: torch.Tensor  # [n_q, F] every audio segment's delayed columns, one per placeholder, in order
    text: str  # the rendered prompt, placeholders included
    text_span: tuple[int, int]  # [start, end) of the last user turn's content: "\n\n" + the text to speak

    def without_text(self) -> torch.Tensor:
        """The ids `[T - len(span)]` with the text to speak cut out: the unconditional prompt of
        classifier-free guidance (a model trained with `lm.text_dropout` has seen it)."""
        return without_span(self.input_ids, self.text_span)


def without_span(ids: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """`ids` `[T]` with positions [start, end) removed."""
    return torch.cat([ids[: span[0]], ids[span[1] :]])


def without_text(ids: torch.Tensor, text_tokenizer) -> torch.Tensor:
    """Prompt ids `[T]` with the last user turn's content cut out (what `Prompt.without_text` gives)."""
    return without_span(ids, _text_span(ids, text_tokenizer))


def _text_span(ids: torch.Tensor, text_tokenizer) -> tuple[int, int]:
    eot, end_header = (text_tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_header_id|>"))
    return text_span(ids, eot, end_header)


def text_span(ids: torch.Tensor, eot_id: int, end_header_id: int) -> tuple[int, int]:
    """[start, end) of the last user turn's content in prompt ids `[T]`: after that turn's
    `<|end_header_id|>`, up to its `<|eot_id|>` (the assistant turn that follows is still open)."""
    eots = (ids == eot_id).nonzero()
    headers = (ids[: int(eots[-1])] == end_header_id).nonzero() if len(eots) else eots
    if not len(headers):
        raise HiggsLabError("the prompt ids hold no closed user turn: no text to cut out for guidance")
    return int(headers[-1]) + 1, int(eots[-1])


def _turn(role: str, content: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"


def _audio_out(columns: int) -> str:
    return AUDIO_OUT_BOS + AUDIO_OUT * columns + AUDIO_EOS


def _audio_in(columns: int) -> str:
    return AUDIO_IN_BOS + AUDIO_IN * columns + AUDIO_EOS


def _scene_block(body: str) -> str:
    return f"<|scene_desc_start|>\n{body}\n<|scene_desc_end|>"


def system_message(
    scene: str | None = None,
    references: Sequence[tuple[int, int]] = (),
    speakers: Sequence[str] = (),
    references_in_system: bool = False,
) -> str | None:
    """The system turn's content, or None for none. `references`: (speaker number, delayed columns) per
    voice reference; `speakers`: the transcript's speaker tags (used only without references)."""
    if references and references_in_system:
        voices = "\n".join(f"SPEAKER{n}: {_audio_in(columns)}" for n, columns in references)
        return f"{SYSTEM_MESSAGE}\n\n" + _scene_block(f"{scene}\n\n{voices}" if scene else voices)
    if references:  # the references are turns: a system turn only to carry a scene
        return f"{SYSTEM_MESSAGE}\n\n{_scene_block(scene)}" if scene else None
    if len(speakers) > 1:  # the official default: alternate feminine and masculine voices
        voices = "\n".join(f"{tag}: {('feminine', 'masculine')[i % 2]}" for i, tag in enumerate(speakers))
        return f"{MULTISPEAKER_SYSTEM_MESSAGE}\n\n" + _scene_block(
            f"{scene}\n\n{voices}" if scene else voices
        )
    return SYSTEM_MESSAGE + (f"\n\n{_scene_block(scene)}" if scene else "")


def render(
    text: str,
    scene: str | None = None,
    reference_columns: Sequence[tuple[str, int, int | None]] = (),
    context_columns: Sequence[tuple[str, int]] = (),
    *,
    speakers: Sequence[str] = (),
    references_in_system: bool = False,
) -> str:
    """The prompt as a string. `reference_columns`: (transcript, delayed columns, speaker number or None)
    per voice reference; `context_columns`: (text, delayed columns) per earlier chunk."""
    voices = [(i if n is None else n, columns) for i, (_, columns, n) in enumerate(reference_columns)]
    system = system_message(scene, voices, speakers, references_in_system)
    parts = ["<|begin_of_text|>"] + ([_turn("system", system)] if system is not None else [])
    turns = [(t if n is None else f"[SPEAKER{n}] {t}", columns) for t, columns, n in reference_columns]
    for user_text, columns in [*([] if references_in_system else turns), *context_columns]:
        parts.append(_turn("user", user_text))
        parts.append(_turn("assistant", _audio_out(columns)))
    parts.append(_turn("user", text))
    parts.append(f"<|start_header_id|>assistant<|end_header_id|>\n\n{AUDIO_OUT_BOS}")
    return "".join(parts)


def as_reference(reference: Reference | tuple[str, torch.Tensor]) -> Reference:
    """A `Reference` from itself or from a (transcript, codes `[n_q, N]`) pair."""
    if isinstance(reference, Reference):
        return reference
    text, codes = reference
    return Reference(text, codes)


def build_prompt(
    text_tokenizer,
    text: str,
    scene: str | None = None,
    references: Sequence[Reference | tuple[str, torch.Tensor]] = (),
    context: Sequence[Reference | tuple[str, torch.Tensor]] = (),
    *,
    n_q: int,
    stream_ids: delay.StreamIds,
    speakers: Sequence[str] = (),
    references_in_system: bool = False,
) -> Prompt:
    """Tokenize the §5 prompt for `text` with the checkpoint's own tokenizer (a transformers tokenizer).

    references: voice references in order (`Reference`, or (transcript, codes `[n_q, N]`) pairs);
    context: (text, codes `[n_q, F]`) of earlier long-form chunks, after the references;
    speakers: the transcript's speaker tags (`speaker_tags`), for the multi-speaker system message;
    references_in_system: the references as audio in the system message instead of user/assistant turns.
    `n_q` and `stream_ids` are the LM's (`config.num_codebooks`, `config.stream_ids`).
    Empty text or special-token strings in user text → one-line `HiggsLabError`.
    """
    check_user_text(text, "text")
    if scene:
        refuse_special_tokens(scene, "scene")
    for tag in speakers:
        if not re.fullmatch(r"SPEAKER\d+", tag):
            raise HiggsLabError(f"speakers must be tags like 'SPEAKER0', got {tag!r}")
    refs = [as_reference(r) for r in references]
    needed = [AUDIO_OUT, AUDIO_OUT_BOS, AUDIO_EOS, "<|eot_id|>", "<|end_header_id|>", "<|begin_of_text|>"]
    if refs and references_in_system:
        needed += [AUDIO_IN, AUDIO_IN_BOS]
    for name in needed:
        if text_tokenizer.convert_tokens_to_ids(name) in (None, text_tokenizer.unk_token_id):
            raise HiggsLabError(f"the text tokenizer has no {name} token: not a Higgs Audio tokenizer")
    labelled = [(f"reference {i}", r) for i, r in enumerate(refs)]
    labelled += [(f"context {i}", as_reference(c)) for i, c in enumerate(context)]
    segments = []
    for label, segment in labelled:
        check_user_text(segment.text, f"{label} transcript")
        if segment.codes.dim() != 2 or segment.codes.shape[0] != n_q:
            raise HiggsLabError(f"{label} codes must be [n_q={n_q}, N], got {list(segment.codes.shape)}")
        segments.append(delay.encode_segment(segment.codes.long().cpu(), stream_ids))
    columns = [(r.text.strip(), s.shape[1]) for (_, r), s in zip(labelled, segments, strict=True)]
    voices = [(t, n, r.speaker) for (t, n), r in zip(columns, refs, strict=False)]  # columns: refs first
    rendered = render(
        text.strip(),
        scene,
        voices,
        columns[len(refs) :],
        speakers=speakers,
        references_in_system=references_in_system,
    )
    ids = torch.tensor(text_tokenizer.encode(rendered, add_special_tokens=False), dtype=torch.long)
    audio_codes = torch.cat(segments, dim=1) if segments else torch.zeros(n_q, 0, dtype=torch.long)
    placeholder_ids = [text_tokenizer.convert_tokens_to_ids(t) for t in (AUDIO_OUT, AUDIO_IN)]
    placeholders = int(torch.isin(ids, torch.tensor(placeholder_ids)).sum())
    if placeholders != audio_codes.shape[1]:  # a safety net: user text cannot hold placeholders
        raise HiggsLabError(
            f"the prompt holds {placeholders} audio placeholders for {audio_codes.shape[1]} columns"
        )
    return Prompt(ids, audio_codes, rendered, _text_span(ids, text_tokenizer))
