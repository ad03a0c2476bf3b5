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


# ---- voices, speakers, context (the official prepare_generation_context + chunk loop) -------------------------
H = "<|start_header_id|>{}<|end_header_id|>\n\n"
OUT, IN = "<|AUDIO_OUT|>", "<|AUDIO|>"


def turn(role: str, content: str) -> str:
    return H.format(role) + content + "<|eot_id|>"


def audio_out(columns: int) -> str:
    return "<|audio_out_bos|>" + OUT * columns + "<|audio_eos|>"


def audio_in(columns: int) -> str:
    return "<|audio_bos|>" + IN * columns + "<|audio_eos|>"


ASK = turn("user", "{}") + H.format("assistant") + "<|audio_out_bos|>"  # the text to speak, then generation


def codes(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1024, (8, n), generator=torch.Generator().manual_seed(seed))


def test_one_voice_reference_is_a_user_assistant_pair_and_tuples_still_work(tokenizer):
    ref = codes(4, 0)
    p = build_prompt(tokenizer, "Say it.", references=[prompt.Reference(" A voice. ", ref)])
    expected = (
        "<|begin_of_text|>"
        + turn("user", "A voice.")
        + turn("assistant", audio_out(13))
        + ASK.format("Say it.")
    )
    assert p.text == expected == tokenizer.decode(p.input_ids)
    old = build_prompt(tokenizer, "Say it.", references=[("A voice.", ref)])
    assert torch.equal(old.input_ids, p.input_ids) and torch.equal(old.audio_codes, p.audio_codes)


def test_two_voices_prefix_their_transcripts_with_speaker_tags(tokenizer):
    a, b = codes(3, 1), codes(2, 2)
    refs = [prompt.Reference("First.", a, speaker=0), prompt.Reference("Second.", b, speaker=1)]
    p = build_prompt(
        tokenizer,
        "[SPEAKER0] Hi. [SPEAKER1] Yo.",
        scene="A hall.",
        references=refs,
        speakers=["SPEAKER0", "SPEAKER1"],
    )
    expected = (
        "<|begin_of_text|>"
        + turn(
            "system",
            "Generate audio following instruction.\n\n<|scene_desc_start|>\nA hall.\n<|scene_desc_end|>",
        )
        + turn("user", "[SPEAKER0] First.")
        + turn("assistant", audio_out(12))
        + turn("user", "[SPEAKER1] Second.")
        + turn("assistant", audio_out(11))
        + ASK.format("[SPEAKER0] Hi. [SPEAKER1] Yo.")
    )  # with references the speakers' default voices are not described (the official example)
    assert p.text == expected == tokenizer.decode(p.input_ids)
    assert torch.equal(p.audio_codes, torch.cat([delay.encode_segment(x, IDS) for x in (a, b)], 1))


@pytest.mark.parametrize("scene", [None, "A hall."])
def test_references_in_the_system_message_are_audio_in(tokenizer, scene):
    a, b = codes(3, 3), codes(5, 4)
    refs = [prompt.Reference("First.", a, speaker=0), prompt.Reference("Second.", b, speaker=1)]
    p = build_prompt(tokenizer, "[SPEAKER1] Hi.", scene=scene, references=refs, references_in_system=True)
    voices = f"SPEAKER0: {audio_in(12)}\nSPEAKER1: {audio_in(14)}"
    body = f"{scene}\n\n{voices}" if scene else voices
    expected = (
        "<|begin_of_text|>"
        + turn(
            "system",
            f"Generate audio following instruction.\n\n<|scene_desc_start|>\n{body}\n<|scene_desc_end|>",
        )
        + ASK.format("[SPEAKER1] Hi.")  # no reference turns: their transcripts are not in the prompt
    )
    assert p.text == expected == tokenizer.decode(p.input_ids)
    assert int((p.input_ids == 128015).sum()) == 26 and not (p.input_ids == 128016).any()
    assert torch.equal(p.audio_codes, torch.cat([delay.encode_segment(x, IDS) for x in (a, b)], 1))
    one = build_prompt(tokenizer, "Hi.", references=[("Only.", a)], references_in_system=True)
    assert (
        f"<|scene_desc_start|>\nSPEAKER0: {audio_in(12)}\n<|scene_desc_end|>" in one.text
    )  # as the official


