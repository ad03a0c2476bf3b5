"""Guided attention: the band it rewards, the weights it reads, and that a model can learn to follow it."""

import pytest
import torch

from higgslab.errors import HiggsLabError
from higgslab.model.lm import HiggsAudioModel
from higgslab.train.align import GuidedAttention, diagonal_prior
from higgslab.train.lm import collate

from .test_lm import setup


def test_the_band_runs_from_the_first_word_to_the_last():
    prior, queries = diagonal_prior([(2, 6, 8, 10), (1, 3, 4, 5)], T=20, width=0.2)
    assert prior.shape == (2, 20, 20) and queries.shape == (2, 20)
    assert queries[0].nonzero().flatten().tolist() == list(range(8, 18))
    band = prior[0, 8:18, 2:6]
    assert band[0].argmax() == 0 and band[-1].argmax() == 3  # first frame → first token, last → last
    assert prior[0].sum() == band.sum() and (band > 0).all() and band.max() <= 1  # nothing off the band
    assert prior[1, 4:9, 1:3].sum() == prior[1].sum()


def test_the_recomputed_weights_are_the_attention_the_layer_ran(tmp_path):
    config, _, examples = setup(tmp_path)
    ids, codes, _ = collate(examples, config)
    torch.manual_seed(0)
    model = HiggsAudioModel(config, text_head=False)
    attn = model.layers[1].self_attn
    guide = GuidedAttention(model, layers=[1], heads=list(range(config.num_heads)))
    ran = {}
    attn.register_forward_hook(lambda m, args, out: ran.update(out=out[0]))
    with torch.no_grad():
        model(ids, codes)
        x = guide.inputs[1][0]
        B, T = ids.shape
        v = attn.v_proj(x).view(B, T, -1, attn.head_dim).transpose(1, 2)
        v = v.repeat_interleave(attn.num_key_value_groups, dim=1)  # [B, heads, T, d]
        mixed = (guide.weights(1) @ v).transpose(1, 2).reshape(B, T, -1)
        assert torch.allclose(attn.o_proj(mixed), ran["out"], atol=1e-5)


def test_a_model_learns_to_read_along_the_band(tmp_path):
    config, _, examples = setup(tmp_path)
    ids, codes, _ = collate(examples, config)
    prior, queries = diagonal_prior([e.span for e in examples], ids.shape[1], width=0.2)
    torch.manual_seed(0)
    model = HiggsAudioModel(config, text_head=False)
    guide = GuidedAttention(model, layers=[1], heads=[0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        model(ids, codes, logits="none")
        loss = guide.loss(prior, queries)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert 0 < losses[-1] < losses[0] - 0.2 and losses[0] <= 1


def test_a_layer_or_head_the_model_lacks_is_one_line(tmp_path):
    config, _, _ = setup(tmp_path)
    model = HiggsAudioModel(config, text_head=False)
    with pytest.raises(
        HiggsLabError, match=r"layers \[2\] / heads \[0\] do not exist in a model of 2 layers"
    ):
        GuidedAttention(model, layers=[2], heads=[0])
    with pytest.raises(HiggsLabError, match="heads"):
        GuidedAttention(model, layers=[1], heads=[2])
