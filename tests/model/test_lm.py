"""HiggsAudioModel against transformers' HiggsAudioV2 (same tiny random weights), and its own contracts."""

import pytest
import torch

import higgslab
from higgslab.config import HiggsConfig
from higgslab.model.lm import HiggsAudioModel
from tests.conftest import REAL_CONFIG

AUDIO_OUT, AUDIO_OUT_BOS, AUDIO_EOS = 128016, 128013, 128012


def segment(n: int) -> list[int]:
    return [AUDIO_OUT_BOS] + [AUDIO_OUT] * n + [AUDIO_EOS]


def oracle_logits(oracle, ids, codes, attention_mask=None, position_ids=None):
    """transformers' forward; its audio frames are [B, F, n_q] with a per-frame validity mask."""
    B, _, F = codes.shape
    n_per_row = (ids == AUDIO_OUT).sum(1)
    frame_mask = torch.arange(F)[None, :] < n_per_row[:, None]
    out = oracle(
        input_ids=ids,
        audio_input_ids=codes.transpose(1, 2),
        audio_input_ids_mask=frame_mask,
        attention_mask=attention_mask,
        position_ids=position_ids,
    )
    return out.logits.view(*ids.shape, 8, 1026)


@pytest.mark.parametrize("fmt", ["original", "transformers"])
def test_matches_transformers_on_mixed_text_and_several_audio_segments(fmt, oracle, lm_checkpoints):
    model = higgslab.load_model(lm_checkpoints[fmt])
    ids = torch.tensor([[128000, 11, 12, *segment(9), 13, 14, *segment(4), 15, AUDIO_OUT_BOS, AUDIO_OUT]])
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 1026, (1, 8, 14), generator=g)
    ours = model(ids, codes).audio_logits
    assert ours.shape == (1, ids.shape[1], 8, 1026)
    theirs = oracle_logits(oracle, ids, codes)
    assert (ours - theirs).abs().max() < 1e-4
    assert theirs.abs().max() > 0.1  # the comparison is not between two near-zero tensors


@pytest.mark.parametrize("fmt", ["original", "transformers"])
def test_matches_transformers_on_left_padded_batch(fmt, oracle, lm_checkpoints):
    model = higgslab.load_model(lm_checkpoints[fmt])
    long_row = [128000, 21, 22, 23, *segment(6), 24]
    short_row = [128001] * 4 + [128000, 31, *segment(3), 32, 33]
    ids = torch.tensor([long_row, short_row])
    mask = (torch.arange(len(long_row))[None] >= torch.tensor([[0], [4]])).long()
    codes = torch.randint(0, 1026, (2, 8, 6), generator=torch.Generator().manual_seed(2))
    ours = model(ids, codes, attention_mask=mask).audio_logits
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    theirs = oracle_logits(oracle, ids, codes, attention_mask=mask, position_ids=positions)
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() < 1e-4
    # a left-padded row computes what the same row computes alone
    alone = model(ids[1:, 4:], codes[1:]).audio_logits
    assert (ours[1, 4:] - alone[0]).abs().max() < 1e-4


def test_cached_prefill_and_audio_decode_equal_one_shot_forward(lm_checkpoints):
    model = higgslab.load_model(lm_checkpoints["original"])
    prompt = torch.tensor([[128000, 5, 6, 7, AUDIO_OUT_BOS]])
    columns = torch.randint(0, 1026, (1, 8, 6), generator=torch.Generator().manual_seed(3))
    full_ids = torch.cat([prompt, torch.full((1, 6), AUDIO_OUT)], 1)
    one_shot = model(full_ids, columns).audio_logits

    cache = model.new_cache(batch=1, max_len=32)
    first = model(prompt, cache=cache, logits="last").audio_logits[:, 0]
    assert (first - one_shot[:, prompt.shape[1] - 1]).abs().max() < 1e-5
    for t in range(6):
        step = model.decode_audio_step(columns[:, :, t], cache)
        assert (step - one_shot[:, prompt.shape[1] + t]).abs().max() < 1e-5