@pytest.mark.parametrize("scene", [None, "A hall."])
def test_several_speakers_without_references_get_the_multispeaker_system_message(tokenizer, scene):
    text = "[SPEAKER1] Yo.\n[SPEAKER0] Hi.\n[SPEAKER2] Hey."
    tags = prompt.speaker_tags(text)
    assert tags == ["SPEAKER0", "SPEAKER1", "SPEAKER2"]
    assert prompt.speaker_tags("[SPEAKER10] a [SPEAKER2] b [SPEAKER2]") == ["SPEAKER2", "SPEAKER10"]
    p = build_prompt(tokenizer, text, scene=scene, speakers=tags)
    voices = "SPEAKER0: feminine\nSPEAKER1: masculine\nSPEAKER2: feminine"
    body = f"{scene}\n\n{voices}" if scene else voices
    system = (
        "You are an AI assistant designed to convert text into speech.\n"
        "If the user's message includes a [SPEAKER*] tag, do not read out the tag and generate speech for the "
        "following text, using the specified voice.\n"
        "If no speaker tag is present, select a suitable voice on your own."
    )
    assert prompt.MULTISPEAKER_SYSTEM_MESSAGE == system
    expected = (
        "<|begin_of_text|>"
        + turn("system", f"{system}\n\n<|scene_desc_start|>\n{body}\n<|scene_desc_end|>")
        + ASK.format(text)
    )
    assert p.text == expected == tokenizer.decode(p.input_ids)
    one = build_prompt(tokenizer, "[SPEAKER0] Hi.", scene=scene, speakers=["SPEAKER0"])  # one: the plain one
    assert one.text == build_prompt(tokenizer, "[SPEAKER0] Hi.", scene=scene).text
    with pytest.raises(HiggsLabError, match="speakers must be tags like 'SPEAKER0', got 'alice'"):
        build_prompt(tokenizer, "Hi.", speakers=["alice"])


def test_context_chunks_follow_the_references_with_both_placeholder_kinds_in_order(tokenizer):
    ref, first, second = codes(4, 5), codes(2, 6), codes(3, 7)
    context = [("One.", first), ("Two.", second)]
    for in_system in (False, True):
        p = build_prompt(tokenizer, "Three.", references=[("Ref.", ref)], context=context,
                         references_in_system=in_system)  # fmt: skip
        voice = turn("user", "Ref.") + turn("assistant", audio_out(13))
        system = turn("system", "Generate audio following instruction.\n\n<|scene_desc_start|>\n"
                      f"SPEAKER0: {audio_in(13)}\n<|scene_desc_end|>")  # fmt: skip
        expected = (
            "<|begin_of_text|>"
            + (system if in_system else voice)
            + turn("user", "One.")
            + turn("assistant", audio_out(11))
            + turn("user", "Two.")
            + turn("assistant", audio_out(12))
            + ASK.format("Three.")
        )
        assert p.text == expected == tokenizer.decode(p.input_ids)
        # the model fills placeholders in prompt order: segment k's columns sit at the k-th run of placeholders
        is_slot = (p.input_ids == 128015) | (p.input_ids == 128016)
        slots = p.input_ids[is_slot]
        assert slots.tolist() == [128015 if in_system else 128016] * 13 + [128016] * (11 + 12)
        assert torch.equal(
            p.audio_codes, torch.cat([delay.encode_segment(x, IDS) for x in (ref, first, second)], 1)
        )
        runs = (
            torch.diff(torch.nonzero(is_slot)[:, 0]) > 1
        )  # a gap in the placeholder positions ends a segment
        assert (torch.nonzero(runs)[:, 0] + 1).tolist() == [13, 13 + 11]
        start, end = p.text_span
        assert tokenizer.decode(p.input_ids[start:end]) == "\n\nThree."


