"""The generation prompt of FORMATS.md §5, and long text split into chunks for long-form generation.

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\nGenerate audio following instruction.
    \\n\\n<|scene_desc_start|>\\n{scene}\\n<|scene_desc_end|><|eot_id|>             (scene block only with a scene)
    per reference:  <|start_header_id|>user<|end_header_id|>\\n\\n{ref_text}<|eot_id|>
                    <|start_header_id|>assistant<|end_header_id|>\\n\\n<|audio_out_bos|><|AUDIO_OUT|> × (N + 9)
                    <|audio_eos|><|eot_id|>
    then:           <|start_header_id|>user<|end_header_id|>\\n\\n{text}<|eot_id|>
                    <|start_header_id|>assistant<|end_header_id|>\\n\\n<|audio_out_bos|>      ← generation starts

A reference of N frames is stored as `delay.encode_segment` (bos frame + N frames + eos frame, delayed: N + n_q + 1
columns) with one `<|AUDIO_OUT|>` per column; the model fills those positions in order from `audio_codes`.
The original writes one placeholder and expands it; transformers writes N + 2 `<|AUDIO_OUT|>` and n_q - 1
delay tokens (128014); the columns are the same. As the official example, a prompt with references and no
scene has no system turn. Long-form: pass the previous chunks' (text, frames) after the voice references.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from higgslab import delay
from higgslab.errors import HiggsLabError

SYSTEM_MESSAGE = "Generate audio following instruction."
AUDIO_OUT = "<|AUDIO_OUT|>"  # token names; their ids come from the tokenizer
AUDIO_OUT_BOS = "<|audio_out_bos|>"
AUDIO_EOS = "<|audio_eos|>"


@dataclass
class Prompt:
    input_ids: (
        torch.Tensor
    )  # [T] ending with <|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>
    audio_codes: torch.Tensor  # [n_q, F] the delayed reference segments, one column per <|AUDIO_OUT|>
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


def _check_text(text: str, what: str) -> None:
    if not text or not text.strip():
        raise HiggsLabError(f"{what} is empty")


SPECIAL_TOKEN = re.compile(r"<\|[^|\s]+\|>")  # STAND-IN by helper C for helper P's (contract P)


def check_user_text(text: str, what: str) -> None:
    """STAND-IN by helper C for helper P's `check_user_text` (contract P): empty text or a special token
    string in user text is one line. The lead takes P's version at merge."""
    _check_text(text, what)
    if (m := SPECIAL_TOKEN.search(text)) is not None:
        raise HiggsLabError(f"{what} holds the special token string {m.group()!r}: remove it")


def render(text: str, scene: str | None = None, reference_columns: Sequence[tuple[str, int]] = ()) -> str:
    """The prompt as a string: `reference_columns` = (transcript, number of delayed columns) per reference."""
    parts = ["<|begin_of_text|>"]
    if scene or not reference_columns:
        system = SYSTEM_MESSAGE + (f"\n\n<|scene_desc_start|>\n{scene}\n<|scene_desc_end|>" if scene else "")
        parts.append(_turn("system", system))
    for ref_text, columns in reference_columns:
        parts.append(_turn("user", ref_text))
        parts.append(_turn("assistant", AUDIO_OUT_BOS + AUDIO_OUT * columns + AUDIO_EOS))
    parts.append(_turn("user", text))
    parts.append(f"<|start_header_id|>assistant<|end_header_id|>\n\n{AUDIO_OUT_BOS}")
    return "".join(parts)


def build_prompt(
    text_tokenizer,
    text: str,
    scene: str | None = None,
    references: Sequence[tuple[str, torch.Tensor]] = (),
    *,
    n_q: int,
    stream_ids: delay.StreamIds,
) -> Prompt:
    """Tokenize the §5 prompt for `text` with the checkpoint's own tokenizer (a transformers tokenizer).

    references: (transcript, codes `[n_q, N]`) per voice reference or previous long-form chunk, in order.
    `n_q` and `stream_ids` are the LM's (`config.num_codebooks`, `config.stream_ids`).
    Multi-speaker `[SPEAKER0]` tags are plain text. Empty text → `HiggsLabError`.
    """
    _check_text(text, "text")
    for name in (AUDIO_OUT, AUDIO_OUT_BOS, AUDIO_EOS, "<|eot_id|>", "<|end_header_id|>", "<|begin_of_text|>"):
        if text_tokenizer.convert_tokens_to_ids(name) in (None, text_tokenizer.unk_token_id):
            raise HiggsLabError(f"the text tokenizer has no {name} token: not a Higgs Audio tokenizer")
    segments = []
    for i, (ref_text, codes) in enumerate(references):
        _check_text(ref_text, f"reference {i} transcript")
        if codes.dim() != 2 or codes.shape[0] != n_q:
            raise HiggsLabError(f"reference {i} codes must be [n_q={n_q}, N], got {list(codes.shape)}")
        segments.append(delay.encode_segment(codes.long().cpu(), stream_ids))
    rendered = render(
        text.strip(), scene, [(r[0].strip(), s.shape[1]) for r, s in zip(references, segments, strict=True)]
    )
    ids = torch.tensor(text_tokenizer.encode(rendered, add_special_tokens=False), dtype=torch.long)
    audio_codes = torch.cat(segments, dim=1) if segments else torch.zeros(n_q, 0, dtype=torch.long)
    placeholders = int((ids == text_tokenizer.convert_tokens_to_ids(AUDIO_OUT)).sum())
    if placeholders != audio_codes.shape[1]:  # the text itself contained <|AUDIO_OUT|>
        raise HiggsLabError(
            f"the prompt holds {placeholders} {AUDIO_OUT} tokens for {audio_codes.shape[1]} columns"
        )
    return Prompt(ids, audio_codes, rendered, _text_span(ids, text_tokenizer))


SPEAKER_TAG = re.compile(r"\[SPEAKER\d+\]")
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


def split_text(text: str, max_words: int = 100, max_turns: int = 1) -> list[str]:
    """Split long text into chunks to generate one after another (each with the previous audio as context).

    With `[SPEAKERn]` tags: one chunk per speaker turn (a turn starts at its tag; `max_turns` turns per chunk).
    Otherwise: paragraphs (blank lines), each cut at sentence ends into chunks of at most `max_words` words
    (a longer sentence is cut by words).
    """
    _check_text(text, "text")
    if max_words < 1 or max_turns < 1:
        raise HiggsLabError(f"max_words and max_turns must be >= 1, got {max_words}, {max_turns}")
    if SPEAKER_TAG.search(text):
        starts = [m.start() for m in SPEAKER_TAG.finditer(text)]
        cuts = sorted({0, *starts, len(text)})
        turns = [text[a:b].strip() for a, b in itertools.pairwise(cuts)]
        turns = [t for t in turns if t]
        return ["\n".join(turns[i : i + max_turns]) for i in range(0, len(turns), max_turns)]
    chunks = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        current: list[str] = []
        for sentence in SENTENCE_END.split(" ".join(paragraph.split())):
            words = sentence.split()
            if current and len(current) + len(words) > max_words:
                chunks.append(" ".join(current))
                current = []
            while len(words) > max_words:
                chunks.append(" ".join(words[:max_words]))
                words = words[max_words:]
            current += words
        if current:
            chunks.append(" ".join(current))
    return chunks
