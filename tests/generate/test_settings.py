"""The generation CLI's settings, in-process: every bad setting is one line before anything loads, nothing
is written; a run's naming, seeds, log and exit code with a stand-in generator (no model, no subprocess)."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir

from higgslab.conf import CONF_DIR
from higgslab.errors import HiggsLabError
from higgslab.generate import __main__ as cli
from higgslab.generate.generator import Generator
from higgslab.generate.result import GenerationStats
from higgslab.generate.settings import settings_from


@pytest.fixture(scope="module", autouse=True)
def hydra_initialised():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield


def config(*overrides: str):
    """generate.yaml composed with command-line overrides, free text quoted as the CLI does."""
    return compose("generate", overrides=cli.quote_free_text(list(overrides)))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with a file, a 2 s clip, a voices folder and transcripts; any model load fails."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a directory")
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000 * 2) / 16000)
    sf.write(tmp_path / "clip.wav", tone, 16000)
    (tmp_path / "voices").mkdir()
    for name in ("alice", "bob"):
        sf.write(tmp_path / "voices" / f"{name}.wav", tone, 16000)
        (tmp_path / "voices" / f"{name}.txt").write_text(f"I am {name}.")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "dialogue.txt").write_text("[SPEAKER0] Hi there.\n[SPEAKER1] Hello, ${you}.\n")

    def no_model(*args, **kw):
        raise AssertionError("a model was loaded for a bad setting")

    monkeypatch.setattr(Generator, "from_pretrained", no_model)
    return tmp_path


BAD = [
    # types: one line naming the key, the value and what it takes
    (["seed=abc"], "seed=abc: takes an integer or null"),
    (["temperature=abc"], "temperature=abc: takes a number"),
    (["top_k=abc"], "top_k=abc: takes an integer"),
    (["max_new_tokens=abc"], "max_new_tokens=abc: takes an integer"),
    (["max_new_tokens=1.5"], "max_new_tokens=1.5: takes an integer"),
    (["compile=xyz"], "compile=xyz: takes auto, true, false or a torch.compile mode"),
    (["overwrite=maybe"], "overwrite=maybe: takes true or false"),
    (["overwrite=2"], "overwrite=2: takes true or false"),
    (["chunk_files=yes"], "chunk_files=yes: takes true or false"),
    (["+colour=red"], "colour: not a setting of generate"),
    (["voice=3"], "voice=3: takes a voice name or a list of names"),
    # ranges, before anything loads
    (["temperature=-1"], "temperature must be >= 0"),
    (["top_p=1.5"], "top_p must be in (0, 1]"),
    (["cfg_scale=-1"], "cfg_scale must be >= 0"),
    (["max_new_tokens=0"], "max_new_tokens must be >= 1, got 0"),
    (["seed=-1"], "seed must be >= 0, got -1"),
    (["max_retries=-1"], "max_retries must be >= 0"),
    (["chunk_max_words=0"], "chunk_max_words must be >= 1"),
    (["seconds_per_word=0"], "seconds_per_word must be > 0 (or null)"),
    (["ref_max_s=0"], "ref_max_s must be > 0"),
    (["chunk_method=sentence"], "chunk_method=sentence: takes auto | none | word | speaker"),
    (["ref_too_long=trim"], "ref_too_long=trim: takes refuse | cut"),
    (["device=tpu"], "unknown device 'tpu'"),
    (["quantize=int3"], "quantize='int3': use one of none, int8, int4"),
    (["quantize=int4", "group_size=100"], "quantize group_size=100: int4 takes 32, 64, 128, 256"),
    (["tokenizer_device=tpu"], "unknown device 'tpu'"),
    # combinations that would be ignored
    (["model_path=nowhere"], "tokenizer_path is needed with model_path"),
    (["tokenizer_path=somewhere"], "tokenizer_path=somewhere is used only with model_path="),
    (["ref_text=Hello."], "ref_text is the transcript of ref_audio: pass ref_audio= too"),
    (["voice=alice", "voices_dir=voices", "ref_audio=clip.wav"], "give voice= or ref_audio=, not both"),
    (["voices_dir=voices"], "voices_dir is used only with voice=name"),
    (["ref_in_system=true"], "ref_in_system=true needs a reference"),
    (["text=Hi.", "text_file=dialogue.txt"], "give text= or text_file=, not both"),
    (["chunk_method=none", "context_chunks=2"], "context_chunks=2 is ignored with chunk_method=none"),
    (["chunk_method=word", "chunk_max_turns=2"], "chunk_max_turns=2 is ignored with chunk_method=word"),
    (["chunk_max_turns=2"], "chunk_max_turns=2 is ignored with chunk_method=word (chunk_method=auto chose"),
    (["chunk_method=speaker"], "chunk_method=speaker needs [SPEAKERn] tags"),
    # the text to speak
    (["text=   "], "text is empty"),
    (["text=Say <|eot_id|> now."], "text holds the special token string '<|eot_id|>'"),
    (["scene=<|begin_of_text|>"], "scene holds the special token string '<|begin_of_text|>'"),
    # files
    (["ref_audio=missing.wav"], "ref_audio missing.wav: no such file"),
    (["ref_audio=afile"], "ref_audio afile: not an audio file soundfile can read"),
    (["ref_audio=clip.wav", "ref_max_s=1.5"], "ref_audio clip.wav is 2.0 s, longer than ref_max_s=1.5"),
    (["voice=nobody", "voices_dir=voices"], "nobody"),
    (["voice=alice", "voices_dir=nowhere"], "voices_dir nowhere is not a folder"),
    (
        ["voice=alice", "voices_dir=voices", "ref_max_s=1"],
        "voice 'alice': voices/alice.wav is 2.0 s, longer than",
    ),
    (["adapter_path=nowhere"], "adapter_path nowhere: no such folder"),
    (["adapter_path=voices"], "adapter_path voices: holds no adapter_config.json, so it is not"),
    (["output_dir=afile"], "output_dir afile is a file, not a directory"),
    (["output_dir=afile/sub/dir"], "output_dir afile/sub/dir: afile is a file, not a directory"),
]
FROM_FILE = [
    (["text_file=missing.txt"], "text_file missing.txt: no such file"),
    (["text_file=latin1.txt"], "text_file latin1.txt: not UTF-8 text (byte 3)"),
    (
        ["text_file=dialogue.txt", "chunk_max_words=20"],
        "chunk_max_words=20 is ignored with chunk_method=speaker",
    ),
    (["text_file=dialogue.txt", "voice=[alice]", "voices_dir=voices"], "the text has [SPEAKER1] but voice="),
    (["text=Plain text.", "voice=[alice,bob]", "voices_dir=voices"], "voice alice, bob would be ignored"),
]


@pytest.mark.parametrize(
    "overrides, message", BAD + FROM_FILE, ids=lambda x: " ".join(x) if isinstance(x, list) else ""
)
def test_a_bad_setting_is_one_line_before_anything_loads_and_nothing_is_written(workdir, overrides, message):
    needs_text = not any(o.startswith(("text=", "text_file=")) for o in overrides)
    before = sorted(workdir.rglob("*"))
    with pytest.raises(HiggsLabError) as e:
        cli.run(config(*(["text=Hi."] if needs_text else []), *overrides))
    line = str(e.value)
    assert "\n" not in line and message in line, line
    assert sorted(workdir.rglob("*")) == before  # no output folder, no probe file left behind


def test_an_existing_output_is_refused_before_loading_and_kept(workdir):
    out = workdir / "output_audio"
    out.mkdir()
    (out / "output_1_chunk2.wav").write_bytes(b"keep me")
    with pytest.raises(HiggsLabError, match=r"output_1_chunk2.wav already exists \(pass overwrite=true"):
        cli.run(config("text=Hi.", "chunk_files=true"))
    (out / "output_1.wav").write_bytes(b"keep me")
    with pytest.raises(HiggsLabError, match=r"output_1.wav already exists"):
        cli.run(config("text=Hi."))
    assert (out / "output_1.wav").read_bytes() == b"keep me"


def test_a_read_only_output_folder_is_refused(workdir):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders: the probe cannot fail here")
    (workdir / "locked").mkdir(mode=0o555)
    with pytest.raises(
        HiggsLabError, match=r"output_dir locked/new: cannot write in locked \(Permission denied\)"
    ):
        settings_from(config("text=Hi.", "output_dir=locked/new"))


def test_an_output_folder_on_a_read_only_file_system_is_refused(workdir):
    """Where permissions do not bind (root), a read-only mount does."""
    target = "/proc/higgslab-out"
    with pytest.raises(HiggsLabError, match=r"output_dir /proc/higgslab-out: cannot write in /proc \("):
        settings_from(config("text=Hi.", f"output_dir={target}"))


def test_device_cuda_without_cuda_is_one_line(workdir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(HiggsLabError, match="device 'cuda' is not available here"):
        cli.run(config("text=Hi.", "device=cuda"))


@pytest.mark.parametrize("text", ["Costs ${price}, today.", "${oc.env:HOME}", "a \\${x} \\\\${y} it's\\"])
def test_text_is_spoken_as_typed_never_interpolated(workdir, text):
    assert settings_from(config(f"text={text}")).text == text
    (workdir / "t.txt").write_text(text)
    assert settings_from(config("text_file=t.txt")).text == text  # read as is


def test_good_settings_are_typed_and_normalised(workdir):
    s = settings_from(
        config(
            "text_file=dialogue.txt", "voice=[alice,bob]", "voices_dir=voices", "seed=null", "compile=null"
        )
    )
    assert s.text.startswith("[SPEAKER0] Hi there.") and s.voice == ["alice", "bob"] and s.seed is None
    assert s.compile is False and s.overwrite is False and s.chunk_method == "auto"
    s = settings_from(
        config("text=Hi.", "ref_audio=clip.wav", "ref_max_s=1", "ref_too_long=cut", "compile=true")
    )
    assert (s.ref_audio, s.ref_max_s, s.compile, s.temperature) == ("clip.wav", 1.0, True, 0.3)
    assert (
        settings_from(config("text=Hi.", "voice=alice", "voices_dir=voices", "compile=reduce-overhead")).voice
        == "alice"
    )


# ---- a run, with a stand-in generator ------------------------------------------------------------------
RATE = 24000


def chunk(i, seed, seconds, finished=True, tries=(), limit=412):
    return SimpleNamespace(index=i, text=f"chunk {i}", words=3, max_new_tokens=limit, seed=seed, tries=list(tries),
                           steps=limit if not finished else 100, frames=0, duration_s=seconds, finished=finished,
                           start_sample=0, end_sample=0, prompt_tokens=40, context_chunks=0)  # fmt: skip


class FakeGenerator:
    """What `run` uses of a `Generator`; `generate_long` returns the given chunk reports."""

    label = "stand-in"
    cfg_scale = 1.0
    config = SimpleNamespace(num_codebooks=8)
    model = SimpleNamespace(
        num_parameters=lambda text_head: 1_000_000, device="cpu", dtype="float32", modules=lambda: []
    )

    def __init__(self, chunks):
        self.chunks, self.calls = chunks, []

    def references(self, *args, **kw):
        self.calls.append(("references", args, kw))
        return ["a reference"]

    def generate_long(self, text, scene=None, **kw):
        self.calls.append(("generate_long", (text, scene), kw))
        kw["on_event"]("chunk 1/1: seed 1 ran to its limit; retrying with seed 2")
        kw["on_limit"](100)
        kw["progress"](96)
        kw["progress"](4)
        start = 0
        for c in self.chunks:
            c.start_sample, c.end_sample = start, start + int(c.duration_s * RATE)
            start = c.end_sample
        audio = np.linspace(-0.5, 0.5, start, dtype=np.float32)
        stats = GenerationStats(steps=100, frames=50, decode_s=1.0)
        return SimpleNamespace(chunks=self.chunks, audio=audio, sample_rate=RATE, duration_s=start / RATE,
                               stats=stats, seed=kw["seed"], finished=all(c.finished for c in self.chunks))  # fmt: skip


@pytest.fixture
def fake(workdir, monkeypatch):
    """Install a stand-in generator with the given chunk reports."""

    def install(*chunks):
        gen = FakeGenerator(list(chunks))
        monkeypatch.setattr(Generator, "from_pretrained", lambda *a, **kw: gen)
        return gen

    return install


def test_a_retried_chunk_keeps_the_requested_seeds_name_and_logs_the_seed_used(fake, workdir, capsys):
    gen = fake(chunk(0, seed=2, seconds=1.5, tries=[(1, "runaway: no end of stream within 412 steps")]))
    assert cli.run(config("text=Hello there, friend.", "max_retries=2", "chunk_max_words=30")) == 0
    out = capsys.readouterr().out
    assert "retrying with seed 2" in out  # the generator's event lines are printed
    assert "chunk 1/1: 3 words, prompt 40 tokens, seed 2, 100/412 steps, 1.50 s" in out
    assert "100%|" in out and "100/100" in out  # the bar ends complete, at the steps actually run
    assert [p.name for p in (workdir / "output_audio").iterdir()] == ["output_1.wav"]
    assert sf.info(workdir / "output_audio" / "output_1.wav").frames == int(1.5 * RATE)
    assert out.strip().splitlines()[-1] == "wrote output_audio/output_1.wav"
    (name, (text, scene), kw) = gen.calls[-1]
    assert (name, text, scene) == ("generate_long", "Hello there, friend.", None)
    expected = {"references": None, "references_in_system": False, "chunk_method": "auto", "chunk_max_words": 30,
                "context_chunks": None, "max_new_tokens": 2048, "seconds_per_word": 1.0, "seconds_extra": 2.0,
                "max_retries": 2, "min_duration_s": 0.5, "seed": 1, "temperature": 0.3, "top_k": 50,
                "top_p": 0.95, "ras_window": 7, "ras_max_repeat": 2, "cfg_scale": None}  # fmt: skip
    assert {k: kw[k] for k in expected} == expected and "chunk_max_turns" not in kw


def test_seed_null_draws_one_prints_it_and_names_the_output_after_it(fake, workdir, capsys):
    gen = fake(chunk(0, seed=0, seconds=1.0))
    assert cli.run(config("text=Hi.", "seed=null")) == 0
    out = capsys.readouterr().out
    seed = gen.calls[-1][2]["seed"]
    assert isinstance(seed, int) and f"seed: {seed} (drawn for seed=null; pass seed={seed}" in out
    assert (workdir / "output_audio" / f"output_{seed}.wav").is_file()


def test_a_chunk_that_gave_up_is_the_last_line_and_exit_code_1_with_per_chunk_files(fake, workdir, capsys):
    runaway = "runaway: no end of stream within 412 steps"
    fake(
        chunk(0, seed=1, seconds=2.0),
        chunk(1, seed=5, seconds=16.5, finished=False, tries=[(s, runaway) for s in (2, 3, 4, 5)]),
        chunk(2, seed=6, seconds=0.25),  # ended, but too short: gave up too
    )
    code = cli.run(config("text=One. Two. Three.", "chunk_files=true", "voice=alice", "voices_dir=voices"))
    assert code == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (
        f"gave up: chunk 2 after 4 tries (seeds 2, 3, 4, 5), the last {runaway}; chunk 3 after 1 try (seed 6), "
        "the last short: 0.25 s < 0.5 s; wrote output_audio/output_1.wav with the last try of each"
    )
    out = workdir / "output_audio"
    assert sorted(p.name for p in out.iterdir()) == [
        "output_1.wav", "output_1_chunk1.wav", "output_1_chunk2.wav", "output_1_chunk3.wav"
    ]  # fmt: skip
    whole, _ = sf.read(out / "output_1.wav")
    parts = [sf.read(out / f"output_1_chunk{i}.wav")[0] for i in (1, 2, 3)]
    assert [len(p) for p in parts] == [2 * RATE, int(16.5 * RATE), RATE // 4]
    np.testing.assert_array_equal(np.concatenate(parts), whole)  # the chunks are the joined file's spans


def test_voices_are_encoded_once_and_handed_to_generate_long(fake, workdir):
    gen = fake(chunk(0, seed=1, seconds=1.0), chunk(1, seed=2, seconds=1.0))
    assert cli.run(config("text_file=dialogue.txt", "voice=[alice,bob]", "voices_dir=voices", "ref_in_system=true",
                          "ref_max_s=10", "ref_too_long=cut")) == 0  # fmt: skip
    (_, args, kw), (_, (text, _), long_kw) = gen.calls
    assert args == (["alice", "bob"], "voices", None, None) and kw == {
        "ref_max_s": 10.0,
        "ref_too_long": "cut",
    }
    assert long_kw["references"] == ["a reference"] and long_kw["references_in_system"] is True
    assert text.startswith("[SPEAKER0] Hi there.") and "${you}" in text  # the file, read as is
