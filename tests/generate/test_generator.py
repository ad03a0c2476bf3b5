"""Generator: greedy parity with transformers' generate, seeding, streaming = one-shot, batches, errors."""

import numpy as np
import pytest
import torch

import higgslab
from higgslab import delay
from higgslab.generate.generator import Generator

PROMPT = torch.tensor(
    [128000, 128006, 9125, 128007, 271, 5, 6, 7, 128009, 128006, 78191, 128007, 271, 128013]
)


def no_eos(model):
    """Zero the stream-eos rows of the audio head: both implementations then run every step."""
    with torch.no_grad():
        head = model.audio_head if hasattr(model, "audio_head") else model.audio_lm_head
        head.weight.view(8, 1026, -1)[:, 1025] = 0
    return model


def reference_codes(oracle, prompt, steps):
    columns = oracle.generate(input_ids=prompt[None], max_new_tokens=steps, do_sample=False)[
        0
    ].T  # [n_q, steps]
    return delay.finished_frames(columns, delay.StreamIds.after_codes(1024)), columns


@pytest.fixture(scope="module")
def gen(lm_checkpoints):
    return Generator(no_eos(higgslab.load_model(lm_checkpoints["original"])))


@pytest.fixture(scope="module")
def unpacked_gen(lm_checkpoints):
    """The modules' own weight layout (what accelerators run): no fused decode matrices."""
    return Generator(no_eos(higgslab.load_model(lm_checkpoints["original"])), pack=False)


@pytest.fixture(scope="module")
def eosless_oracle():
    from higgslab.tiny.model import tiny_hf_model

    return no_eos(tiny_hf_model(seed=0))


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("prompt_len", [8, 14])
def test_greedy_codes_equal_transformers_generate(gen, unpacked_gen, eosless_oracle, prompt_len, packed):
    prompt = PROMPT[-prompt_len:]
    expected, expected_columns = reference_codes(eosless_oracle, prompt, 40)
    g = gen if packed else unpacked_gen
    result = g.generate(prompt, max_new_tokens=40, temperature=0, ras_window=0)
    assert all((layer.packed is not None) == packed for layer in g.model.layers)  # CPU default: packed
    assert expected.shape == (8, 32)
    assert torch.equal(result.codes, expected)
    assert torch.equal(result.columns, expected_columns)
    assert not result.finished and result.stats.steps == 40 and result.stats.frames == 32


def test_greedy_parity_holds_with_eos_reachable(lm_checkpoints, oracle):
    gen = Generator(higgslab.load_model(lm_checkpoints["original"]))
    expected, _ = reference_codes(oracle, PROMPT, 40)
    assert torch.equal(gen.generate(PROMPT, max_new_tokens=40, temperature=0, ras_window=0).codes, expected)


def test_short_prompt_opens_codebooks_one_by_one(gen):
    result = gen.generate(torch.tensor([128013]), max_new_tokens=12, temperature=0, ras_window=0)
    cols = result.columns
    assert (cols[:, 0] == 1024).all()
    for t in range(1, 9):  # column t: codebooks < t open, the rest still stream-bos
        assert (cols[t:, t] == 1024).all() and (cols[:t, t] < 1024).all()


def test_seeds(gen):
    kw = dict(max_new_tokens=30, temperature=1.0, top_k=0, top_p=1.0)
    a = gen.generate(PROMPT, seed=1, **kw).codes
    assert torch.equal(a, gen.generate(PROMPT, seed=1, **kw).codes)
    assert not torch.equal(a, gen.generate(PROMPT, seed=2, **kw).codes)
    g1 = gen.generate(PROMPT, seed=1, max_new_tokens=30, temperature=0).codes
    assert torch.equal(g1, gen.generate(PROMPT, seed=99, max_new_tokens=30, temperature=0).codes)


def test_stream_yields_exactly_the_one_shot_codes(gen):
    one_shot = gen.generate(PROMPT, max_new_tokens=30, seed=3, temperature=0.8).codes
    chunks = list(gen.stream(PROMPT, max_new_tokens=30, seed=3, temperature=0.8, chunk_frames=4))
    assert all(c.shape[0] == 8 for c in chunks) and len(chunks) >= 5
    assert torch.equal(torch.cat(chunks, 1), one_shot)
    assert gen.last_result.stats.time_to_first_audio_s is not None


