"""`python -m higgslab.generate` as a subprocess: a valid WAV end to end on tiny checkpoints, retries, long\ntext from a file, the real stderr of a bad setting. The settings themselves: test_settings.py (in-process)."""

import importlib.util
import os
import subprocess
import sys

import pytest
import soundfile as sf

from higgslab.generate.__main__ import quote_free_text
from higgslab.generate.generator import Generator

# The generation runs need helper L's long-form loop (issue 19); until it lands only the checks run.
LONGFORM = pytest.mark.skipif(
    importlib.util.find_spec("higgslab.generate.longform") is None,
    reason="needs helper L's Generator.generate_long (higgslab/generate/longform.py): lands at the merge",
)


def generate(tmp_path, *overrides, cache=None):
    env_cache = str(cache or tmp_path / "cache")
    return subprocess.run(
        [sys.executable, "-m", "higgslab.generate", *overrides],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HIGGSLAB_CACHE": env_cache, "HIGGSLAB_EMBEDDED": "tiny"},
        timeout=300,
    )


@pytest.fixture(scope="module")
def cache(embedded_cache):
    return embedded_cache[0]


@LONGFORM
def test_writes_a_24k_mono_16bit_wav_and_says_when_a_chunk_gave_up(tmp_path, cache):
    # greedy without RAS (no draws) the tiny random model never ends its stream: the one try runs to its
    # limit and the run says so
    proc = generate(
        tmp_path,
        "text=Hello there, it's me.",
        "max_new_tokens=40",
        "max_retries=0",
        "temperature=0",
        "ras_window=0",
        "output_dir=out",
        cache=cache,
    )
    assert proc.returncode == 1, proc.stderr
    info = sf.info(tmp_path / "out" / "output_1.wav")
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    assert info.frames == 32 * 960  # 40 steps, no eos: 32 complete frames of 960 samples
    umask = os.umask(0)
    os.umask(umask)
    mode = (tmp_path / "out" / "output_1.wav").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask  # ordinary permissions, not mkstemp's owner-only
    for line in ("model: embedded tiny RANDOM", "device: cpu", "parameters:", "prompt ", "frames/s", "wrote"):
        assert line in proc.stdout
    assert "40 steps in" in proc.stdout and " steps/s (" in proc.stdout and " frames/s)" in proc.stdout
    assert "guidance" not in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == (
        "gave up: chunk 1 after 1 try (seed 1), the last runaway: no end of stream within 40 steps; wrote "
        "out/output_1.wav with the last try of each"
    )


@LONGFORM
def test_a_runaway_is_retried_with_the_next_seeds_and_the_file_keeps_the_requested_name(tmp_path, cache):
    proc = generate(tmp_path, "text=Hi.", "max_new_tokens=12", "seed=7", "cfg_scale=2", cache=cache)
    assert proc.returncode == 1, proc.stderr
    assert "classifier-free guidance 2" in proc.stdout
    assert "chunk 1 after 4 tries (seeds 7, 8, 9, 10)" in proc.stdout.strip().splitlines()[-1]
    assert [p.name for p in (tmp_path / "output_audio").iterdir()] == ["output_7.wav"]


@LONGFORM
def test_long_text_from_a_file_in_chunks_joined_and_per_chunk(tmp_path, cache):
    (tmp_path / "story.txt").write_text("It costs ${price}, she said.\n\nThen, at last, they left.\n")
    proc = generate(
        tmp_path, "text_file=story.txt", "chunk_files=true", "max_new_tokens=20", "max_retries=0", cache=cache
    )
    assert proc.returncode == 1, proc.stderr  # tiny: no chunk ends
    out = tmp_path / "output_audio"
    assert sorted(p.name for p in out.iterdir()) == [
        "output_1.wav",
        "output_1_chunk1.wav",
        "output_1_chunk2.wav",
    ]
    parts = [sf.info(out / f"output_1_chunk{i}.wav").frames for i in (1, 2)]
    assert parts == [12 * 960, 12 * 960] and sf.info(out / "output_1.wav").frames == sum(parts)
    assert "chunk 1/2: 5 words" in proc.stdout and "chunk 2/2: 5 words" in proc.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["text=Costs ${price}", "seed=abc"], "seed=abc: takes an integer or null"),  # the text did not fail
        (["text=Hi.", "output_dir=afile"], "output_dir afile is a file"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, overrides, message):
    """The real stderr of a few; every bad setting is checked in-process in test_settings.py."""
    (tmp_path / "afile").write_text("not a directory")
    proc = generate(tmp_path, *overrides)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no output folder, no cache written


def test_help_and_cfg_job_work_as_hydra_users_expect(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "higgslab.generate",
            "--cfg",
            "job",
            "text=x",
            "model=real",
            "generation=greedy",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    assert "model_path: model_cache" in proc.stdout and "temperature: 0.0" in proc.stdout
    assert (
        subprocess.run([sys.executable, "-m", "higgslab.generate", "--help"], capture_output=True).returncode
        == 0
    )


def test_quote_free_text_keeps_quoted_and_other_arguments():
    assert quote_free_text(["text=a, b", "seed=3", "text='q'"]) == ["text='a, b'", "seed=3", "text='q'"]
    assert quote_free_text(["scene=it's", "text='Hi' she said"]) == [
        "scene='it\\'s'",
        "text='\\'Hi\\' she said'",
    ]
    assert quote_free_text(["text=${x}", "voice=[a,b]"]) == ["text='\\${x}'", "voice=[a,b]"]


@LONGFORM
@pytest.mark.skipif(
    not hasattr(Generator, "references"), reason="needs helper P's Generator.references (voices)"
)
def test_voice_cloning_from_a_wav_file_with_a_scene(tmp_path, cache):
    import numpy as np

    t = np.arange(24000 * 2) / 24000
    sf.write(tmp_path / "voice.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 24000)
    proc = generate(
        tmp_path,
        "text=Say this, please.",
        "ref_audio=voice.wav",
        "ref_text=A reference voice.",
        "scene=A quiet room.",
        "max_new_tokens=20",
        "min_duration_s=0",
        "max_retries=0",
        "output_dir=out",
        cache=cache,
    )
    assert proc.returncode == 1, proc.stderr  # tiny: no end of stream
    prompt_tokens = int(proc.stdout.split(", prompt ")[1].split()[0])
    assert prompt_tokens > 50 + 50  # the 2 s reference enters as 50 frames + 9 delayed columns
    assert sf.info(tmp_path / "out" / "output_1.wav").frames == 12 * 960
