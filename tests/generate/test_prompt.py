"""Prompt of FORMATS.md §5 on the tiny Llama-3-shaped tokenizer; the tokenizer itself."""

import pytest
import torch
from transformers import AutoTokenizer

from higgslab import delay
from higgslab.errors import HiggsLabError
from higgslab.generate import prompt
from higgslab.generate.prompt import text_span
from higgslab.tiny.text import write_tiny_text_tokenizer

IDS = delay.StreamIds.after_codes(1024)  # the real checkpoint's geometry


def build_prompt(tokenizer, text, **kw):
    return prompt.build_prompt(tokenizer, text, n_q=8, stream_ids=IDS, **kw)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = write_tiny_text_tokenizer(tmp_path_factory.mktemp("text_tokenizer"))
    return AutoTokenizer.from_pretrained(directory)


# ---- the tiny tokenizer ----------------------------------------------------------------------------------
def test_tiny_tokenizer_has_the_real_special_ids_and_size(tokenizer):
    assert len(tokenizer) == 128256
    real = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006}
    real |= {
        "<|end_header_id|>": 128007,
        "<|eot_id|>": 128009,
        "<|audio_bos|>": 128011,
        "<|audio_eos|>": 128012,
    }
    real |= {"<|audio_out_bos|>": 128013, "<|reserved_special_token_6|>": 128014, "<|AUDIO|>": 128015}
    real |= {"<|AUDIO_OUT|>": 128016, "<|scene_desc_start|>": 128018, "<|scene_desc_end|>": 128019}
    real |= {"<|reserved_special_token_247|>": 128255}
    assert {name: tokenizer.convert_tokens_to_ids(name) for name in real} == real
    assert tokenizer.bos_token_id == 128000 and tokenizer.eos_token_id == 128001


def test_tiny_tokenizer_round_trips_any_text(tokenizer):
    for text in ["Hello [SPEAKER0] world, 2048!", "zebra quokka — ÿ 中文 \t\n end", ""]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
        assert all(i < 1000 for i in ids)  # fillers and specials never come out of plain text
    assert len(tokenizer.encode("the quick brown fox", add_special_tokens=False)) < 10  # merges learned
    assert tokenizer.encode("hi")[0] == 128000


# ---- build_prompt ------------------------------------------------------------------------------------------
def test_prompt_without_reference_is_the_spec_string(tokenizer):
    p = build_prompt(tokenizer, "  Hello there.  ", scene="Audio is recorded in a quiet room.")
    expected = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nGenerate audio following instruction."
        "\n\n<|scene_desc_start|>\nAudio is recorded in a quiet room.\n<|scene_desc_end|><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello there.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>"
    )
    assert tokenizer.decode(p.input_ids) == expected
    assert p.input_ids.tolist() == tokenizer.encode(expected, add_special_tokens=False)
    assert p.input_ids[:2].tolist() == [128000, 128006] and p.input_ids[-1] == 128013
    assert p.audio_codes.shape == (8, 0)


def test_prompt_without_scene_has_the_bare_system_message(tokenizer):
    text = tokenizer.decode(build_prompt(tokenizer, "Hi.").input_ids)
    assert "<|end_header_id|>\n\nGenerate audio following instruction.<|eot_id|>" in text
    assert "scene_desc" not in text


def test_reference_turns_carry_one_placeholder_per_delayed_column(tokenizer):
    a, b = torch.randint(0, 1024, (8, 5)), torch.randint(0, 1024, (8, 3))
    p = build_prompt(tokenizer, "[SPEAKER0] Go. [SPEAKER1] Now.", references=[("First.", a), ("Second.", b)])
    assert p.audio_codes.shape == (8, 5 + 9 + 3 + 9)
    assert torch.equal(
        p.audio_codes, torch.cat([delay.encode_segment(a, IDS), delay.encode_segment(b, IDS)], 1)
    )
    assert int((p.input_ids == 128016).sum()) == 26
    expected = (
        "<|begin_of_text|>"  # references and no scene: no system turn, as the official example
        "<|start_header_id|>user<|end_header_id|>\n\nFirst.<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
        "\n\n<|audio_out_bos|>" + "<|AUDIO_OUT|>" * 14 + "<|audio_eos|><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSecond.<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
        "\n\n<|audio_out_bos|>" + "<|AUDIO_OUT|>" * 12 + "<|audio_eos|><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n[SPEAKER0] Go. [SPEAKER1] Now.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>"
    )
    assert tokenizer.decode(p.input_ids) == expected == p.text


def test_reference_layout_matches_transformers_processor_convention(tokenizer):
    """transformers' processor writes N + 2 <|AUDIO_OUT|> and n_q - 1 delay tokens for the same columns."""
    from transformers.models.higgs_audio_v2.processing_higgs_audio_v2 import HiggsAudioV2Processor

    codes = torch.randint(0, 1024, (8, 4))
    ours = build_prompt(tokenizer, "Hi.", references=[("Ref.", codes)])
    proc = HiggsAudioV2Processor.__new__(HiggsAudioV2Processor)  # no audio tokenizer needed for the layout
    proc.audio_token, proc.audio_delay_token = "<|AUDIO_OUT|>", "<|reserved_special_token_6|>"
    proc.audio_tokenizer = type("T", (), {"config": type("C", (), {"num_quantizers": 8})})()
    proc.audio_stream_bos_id, proc.audio_stream_eos_id = 1024, 1025
    theirs = ours.text.replace("<|AUDIO_OUT|>" * 13, proc.get_audio_tokens(13))
    their_ids = torch.tensor(tokenizer.encode(theirs, add_special_tokens=False))
    assert torch.equal(torch.where(their_ids == 128014, 128016, their_ids), ours.input_ids)
    assert int((their_ids == 128014).sum()) == 7
    bos_eos = torch.cat([torch.full((1, 8, 1), 1024), codes[None], torch.full((1, 8, 1), 1025)], 2)
    assert torch.equal(proc.build_delay_pattern(bos_eos)[0], ours.audio_codes)


def test_text_span_is_the_text_to_speak_and_without_text_cuts_only_it(tokenizer):
    ref = torch.randint(0, 1024, (8, 3))
    p = build_prompt(tokenizer, "Say this.", scene="A quiet room.", references=[("Say that.", ref)])
    start, end = p.text_span
    assert tokenizer.decode(p.input_ids[start:end]) == "\n\nSay this."  # the turn's content after its header
    assert tokenizer.decode(p.without_text()) == p.text.replace("\n\nSay this.", "")  # "Say that." stays
    with pytest.raises(HiggsLabError, match="no closed user turn"):
        text_span(p.input_ids[:4], eot_id=128009, end_header_id=128007)  # cut before any turn closes


@pytest.mark.parametrize("bad", ["", "   \n\t "])
def test_empty_text_raises_one_line(tokenizer, bad):
    with pytest.raises(HiggsLabError, match="empty") as e:
        build_prompt(tokenizer, bad)
    assert "\n" not in str(e.value)
    with pytest.raises(HiggsLabError, match="reference 0"):
        build_prompt(tokenizer, "Hi.", references=[(bad, torch.zeros(8, 2, dtype=torch.long))])


def test_wrong_reference_shape_and_foreign_tokenizer_raise(tokenizer, tmp_path):
    with pytest.raises(HiggsLabError, match=r"\[n_q=8, N\]"):
        build_prompt(tokenizer, "Hi.", references=[("Ref.", torch.zeros(4, 2, dtype=torch.long))])
    with pytest.raises(HiggsLabError, match="AUDIO_OUT"):
        build_prompt(tokenizer, "Say <|AUDIO_OUT|> please.")