def test_real_size_parameter_count_on_meta_device():
    config = HiggsConfig.from_file(REAL_CONFIG)
    with torch.device("meta"):
        model = HiggsAudioModel(config)
    assert model.num_parameters() == 5_771_283_456
    assert model.num_parameters(text_head=False) == 5_377_281_024


def test_audio_ffn_switch_changes_only_audio_positions(lm_checkpoints):
    model = higgslab.load_model(lm_checkpoints["original"])
    ids = torch.tensor([[128000, 5, 6, *segment(5), 7, 8]])
    codes = torch.randint(0, 1026, (1, 8, 5), generator=torch.Generator().manual_seed(4))
    before = model(ids, codes, output_hidden_states=True)
    model.layers[1].audio_ffn = "skip"
    after = model(ids, codes, output_hidden_states=True)
    model.layers[1].audio_ffn = "audio"
    audio = ids[0] == AUDIO_OUT
    # layer 1 is the last layer: text positions cannot see its audio rows, audio rows change
    assert torch.equal(after.hidden_states[2][0, ~audio], before.hidden_states[2][0, ~audio])
    assert (after.hidden_states[2][0, audio] - before.hidden_states[2][0, audio]).abs().max() > 1e-3
    assert before.audio_out_mask[0].tolist() == audio.tolist()


def test_audio_ffn_text_mode_equals_a_plain_llama_layer(lm_checkpoints):
    model = higgslab.load_model(lm_checkpoints["original"])
    ids = torch.tensor([[128000, 5, *segment(4), 7]])
    codes = torch.randint(0, 1026, (1, 8, 4), generator=torch.Generator().manual_seed(5))
    for layer in model.layers:
        layer.audio_ffn = "text"
    as_text = model(ids, codes).audio_logits
    model.config.adapter_type, model.config.dual_ffn_layers = "dual_ffn", ()  # every layer a plain Llama one
    plain = model(ids, codes).audio_logits
    assert torch.allclose(as_text, plain, atol=1e-6)


def test_fast_forward_layers_hide_audio_from_text_and_pass_audio_through(tmp_path, lm_checkpoints):
    model = higgslab.load_model(lm_checkpoints["original"])
    model.config.dual_ffn_layers = ()  # every layer fast-forward: audio rows never change
    ids = torch.tensor([[128000, 5, *segment(4), 7]])
    a = torch.randint(0, 1026, (1, 8, 4), generator=torch.Generator().manual_seed(6))
    b = torch.randint(0, 1026, (1, 8, 4), generator=torch.Generator().manual_seed(7))
    out_a = model(ids, a, output_hidden_states=True)
    out_b = model(ids, b, output_hidden_states=True)
    audio = ids[0] == AUDIO_OUT
    assert torch.equal(out_a.hidden_states[-1][0, audio], out_a.hidden_states[0][0, audio])
    assert torch.allclose(out_a.last_hidden_state[0, ~audio], out_b.last_hidden_state[0, ~audio], atol=1e-6)
    # and a decode step skips them entirely: the logits are those of the embedding
    cache = model.new_cache(1, 16)
    model(ids[:, :2], cache=cache)
    step = model.decode_audio_step(a[:, :, 0], cache)
    assert torch.allclose(step, model.audio_logits(model.norm(model.embed_codes(a[:, :, 0]))), atol=1e-6)


def test_audio_codes_errors_are_one_line(lm_checkpoints):
    model = higgslab.load_model(lm_checkpoints["original"])
    ids = torch.tensor([[128000, *segment(3)]])
    with pytest.raises(higgslab.HiggsLabError, match="no audio_codes"):
        model(ids)
    with pytest.raises(higgslab.HiggsLabError, match="only 2 frames"):
        model(ids, torch.zeros(1, 8, 2, dtype=torch.long))
    with pytest.raises(higgslab.HiggsLabError, match=r"outside \[0, 1026\)"):
        model(ids, torch.full((1, 8, 3), 1026))
    with pytest.raises(higgslab.HiggsLabError, match="must be"):
        model(ids, torch.zeros(1, 4, 3, dtype=torch.long))
