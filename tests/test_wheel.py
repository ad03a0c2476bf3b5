"""A non-editable install works: build a wheel, install it in a fresh venv, and from a folder outside the
repo print the config and generate with the embedded higgslab-mini (configs and weights from the wheel).

The venv sees the system's packages (torch etc. are not reinstalled), including the editable higgslab
this machine may have; the test checks that the wheel's copy is the one imported.
"""

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def run(args: list, cwd: Path) -> str:
    """Run without this checkout on PYTHONPATH (the tests' own import path), returning stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HIGGSLAB_EMBEDDED")}
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{args}: {proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory) -> Path:
    """A fresh venv's python with higgslab installed from a wheel built from this checkout."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    shutil.copytree(REPO / "higgslab", src / "higgslab", ignore=shutil.ignore_patterns("__pycache__"))
    # --no-build-isolation: the installed setuptools builds it, nothing is downloaded
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", src],
        root,
    )
    (wheel,) = (root / "dist").glob("higgslab-*.whl")
    venv.create(root / "venv", system_site_packages=True, with_pip=False)  # the system's pip runs in it
    python = root / "venv" / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel], root)
    return python


def test_wheel_in_a_fresh_venv_runs_the_cli_with_its_own_configs(venv_python, tmp_path):
    site = run(
        [venv_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
    ).strip()
    where = run(
        [
            venv_python,
            "-c",
            "import higgslab, higgslab.conf as c; print(higgslab.__file__); print(c.CONF_DIR)",
        ],
        tmp_path,
    ).split()
    assert where == [f"{site}/higgslab/__init__.py", f"{site}/higgslab/conf"]  # not the checkout's

    job = run([venv_python, "-m", "higgslab.generate", "--cfg", "job"], tmp_path)
    assert "max_new_tokens: 2048" in job and "model_path: null" in job  # generate.yaml + its groups

    serve = run([venv_python, "-m", "higgslab.serve", "--cfg", "job"], tmp_path)
    assert "host: 127.0.0.1" in serve and "rows: 16" in serve  # serve.yaml, shipped
    synthesize = run([venv_python, "-m", "higgslab.synthesize", "--cfg", "job"], tmp_path)
    assert "manifest: ???" in synthesize and "model_path: null" in synthesize  # synthesize.yaml + its groups

    out = run([venv_python, "-m", "higgslab.generate", "text=Hello.", "seed=1", "output_dir=out"], tmp_path)
    assert "model: embedded higgslab-mini" in out
    info = sf.info(tmp_path / "out" / "output_1.wav")
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    assert info.duration >= 0.5  # min_duration_s: shorter output would have been retried
