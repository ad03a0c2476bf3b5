"""A codec without a semantic branch (the shipped mini's kind): the same codes as the same weights with a
semantic branch that fc_prior ignores, and the same frame count as the semantic branch gives."""

import dataclasses

import numpy as np
import pytest
import torch

from higgslab.tokenizer.model import HiggsAudioCodec


@pytest.fixture(scope="module")
def with_and_without():
    """(tiny codec with a random HuBERT whose fc_prior columns are zero, the same codec without the branch)."""
    from higgslab.tiny.tokenizer import tiny_codec

    full = tiny_codec(seed=3)
    latent = full.cfg.latent_dim
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        full.fc_prior.weight[:, latent:] = 0
        for name, p in full.named_parameters():  # default init: a near-constant acoustic latent, one code
            if name.startswith("acoustic_encoder") and p.dim() == 3:
                p.copy_(torch.randn(p.shape, generator=generator) / (p.shape[1] * p.shape[2]) ** 0.5)
    cfg = dataclasses.replace(full.cfg, hubert=None, rvq_dim=full.cfg.rvq_dim)
    bare = HiggsAudioCodec(cfg)
    state = {
        k: v for k, v in full.state_dict().items() if not k.startswith(("semantic_", "encoder_semantic"))
    }
    state["fc_prior.weight"] = state["fc_prior.weight"][:, :latent]
    bare.load_state_dict(state, strict=True)
    return full, bare


def test_frame_rule_equals_the_semantic_branchs_count(with_and_without):
    full, _ = with_and_without
    for samples in [960, 961, 1439, 1440, 1919, 23999, 24000, 47000, 72500]:
        with torch.no_grad():
            counted = full.semantic_features(torch.zeros(1, 1, samples)).shape[-1]
        assert full.cfg.frames(samples) == counted, samples
    assert [full.cfg.frames(960 * n) for n in (1, 7, 25)] == [1, 7, 25]


def test_same_codes_without_the_branch(with_and_without, speech_like):
    full, bare = with_and_without
    assert not hasattr(bare, "semantic_model") and not bare.cfg.semantic
    for samples in [24000, 47000, 72500]:  # 72,500: the acoustic and semantic counts differ (FORMATS.md §3)
        wav = torch.from_numpy(np.resize(speech_like, samples))[None, None]
        with torch.no_grad():
            codes = bare.encode(wav)
            assert torch.equal(codes, full.encode(wav))
        assert codes.shape[-1] == full.cfg.frames(samples) and len(set(codes[0, 0].tolist())) > 3


def test_written_and_read_back_in_the_original_layout(with_and_without, tmp_path, speech_like):
    import json

    from higgslab import load_tokenizer
    from higgslab.io.codec_format import write_codec

    _, bare = with_and_without
    directory = write_codec(bare, tmp_path / "bare")
    assert json.loads((directory / "config.json").read_text())["semantic_techer"] is None
    tok = load_tokenizer(directory)
    assert not tok.model.cfg.semantic and tok.model.cfg.rvq_dim == bare.cfg.rvq_dim
    assert torch.equal(tok.encode(speech_like), bare.encode(torch.from_numpy(speech_like)[None, None])[0])
