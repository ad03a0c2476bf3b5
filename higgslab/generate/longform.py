"""Long-form generation: a text cut into chunks, each generated after the voice references and the last few
chunks (their text and codes: the official example's "generation chunk buffer"), the chunks' codes joined and
decoded once.

Two guards keep a chunk from running away silently:
- its token limit comes from its own text (`token_limit`): about `seconds_per_word` per word plus
  `seconds_extra`, so a three-word sentence cannot fill the context with 80 s of audio; the limit is also
  capped so that prompt + limit fits the model's context, dropping the oldest context chunks first;
- a try that does not end within its limit (a runaway) or ends too soon is tried again with the next seed,
  up to `max_retries` times (the NPU port's rule); a chunk that gives up keeps its last try and is reported.

    gen = Generator.from_pretrained()
    result = gen.generate_long(Path("story.txt").read_text(), seed=1, on_event=print)
    [(c.words, c.duration_s, c.finished) for c in result.chunks]
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from higgslab.errors import HiggsLabError
from higgslab.generate import prompt as prompts
from higgslab.generate.prompt import SPEAKER_TAG
from higgslab.generate.result import GenerationResult, GenerationStats

METHODS = ("auto", "none", "word", "speaker")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"  # kana, CJK ideographs, hangul
CJK_CHAR = re.compile(f"[{_CJK}]")
# a word: a CJK character (with the punctuation after it), or a run of anything else but spaces
WORD = re.compile(rf"[{_CJK}][^\w\s]*|[^\s{_CJK}]+")
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])\s*")


@dataclass
class LongForm:
    """A model's long-form defaults: its `generation_config.json` key "higgslab_long_form".

    A model trained only on one sentence per prompt (the shipped mini) has never seen earlier chunks as
    context nor `[SPEAKERn]` tags: it ships `{"context_chunks": 0, "speaker_tags": false}`."""

    context_chunks: int = 2  # earlier chunks that prompt the next one
    speaker_tags: bool = True  # False: tags are cut from the spoken text (they still pick the voice)

    @classmethod
    def from_config(cls, value, where: str) -> LongForm:
        """From the JSON value of "higgslab_long_form" (None: the defaults); `where` names the file."""
        if value is None:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(value, dict) or not set(value) <= names:
            raise HiggsLabError(
                f"{where}: higgslab_long_form must be an object with keys {sorted(names)}, got {value!r}"
            )
        out = cls(**value)
        if (
            type(out.context_chunks) is not int
            or out.context_chunks < 0
            or type(out.speaker_tags) is not bool
        ):
            raise HiggsLabError(
                f"{where}: higgslab_long_form takes context_chunks (an int >= 0) and speaker_tags (true or "
                f"false), got {value!r}"
            )
        return out


def draw_seed() -> int:
    """A fresh seed from the OS, for `seed=None`: torch's global generator is neither read nor reseeded."""
    return random.SystemRandom().randrange(2**31)


# ---- text ----------------------------------------------------------------------------------------------------
def word_count(text: str) -> int:
    """Words to speak: whitespace-separated words, each CJK character one; `[SPEAKERn]` tags not counted."""
    return len(WORD.findall(SPEAKER_TAG.sub(" ", text)))


def split_text(text: str, method: str = "auto", max_words: int = 100, max_turns: int = 1) -> list[str]:
    """Cut a text into the chunks that `generate_long` speaks one after another.

    - "none": the whole text, one chunk;
    - "word": paragraphs (blank lines), each cut at sentence ends into chunks of at most `max_words` words
      (`word_count`; a longer sentence is cut by words);
    - "speaker": one chunk per speaker turn (a turn starts at its `[SPEAKERn]` tag, text before the first
      tag is a turn of its own), `max_turns` turns per chunk;
    - "auto": "speaker" when the text holds `[SPEAKERn]` tags, else "word".
    Runs of spaces are folded; a chunk with nothing to speak (a bare tag) is dropped.
    """
    if not text or not text.strip():
        raise HiggsLabError("text is empty")
    if method not in METHODS:
        raise HiggsLabError(f"chunk_method must be one of {', '.join(METHODS)}, got {method!r}")
    if max_words < 1 or max_turns < 1:
        raise HiggsLabError(f"max_words and max_turns must be >= 1, got {max_words}, {max_turns}")
    if method == "auto":
        method = "speaker" if SPEAKER_TAG.search(text) else "word"
    if method == "none":
        chunks = [text.strip()]
    elif method == "speaker":
        cuts = sorted({0, *(m.start() for m in SPEAKER_TAG.finditer(text)), len(text)})
        turns = [" ".join(text[a:b].split()) for a, b in itertools.pairwise(cuts)]
        turns = [t for t in turns if t]
        chunks = ["\n".join(turns[i : i + max_turns]) for i in range(0, len(turns), max_turns)]
    else:
        chunks = [
            c for paragraph in re.split(r"\n\s*\n", text.strip()) for c in _by_words(paragraph, max_words)
        ]
    chunks = [c for c in chunks if word_count(c)]
    if not chunks:
        raise HiggsLabError(f"text has no words to speak: {text.strip()[:60]!r}")
    return chunks