def test_special_token_strings_in_user_text_are_refused_in_one_line(tokenizer):
    assert prompt.SPECIAL_TOKEN.findall("a <|eot_id|> b <|reserved_special_token_6|> <| x |> <|>") == [
        "<|eot_id|>",
        "<|reserved_special_token_6|>",
    ]
    with pytest.raises(HiggsLabError) as e:
        prompt.check_user_text("Say <|eot_id|> now.", "text")
    assert str(e.value) == (
        "text holds the special token string '<|eot_id|>': it would act as a control token in the prompt; "
        "remove it"
    )
    prompt.check_user_text("Costs <5 | 6> and a|b, [SPEAKER0] fine.", "text")
    ref = [("Ref.", codes(2, 8))]
    cases = [
        ({"text": "Hi <|begin_of_text|>"}, "text holds"),
        ({"scene": "Room <|scene_desc_end|>"}, "scene holds"),
        ({"references": [("Ref <|AUDIO|>.", codes(2, 8))]}, "reference 0 transcript holds"),
        ({"references": ref, "context": [("Before <|eot_id|>", codes(2, 9))]}, "context 0 transcript holds"),
    ]
    for kw, message in cases:
        kw = {"text": "Hi."} | kw
        with pytest.raises(HiggsLabError, match=f"^{message} the special token string") as e:
            build_prompt(tokenizer, **kw)
        assert "\n" not in str(e.value)


def test_audio_in_references_enter_the_model_as_codes_through_the_text_ffn(tokenizer, oracle, lm_checkpoints):
    """With references in the system message the model embeds the `<|AUDIO|>` positions from the codes and
    runs them through the text FFN: transformers' HiggsAudioV2 (no audio-in path of its own) given those
    positions' embeddings from its own codebook table, and only the `<|AUDIO_OUT|>` ones as audio, agrees."""
    import higgslab

    model = higgslab.load_model(lm_checkpoints["original"])
    ref, chunk = codes(3, 10), codes(2, 11)
    p = build_prompt(tokenizer, "Go.", references=[("Ref.", ref)], context=[("Before.", chunk)],
                     references_in_system=True)  # fmt: skip
    ids, audio = p.input_ids[None], p.audio_codes[None]
    ours = model(ids, audio)
    audio_in = ids[0] == 128015
    assert not ours.audio_out_mask[0, audio_in].any() and ours.audio_out_mask[0].sum() == 11

    n_in = int(audio_in.sum())
    embeds = oracle.model.embed_tokens(ids).detach().clone()
    embeds[0, audio_in] = oracle.model.embed_audio_tokens(audio[:, :, :n_in].transpose(1, 2))[0].detach()
    theirs = oracle(inputs_embeds=embeds, audio_input_ids=audio[:, :, n_in:].transpose(1, 2)).logits
    theirs = theirs.view(*ids.shape, 8, 1026)
    assert (ours.audio_logits - theirs).abs().max() < 1e-4 and theirs.abs().max() > 0.1
    as_audio_out = oracle(input_ids=torch.where(audio_in, 128016, ids), audio_input_ids=audio.transpose(1, 2))
    routed_as_audio = as_audio_out.logits.view(*ids.shape, 8, 1026)
    assert (ours.audio_logits - routed_as_audio).abs().max() > 1e-3  # the comparison sees the routing

    other = build_prompt(tokenizer, "Go.", references=[("Ref.", codes(3, 12))], context=[("Before.", chunk)],
                         references_in_system=True)  # fmt: skip
    assert torch.equal(other.input_ids, p.input_ids)
    changed = model(other.input_ids[None], other.audio_codes[None]).audio_logits
    first_in = int(audio_in.nonzero()[0])
    assert torch.equal(changed[0, :first_in], ours.audio_logits[0, :first_in])  # causal: before the codes
    assert (changed[0, -1] - ours.audio_logits[0, -1]).abs().max() > 1e-3  # the next frame depends on them