def test_batch_rows_equal_single_runs(gen):
    short = PROMPT[-8:]
    results = gen.generate_batch([PROMPT, short], max_new_tokens=24, temperature=0, ras_window=0)
    for prompt, r in zip([PROMPT, short], results, strict=True):
        assert torch.equal(
            r.codes, gen.generate(prompt, max_new_tokens=24, temperature=0, ras_window=0).codes
        )


def test_stops_when_every_codebook_closed(lm_checkpoints):
    model = higgslab.load_model(lm_checkpoints["original"])
    plain = model.audio_logits
    model.audio_logits = lambda h: plain(h) + torch.nn.functional.one_hot(torch.tensor(1025), 1026) * 100.0
    result = Generator(model, sync_every=4).generate(PROMPT, max_new_tokens=200, temperature=0, ras_window=0)
    assert result.finished and result.stats.steps < 40
    assert result.codes.shape[1] == 0  # eos at once: no complete frame


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(temperature=-0.1), "temperature must be >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(max_new_tokens=10**6), "exceeds the context"),
    ],
)
def test_bad_settings_are_one_line_errors(gen, kw, message):
    with pytest.raises(higgslab.HiggsLabError, match=message):
        gen.generate(PROMPT, **kw)


def test_compiled_step_gives_the_eager_codes(lm_checkpoints):
    """The compiled decode step (static cache, fixed shapes) samples exactly what the eager one does."""
    model = higgslab.load_model(lm_checkpoints["original"])
    kw = dict(max_new_tokens=20, temperature=0.9, top_k=40, top_p=0.9, seed=5)
    eager, compiled = Generator(model), Generator(model, compile=True)
    graphs = torch._dynamo.utils.counters["stats"]
    before = graphs["unique_graphs"]
    assert torch.equal(eager.generate(PROMPT, **kw).columns, compiled.generate(PROMPT, **kw).columns)
    # one graph, sampling included (its random draws are inputs: dynamo cannot trace a torch.Generator);
    # every step attends to a different window of the cache, and that one graph serves them all, this
    # shorter prompt's too
    assert graphs["unique_graphs"] == before + 1
    short = PROMPT[-9:]
    assert torch.equal(eager.generate(short, **kw).columns, compiled.generate(short, **kw).columns)
    assert graphs["unique_graphs"] == before + 1
    # streaming runs the same compiled step, guards checked every step
    streamed = torch.cat(list(compiled.stream(short, chunk_frames=4, **kw)), 1)
    assert streamed.shape[1] > 0 and torch.equal(streamed, eager.generate(short, **kw).codes)
    # a second shape (a batch of two) compiles a second variant; the steps after each run's first skip
    # the guards that do not tell the variants apart, and must still pick the right one
    batch = [PROMPT, PROMPT[-9:]]
    expected = [r.columns for r in eager.generate_batch(batch, **kw)]
    assert all(
        torch.equal(a, r.columns) for a, r in zip(expected, compiled.generate_batch(batch, **kw), strict=True)
    )
    assert torch.equal(eager.generate(PROMPT, **kw).columns, compiled.generate(PROMPT, **kw).columns)


def test_graph_mode_step_gives_the_eager_codes(gen):
    """`compile="reduce-overhead"` (CUDA graphs; on the CPU inductor leaves the graphs out and all else is
    the same): the window grows in buckets of 256, the outputs are copied out of the graph's buffers."""
    graphs = Generator(gen.model, compile="reduce-overhead")
    kw = dict(max_new_tokens=260, temperature=0.9, top_k=40, seed=2)  # T + t passes 256: a second window
    result = graphs.generate(PROMPT, **kw)
    assert result.stats.steps == 260
    assert torch.equal(gen.generate(PROMPT, **kw).columns, result.columns)
    greedy = dict(max_new_tokens=20, temperature=0, ras_window=0)  # no RAS history to carry over
    assert torch.equal(gen.generate(PROMPT, **greedy).columns, graphs.generate(PROMPT, **greedy).columns)


@pytest.fixture(scope="module")
def text_gen(embedded_cache):
    """A Generator with the embedded tiny checkpoints: LM, text tokenizer and audio tokenizer."""
    _, model_dir, tokenizer_dir = embedded_cache
    gen = Generator.from_paths(model_dir, tokenizer_dir, device="cpu")
    no_eos(gen.model)  # every chunk runs its full length: known frame counts
    return gen


