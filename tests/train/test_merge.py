"""`python -m higgslab.merge`, in-process: settings checked before loading, and the merged checkpoint in
both layouts gives the adapter's logits."""

import pytest
import torch

from higgslab.errors import HiggsLabError
from higgslab.io.load import load_model
from higgslab.merge import run, settings_from
from higgslab.model.quant import QuantSpec
from tests.train.lora_run import logits, merge_config


@pytest.mark.parametrize("layout", ["original", "transformers"])
def test_the_merged_checkpoint_gives_the_adapters_logits(embedded_cache, trained, tmp_path, layout):
    from peft import PeftModel

    base_dir = embedded_cache[1]
    adapter, inputs, _ = trained
    out = run(merge_config(f"adapter={adapter}", f"output_dir={tmp_path / 'm'}", f"layout={layout}",
                           f"model_path={base_dir}"))  # fmt: skip
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= files and not any(
        n.startswith("adapter") for n in files
    )
    expected = logits(PeftModel.from_pretrained(load_model(base_dir), adapter), inputs)
    torch.testing.assert_close(logits(load_model(out), inputs), expected, rtol=0, atol=1e-5)


def test_with_no_model_the_embedded_default_is_the_base(
    embedded_cache, trained, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HIGGSLAB_CACHE", str(embedded_cache[0]))
    monkeypatch.setenv("HIGGSLAB_EMBEDDED", "tiny")
    run(merge_config(f"adapter={trained[0]}", f"output_dir={tmp_path / 'm'}"))
    assert "base: embedded tiny RANDOM weights" in capsys.readouterr().out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["output_dir=out"], "adapter is not set: pass adapter=..."),
        (["adapter=ADAPTER", "output_dir=out", "layout=xyz"], "layout=xyz: takes original | transformers"),
        (["adapter=nowhere", "output_dir=out"], "adapter nowhere: no such folder"),
        (
            ["adapter=BASE", "output_dir=out"],
            "holds no adapter_config.json, so it is not a LoRA adapter (a full",
        ),
        (
            ["adapter=ADAPTER", "output_dir=out", "model_path=nowhere"],
            "model_path nowhere: no checkpoint there",
        ),
        (["adapter=ADAPTER", "output_dir=taken"], "output_dir taken: already exists (pass overwrite=true"),
        (["adapter=ADAPTER", "output_dir=out", "overwrite=yes"], "overwrite=yes: takes true or false"),
    ],
)
def test_bad_settings_are_one_line_before_anything_loads(embedded_cache, trained, tmp_path, monkeypatch,
                                                         overrides, message):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").mkdir()
    places = {"ADAPTER": str(trained[0]), "BASE": str(embedded_cache[1])}
    overrides = [o.split("=")[0] + "=" + places.get(o.split("=")[1], o.split("=")[1]) for o in overrides]
    with pytest.raises(HiggsLabError) as e:
        settings_from(merge_config(*overrides))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_an_adapter_is_merged_then_quantized(embedded_cache, trained):
    """`adapter_path` + `quantize`: the merged weights are what is quantized (not the base's)."""
    from higgslab.model.quant import QuantLinear, quantize_model

    base_dir = embedded_cache[1]
    adapter, inputs, _ = trained
    merged_then_quantized = quantize_model(load_model(base_dir, adapter_path=adapter), QuantSpec("int8"))
    got = load_model(base_dir, adapter_path=adapter, quantize="int8")
    assert isinstance(got.layers[0].self_attn.q_proj, QuantLinear)
    assert torch.equal(logits(got, inputs), logits(merged_then_quantized, inputs))
    assert not torch.equal(logits(got, inputs), logits(load_model(base_dir, quantize="int8"), inputs))
    with pytest.raises(HiggsLabError, match="int4 group_size 64 does not divide input width 32"):
        load_model(base_dir, adapter_path=adapter, quantize="int4", group_size=64)
