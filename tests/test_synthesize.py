"""`python -m higgslab.synthesize` on the tiny random checkpoints: each line's WAV is what `Generator.generate`
makes for its seed, torchrun's 2 ranks write the same files as one process, a rerun speaks only what is
missing, bad manifests are one line before anything loads, and eval scores the folder."""

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stdout
from io import StringIO

import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir

from higgslab.conf import CONF_DIR
from higgslab.errors import HiggsLabError
from higgslab.synthesize import SAMPLING, read_manifest, run, settings_from
from tests.ranks import free_port, run_ranks

LINES = [
    {"text": "Hello there."},
    {"text": "A second, longer sentence.", "id": "second", "seed": 7},
    None,  # a blank line: skipped, still counted
    {"text": "With a scene.", "scene": "A quiet room."},
    {"text": "In a voice.", "voice": "alice", "max_new_tokens": 16},
]
IDS = ["00001", "second", "00004", "00005"]
OVERRIDES = ["max_new_tokens=24", "seed=100", "device=cpu"]


def write_manifest(path, lines) -> str:
    path.write_text("".join(("" if line is None else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def config(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="synthesize", overrides=list(overrides))


def synthesize(manifest, out, *overrides) -> tuple[int, str]:
    """One in-process run: (exit code, what it printed)."""
    printed = StringIO()
    with redirect_stdout(printed):
        code = run(config(f"manifest={manifest}", f"output_dir={out}", *OVERRIDES, *overrides))
    return code, printed.getvalue()


@pytest.fixture(scope="module")
def tiny(embedded_cache):
    """HIGGSLAB_EMBEDDED=tiny, with the session's cache, for this module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HIGGSLAB_CACHE", str(embedded_cache[0]))
    mp.setenv("HIGGSLAB_EMBEDDED", "tiny")
    yield embedded_cache[0]
    mp.undo()


@pytest.fixture(scope="module")
def one_process(tiny, tmp_path_factory):
    """The manifest spoken by one process: (manifest, output folder, exit code, printed)."""
    root = tmp_path_factory.mktemp("synth")
    manifest = write_manifest(root / "manifest.jsonl", LINES)
    code, printed = synthesize(
        manifest, root / "out", "rows=2"
    )  # 4 items: a queue, rows joined while running
    return manifest, root / "out", code, printed


def summary_of(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_each_line_is_a_wav_of_what_generate_makes_with_its_seed(one_process, tmp_path):
    from higgslab.generate import voices
    from higgslab.generate.generator import Generator
    from higgslab.io.audio import write_wav

    _, out, code, printed = one_process
    summary = summary_of(out)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{i}{ext}" for i in IDS for ext in (".wav", ".json")] + ["summary.json"])
    records = {r["id"]: r for r in summary["records"]}
    assert [r["id"] for r in summary["records"]] == IDS
    assert [records[i]["seed"] for i in IDS] == [100, 7, 103, 104]  # seed + line number - 1, or its own
    assert (summary["items"], summary["done"], summary["skipped"], summary["failed"]) == (4, 4, 0, 0)

    gen = Generator.from_pretrained(device="cpu")
    alice, transcript = voices.voice_files("alice")
    sampling = {key: summary["settings"][key] for key in SAMPLING}
    for i, line in zip(IDS, [x for x in LINES if x], strict=True):
        voice = {"ref_audio": alice, "ref_text": transcript} if "voice" in line else {}
        r = gen.generate(text=line["text"], scene=line.get("scene"), seed=records[i]["seed"],
                         max_new_tokens=line.get("max_new_tokens", 24), **voice, **sampling)  # fmt: skip
        expected = write_wav(tmp_path / f"{i}.wav", r.audio, r.sample_rate)
        assert (out / f"{i}.wav").read_bytes() == expected.read_bytes(), i
        assert (records[i]["frames"], records[i]["finished"]) == (r.codes.shape[1], r.finished)
        assert records[i]["duration_s"] == r.duration_s and records[i]["status"] == "done"
    info = sf.info(out / "00001.wav")
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")

    unfinished = [i for i in IDS if not records[i]["finished"]]
    assert summary["unfinished"] == len(unfinished) and code == (1 if unfinished else 0)
    last = printed.strip().splitlines()[-1]
    assert (
        last.startswith(f"unfinished: {', '.join(unfinished)} ran to max_new_tokens")
        if unfinished
        else (last.endswith("summary.json"))
    )


def torchrun(manifest, out, *overrides, nproc: int = 2) -> subprocess.Popen:
    """`torchrun --nproc_per_node nproc -m higgslab.synthesize` on 127.0.0.1, in its own process group."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "higgslab.synthesize",
           f"manifest={manifest}", f"output_dir={out}", *OVERRIDES, *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    from tests.train.test_finetune import kill_tree

    try:
        printed, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        pytest.fail(f"torchrun did not finish in {timeout} s")
    return proc.returncode, printed.decode()


def assert_same_files(one, two) -> None:
    """Every WAV and record of `two` is byte for byte that of `one`; the summaries hold the same records."""
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    for i in IDS:
        for ext in (".wav", ".json"):
            assert (two / f"{i}{ext}").read_bytes() == (one / f"{i}{ext}").read_bytes(), f"{i}{ext}"
    summary = summary_of(two)
    assert summary["world_size"] == 2 and summary["records"] == summary_of(one)["records"]


def _rank(rank: int, world: int, port: int, cfg, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # a spawned rank starts with all cores; float sums depend on the count
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")  # fmt: skip
    with redirect_stdout(StringIO()):
        run(cfg)


def test_two_forked_ranks_write_the_files_of_one_process(one_process, tmp_path):
    """The fast variant of the torchrun test below: the CLI's `run` on 2 ranks forked from this process
    (seconds, where torchrun's fresh interpreters take most of a minute), gloo on 127.0.0.1, one row each
    (rows change nothing either)."""
    import torch
    import torch.multiprocessing as mp

    manifest, one, _, _ = one_process
    cfg = config(f"manifest={manifest}", f"output_dir={tmp_path / 'two'}", *OVERRIDES, "rows=1")
    # as tests/train/test_finetune.py: after tests/test_device.py renamed the privateuse1 backend, fresh ranks
    renamed = torch._C._get_privateuse1_backend_name() != "privateuseone"
    context = mp.get_context("spawn" if renamed else "fork")
    assert run_ranks(context, _rank, (2, free_port(), cfg, torch.get_num_threads())) == [0, 0]
    assert_same_files(one, tmp_path / "two")


@pytest.mark.slow  # torchrun's two fresh interpreters: most of a minute
def test_two_torchrun_ranks_write_the_files_of_one_process(one_process, tmp_path):
    manifest, one, code, _ = one_process
    returncode, printed = finish(torchrun(manifest, tmp_path / "two", "rows=1"))
    assert returncode == code, printed[-3000:]
    assert_same_files(one, tmp_path / "two")


def test_a_rerun_speaks_only_what_is_missing(one_process, tmp_path):
    manifest, one, code, _ = one_process
    out = shutil.copytree(one, tmp_path / "out")
    for path in out.iterdir():  # an old time: a file written again would show a new one
        os.utime(path, (1e9, 1e9))
    (out / "second.wav").unlink()  # killed before it was written ...
    (out / "00004.json").unlink()  # ... or between its WAV and its record
    (out / ".second.wav.abcd1234.tmp").write_bytes(b"half a write")  # the kill's leftover
    rerun, printed = synthesize(manifest, out, "rows=2")
    assert rerun == code
    summary = summary_of(out)
    assert (summary["done"], summary["skipped"]) == (2, 2)
    assert [r["status"] for r in summary["records"]] == ["skipped", "done", "done", "skipped"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one.iterdir())
    for path in out.iterdir():
        if path.name != "summary.json":
            assert path.read_bytes() == (one / path.name).read_bytes(), path.name
        made_now = path.name in ("second.wav", "second.json", "00004.wav", "00004.json", "summary.json")
        assert (path.stat().st_mtime != 1e9) == made_now, path.name
    assert "4 items, 2 already in" in printed

    with pytest.raises(HiggsLabError, match=r"00001.wav was made with another settings than manifest line 1"):
        synthesize(manifest, out, "temperature=0.5")
    changed = write_manifest(tmp_path / "changed.jsonl", [{"text": "Something else."}])
    with pytest.raises(HiggsLabError, match=r"00001.wav was made with another text than manifest line 1"):
        synthesize(changed, out)


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": "Hi."}', "{text: Hi}"], r"line 2: not JSON \(Expecting property name"),
        (['["Hi."]'], r"line 1: takes one JSON object"),
        (['{"id": "a"}'], r"line 1: no text"),
        (['{"text": "Hi.", "txt": "x"}'], r"line 1: unknown key 'txt' \(the keys: text, id, voice"),
        (['{"text": "  "}'], r"line 1: text is empty"),
        (['{"text": "Hi <|eot_id|>"}'], r"line 1: text holds the special token string"),
        (['{"text": "a", "id": "x"}', "", '{"text": "b", "id": "x"}'], r"line 3: id 'x' repeats line 1"),
        (['{"text": "a"}', '{"text": "b", "id": "00001"}'], r"line 2: id '00001' repeats line 1"),
        (['{"text": "a", "id": "../x"}'], r'line 1: id "../x": takes a file name'),
        (['{"text": "a", "id": "summary"}'], r'line 1: id "summary": takes a file name'),
        (
            ['{"text": "a", "voice": "carol"}'],
            r"line 1: voice 'carol' not found in .*voices there: alice, bob",
        ),
        (['{"text": "a", "seed": -1}'], r"line 1: seed must be in \[0, 2\*\*63\)"),
        (['{"text": "a", "seed": "7"}'], r'line 1: seed "7": takes an integer'),
        (['{"text": "a", "max_new_tokens": 0}'], r"line 1: max_new_tokens must be >= 1"),
        (["", "  "], r"holds no item"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_its_line(tmp_path, lines, message):
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    s = settings_from(config(f"manifest={tmp_path / 'm.jsonl'}", f"output_dir={tmp_path / 'out'}"))
    with pytest.raises(HiggsLabError, match=rf"^manifest .*m.jsonl {message}"):
        read_manifest(s)


def test_a_bad_line_on_the_command_line_is_one_line_exit_2_and_nothing_written(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"text": "Hi."}\n{"text": "Hi.", "voice": "nobody"}\n')
    proc = subprocess.run([sys.executable, "-m", "higgslab.synthesize", "manifest=m.jsonl", "output_dir=out"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.startswith("error: manifest m.jsonl line 2: voice 'nobody' not found in ")
    assert proc.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_eval_scores_the_folder_without_loading_a_model(one_process, tmp_path, monkeypatch):
    from higgslab.eval import __main__ as eval_cli
    from higgslab.eval import quality
    from higgslab.eval.report import validate
    from higgslab.generate.generator import Generator

    _, out, _, _ = one_process
    heard = []
    monkeypatch.setattr(quality, "missing", lambda: None)
    monkeypatch.setattr(
        quality, "transcribe", lambda audio, sr: heard.append((len(audio), sr)) or "hello there"
    )
    monkeypatch.setattr(quality, "wer", lambda ref, hyp: float(ref.lower().rstrip(".") != hyp))
    monkeypatch.setattr(Generator, "from_paths", lambda *a, **k: pytest.fail("eval loaded a model"))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("eval", [f"audio_dir={out}", "mode=quality", f"output_dir={tmp_path}"])
    report, folder = eval_cli.run(cfg, "test")
    validate(json.loads((folder / "report.json").read_text()))
    summary = summary_of(out)
    q = report["quality"]
    assert [(i["id"], i["text"]) for i in q["items"]] == [(r["id"], r["text"]) for r in summary["records"]]
    assert [i["wer"] for i in q["items"]] == [0.0, 1.0, 1.0, 1.0] and q["wer"] == 0.75
    assert [i["duration_s"] for i in q["items"]] == [r["duration_s"] for r in summary["records"]]
    assert heard == [(round(r["duration_s"] * 24000), 24000) for r in summary["records"]]
    assert report["model"] == summary["model"] and report["settings"]["audio_dir"] == str(out)
    assert report["precision"]["status"] == "skipped"

    for overrides, message in [
        (["mode=all"], r"audio_dir scores the clips of a folder: it takes mode=quality, not all"),
        (["mode=quality", f"audio_dir={tmp_path}"], r"holds no summary.json"),
    ]:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("eval", [f"audio_dir={out}", *overrides])
        with pytest.raises(HiggsLabError, match=message):
            eval_cli.check_config(cfg)


@pytest.mark.slow
def test_torchrun_killed_midway_and_rerun_finishes_only_the_missing_items(tiny, tmp_path):
    """The issue's check with a real kill: SIGKILL torchrun once some items are written, rerun, and the
    folder holds the one-process files; the items written before the kill are not written again."""
    from tests.train.test_finetune import kill_tree

    lines = [{"text": f"Sentence number {i} of a longer manifest."} for i in range(12)]
    manifest = write_manifest(tmp_path / "long.jsonl", lines)
    long = ["max_new_tokens=160", "rows=1"]
    code, _ = synthesize(manifest, tmp_path / "one", *long)
    out = tmp_path / "two"
    proc = torchrun(manifest, out, *long)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if out.is_dir() and len(list(out.glob("*.json"))) >= 2:
                break
            time.sleep(0.05)
    finally:
        kill_tree(proc)
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert "summary.json" not in written and 2 <= len(written) < len(lines), "not killed midway"
    returncode, printed = finish(torchrun(manifest, out, *long))
    assert returncode == code, printed[-3000:]
    summary = summary_of(out)
    assert (summary["skipped"], summary["done"]) == (len(written), len(lines) - len(written))
    for name, mtime in written.items():  # each had its WAV before its record: skipped, untouched
        assert (out / name).stat().st_mtime_ns == mtime, name
    for path in (tmp_path / "one").iterdir():
        if path.name != "summary.json":
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