def test_voice_reference_enters_the_prompt_as_delayed_codes(text_gen):
    ref = torch.randint(0, 1024, (8, 5))
    ids, codes = text_gen.prompt("Hello.", ref_audio=ref, ref_text="A voice.")
    assert codes.shape == (8, 5 + 9) and int((ids == 128016).sum()) == 14
    assert torch.equal(delay.revert(codes)[:, 1:-1], ref)
    result = text_gen.generate(text="Hello.", ref_audio=ref, ref_text="A voice.", max_new_tokens=12, seed=0)
    assert result.audio is not None and result.stats.prompt_tokens == len(ids)


def test_streamed_audio_equals_one_shot_audio(text_gen):
    ids, codes = text_gen.prompt("Stream me.")
    kw = dict(audio_codes=codes, max_new_tokens=30, seed=4, temperature=0.7)
    one_shot = text_gen.generate(ids, **kw)
    chunks = list(text_gen.stream(ids, chunk_frames=3, **kw))
    assert all(c.size > 0 for c in chunks) and len(chunks) >= 3
    audio = np.concatenate(chunks)
    assert audio.shape == one_shot.audio.shape
    assert np.abs(audio - one_shot.audio).max() < 1e-3
    assert text_gen.last_result.stats.time_to_first_audio_s > 0


def test_no_complete_frame_gives_empty_audio(text_gen):
    r = text_gen.generate(text="Hi.", max_new_tokens=4, seed=0)  # 4 steps: no frame is complete yet
    assert r.codes.shape == (8, 0) and r.audio.shape == (0,) and r.duration_s == 0.0


# ---- classifier-free guidance ------------------------------------------------------------------------------------
GREEDY = dict(max_new_tokens=12, temperature=0, ras_window=0, decode_audio=False)


def test_guidance_scale_0_decodes_the_prompt_without_its_text(text_gen):
    """Rows B.. of the batch are the unconditional prompts: at scale 0 only they count."""
    alone = text_gen.generate(text_gen.build_prompt("Guide me.").without_text(), cfg_scale=1, **GREEDY)
    assert torch.equal(text_gen.generate(text="Guide me.", cfg_scale=0, **GREEDY).columns, alone.columns)
    # this random tiny LM barely reads its text; a large scale makes the conditional rows decide
    assert not torch.equal(text_gen.generate(text="Guide me.", cfg_scale=30, **GREEDY).columns, alone.columns)


def test_guided_picks_come_from_the_conditional_and_the_textless_rows(text_gen):
    """Teacher-forced on the generated columns, every open codebook's greedy pick is the argmax of
    `sampling.guide(cond, uncond, s)`, each side run as one uncached forward of its own prompt."""
    from higgslab.generate.sampling import guide

    model, s = text_gen.model, 2.0
    prompt = text_gen.build_prompt("Guide me.")
    columns = text_gen.generate(text="Guide me.", cfg_scale=s, **GREEDY).columns  # [n_q, steps]

    def logits(ids, t):  # the audio logits `[n_q, V]` that predict column t
        audio = torch.full((t,), model.config.audio_out_token_id)
        hidden = model(torch.cat([ids, audio])[None], columns[None, :, :t], logits="none").last_hidden_state
        return model.audio_logits(hidden[:, -1])[0].float()

    telling = 0  # picks that scale s + 1 (e.g. cond + s · (cond − uncond)) would change
    with torch.no_grad():
        for t in range(1, columns.shape[1]):
            cond, uncond = logits(prompt.input_ids, t), logits(prompt.without_text(), t)
            picked = guide(cond, uncond, s, 1024).argmax(-1)
            open_ = torch.arange(8) < t  # codebook k is free from column k + 1
            assert torch.equal(columns[open_, t], picked[open_]), t
            telling += int((picked != guide(cond, uncond, s + 1, 1024).argmax(-1))[open_].sum())
    assert telling > 0  # the check can tell the scale from its neighbour on this model


