"""The original's layer variants (DualFFN on a subset, fast-forward, separate audio attention): streaming
through the static cache equals one-shot, and each variant does what its name says."""

import pytest
import torch

from higgslab.config import HiggsConfig
from higgslab.model.lm import HiggsAudioModel

AUDIO_OUT = 128016
VARIANTS = {
    "dual_ffn on 0,2; llama elsewhere": dict(adapter_type="dual_ffn", dual_ffn_layers=(0, 2)),
    "dual_ffn on 1; fast-forward elsewhere": dict(adapter_type="dual_ffn_fast_forward", dual_ffn_layers=(1,)),
    "audio self-attention": dict(
        adapter_type="dual_ffn_fast_forward", dual_ffn_layers=(0, 1), audio_self_attention=True
    ),
}


def tiny(**variant) -> HiggsAudioModel:
    config = HiggsConfig(
        hidden_size=32,
        intermediate_size=64,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        rope={"rope_type": "default", "rope_theta": 10000.0},
        **variant,
    )
    torch.manual_seed(0)
    model = HiggsAudioModel(config, text_head=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
@torch.inference_mode()
def test_prefill_decode_and_text_after_audio_equal_one_shot(variant):
    model = tiny(**variant)
    assert model.attn_slots == 3 + (2 if variant.get("audio_self_attention") else 0)
    prompt = [
        128000,
        5,
        6,
        128013,
        *[AUDIO_OUT] * 4,
        128012,
        7,
        128013,
    ]  # a reference segment, then generation
    codes = torch.randint(0, 1026, (1, 8, 10), generator=torch.Generator().manual_seed(1))
    steps, tail = 5, [128012, 9, 10]  # audio columns generated, then text again
    ids = torch.tensor([prompt + [AUDIO_OUT] * steps + tail])
    one_shot = model(ids, codes).audio_logits[0]

    cache = model.new_cache(1, 64)
    out = model(torch.tensor([prompt]), codes[:, :, :4], cache=cache).audio_logits[0]
    torch.testing.assert_close(out, one_shot[: len(prompt)], atol=1e-5, rtol=0)
    for s in range(steps):
        logits = model.decode_audio_step(codes[:, :, 4 + s], cache)[0]
        torch.testing.assert_close(logits, one_shot[len(prompt) + s], atol=1e-5, rtol=0)
    out = model(torch.tensor([tail]), cache=cache).audio_logits[0]
    torch.testing.assert_close(out, one_shot[-len(tail) :], atol=1e-5, rtol=0)


@torch.inference_mode()
def test_layer_kinds_follow_the_config():
    kinds = [layer.kind for layer in tiny(**VARIANTS["dual_ffn on 1; fast-forward elsewhere"]).layers]
    assert kinds == ["fast_forward", "dual_ffn", "fast_forward"]
    model = tiny(**VARIANTS["dual_ffn on 0,2; llama elsewhere"])
    assert [layer.kind for layer in model.layers] == ["dual_ffn", "llama", "dual_ffn"]
    assert not hasattr(model.layers[1], "audio_mlp")  # the checkpoint has no audio weights for it


def test_the_config_is_the_one_place_a_layer_kind_is_set():
    model = tiny(**VARIANTS["dual_ffn on 0,2; llama elsewhere"])
    with pytest.raises(AttributeError):
        model.layers[0].kind = "llama"  # a read-only view of the config
    model.config.dual_ffn_layers = (2,)
    assert (
        [layer.kind for layer in model.layers] == ["llama", "llama", "dual_ffn"] == model.config.layer_kinds
    )
    model.config.adapter_type = "dual_ffn_fast_forward"
    assert [layer.kind for layer in model.layers] == ["fast_forward", "fast_forward", "dual_ffn"]


@torch.inference_mode()
def test_audio_self_attention_sees_only_audio():
    """In layer 0 of the audio-attention variant, the audio attention's output at audio positions does not
    depend on the text before them (only the shared attention does)."""
    model = tiny(**VARIANTS["audio self-attention"])
    seen = []
    model.layers[0].audio_attn.register_forward_hook(lambda m, i, o: seen.append(o[0]))
    codes = torch.randint(0, 1026, (1, 8, 4), generator=torch.Generator().manual_seed(2))
    for text in ([5, 6], [7, 8]):
        model(torch.tensor([[128000, *text, 128013, *[AUDIO_OUT] * 4]]), codes)
    audio = slice(4, 8)
    torch.testing.assert_close(seen[0][0, audio], seen[1][0, audio], atol=1e-6, rtol=0)
    assert (seen[0][0, :3] - seen[1][0, :3]).abs().max() > 1e-4  # text rows (discarded) do differ
