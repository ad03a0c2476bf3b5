"""`python -m higgslab.eval` end to end on the embedded tiny checkpoints: a valid report, plots, a table."""

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from higgslab.conf import CONF_DIR
from higgslab.errors import HiggsLabError
from higgslab.eval import __main__ as cli
from higgslab.eval.report import validate

SMALL = ["seeds=[1,2]", "tokens=[16,32]", "max_new_tokens=24", "device=cpu"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The embedded default (tiny random LM + tokenizers) written once for this module."""
    import os

    from higgslab.embedded import tiny_random_paths

    root = tmp_path_factory.mktemp("cache")
    os.environ["HIGGSLAB_CACHE"] = str(root)
    try:
        tiny_random_paths()
    finally:
        del os.environ["HIGGSLAB_CACHE"]
    return root


def config(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="eval", overrides=list(overrides))


def test_mode_all_writes_a_valid_report_with_quality_skipped(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setenv("HIGGSLAB_CACHE", str(cache))
    monkeypatch.setenv("HIGGSLAB_EMBEDDED", "tiny")
    monkeypatch.setattr(
        cli.quality, "missing", lambda: "quality metrics need jiwer: pip install 'higgslab[eval]'"
    )
    report, folder = cli.run(config(*SMALL, f"output_dir={tmp_path}/results"), "test")
    assert folder.parent == tmp_path / "results"
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "rms_per_seed.png", "steps_per_s.png"]
    on_disk = json.loads((folder / "report.json").read_text())
    validate(on_disk)
    assert on_disk["quality"] == {
        "status": "skipped",
        "reason": "quality metrics need jiwer: pip install 'higgslab[eval]'",
    }
    assert [s["seed"] for s in on_disk["precision"]["seeds"]] == [1, 2]
    runs = on_disk["performance"]["runs"]
    assert [r["tokens"] for r in runs] == [16, 32] and [r["steps"] for r in runs] == [
        16,
        32,
    ]  # random: no eos
    assert on_disk["performance"]["device"] == "cpu" and on_disk["model"]["label"].startswith("embedded tiny")
    determinism = {c["name"]: c["passed"] for c in on_disk["precision"]["checks"]}
    assert determinism["deterministic_greedy"] and determinism["deterministic_seed"]
    out = capsys.readouterr().out
    assert (
        "tokens  steps  decode s  steps/s  frames/s" in out and "quality: skipped" in out and "wrote" in out
    )


def test_single_mode_marks_the_others_not_requested_and_no_audio_fails(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("HIGGSLAB_CACHE", str(cache))
    monkeypatch.setenv("HIGGSLAB_EMBEDDED", "tiny")
    report, _ = cli.run(config(*SMALL, "mode=performance", "tokens=[8]", f"output_dir={tmp_path}"), "test")
    assert report["precision"] == {"status": "skipped", "reason": "not requested (mode=performance)"}
    assert report["quality"]["status"] == "skipped"
    run = report["performance"]["runs"][0]
    assert (run["tokens"], run["frames"], run["audio_s"]) == (
        8,
        0,
        0.0,
    )  # 8 steps < n_q + 1: no frame completes
    assert report["performance"]["status"] == "failed" and not report["passed"]


def test_mode_quality_without_the_extra_is_one_error_before_loading(monkeypatch):
    monkeypatch.setattr(
        cli.quality, "missing", lambda: "quality metrics need jiwer: pip install 'higgslab[eval]'"
    )
    with pytest.raises(HiggsLabError, match=r"^quality metrics need jiwer"):
        cli.check_config(config("mode=quality", "model_path=/nonexistent"))


def test_an_adapter_path_without_an_adapter_is_one_error_before_loading(tmp_path):
    with pytest.raises(HiggsLabError, match=r"^adapter_path .*nowhere: no such folder$"):
        cli.check_config(config(f"adapter_path={tmp_path / 'nowhere'}", "model_path=/nonexistent"))
    with pytest.raises(HiggsLabError, match=r"holds no adapter_config.json, so it is not a LoRA adapter$"):
        cli.check_config(config(f"adapter_path={tmp_path}", "model_path=/nonexistent"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["mode=fast"], "error: mode must be one of all, precision, performance, quality"),
        (["seeds=[]", "mode=precision"], "error: seeds is empty"),
        (["tokens=[0]", "mode=performance"], "error: tokens must be a non-empty list of positive counts"),
        (["ref_audio=/no/such.wav"], "error: ref_audio /no/such.wav: no such file"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, overrides, message):
    proc = subprocess.run(
        [sys.executable, "-m", "higgslab.eval", *overrides],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1
    assert not (tmp_path / "eval_results").exists()


@pytest.mark.slow
@pytest.mark.skipif(cli.quality.missing() is not None, reason="needs the eval extra")
def test_mode_quality_with_a_reference_clip_scores_wer_and_sim(tmp_path, cache, monkeypatch):
    import soundfile as sf

    from tests.eval.stubs import speech_like

    monkeypatch.setenv("HIGGSLAB_CACHE", str(cache))
    monkeypatch.setenv("HIGGSLAB_EMBEDDED", "tiny")
    sf.write(tmp_path / "ref.wav", speech_like(50), 24000)
    overrides = [*SMALL, "mode=quality", f"ref_audio={tmp_path}/ref.wav", "quality.texts=[Hello there.]"]
    report, folder = cli.run(config(*overrides, f"output_dir={tmp_path}/out"), "test")
    validate(json.loads((folder / "report.json").read_text()))
    q = report["quality"]
    assert q["status"] == "failed" and q["wer"] >= 0.5  # random weights speak noise
    assert -1 <= q["speaker_similarity"] <= 1 and q["reason"] is None
