"""Parity with transformers' HiggsAudioV2TokenizerModel on the same tiny random weights, in both layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from higgslab import load_tokenizer
from higgslab.io.codec_format import read_state_dict, write_codec
from higgslab.tiny.tokenizer import training_only_tensors


def hf_encode(model, wav: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model.encode(torch.from_numpy(wav)[None, None], return_dict=False)[0]


def original_rule_codes(model, wav: np.ndarray) -> torch.Tensor:
    """The original Boson rule, assembled from transformers' own modules: on a frame-count mismatch pad
    320 samples per side (not 480), then trim the longer latent."""
    x = torch.from_numpy(wav)[None, None]
    with torch.no_grad():
        semantic = model.encoder_semantic(model._extract_semantic_features(x).transpose(1, 2))
        acoustic = model.acoustic_encoder(x)
        if acoustic.shape[-1] != semantic.shape[-1]:
            acoustic = model.acoustic_encoder(F.pad(x, (320, 320)))
        n = min(acoustic.shape[-1], semantic.shape[-1])
        fused = torch.cat([acoustic[..., :n], semantic[..., :n]], 1)
        latent = model.fc(fused.transpose(1, 2)).transpose(1, 2)
        return model.quantizer.encode(latent).transpose(0, 1)[0]


@pytest.fixture(scope="module")
def ours(hf_tokenizer):
    return load_tokenizer(hf_tokenizer[1])


def test_loads_transformers_layout_with_8_quantizers(ours):
    assert ours.format == "transformers"
    assert (ours.num_codebooks, ours.codebook_size, ours.frame_rate, ours.sample_rate) == (8, 1024, 25, 24000)
    assert ours.bitrate == 2000


@pytest.mark.parametrize("length", [48000])
def test_codes_and_audio_match_transformers(hf_tokenizer, ours, speech_like, length):
    model, _ = hf_tokenizer
    wav = speech_like[:length]
    codes = ours.encode(wav, 24000)
    expected = hf_encode(model, wav)
    assert codes.shape == expected.shape == (8, 50 if length == 48000 else 49)
    assert torch.equal(codes, expected)
    assert len(set(codes[0].tolist())) > 3, "degenerate codes would make this comparison vacuous"
    with torch.no_grad():
        reference = model.decode(codes[None], return_dict=False)[0, 0].numpy()
    audio = ours.decode(codes)
    assert audio.shape == reference.shape == (codes.shape[1] * 960,)
    assert np.abs(reference).max() > 1e-3
    np.testing.assert_allclose(audio, reference, atol=1e-4, rtol=0)


def test_length_rule_follows_original_not_transformers(hf_tokenizer, ours, speech_like):
    """72,500 samples: acoustic 75 vs semantic 76 frames, so the padding rule decides the alignment."""
    model, _ = hf_tokenizer
    wav = np.concatenate([speech_like, speech_like])[:72500]
    codes = ours.encode(wav, 24000)
    assert codes.shape == (8, 76)
    assert torch.equal(codes, original_rule_codes(model, wav))
    assert not torch.equal(codes, hf_encode(model, wav)), "transformers' 480-sample padding gives other codes"


def test_original_layout_gives_same_codes(hf_tokenizer, ours, speech_like, tmp_path):
    model, _ = hf_tokenizer
    extra = training_only_tensors(ours.model.cfg, "original", torch.Generator().manual_seed(0))
    directory = write_codec(ours.model, tmp_path / "original", "original", extra)
    disk = read_state_dict(directory / "model.pth")
    hf = model.state_dict()

    def folded(prefix: str) -> torch.Tensor:
        v = disk[prefix + ".weight_v"]
        return disk[prefix + ".weight_g"] * v / v.norm(dim=(1, 2), keepdim=True)

    # the original key layout, checked by hand against transformers' names (FORMATS.md §3-4)
    pairs = {
        "encoder.block.0": "acoustic_encoder.conv1",
        "encoder.block.1.block.0.block.1": "acoustic_encoder.block.0.res_unit1.conv1",
        "encoder.block.5.block.4": "acoustic_encoder.block.4.conv1",
        "encoder.block.7": "acoustic_encoder.conv2",
        "decoder_2.model.1.block.1": "acoustic_decoder.block.0.conv_t1",
        "decoder_2.model.3.block.4.block.3": "acoustic_decoder.block.2.res_unit3.conv2",
        "decoder_2.model.7": "acoustic_decoder.conv2",
    }
    for original, transformers_name in pairs.items():
        torch.testing.assert_close(folded(original), hf[transformers_name + ".weight"], atol=1e-6, rtol=1e-5)
    assert torch.equal(disk["encoder.block.6.alpha"], hf["acoustic_encoder.snake1.alpha"])
    assert torch.equal(
        disk["quantizer.vq.layers.3._codebook.embed"], hf["quantizer.quantizers.3.codebook.embed"]
    )
    assert torch.equal(disk["fc_prior.weight"], hf["fc.weight"])
    assert torch.equal(disk["fc_post2.bias"], hf["fc2.bias"])
    assert torch.equal(disk["encoder_semantic.conv_blocks.1.res_units.0.conv1.conv.weight"],
                       hf["encoder_semantic.conv_blocks.1.res_units.0.conv1.weight"])  # fmt: skip
    assert "fc_post1.weight" in disk and "decoder_semantic.conv1.conv.weight" in disk

    original = load_tokenizer(directory)
    assert original.format == "original"
    assert torch.equal(original.encode(speech_like, 24000), hf_encode(model, speech_like))
