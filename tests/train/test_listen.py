"""The held-out listening measure: which sentences it uses and how it scores them."""

import math

import pytest

from higgslab.train.listen import Heard, held_out_clips, pearson, summarise


def test_held_out_sentences_are_the_validation_split():
    from higgslab.train.data import plan
    from higgslab.train.sentences import make_sentences

    clips = plan(make_sentences(6000, 0), 0, 20)
    train = {c.text for c in clips if c.split == "train"}
    held = held_out_clips(40)
    assert len(held) == 40 and all(c.split == "valid" for c in held)
    assert not train & {c.text for c in held}


def test_duration_tracking_is_a_correlation():
    rows = [Heard("a" * n, n / 10, n / 12, True) for n in (10, 20, 40, 80)]
    summary = summarise(rows)
    assert summary["duration_vs_chars_r"] == pytest.approx(1.0)
    assert summary["duration_ratio"] == pytest.approx(1.2)
    flat = summarise([Heard("a" * n, 2.0, 1.0, True) for n in (10, 20)])
    assert math.isnan(flat["duration_vs_chars_r"])
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_identification_picks_the_closest_sentence():
    pytest.importorskip("jiwer")
    texts = ["the cat sat on the mat", "a dog ran in the park", "it is cloudy today"]

    def rows(transcripts):
        return [Heard(t, 1.0, None, True, h, 0.0) for t, h in zip(texts, transcripts, strict=True)]

    heard = summarise(rows(["the cat sat on a mat", "dog ran in park", "it is cloudy"]))
    assert heard["identified"] == 1.0 and heard["identified_chance"] == pytest.approx(1 / 3)
    swapped = summarise(rows(["it is cloudy today", "the cat sat on the mat", "a dog ran in the park"]))
    assert swapped["identified"] == 0.0


def test_cli_refuses_fewer_than_two_sentences(capsys):
    from higgslab.train.listen import main

    with pytest.raises(SystemExit):
        main(["--sentences", "1"])
    assert "--sentences must be at least 2" in capsys.readouterr().err


def test_codec_only_rows_report_the_ceilings_and_no_durations():
    pytest.importorskip("jiwer")
    texts = ["the cat sat on the mat", "a dog ran in the park", "it is cloudy today"]
    rows = [
        Heard(t, None, 2.0, None, espeak_transcript=t, resynth_transcript=r)
        for t, r in zip(texts, ["a dog ran", "the cat sat", "cloudy today"], strict=True)
    ]
    summary = summarise(rows)
    assert "duration_vs_chars_r" not in summary and "identified" not in summary
    assert summary["espeak_identified"] == 1.0 and summary["espeak_wer"] == 0.0
    assert summary["resynth_identified"] == pytest.approx(1 / 3)
    assert summary["identified_chance"] == pytest.approx(1 / 3)


def test_cli_refuses_codec_only_without_asr(capsys):
    from higgslab.train.listen import main

    with pytest.raises(SystemExit):
        main(["--codec-only", "--no-asr"])
    assert "--codec-only reports ASR ceilings" in capsys.readouterr().err


def test_cli_refuses_a_model_without_its_tokenizer(capsys):
    from higgslab.train.listen import main

    with pytest.raises(SystemExit):
        main(["--model", "runs/mini/lm/model"])
    assert "--model needs --tokenizer" in capsys.readouterr().err


def test_lm_rows_are_what_generate_gives_and_ceilings_need_espeak(monkeypatch):
    """Through the eval's loop, listen's durations are `Generator.generate`'s for the same seed and scale."""
    from higgslab.embedded import ASSETS
    from higgslab.errors import HiggsLabError
    from higgslab.generate.generator import Generator
    from higgslab.train import listen as module

    monkeypatch.setattr(module.shutil, "which", lambda name: None)  # no espeak-ng: no references
    gen = Generator.from_paths(ASSETS / "model", ASSETS / "tokenizer", device="cpu")
    clips = held_out_clips(2)
    report = module.listen(gen, clips, seed=5, asr=False, cfg_scale=1.5)
    direct = [gen.generate(text=c.text, seed=5, max_new_tokens=500, cfg_scale=1.5) for c in clips]
    assert [r["seconds"] for r in report["items"]] == [d.duration_s for d in direct]
    assert [r["finished"] for r in report["items"]] == [d.finished for d in direct]
    assert report["items"][0]["espeak_seconds"] is None and "wer" not in report["summary"]
    with pytest.raises(HiggsLabError, match="the codec ceilings need espeak-ng"):
        module.listen(gen, clips, lm=False)


def test_cli_quantize_reaches_the_generator_and_the_report(monkeypatch, tmp_path, capsys):
    """`--quantize int4 --group-size 64` loads the LM's decoder Linears as int4/64 and the report says so;
    without it the model loads as it is and the report says none."""
    import json

    from higgslab.model.quant import QuantLinear
    from higgslab.train import listen as module

    loaded = []

    def scored(gen, clips, *args, **kwargs):  # the LM as main loaded it; scoring itself is tested above
        loaded.append(gen.model)
        return {"summary": {"sentences": len(clips)}, "items": []}

    monkeypatch.setattr(module, "listen", scored)
    out = tmp_path / "report.json"
    module.main(
        ["--quantize", "int4", "--group-size", "64", "--sentences", "2", "--no-asr", "--out", str(out)]
    )
    quantized = [m for m in loaded[0].layers.modules() if isinstance(m, QuantLinear)]
    assert quantized and all(m.method == "int4" and m.group_size == 64 for m in quantized)
    assert json.loads(out.read_text())["quantize"] == {"method": "int4", "group_size": 64}
    assert "quantize: int4, group size 64" in capsys.readouterr().out

    module.main(["--sentences", "2", "--no-asr", "--out", str(out)])
    assert not any(isinstance(m, QuantLinear) for m in loaded[1].modules())
    assert json.loads(out.read_text())["quantize"] == {"method": "none", "group_size": None}

    with pytest.raises(SystemExit):
        module.main(["--quantize", "int4", "--group-size", "100", "--sentences", "2", "--no-asr"])
    assert "error: quantize group_size=100" in capsys.readouterr().err
