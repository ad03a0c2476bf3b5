"""`python -m higgslab.generate`: a valid WAV end to end on tiny checkpoints, retries, one-line errors."""

import os
import subprocess
import sys

import pytest
import soundfile as sf

from higgslab.generate.__main__ import quote_free_text


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


def test_writes_a_24k_mono_16bit_wav_with_a_comma_in_the_text(tmp_path, cache):
    proc = generate(
        tmp_path, "text=Hello there, it's me.", "max_new_tokens=40", "output_dir=out", cache=cache
    )
    assert proc.returncode == 0, proc.stderr
    info = sf.info(tmp_path / "out" / "output_1.wav")
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    assert info.frames == 32 * 960  # 40 steps, no eos: 32 complete frames of 960 samples
    umask = os.umask(0)
    os.umask(umask)
    mode = (tmp_path / "out" / "output_1.wav").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask  # ordinary permissions, not mkstemp's owner-only
    for line in ("model: embedded tiny RANDOM", "device: cpu", "parameters:", "prompt:", "frames/s", "wrote"):
        assert line in proc.stdout
    assert "40 steps in" in proc.stdout and " steps/s (" in proc.stdout and " frames/s)" in proc.stdout


def test_short_audio_is_retried_with_other_seeds_at_most_three_times(tmp_path, cache):
    proc = generate(tmp_path, "text=Hi.", "max_new_tokens=12", "min_duration_s=5", "seed=7", cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("retrying with seed") == 3
    assert [p.name for p in (tmp_path / "output_audio").iterdir()] == ["output_10.wav"]


def test_guidance_scale_is_an_override_and_said(tmp_path, cache):
    proc = generate(tmp_path, "text=Hi there.", "max_new_tokens=20", "cfg_scale=2", cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert "classifier-free guidance 2" in proc.stdout
    assert "guidance" not in generate(tmp_path, "text=Hi.", "max_new_tokens=12", "seed=2", cache=cache).stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["text=   "], "text is empty"),
        (["text=Hi.", "device=tpu"], "device"),
        (["text=Hi.", "temperature=-1"], "temperature must be >= 0"),
        (["text=Hi.", "top_p=1.5"], r"top_p must be in (0, 1]"),
        (["text=Hi.", "cfg_scale=-1"], "cfg_scale must be >= 0"),
        (["text=Hi.", "ref_audio=missing.wav"], "ref_audio missing.wav: no such file"),
        (["text=Hi.", "output_dir=afile"], "output_dir afile is a file"),
        (["text=Hi.", "model_path=nowhere"], "tokenizer_path is needed"),
    ],
)
def test_bad_input_is_one_line(tmp_path, cache, overrides, message):
    (tmp_path / "afile").write_text("not a directory")
    proc = generate(tmp_path, *overrides, "max_new_tokens=12", cache=cache)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "output_audio").exists()


def test_existing_output_is_never_overwritten(tmp_path, cache):
    out = tmp_path / "output_audio"
    out.mkdir()
    (out / "output_1.wav").write_bytes(b"keep me")
    proc = generate(tmp_path, "text=Hi.", "max_new_tokens=12", cache=cache)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (out / "output_1.wav").read_bytes() == b"keep me"


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
    assert quote_free_text(["scene=it's"]) == ["scene='it\\'s'"]


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
        "output_dir=out",
        cache=cache,
    )
    assert proc.returncode == 0, proc.stderr
    prompt_tokens = int(proc.stdout.split("prompt: ")[1].split()[0])
    assert prompt_tokens > 50 + 50  # the 2 s reference enters as 50 frames + 9 delayed columns
    assert sf.info(tmp_path / "out" / "output_1.wav").frames == 12 * 960