def _by_words(paragraph: str, max_words: int) -> list[str]:
    """One paragraph → chunks of whole sentences up to `max_words` words (a longer sentence cut by words)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    for sentence in SENTENCE_END.split(" ".join(paragraph.split())):
        words = WORD.findall(sentence)
        if current and len(current) + len(words) > max_words:
            chunks.append(current)
            current = []
        while len(words) > max_words:
            chunks.append(words[:max_words])
            words = words[max_words:]
        current += words
    if current:
        chunks.append(current)
    return [_join(words) for words in chunks]


def _join(words: Sequence[str]) -> str:
    """Words back into text: a space between two words unless one of them is a CJK character."""
    out = words[0]
    for a, b in itertools.pairwise(words):
        out += b if CJK_CHAR.match(a) or CJK_CHAR.match(b) else " " + b
    return out


def without_speaker_tags(text: str) -> str:
    """`text` with its `[SPEAKERn]` tags cut out, each line's spaces folded."""
    lines = (" ".join(SPEAKER_TAG.sub(" ", line).split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def token_limit(
    text: str,
    *,
    n_q: int,
    frame_rate: float,
    max_new_tokens: int,
    seconds_per_word: float | None = 1.0,
    seconds_extra: float = 2.0,
    room: int | None = None,
) -> int:
    """The decode steps a chunk may take: `min(max_new_tokens, n_q + 1 + ceil(frame_rate ·
    (seconds_per_word · word_count(text) + seconds_extra)))` (n_q + 1: the delay pattern's opening and
    closing columns), and at most `room` (what the context leaves after the prompt). `seconds_per_word`
    None: `max_new_tokens`."""
    limit = max_new_tokens
    if seconds_per_word is not None:
        seconds = seconds_per_word * word_count(text) + seconds_extra
        limit = min(limit, n_q + 1 + math.ceil(frame_rate * seconds))
    return limit if room is None else min(limit, room)


# ---- the chunk loop --------------------------------------------------------------------------------------------
@dataclass
class ChunkReport:
    """One chunk of a long-form run: what it said, how it was prompted, how its tries went."""

    index: int
    text: str  # as split (tags included); the prompt speaks `text` without tags when speaker_tags is off
    words: int  # word_count(text)
    max_new_tokens: int  # its own token limit
    seed: int  # the seed of the try it kept
    tries: list[tuple[int, str]] = field(default_factory=list)  # each failed try: (seed, why it failed)
    steps: int = 0
    frames: int = 0
    duration_s: float = 0.0  # frames / frame_rate (0 without an audio tokenizer)
    finished: bool = False  # its kept try ended by itself (and was long enough)
    start_sample: int = 0  # its span [start, end) in the joined audio
    end_sample: int = 0
    prompt_tokens: int = 0
    context_chunks: int = 0  # earlier chunks in its prompt, after fitting the context

    @property
    def n_tries(self) -> int:
        return len(self.tries) + self.finished


def generate_long(
    gen,
    text: str,
    scene: str | None = None,
    ref_audio=None,
    ref_text: str | None = None,
    *,
    voice=None,
    voices_dir=None,
    references=None,
    references_in_system: bool = False,
    chunk_method: str = "auto",
    chunk_max_words: int = 100,
    chunk_max_turns: int = 1,
    context_chunks: int | None = None,
    max_new_tokens: int = 2048,
    seconds_per_word: float | None = 1.0,
    seconds_extra: float = 2.0,
    max_retries: int = 3,
    min_duration_s: float = 0.5,
    seed: int | None = None,
    decode_audio: bool = True,
    on_event: Callable[[str], None] | None = None,
    progress: Callable[[int], object] | None = None,
    on_limit: Callable[[int], object] | None = None,
    **sampling,
) -> GenerationResult:
    """Speak a long `text` chunk by chunk with `gen` (a `Generator`, whose `generate_long` this is).

    `split_text(text, chunk_method, chunk_max_words, chunk_max_turns)` cuts the chunks. Each is prompted with
    the voice references (`voice` names, `references`, or `ref_audio` + `ref_text`; encoded once) and the
    last `context_chunks` chunks' text and codes (None: `gen.long_form`, the model's own default). Its token
    limit is `token_limit` of its text (`seconds_per_word` None, or no audio tokenizer: `max_new_tokens`),
    fitted to the context. A try that does not end (a runaway) or lasts under `min_duration_s` (when audio is
    decoded) is tried again with the next seed, up to `max_retries` times; a chunk that gives up keeps its
    last try. `sampling`: `Generator.generate`'s sampling settings (temperature, top_k, cfg_scale...).

    Seeds: the k-th try of the run (counted from 0 over all chunks) uses `seed + k`. Without retries chunk i
    uses seed + i; a single chunk's tries use seed, seed + 1, seed + 2, seed + 3. `seed` None draws one
    (`draw_seed`, never touching torch's global generator).

    Reporting: `on_event(line)` gets one line per try (and one when a chunk gives up or loses context);
    `progress(n)` counts decode steps, every try filled up to its token limit when it ends early;
    `on_limit(limit)` is called before each try with its limit (to size a progress bar).

    Returns the chunks' codes joined and decoded once: `result.chunks` holds a `ChunkReport` per chunk
    (its span in `result.audio`), `result.finished` is True when every chunk finished, `result.seed` is
    `seed` (drawn when None).
    """
    _check(max_new_tokens, max_retries, min_duration_s, context_chunks, seconds_per_word, seconds_extra)
    chunks = split_text(text, chunk_method, chunk_max_words, chunk_max_turns)
    long_form = gen.long_form
    want = long_form.context_chunks if context_chunks is None else context_chunks
    seed = draw_seed() if seed is None else seed
    say = on_event or (lambda line: None)
    c, tok = gen.config, gen.audio_tokenizer
    frame_rate = tok.frame_rate if tok is not None else None
    decode_audio = decode_audio and tok is not None

    # the voices, length-checked and encoded once (`Generator.references`)
    if references is None and (voice is not None or ref_audio is not None or ref_text is not None):
        references = gen.references(voice, voices_dir, ref_audio, ref_text)
    tags = prompts.speaker_tags(text) if long_form.speaker_tags else []

    done: list[tuple[str, torch.Tensor]] = []  # (spoken text, codes [n_q, F]) of the chunks so far
    reports: list[ChunkReport] = []
    kept: list[GenerationResult] = []
    t_first = None
    k = 0  # tries so far: the next try's seed is seed + k
    for i, chunk in enumerate(chunks):
        spoken = chunk if long_form.speaker_tags else without_speaker_tags(chunk)
        words = word_count(chunk)
        limit = max_new_tokens if frame_rate is None else token_limit(
            chunk, n_q=c.num_codebooks, frame_rate=frame_rate, max_new_tokens=max_new_tokens,
            seconds_per_word=seconds_per_word, seconds_extra=seconds_extra,
        )  # fmt: skip
        prompt_kw = _prompt_keywords(references, chunk, long_form.speaker_tags, tags, references_in_system)
        prompt, n_context, limit = _fit(gen, spoken, scene, done, want, limit, prompt_kw)
        if n_context < min(want, len(done)):
            say(f"chunk {i + 1}/{len(chunks)}: {min(want, len(done))} context chunks do not fit the context "
                f"with a limit of {limit} steps; using the last {n_context}")  # fmt: skip
        report = ChunkReport(i, chunk, words, limit, seed + k, prompt_tokens=len(prompt.input_ids),
                             context_chunks=n_context)  # fmt: skip
        r = _tries(gen, prompt, report, max_retries, min_duration_s if decode_audio else None, frame_rate,
                   f"chunk {i + 1}/{len(chunks)}", say, progress, on_limit, sampling)  # fmt: skip
        k += report.n_tries
        t_first = r.stats.time_to_first_audio_s if t_first is None else t_first
        reports.append(report)
        kept.append(r)
        done.append((spoken, r.codes))
    return _joined(gen, kept, reports, seed, decode_audio, t_first)


def _tries(
    gen, prompt, report, max_retries, min_duration_s, frame_rate, name, say, progress, on_limit, sampling
):
    """Generate one chunk, from `report.seed` on, until a try ends (and lasts `min_duration_s`, when not None)
    or `1 + max_retries` tries are spent; fills `report` and returns the try it keeps (the last)."""
    limit = report.max_new_tokens
    first = report.seed
    for attempt in range(1 + max_retries):
        report.seed = first + attempt
        if on_limit is not None:
            on_limit(limit)
        r = gen.generate(prompt.input_ids, audio_codes=prompt.audio_codes, max_new_tokens=limit,
                         seed=report.seed, decode_audio=False, progress=progress, **sampling)  # fmt: skip
        if progress is not None and r.stats.steps < limit:
            progress(limit - r.stats.steps)
        duration = r.codes.shape[1] / frame_rate if frame_rate else 0.0
        why = None
        if not r.finished:
            why = f"runaway: no end of stream within {limit} steps"
        elif min_duration_s is not None and duration < min_duration_s:
            why = f"short: {duration:.2f} s < {min_duration_s} s"
        head = f"{name} try {attempt + 1}/{1 + max_retries} (seed {report.seed}): {r.stats.steps} steps, "
        say(head + f"{duration:.2f} s, " + (why or "finished"))
        if why is None:
            break
        report.tries.append((report.seed, why))
    else:
        seeds = ", ".join(str(s) for s, _ in report.tries)
        say(f"{name}: gave up after {len(report.tries)} tries (seeds {seeds}); keeping its last try")
    report.finished = why is None
    report.steps, report.frames, report.duration_s = r.stats.steps, r.codes.shape[1], duration
    return r


def _check(max_new_tokens, max_retries, min_duration_s, context_chunks, seconds_per_word, seconds_extra):
    bad = [
        (max_new_tokens < 1, f"max_new_tokens must be >= 1, got {max_new_tokens}"),
        (max_retries < 0, f"max_retries must be >= 0, got {max_retries}"),
        (min_duration_s < 0, f"min_duration_s must be >= 0, got {min_duration_s}"),
        (context_chunks is not None and context_chunks < 0, f"context_chunks must be >= 0, got {context_chunks}"),
        (seconds_per_word is not None and seconds_per_word <= 0,
         f"seconds_per_word must be > 0 (or None: max_new_tokens), got {seconds_per_word}"),
        (seconds_extra < 0, f"seconds_extra must be >= 0, got {seconds_extra}"),
    ]  # fmt: skip
    for wrong, message in bad:
        if wrong:
            raise HiggsLabError(message)


def _prompt_keywords(references, chunk, speaker_tags, tags, in_system) -> dict:
    """`Generator.build_prompt`'s voice and speaker keywords, only those in use. Without speaker tags the
    model reads no `[SPEAKERn]`: a chunk is prompted with the voices of the speakers it names (all voices when
    it names none), untagged. A reference is a `prompt.Reference` or a (text, codes) pair (no speaker)."""
    kw = {}
    if references is not None:
        if not speaker_tags:
            named = {int(tag.removeprefix("SPEAKER")) for tag in prompts.speaker_tags(chunk)}
            mine = [r for r in references if getattr(r, "speaker", None) in (None, *named)]
            references = [_untagged(r) for r in (mine or references)]
        kw["references"] = references
    if len(tags) > 1:
        kw["speakers"] = tags
    if in_system:
        kw["references_in_system"] = True
    return kw


def _untagged(reference):
    return (
        reference
        if getattr(reference, "speaker", None) is None
        else dataclasses.replace(reference, speaker=None)
    )


def _fit(gen, spoken, scene, done, want, limit, prompt_kw):
    """(prompt, context chunks used, token limit): the last `want` chunks of `done` as context, the oldest
    dropped first until prompt + limit fits the context; with none left, the limit shrinks to fit."""
    positions, n_q = gen.config.max_position_embeddings, gen.config.num_codebooks
    for n in range(min(want, len(done)), -1, -1):
        context = done[len(done) - n :]
        prompt = gen.build_prompt(spoken, scene, context=context, **prompt_kw)
        if len(prompt.input_ids) + limit <= positions:
            return prompt, n, limit
    room = positions - len(prompt.input_ids)
    if room < n_q + 2:  # not one frame: the delay pattern needs n_q + 1 columns around it
        raise HiggsLabError(
            f"the prompt of chunk {spoken[:40]!r} ({len(prompt.input_ids)} tokens) leaves no room in the "
            f"context of {positions} positions: use shorter reference clips or a smaller chunk_max_words"
        )
    return prompt, 0, room


def _joined(gen, kept, reports, seed, decode_audio, t_first) -> GenerationResult:
    """The chunks' kept tries as one result: codes and columns joined, the audio decoded once, stats summed."""
    codes = torch.cat([r.codes for r in kept], dim=1)
    stats = GenerationStats(device=kept[0].stats.device, time_to_first_audio_s=t_first)
    for name in ("prompt_tokens", "steps", "frames", "prefill_s", "decode_s"):
        setattr(stats, name, sum(getattr(r.stats, name) for r in kept))
    stats.peak_memory_bytes = max((r.stats.peak_memory_bytes or 0 for r in kept), default=None)
    audio = None
    if decode_audio:
        t0 = time.perf_counter()
        audio = gen._decode(codes)
        stats.audio_decode_s = time.perf_counter() - t0
    if gen.audio_tokenizer is not None:
        ends = np.cumsum([r.frames for r in reports]) * gen.audio_tokenizer.hop_length
        for report, start, end in zip(reports, [0, *ends[:-1]], ends, strict=True):
            report.start_sample, report.end_sample = int(start), int(end)
    return GenerationResult(
        codes=codes,
        columns=torch.cat([r.columns for r in kept], dim=1),
        finished=all(r.finished for r in reports),
        stream_ids=kept[0].stream_ids,
        sample_rate=kept[0].sample_rate,
        audio=audio,
        seed=seed,
        stats=stats,
        chunks=reports,
    )
