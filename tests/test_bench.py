"""The decode-speed bench runs end to end (its figures are checked in bench/RESULTS.md, not here)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generate_speed_bench_runs_and_compares_codes():
    # a short default run stays eager and transformers' compiled variant is left out: nothing compiles here
    cmd = [sys.executable, "bench/generate_speed.py", "--configs", "overhead", "--steps", "2", "4"]
    cmd += ["--default-steps", "16", "--transformers", "static"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "same greedy codes as higgslab: True" in out.stdout
    rows = [line.split()[:2] for line in out.stdout.splitlines() if "ms/step" not in line]
    assert ["transformers", "default"] in rows and ["transformers", "static"] in rows
    assert "higgslab default (16 steps: eager)" in out.stdout and "higgslab eager" not in out.stdout
    assert "vs tf default" in out.stdout and "vs tf best" in out.stdout and "GB/s of weights" in out.stdout


def test_generate_speed_bench_names_an_unknown_device_in_one_line():
    cmd = [sys.executable, "bench/generate_speed.py", "--device", "tpu"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "unknown device 'tpu'" in out.stderr
