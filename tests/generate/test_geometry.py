"""Checkpoints of another geometry than the real 8 × 1024: every shape and stream id comes from their config.

A tiny LM with 512 codes per codebook (stream bos/eos 512/513) and one with 4 codebooks, each with a tiny
audio tokenizer to match: they generate greedy (against transformers' generate) and sampled, stream
what they generate one-shot, convert between the layouts and reload, and carry audio through the tokenizer.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import higgslab
from higgslab.generate.generator import Generator
from higgslab.io.lm_format import convert, read_weights
from higgslab.tiny.model import tiny_hf_model, write_tiny_model
from higgslab.tiny.text import write_tiny_text_tokenizer
from higgslab.tiny.tokenizer import write_tiny_tokenizer

PROMPT = torch.tensor(
    [128000, 128006, 9125, 128007, 271, 5, 6, 7, 128009, 128006, 78191, 128007, 271, 128013]
)
GEOMETRIES = {
    "512 codes": dict(codebooks=8, codebook_size=512),
    "4 codebooks": dict(codebooks=4, codebook_size=1024),
}


@pytest.fixture(scope="module", params=GEOMETRIES.values(), ids=GEOMETRIES.keys())
def geometry(request, tmp_path_factory):
    """n_q, codebook size, the LM (original layout, text tokenizer beside it), a matching audio tokenizer."""
    n_q, size = request.param["codebooks"], request.param["codebook_size"]
    root = tmp_path_factory.mktemp("geometry")
    model_dir = write_tiny_model(root / "model", "original", seed=0, **request.param)
    write_tiny_text_tokenizer(model_dir)
    tokenizer_dir = write_tiny_tokenizer(root / "tokenizer", "original", n_q=n_q, bins=size)
    return SimpleNamespace(n_q=n_q, size=size, sizes=request.param, model=model_dir, tokenizer=tokenizer_dir)


def forced_length(model, n_q: int, entries: int):
    """Zero the stream-eos rows of the audio head: both implementations then run every step."""
    with torch.no_grad():
        head = model.audio_head if hasattr(model, "audio_head") else model.audio_lm_head
        head.weight.view(n_q, entries, -1)[:, entries - 1] = 0
    return model


def test_the_config_is_the_only_source_of_the_geometry(geometry):
    model = higgslab.load_model(geometry.model)
    c = model.config
    assert (c.num_codebooks, c.codebook_size) == (geometry.n_q, geometry.size)
    assert tuple(c.stream_ids) == (geometry.size, geometry.size, geometry.size + 1)
    assert (
        model.embed_audio.weight.shape[0]
        == model.audio_head.weight.shape[0]
        == geometry.n_q * (geometry.size + 2)
    )


@pytest.mark.parametrize("eos", ["reachable", "never"])
def test_greedy_codes_equal_transformers_generate(geometry, eos):
    n_q, entries = geometry.n_q, geometry.size + 2
    model, oracle = higgslab.load_model(geometry.model), tiny_hf_model(seed=0, **geometry.sizes)
    if eos == "never":
        model, oracle = forced_length(model, n_q, entries), forced_length(oracle, n_q, entries)
    result = Generator(model).generate(PROMPT, max_new_tokens=40, temperature=0, ras_window=0)
    columns = oracle.generate(input_ids=PROMPT[None], max_new_tokens=40, do_sample=False)[0].T  # [n_q, S]
    assert torch.equal(result.columns, columns[:, : result.columns.shape[1]])
    assert result.codes.shape[0] == n_q and ((result.codes >= 0) & (result.codes < geometry.size)).all()
    if eos == "never":
        assert not result.finished and result.codes.shape == (n_q, 40 - n_q)


def test_sampled_generation_is_seeded_and_streams_the_one_shot_codes(geometry):
    gen = Generator(higgslab.load_model(geometry.model))
    kw = dict(max_new_tokens=30, temperature=1.0, top_k=0, top_p=1.0, seed=3)
    one_shot = gen.generate(PROMPT, **kw)
    assert torch.equal(one_shot.codes, gen.generate(PROMPT, **kw).codes)
    assert ((one_shot.columns >= 0) & (one_shot.columns < geometry.size + 2)).all()
    chunks = list(gen.stream(PROMPT, chunk_frames=3, **kw))
    assert all(c.shape[0] == geometry.n_q for c in chunks)
    assert torch.equal(torch.cat(chunks, 1), one_shot.codes)
    assert torch.equal(gen.last_result.columns, one_shot.columns)


def test_converts_both_ways_and_reloads(geometry, tmp_path):
    convert(geometry.model, tmp_path / "hf", "transformers")
    convert(tmp_path / "hf", tmp_path / "back", "original")
    before, _ = read_weights(geometry.model)
    after, _ = read_weights(tmp_path / "back")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    original, hf = higgslab.load_model(geometry.model), higgslab.load_model(tmp_path / "hf")
    assert hf.config == original.config == higgslab.load_model(tmp_path / "back").config
    codes = torch.randint(
        0, geometry.size + 2, (1, geometry.n_q, 4), generator=torch.Generator().manual_seed(0)
    )
    ids = torch.tensor([[128000, 5, *[original.config.audio_out_token_id] * 4, 7]])
    assert torch.equal(original(ids, codes).audio_logits, hf(ids, codes).audio_logits)


def test_audio_round_trips_through_the_matching_tokenizer(geometry, tmp_path):
    tok = higgslab.load_tokenizer(geometry.tokenizer)
    assert (tok.num_codebooks, tok.codebook_size) == (geometry.n_q, geometry.size)
    wav = np.sin(2 * np.pi * 220 * np.arange(24000) / 24000).astype(np.float32) * 0.5
    codes = tok.encode(wav, 24000)
    assert codes.shape == (geometry.n_q, 25) and ((codes >= 0) & (codes < geometry.size)).all()
    audio = tok.decode(codes)
    assert audio.shape == (24000,) and np.isfinite(audio).all()
    assert tok.encode(audio, 24000).shape == codes.shape  # decoded audio encodes to as many frames
    # the same weights in the transformers layout give the same codes
    from higgslab.io.codec_format import write_codec

    other = higgslab.load_tokenizer(write_codec(tok.model, tmp_path / "hf", "transformers"))
    assert torch.equal(other.encode(wav, 24000), codes)

    # a reference voice through the tokenizer into the prompt, generated codes back to audio
    gen = Generator.from_paths(geometry.model, geometry.tokenizer, device="cpu")
    result = gen.generate(
        text="Hello there.", ref_audio=(wav, 24000), ref_text="A tone.", max_new_tokens=20, seed=1
    )
    assert result.codes.shape[0] == geometry.n_q
    assert result.audio.shape == (result.codes.shape[1] * tok.hop_length,)
