"""Fine-tuning methods on the tiny model: which weights train, and that every way of loading a trained
LoRA adapter (PEFT's own loader, ours, `load_model(adapter_path=)`, the Generator) gives the same numbers."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from higgslab.errors import HiggsLabError
from higgslab.generate.generator import Generator
from higgslab.io.load import load_model
from higgslab.train.methods import (
    LoraSettings,
    load_adapter,
    prepare_for,
    save_trained,
    trainable_parameters,
)
from tests.train.lora_run import ALL_TARGETS, batch, logits, merge_config, train_a_few_steps


@pytest.fixture(scope="module")
def base_dir(embedded_cache):
    return embedded_cache[1]  # tiny random LM (original layout) with its text tokenizer


def test_a_fresh_lora_gives_exactly_the_base_logits(base_dir):
    base = load_model(base_dir)
    inputs = batch(base.config)
    expected = logits(base, inputs)
    lora = prepare_for(base, "lora", ALL_TARGETS)
    assert torch.equal(logits(lora, inputs), expected)


def test_trainable_parameters_per_method(base_dir):
    model = load_model(base_dir)
    c, total = model.config, model.num_parameters()
    assert trainable_parameters(prepare_for(model, "full")) == total

    prepare_for(model, "audio")
    audio = {n for n, p in model.named_parameters() if p.requires_grad}
    per_layer = ["audio_mlp.gate_proj", "audio_mlp.up_proj", "audio_mlp.down_proj",
                 "audio_input_layernorm", "audio_post_attention_layernorm"]  # fmt: skip
    expected = {"embed_audio.weight", "audio_head.weight"} | {
        f"layers.{i}.{m}.weight" for i in range(c.num_layers) for m in per_layer
    }
    assert audio == expected
    params = dict(model.named_parameters())
    assert trainable_parameters(model) == sum(params[n].numel() for n in expected)

    for targets, names in [
        (("attention",), ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]),
        (("audio_ffn",), ["audio_mlp.gate_proj", "audio_mlp.up_proj", "audio_mlp.down_proj"]),
        (("text_ffn",), ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    ]:
        lora = prepare_for(load_model(base_dir), "lora", LoraSettings(rank=3, targets=targets))
        shapes = [params[f"layers.{i}.{n}.weight"].shape for i in range(c.num_layers) for n in names]
        assert trainable_parameters(lora) == sum(3 * (o + i) for o, i in shapes)  # A [r, in] + B [out, r]
        assert all("lora_" in n for n, p in lora.named_parameters() if p.requires_grad)


def test_every_loader_of_a_trained_adapter_gives_the_same_logits(base_dir, trained):
    from peft import PeftModel

    adapter, inputs, in_memory = trained
    base_logits = logits(load_model(base_dir), inputs)
    assert (in_memory - base_logits).abs().max() > 1e-2  # training moved the outputs
    peft_loaded = logits(PeftModel.from_pretrained(load_model(base_dir), adapter), inputs)
    torch.testing.assert_close(peft_loaded, in_memory, rtol=0, atol=1e-5)
    ours = logits(load_adapter(load_model(base_dir), adapter), inputs)
    torch.testing.assert_close(ours, peft_loaded, rtol=0, atol=1e-5)
    at_load = logits(load_model(base_dir, adapter_path=adapter), inputs)
    torch.testing.assert_close(at_load, peft_loaded, rtol=0, atol=1e-5)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        base_dir
    )


def test_the_generator_with_an_adapter_decodes_the_adapted_weights(base_dir, trained, tmp_path):
    """Greedy codes with `adapter_path` (merged at load, packed for the CPU decode path) = the merged
    checkpoint's codes, and not the base's."""
    from higgslab.merge import run

    adapter, _, _ = trained
    run(merge_config(f"adapter={adapter}", f"output_dir={tmp_path / 'merged'}", f"model_path={base_dir}"))

    def codes(model_dir, adapter_path=None):
        gen = Generator.from_paths(model_dir, device="cpu", adapter_path=adapter_path, compile=False)
        assert gen.pack
        return gen.generate(text="Hello there.", max_new_tokens=24, temperature=0, seed=1).codes

    with_adapter = codes(base_dir, adapter)
    assert torch.equal(with_adapter, codes(tmp_path / "merged"))
    assert not torch.equal(with_adapter, codes(base_dir))


def test_an_unmerged_peft_model_is_refused_by_the_generator(base_dir):
    with pytest.raises(HiggsLabError, match="unmerged LoRA"):
        Generator(prepare_for(load_model(base_dir), "lora"))


def test_audio_and_full_save_a_whole_checkpoint_that_loads_to_the_same_logits(base_dir, tmp_path):
    model = prepare_for(load_model(base_dir), "audio")
    inputs = batch(model.config)
    train_a_few_steps(model, inputs, steps=2)
    out = save_trained(model, "audio", tmp_path / "audio", base_path=base_dir)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in base_dir.iterdir())
    torch.testing.assert_close(logits(load_model(out), inputs), logits(model, inputs), rtol=0, atol=0)
    saved, base = load_file(out / "model.safetensors"), load_file(base_dir / "model.safetensors")
    changed = {k for k in base if not torch.equal(saved[k], base[k])}  # on-disk (original layout) names
    audio_path = {k for k in base if "audio" in k and "text_lm_head" not in k}  # embedding, head, FFNs, norms
    assert changed == audio_path, changed


def test_a_failed_save_leaves_nothing_and_a_foreign_folder_is_kept(base_dir, tmp_path, monkeypatch):
    from higgslab.io import lm_format

    model = prepare_for(load_model(base_dir), "full")
    monkeypatch.setattr(lm_format, "copy_other_files", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_trained(model, "full", tmp_path / "out", base_path=base_dir)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(HiggsLabError, match="not empty and not an earlier output"):
        save_trained(model, "full", tmp_path / "mine", base_path=base_dir)
    with pytest.raises(HiggsLabError, match=r"save_trained\(method=lora\) was given a model without LoRA"):
        save_trained(model, "lora", tmp_path / "out", base_path=base_dir)


@pytest.mark.parametrize(
    "method, lora, message",
    [
        ("qlora", None, "method=qlora: takes lora | audio | full"),
        ("lora", LoraSettings(rank=0), "lora.rank must be an integer >= 1, got 0"),
        ("lora", LoraSettings(dropout=1.0), "lora.dropout must be in [0, 1), got 1.0"),
        ("lora", LoraSettings(targets=("mlp",)), "lora.targets=['mlp']: takes a non-empty list of attention"),
        ("audio", LoraSettings(), "LoRA settings are used only with method=lora, not method=audio"),
    ],
)
def test_bad_method_settings_are_one_line(base_dir, method, lora, message):
    with pytest.raises(HiggsLabError) as e:
        prepare_for(torch.nn.Linear(1, 1), method, lora)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_missing_or_foreign_adapter_is_one_line(base_dir, trained, tmp_path):
    adapter, _, _ = trained
    with pytest.raises(HiggsLabError, match=r"adapter_path .*nowhere: no such folder"):
        load_model(base_dir, adapter_path=tmp_path / "nowhere")
    # the same adapter as if made for a wider base: lora_A of one target takes 48 inputs, not 32
    other = tmp_path / "other"
    other.mkdir()
    (other / "adapter_config.json").write_bytes((adapter / "adapter_config.json").read_bytes())
    tensors = load_file(adapter / "adapter_model.safetensors")
    key = "base_model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors[key] = torch.zeros(tensors[key].shape[0], 48)
    save_file(tensors, other / "adapter_model.safetensors")
    before = load_file(base_dir / "model.safetensors")
    model = load_model(base_dir)
    with pytest.raises(HiggsLabError) as e:
        load_adapter(model, other)
    assert "layers.0.self_attn.q_proj is [32, 32] in this model but the adapter's" in str(e.value)
    assert f"made for another base model (it was made for {base_dir})" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)  # untouched