def test_guided_stream_and_batch_give_the_one_shot_codes(text_gen):
    kw = dict(max_new_tokens=20, seed=3, temperature=0.8, cfg_scale=2.0)
    one_shot = text_gen.generate(text="Stream me.", decode_audio=False, **kw)
    list(text_gen.stream(text="Stream me.", chunk_frames=4, **kw))
    assert torch.equal(text_gen.last_result.columns, one_shot.columns)
    # a batch of guided prompts: 2B rows; greedy, since a batch draws its noise for all rows at once
    texts = ("Stream me.", "And me, a longer one.")
    prompts = [text_gen.build_prompt(t) for t in texts]
    given = text_gen.generate_batch([p.input_ids for p in prompts], cfg_scale=2.0, **GREEDY,
                                    unconditional_ids=[p.without_text() for p in prompts])  # fmt: skip
    found = text_gen.generate_batch([p.input_ids for p in prompts], cfg_scale=2.0, **GREEDY)  # cut from ids
    for text, a, b in zip(texts, given, found, strict=True):
        assert torch.equal(a.columns, text_gen.generate(text=text, cfg_scale=2.0, **GREEDY).columns)
        assert torch.equal(b.columns, a.columns)


def test_guidance_needs_the_unconditional_prompt_and_a_scale_of_at_least_0(gen):
    with pytest.raises(higgslab.HiggsLabError, match="cfg_scale=2.0 needs the prompt without its text"):
        gen.generate(PROMPT, cfg_scale=2.0)  # no text tokenizer to find the text in the ids
    with pytest.raises(higgslab.HiggsLabError, match="cfg_scale must be >= 0"):
        gen.generate(PROMPT, cfg_scale=-1.0, unconditional_ids=PROMPT[:5])


def test_the_checkpoint_generation_config_sets_the_default_scale(embedded_cache, tmp_path):
    import json
    import shutil

    _, model_dir, _ = embedded_cache
    assert Generator.from_paths(model_dir).cfg_scale == 1.0  # no generation_config.json: off
    shutil.copytree(model_dir, tmp_path / "model")
    (tmp_path / "model" / "generation_config.json").write_text(json.dumps({"guidance_scale": 3.0}))
    assert Generator.from_paths(tmp_path / "model").cfg_scale == 3.0
    (tmp_path / "model" / "generation_config.json").write_text(json.dumps({"guidance_scale": None}))
    assert Generator.from_paths(tmp_path / "model").cfg_scale == 1.0  # transformers writes null when unset


def test_auto_compiles_what_remains_of_long_cpu_runs(gen, monkeypatch):
    """The default `compile="auto"` runs eager for AUTO_COMPILE_AFTER steps and hands a CPU run that goes
    on past them to the compiled step, mid-run, with the eager codes; a shorter run never compiles."""
    from higgslab.generate import generator, session

    auto = Generator(gen.model)
    after = generator.AUTO_COMPILE_AFTER
    assert auto.compile == "auto"
    assert auto.compile_plan(after + 2) == (True, after + 1)
    assert auto.compile_plan(after + 1) == (False, after + 1)
    assert Generator(gen.model, compile=False).compile_plan(10**4) == (False, 1)
    assert Generator(gen.model, compile="reduce-overhead").compile_plan(1) == ("reduce-overhead", 1)
    compiled = []  # torch.compile stood in for: the run's rest takes the compiled path (static cache, window)

    def fake_compile(step, **kw):
        compiled.append(kw)
        return step

    monkeypatch.setattr(generator, "AUTO_COMPILE_AFTER", 20)
    monkeypatch.setattr(torch, "compile", fake_compile)
    kw = dict(temperature=0.9, top_k=40, seed=3)
    eager = Generator(gen.model, compile=False)
    assert torch.equal(
        auto.generate(PROMPT, max_new_tokens=21, **kw).columns,
        eager.generate(PROMPT, max_new_tokens=21, **kw).columns,
    )
    assert compiled == []
    static = []  # which steps saw the static cache
    step = session.step_function

    def spy(model, settings, compile, kept):
        inner = step(model, settings, compile, kept)

        def run(column, history, state, cache, noise):
            if kept is auto._steps:  # not the eager generator's steps
                static.append(cache.static)
            return inner(column, history, state, cache, noise)

        return run

    monkeypatch.setattr(session, "step_function", spy)
    assert torch.equal(
        auto.generate(PROMPT, max_new_tokens=30, **kw).columns,
        eager.generate(PROMPT, max_new_tokens=30, **kw).columns,
    )
    assert len(compiled) == 1
    assert static == [False] * 20 + [True] * 9  # steps 1..20 eager, 21..29 compiled
