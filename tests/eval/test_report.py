"""Report: the schema accepts what the modes produce and rejects what they must not; table and plots."""

import json

import pytest

from higgslab.errors import HiggsLabError
from higgslab.eval.checks import DEFAULT
from higgslab.eval.performance import run_performance
from higgslab.eval.precision import run_precision
from higgslab.eval.report import (
    SCHEMA_VERSION,
    finite_json,
    new_run_dir,
    overall_passed,
    plot_report,
    skipped,
    summary_table,
    validate,
    write_report,
)
from tests.eval.stubs import HOP, IDS, StubGenerator, truncated


def stub_report(gen=None) -> dict:
    gen = gen or StubGenerator()
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": "2026-11-23T12:00:00",
        "command": "python -m higgslab.eval",
        "mode": "all",
        "model": {
            "label": "stub",
            "model_path": "m",
            "tokenizer_path": "t",
            "parameters": 1,
            "dtype": "float32",
            "device": "cpu",
        },
        "settings": {
            "text": "hi",
            "scene": None,
            "ref_audio": None,
            "seeds": [1, 2],
            "tokens": [16, 32],
            "temperature": 0.3,
            "top_k": 50,
            "top_p": 0.95,
            "ras_window": 7,
            "ras_max_repeat": 2,
            "max_new_tokens": 200,
            "thresholds": dict(DEFAULT.__dict__),
        },
        "precision": run_precision(gen, [1, 2], 0.3, 200, HOP, IDS),
        "performance": run_performance(gen, [16, 32], seed=1, temperature=0.3),
        "quality": skipped("quality metrics need jiwer: pip install 'higgslab[eval]'"),
    }
    report["passed"] = overall_passed(report)
    return report


def test_stub_report_validates_and_round_trips(tmp_path):
    report = stub_report()
    assert report["passed"]
    path = write_report(report, tmp_path)
    loaded = json.loads(path.read_text())
    validate(loaded)
    assert loaded["performance"]["runs"][1]["tokens"] == 32 and loaded["performance"]["device_name"]
    for run in loaded["performance"]["runs"]:  # a step is a delayed column, a frame a decodable one
        assert run["frames"] < run["steps"]
        assert run["frames_per_s"] == pytest.approx(run["steps_per_s"] * run["frames"] / run["steps"])


@pytest.mark.parametrize(
    "breakage",
    [
        lambda r: r.pop("precision"),
        lambda r: r["performance"]["runs"][0].pop("steps_per_s"),
        lambda r: r["performance"]["runs"][0].pop("frames_per_s"),
        lambda r: r.__setitem__("schema_version", 1),  # version 1's frames_per_s counted steps
        lambda r: r.__setitem__("mode", "fast"),
        lambda r: r.__setitem__("quality", {"status": "skipped"}),  # a skip must say why
        lambda r: r["precision"]["seeds"][0]["checks"][0].__setitem__("passed", "yes"),
        lambda r: r["precision"].__setitem__("status", "ok"),
    ],
)
def test_schema_rejects_broken_reports(breakage):
    report = finite_json(stub_report())
    breakage(report)
    with pytest.raises(HiggsLabError, match="report.schema.json"):
        validate(report)


def test_failures_propagate_to_overall_and_table():
    report = stub_report(StubGenerator(mutate=truncated))
    assert report["precision"]["status"] == "failed" and not report["passed"]
    table = summary_table(report)
    assert "FAIL: not_truncated" in table and "overall: FAILED" in table
    assert "quality: skipped (quality metrics need jiwer" in table


def test_nan_values_become_null_in_json(tmp_path):
    def nan_audio(clip, seed):
        clip.audio[:] = float("nan")
        return clip

    report = stub_report(StubGenerator(mutate=nan_audio))
    path = write_report(report, tmp_path)
    loaded = json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert loaded["precision"]["seeds"][0]["rms"] is None and not loaded["passed"]


def test_plots_and_run_dirs(tmp_path):
    folder = new_run_dir(tmp_path / "eval_results")
    assert new_run_dir(tmp_path / "eval_results") != folder  # same second: a new folder, never reused
    paths = plot_report(stub_report(), folder)
    assert sorted(p.name for p in paths) == ["rms_per_seed.png", "steps_per_s.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
