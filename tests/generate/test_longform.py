"""Long-form generation (`higgslab.generate.longform`): chunking, the token-limit rule, context fitting,
retries of runaways and too-short tries with the next seed, joined audio, drawn seeds; and, on the shipped
mini, a 3-paragraph story and a 6-turn dialogue from files that come out whole."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from higgslab.embedded import ASSETS
from higgslab.errors import HiggsLabError
from higgslab.generate.generator import Generator
from higgslab.generate.longform import LongForm, split_text, token_limit, word_count

DATA = Path(__file__).parents[1] / "data"
STORY = DATA / "longform_story.txt"  # 3 paragraphs of 100 words
DIALOGUE = DATA / "longform_dialogue.txt"  # 6 turns, [SPEAKER0] and [SPEAKER1]
# The shipped mini's seconds per word over 30 held-out sentences x 3 seeds: 0.185-0.493 (bench/RESULTS.md,
# "Long-form"); a whole long text must fall in it
MINI_SECONDS_PER_WORD = (0.18, 0.50)
FAST = dict(seconds_per_word=0.1, seconds_extra=0.1)  # tiny limits: 9 + ceil(25 * (0.1 * words + 0.1)) steps


# ---- split_text, word_count, token_limit ---------------------------------------------------------------------
def test_split_by_speaker_turns():
    text = "[SPEAKER0] Hello there. How are you?\n[SPEAKER1] Fine, thanks.\n[SPEAKER0] Good."
    turns = ["[SPEAKER0] Hello there. How are you?", "[SPEAKER1] Fine, thanks.", "[SPEAKER0] Good."]
    assert split_text(text) == split_text(text, "speaker") == turns
    assert split_text(text, max_turns=2) == [turns[0] + "\n" + turns[1], turns[2]]
    assert split_text("Intro. [SPEAKER0] A. [SPEAKER1] [SPEAKER0] B.") == [
        "Intro.",
        "[SPEAKER0] A.",
        "[SPEAKER0] B.",
    ]
    assert split_text(text, "none") == [text]


def test_split_by_paragraph_and_sentence_within_max_words():
    text = "One two three. Four five six! Seven eight?\n\nNine ten eleven twelve thirteen fourteen fifteen."
    chunks = split_text(text, max_words=6)
    assert chunks == split_text(text, "word", max_words=6)
    assert chunks == [
        "One two three. Four five six!",
        "Seven eight?",
        "Nine ten eleven twelve thirteen fourteen",
        "fifteen.",
    ]
    assert " ".join(chunks).split() == text.split()
    assert split_text("  Just   one\nline. ") == ["Just one line."]
    assert split_text("你好。世界很大！", max_words=4) == [
        "你好。",
        "世界很大！",
    ]  # CJK: a character is a word


def test_split_refuses_bad_input_in_one_line():
    for text in (" ", ""):
        with pytest.raises(HiggsLabError, match="text is empty"):
            split_text(text)
    with pytest.raises(HiggsLabError, match="no words to speak"):
        split_text("[SPEAKER0] [SPEAKER1]")
    with pytest.raises(
        HiggsLabError, match=r"chunk_method must be one of auto, none, word, speaker, got 'line'"
    ):
        split_text("Hi.", "line")
    with pytest.raises(HiggsLabError, match=">= 1"):
        split_text("Hi.", max_words=0)


def test_word_count_skips_speaker_tags_and_counts_cjk_characters():
    assert word_count("[SPEAKER0] Hello there, friend.\n[SPEAKER1]Hi!") == 4
    assert word_count("你好 world") == 3
    assert word_count("  ") == 0


def test_token_limit_rule():
    text = "Good morning everyone."  # 3 words: 9 + ceil(25 * (1.0 * 3 + 2.0)) = 134 steps, 5 s
    assert token_limit(text, n_q=8, frame_rate=25, max_new_tokens=2048) == 8 + 1 + 125
    assert token_limit(text, n_q=8, frame_rate=25, max_new_tokens=100) == 100
    assert token_limit(text, n_q=8, frame_rate=25, max_new_tokens=2048, seconds_per_word=0.5,
                       seconds_extra=0.1) == 9 + 40  # fmt: skip
    assert token_limit(text, n_q=8, frame_rate=25, max_new_tokens=2048, seconds_per_word=None) == 2048
    assert token_limit(text, n_q=8, frame_rate=25, max_new_tokens=2048, room=50) == 50


# ---- the model's long-form defaults -----------------------------------------------------------------------------
def test_long_form_defaults_from_generation_config(embedded_cache, tmp_path):
    import shutil

    assert LongForm.from_config(None, "g.json") == LongForm(context_chunks=2, speaker_tags=True)
    shipped = json.loads((ASSETS / "model" / "generation_config.json").read_text())
    assert LongForm.from_config(shipped["higgslab_long_form"], "g.json") == LongForm(0, False)
    for bad in ({"context": 1}, {"context_chunks": -1}, {"speaker_tags": "no"}, [0]):
        with pytest.raises(HiggsLabError, match="g.json: higgslab_long_form"):
            LongForm.from_config(bad, "g.json")
    model_dir = shutil.copytree(embedded_cache[1], tmp_path / "model")
    assert Generator.from_paths(model_dir, device="cpu").long_form == LongForm()  # no generation_config.json
    long_form = {"context_chunks": 1, "speaker_tags": False}
    (model_dir / "generation_config.json").write_text(json.dumps({"higgslab_long_form": long_form}))
    assert Generator.from_paths(model_dir, device="cpu").long_form == LongForm(1, False)


# ---- the chunk loop on the tiny model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen(embedded_cache):
    _, model_dir, tokenizer_dir = embedded_cache
    return Generator.from_paths(model_dir, tokenizer_dir, device="cpu")


def stream_ends(gen, monkeypatch, after: int | None, seeds=()):
    """Make the tiny model close its stream `after` steps into a run sampled with one of `seeds` (its
    stream-eos logit raised from then on), and never otherwise (the logit pushed down: a runaway)."""
    step, eos, bos = gen.model.decode_audio_step, gen.config.stream_ids.eos, gen.config.stream_ids.bos
    count = [0]

    def decode_audio_step(codes, cache):
        count[0] = 1 if bool((codes == bos).all()) else count[0] + 1  # a run starts with an all-bos column
        logits = step(codes, cache)
        ends = after is not None and gen._rng.initial_seed() in seeds and count[0] >= after
        logits[..., eos] = 1e4 if ends else -1e4
        return logits

    monkeypatch.setattr(gen.model, "decode_audio_step", decode_audio_step)


def test_chunks_are_prompted_with_earlier_chunks_and_runaways_retried_with_the_next_seeds(gen, monkeypatch):
    stream_ends(gen, monkeypatch, after=None)  # every try runs away
    text = "One two three. Four five six. Seven eight nine ten."
    events = []
    r = gen.generate_long(text, chunk_max_words=4, context_chunks=1, max_retries=1, seed=10, on_event=events.append,
                          **FAST)  # fmt: skip
    chunks = ["One two three.", "Four five six.", "Seven eight nine ten."]
    limits = [token_limit(c, n_q=8, frame_rate=25, max_new_tokens=2048, **FAST) for c in chunks]
    assert [c.text for c in r.chunks] == chunks and limits == [19, 19, 22]
    assert [c.max_new_tokens for c in r.chunks] == limits and [c.words for c in r.chunks] == [3, 3, 4]
    assert [c.seed for c in r.chunks] == [
        11,
        13,
        15,
    ]  # try k of the run uses seed + k; a chunk keeps its last
    for c, limit in zip(r.chunks, limits, strict=True):
        why = f"runaway: no end of stream within {limit} steps"
        assert c.tries == [(c.seed - 1, why), (c.seed, why)] and c.n_tries == 2 and not c.finished
        assert c.steps == limit and c.frames == limit - 8
    assert not r.finished and r.seed == 10 and [c.context_chunks for c in r.chunks] == [0, 1, 1]
    assert sum("runaway" in e for e in events) == 6 and sum("gave up" in e for e in events) == 3
    assert "chunk 1/3 try 2/2 (seed 11): 19 steps" in events[1] and "seeds 10, 11" in events[2]
    # each kept try is what `generate` gives for its prompt (the previous kept chunk as context) and seed
    context = []
    for chunk, report in zip(chunks, r.chunks, strict=True):
        prompt = gen.build_prompt(chunk, context=context[-1:])
        assert report.prompt_tokens == len(prompt.input_ids)
        alone = gen.generate(prompt.input_ids, audio_codes=prompt.audio_codes, max_new_tokens=report.max_new_tokens,
                             seed=report.seed, decode_audio=False)  # fmt: skip
        assert torch.equal(alone.codes, r.codes[:, report.start_sample // 960 : report.end_sample // 960])
        context.append((chunk, alone.codes))
    # the chunks' spans tile the joined audio, decoded once from the joined codes
    assert [c.start_sample for c in r.chunks] == [0, *[c.end_sample for c in r.chunks[:-1]]]
    assert r.chunks[-1].end_sample == len(r.audio) == r.codes.shape[1] * 960
    assert torch.allclose(torch.from_numpy(r.audio), torch.from_numpy(gen._decode(r.codes)))
    assert r.stats.steps == sum(limits) and r.duration_s == pytest.approx(sum(c.duration_s for c in r.chunks))


def test_a_runaway_then_an_ending_try(gen, monkeypatch):
    stream_ends(gen, monkeypatch, after=20, seeds={7})  # seeds 5 and 6 run away, 7 ends after 20 steps
    events, limits, steps = [], [], []
    r = gen.generate_long("Good morning everyone.", seed=5, on_event=events.append, on_limit=limits.append,
                          progress=steps.append, seconds_per_word=0.5, seconds_extra=0.5)  # fmt: skip
    (c,) = r.chunks
    assert c.seed == 7 and c.finished and r.finished and [s for s, _ in c.tries] == [5, 6] and c.n_tries == 3
    # eos at step 20 leaves frames 0..18; the stream closes at step 27 and the host sees it at its next check
    assert c.frames == 19 and r.codes.shape == (8, 19) and c.steps == 32 == 2 * gen.sync_every
    assert limits == [59, 59, 59] and sum(steps) == 3 * 59  # an early end fills the progress of its try
    assert [e.split(": ", 1)[0] for e in events] == [
        f"chunk 1/1 try {i}/4 (seed {s})" for i, s in [(1, 5), (2, 6), (3, 7)]
    ]
    assert events[-1].endswith("finished")


def test_too_short_try_is_retried_and_a_chunk_that_gives_up_keeps_its_last_try(gen, monkeypatch):
    stream_ends(gen, monkeypatch, after=1, seeds={3, 4, 5, 6})  # eos at once: no frame, 0 s
    events = []
    r = gen.generate_long("Good morning everyone.", seed=3, on_event=events.append, **FAST)
    (c,) = r.chunks
    assert c.tries == [(s, "short: 0.00 s < 0.5 s") for s in (3, 4, 5, 6)] and c.seed == 6
    assert (
        not c.finished and not r.finished and c.frames == 0 and r.codes.shape == (8, 0) and len(r.audio) == 0
    )
    assert events[-1] == "chunk 1/1: gave up after 4 tries (seeds 3, 4, 5, 6); keeping its last try"
    r = gen.generate_long("Good morning everyone.", seed=3, min_duration_s=0, max_retries=0, **FAST)
    assert r.finished and r.chunks[0].tries == []  # min_duration_s=0: any end will do


def test_oldest_context_chunks_are_dropped_to_fit_the_context(gen, monkeypatch):
    stream_ends(gen, monkeypatch, after=None)
    chunks = ["One two three.", "Four five six.", "Seven eight nine."]
    full = gen.generate_long(
        " ".join(chunks), chunk_max_words=3, context_chunks=2, max_retries=0, seed=1, **FAST
    )
    assert [c.context_chunks for c in full.chunks] == [0, 1, 2]
    # room for the third chunk's prompt with one context chunk and its limit, not with two
    second = full.codes[:, full.chunks[0].frames : full.chunks[0].frames + full.chunks[1].frames]
    one = gen.build_prompt(chunks[2], context=[(chunks[1], second)])
    monkeypatch.setattr(gen.config, "max_position_embeddings", len(one.input_ids) + 19)
    events = []
    r = gen.generate_long(" ".join(chunks), chunk_max_words=3, context_chunks=2, max_retries=0, seed=1,
                          on_event=events.append, **FAST)  # fmt: skip
    assert [c.context_chunks for c in r.chunks] == [0, 1, 1] and [c.max_new_tokens for c in r.chunks] == [
        19
    ] * 3
    assert (
        "chunk 3/3: 2 context chunks do not fit the context with a limit of 19 steps; using the last 1"
        in events
    )
    # no room for the limit even without context: the limit shrinks; no room for a frame: one line
    alone = len(gen.build_prompt(chunks[0]).input_ids)
    monkeypatch.setattr(gen.config, "max_position_embeddings", alone + 12)
    r = gen.generate_long(chunks[0], max_retries=0, seed=1, **FAST)
    assert r.chunks[0].max_new_tokens == 12 and r.chunks[0].frames == 12 - 8
    monkeypatch.setattr(gen.config, "max_position_embeddings", alone + 9)
    with pytest.raises(HiggsLabError, match="leaves no room in the context of"):
        gen.generate_long(chunks[0], seed=1, **FAST)


def test_without_an_audio_tokenizer_the_limit_is_max_new_tokens(gen, monkeypatch):
    stream_ends(gen, monkeypatch, after=None)
    monkeypatch.setattr(gen, "audio_tokenizer", None)
    r = gen.generate_long("Good morning everyone.", max_new_tokens=12, max_retries=0, seed=1)
    assert r.chunks[0].max_new_tokens == 12 and r.audio is None and r.chunks[0].duration_s == 0


def test_without_speaker_tags_the_tags_are_not_spoken(gen, monkeypatch):
    stream_ends(gen, monkeypatch, after=None)
    spoken = []
    build = gen.build_prompt
    monkeypatch.setattr(
        gen, "build_prompt", lambda text, *a, **kw: spoken.append(text) or build(text, *a, **kw)
    )
    monkeypatch.setattr(gen, "long_form", LongForm(context_chunks=1, speaker_tags=False))
    r = gen.generate_long("[SPEAKER0] Hi there.\n[SPEAKER1] Hello.", max_retries=0, seed=1, **FAST)
    assert spoken == ["Hi there.", "Hello."] and [c.text for c in r.chunks] == [
        "[SPEAKER0] Hi there.",
        "[SPEAKER1] Hello.",
    ]
    assert [c.context_chunks for c in r.chunks] == [0, 1]  # the model's default context_chunks


def test_a_reference_clip_is_encoded_once_for_every_chunk(gen, monkeypatch):
    stream_ends(gen, monkeypatch, after=None)
    encoded, refs = [], []
    encode, build = gen.audio_tokenizer.encode, gen.build_prompt
    monkeypatch.setattr(gen.audio_tokenizer, "encode", lambda *a: encoded.append(1) or encode(*a))
    monkeypatch.setattr(
        gen, "build_prompt", lambda *a, **kw: refs.append(kw["references"]) or build(*a, **kw)
    )
    wav = torch.sin(torch.arange(4800) * 0.05)
    r = gen.generate_long("One. Two. Three.", ref_audio=(wav, 24000), ref_text="A voice.", chunk_max_words=1,
                          max_retries=0, seed=1, **FAST)  # fmt: skip
    assert len(r.chunks) == 3 and len(encoded) == 1 and len(refs) == 3
    (ref,) = refs[0]
    assert (
        all(r[0] is ref for r in refs) and ref.text == "A voice." and ref.codes.shape == (8, 5)
    )  # 0.2 s: 5 frames


def test_without_speaker_tags_each_turn_gets_its_speakers_voice_untagged(gen, monkeypatch):
    @dataclasses.dataclass
    class Reference:  # the shape of prompt.Reference: a transcript, codes, the n of [SPEAKERn]
        text: str
        codes: torch.Tensor
        speaker: int | None = None

    stream_ends(gen, monkeypatch, after=None)
    voices = [Reference("A.", torch.zeros(8, 2, dtype=torch.long), n) for n in (0, 1)]
    seen = []
    build = gen.build_prompt
    monkeypatch.setattr(
        gen, "build_prompt", lambda text, *a, references, **kw: seen.append(references) or build(text, *a)
    )
    monkeypatch.setattr(gen, "long_form", LongForm(context_chunks=0, speaker_tags=False))
    text = "Intro.\n[SPEAKER1] Hi there.\n[SPEAKER0] Hello."
    gen.generate_long(text, references=voices, max_retries=0, seed=1, **FAST)
    untagged = [dataclasses.replace(v, speaker=None) for v in voices]
    assert seen == [untagged, [untagged[1]], [untagged[0]]]  # no tag: every voice


def test_bad_settings_are_one_line(gen):
    for kw, message in [
        (dict(max_retries=-1), "max_retries must be >= 0"),
        (dict(context_chunks=-1), "context_chunks must be >= 0"),
        (dict(seconds_per_word=0), "seconds_per_word must be > 0"),
        (dict(min_duration_s=-1), "min_duration_s must be >= 0"),
        (dict(chunk_method="lines"), "chunk_method must be one of"),
    ]:
        with pytest.raises(HiggsLabError, match=message):
            gen.generate_long("Hi.", **kw)


# ---- seeds ------------------------------------------------------------------------------------------------------
def test_seed_none_draws_a_seed_stores_it_and_leaves_torch_global_generator_alone(gen, monkeypatch):
    stream_ends(gen, monkeypatch, after=None)
    torch.manual_seed(1234)
    state, initial = torch.random.get_rng_state(), torch.initial_seed()
    one = gen.generate(text="Hello.", max_new_tokens=12, decode_audio=False)
    long = gen.generate_long("Hello. Again.", chunk_max_words=1, max_retries=0, **FAST)
    assert torch.equal(torch.random.get_rng_state(), state) and torch.initial_seed() == initial == 1234
    assert isinstance(one.seed, int) and isinstance(long.seed, int)
    assert [c.seed for c in long.chunks] == [long.seed, long.seed + 1]
    again = gen.generate(text="Hello.", max_new_tokens=12, decode_audio=False, seed=one.seed)
    assert torch.equal(again.codes, one.codes)  # the stored seed reproduces the run
    assert torch.equal(gen.generate_long("Hello. Again.", chunk_max_words=1, max_retries=0, seed=long.seed,
                                         **FAST).codes, long.codes)  # fmt: skip


# ---- the shipped mini: whole texts from files -----------------------------------------------------------------
@pytest.fixture(scope="module")
def mini():
    return Generator.from_paths(ASSETS / "model", ASSETS / "tokenizer", device="cpu")


@pytest.mark.parametrize("path", [STORY, DIALOGUE], ids=["story", "dialogue"])
def test_mini_speaks_a_long_text_from_a_file_whole(mini, path):
    text = path.read_text(encoding="utf-8")
    r = mini.generate_long(text, seed=1)
    assert mini.long_form == LongForm(context_chunks=0, speaker_tags=False)
    assert len(r.chunks) == (3 if path == STORY else 6)
    assert r.finished and all(c.finished for c in r.chunks), [
        (c.words, c.duration_s, c.tries) for c in r.chunks
    ]
    low, high = MINI_SECONDS_PER_WORD
    assert low < r.duration_s / word_count(text) < high, r.duration_s / word_count(text)
    assert r.chunks[-1].end_sample == len(r.audio)
