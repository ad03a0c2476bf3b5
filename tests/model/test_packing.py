"""Decode-weight packing: same parameters and numbers, fused matrices that the decode step really reads."""

import pytest
import torch

import higgslab
from higgslab.io.lm_format import write_checkpoint
from higgslab.model.packing import pack_for_decode, prefers_in_out, unpack

AUDIO_OUT_BOS = 128013
PROMPT = torch.tensor([[128000, 5, 6, 7, AUDIO_OUT_BOS]])


def decode_logits(model, columns: torch.Tensor) -> torch.Tensor:
    """Prefill PROMPT, then one decode step per column of `columns` `[1, n_q, T]`: `[T, n_q, 1026]`."""
    cache = model.new_cache(batch=1, max_len=32)
    model(PROMPT, cache=cache, logits="none")
    return torch.cat([model.decode_audio_step(columns[:, :, t], cache) for t in range(columns.shape[2])])


@pytest.fixture
def model(lm_checkpoints):
    return higgslab.load_model(lm_checkpoints["original"])


def test_packing_keeps_parameters_values_and_memory(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    assert pack_for_decode(model) == len(model.layers)
    assert dict(model.named_parameters()) == params  # the very same Parameter objects
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for layer in model.layers:
        attn, mlp, packed = layer.self_attn, layer.audio_mlp, layer.packed
        # q, k, v live in the fused matrix: no second copy of the weights
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            assert lin.weight.untyped_storage().data_ptr() == packed.qkv.untyped_storage().data_ptr()
        assert packed.qkv.shape == (model.config.hidden_size, packed.q + 2 * packed.kv)
        assert packed.gate_up.shape == (model.config.hidden_size, 2 * packed.intermediate)
        assert attn.o_proj.weight.t().is_contiguous() and mlp.down_proj.weight.t().is_contiguous()
    assert model.audio_head.weight.t().is_contiguous()
    assert pack_for_decode(model) == 0  # idempotent


def test_packed_decode_steps_give_the_unpacked_logits(model):
    columns = torch.randint(0, 1026, (1, 8, 6), generator=torch.Generator().manual_seed(3))
    plain = decode_logits(model, columns)
    pack_for_decode(model)
    packed = decode_logits(model, columns)
    assert (packed - plain).abs().max() < 1e-5
    assert plain.abs().max() > 0.1
    # the step reads the fused matrices (a zeroed one changes the logits), not the modules' weights
    for layer in model.layers:
        layer.packed.qkv = torch.zeros_like(layer.packed.qkv)
    assert (decode_logits(model, columns) - plain).abs().max() > 1e-2


def test_casting_drops_the_packing_and_replaced_weights_are_repacked(model):
    pack_for_decode(model)
    model.to(torch.float64)
    assert all(layer.packed is None for layer in model.layers)
    assert pack_for_decode(model) == len(model.layers)
    assert model.layers[0].packed.qkv.dtype == torch.float64
    # float64 is not float32: fused, but stored [out, in], so every Linear weight stays contiguous
    assert not prefers_in_out(torch.float64) and all(p.is_contiguous() for p in model.parameters())
    # a weight replaced behind the packing's back: that layer (only) is packed again, with the new values
    layer = model.layers[1]
    new = torch.randn_like(layer.audio_mlp.up_proj.weight)
    layer.audio_mlp.up_proj.weight = torch.nn.Parameter(new.clone())
    assert pack_for_decode(model) == 1
    assert torch.equal(layer.packed.gate_up[:, layer.packed.intermediate :], new.t())


def test_packed_model_trains_saves_and_unpacks(model, tmp_path):
    columns = torch.randint(0, 1026, (1, 8, 3), generator=torch.Generator().manual_seed(4))
    ids = torch.cat([PROMPT, torch.full((1, 3), 128016)], 1)

    def grads(m):
        m.zero_grad()
        m(ids, columns).audio_logits.square().mean().backward()
        return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}

    plain = grads(model)
    pack_for_decode(model)
    packed = grads(model)
    assert plain.keys() == packed.keys()
    assert all((packed[k] - plain[k]).abs().max() < 1e-6 for k in plain)

    write_checkpoint(tmp_path / "m", model.config, model.state_dict(), fmt="original")
    reloaded = higgslab.load_model(tmp_path / "m")
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())

    unpack(model)
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(layer.packed is None for layer in model.layers)
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_model_packed_by_the_generator_still_trains(model):
    """The generator packs inside inference mode; the packed weights must not be inference tensors."""
    from higgslab.generate.generator import Generator

    Generator(model).generate(PROMPT[0], max_new_tokens=3, temperature=0)
    assert model.layers[0].packed is not None
    ids = torch.cat([PROMPT, torch.full((1, 2), 128016)], 1)
    model.train()
    model(ids, torch.zeros(1, 8, 2, dtype=torch.long)).audio_logits.square().mean().backward()
    assert model.layers[0].self_attn.q_proj.weight.grad is not None
