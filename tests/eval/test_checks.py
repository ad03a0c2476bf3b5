"""Each check passes on a plausible clip and fails on the defect it exists to catch."""

import numpy as np
import pytest
import torch

from higgslab.eval import checks
from higgslab.eval.checks import Thresholds
from tests.eval.stubs import HOP, IDS, SR, good_clip, speech_like, truncated

EOS = IDS.eos


def test_plausible_clip_passes_every_audio_check():
    results = checks.audio_checks(speech_like(100), SR)
    assert [c.name for c in results if not c.passed] == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_audio_fails(bad):
    audio = speech_like(20)
    audio[1234] = bad
    c = checks.audio_finite(audio)
    assert not c.passed and c.value == 1
    assert not checks.audio_finite(np.zeros(0, np.float32)).passed  # empty is not valid audio either


def test_level_fails_when_too_quiet_or_too_loud():
    audio = speech_like(20)
    assert checks.level(audio).passed
    assert not checks.level(audio * 1e-3).passed
    assert not checks.level(np.sign(audio)).passed  # square wave at full scale: rms 1


def test_duration_fails_on_a_blip():
    assert checks.duration(speech_like(25), SR).passed
    assert not checks.duration(speech_like(1), SR).passed  # 0.04 s, as the NPU port saw with short prompts


def test_silent_block_fails():
    audio = speech_like(200)  # 8 s
    assert checks.silent_blocks(audio, SR).passed
    audio[SR : SR + int(2.5 * SR)] = 0.0
    c = checks.silent_blocks(audio, SR)
    assert not c.passed and 2.4 <= c.value <= 2.5
    audio[SR : SR + int(2.5 * SR)] = 1e-5  # -100 dBFS is silence too
    assert not checks.silent_blocks(audio, SR).passed
    assert checks.silent_blocks(audio, SR, Thresholds(max_silence_s=3.0)).passed


def test_sample_jump_fails():
    audio = speech_like(20)
    assert checks.sample_jumps(audio).passed
    audio[5000] += 0.8
    c = checks.sample_jumps(audio)
    assert not c.passed and c.detail.endswith(("sample 4999", "sample 5000"))


def test_clipping_fails():
    audio = speech_like(20)
    assert checks.clipping(audio).passed
    audio[100:103] = 1.0
    c = checks.clipping(audio)
    assert not c.passed and c.value == 3
    assert checks.clipping(audio, Thresholds(max_clipped=3)).passed


def test_codes_valid_fails_on_stream_ids_negatives_and_nan():
    codes = good_clip().codes
    assert checks.codes_valid(codes, 1024).passed
    for bad in (1024, 1025, -1):
        broken = codes.clone()
        broken[3, 7] = bad
        assert not checks.codes_valid(broken, 1024).passed
    assert not checks.codes_valid(torch.tensor([[1.0, float("nan")]]), 1024).passed
    assert not checks.codes_valid(torch.tensor([[1.5, 2.0]]), 1024).passed


def test_frames_decode_fails_on_lost_tail():
    clip = good_clip(frames=30)
    assert checks.frames_decode(clip.codes, clip.audio, HOP).passed
    assert not checks.frames_decode(clip.codes, clip.audio[:-HOP], HOP).passed
    assert not checks.frames_decode(clip.codes[:, :0], np.zeros(0), HOP).passed


def test_codebook_use_fails_on_a_collapsed_codebook():
    codes = good_clip().codes
    assert checks.codebook_use(codes).passed
    codes[5] = 17
    c = checks.codebook_use(codes)
    assert not c.passed and c.value == 1


def test_truncated_stream_fails_reported_or_not():
    clip = good_clip()
    assert checks.not_truncated(clip.columns, True, EOS).passed
    cut = truncated(good_clip())
    c = checks.not_truncated(cut.columns, True, EOS)  # claims finished: an unreported truncation
    assert not c.passed and "finished=True" in c.detail
    c = checks.not_truncated(cut.columns, False, EOS)  # reported, still a failed clip
    assert not c.passed and "never closed" in c.detail
    assert not checks.not_truncated(clip.columns, False, EOS).passed  # flag disagrees with the columns


def test_identical_fails_on_any_difference():
    a, b = good_clip(1), good_clip(1)
    assert checks.identical("d", a.codes, b.codes, a.audio, b.audio).passed
    b.codes[2, 10] += 1
    c = checks.identical("d", a.codes, b.codes)
    assert not c.passed and c.value == 1
    b = good_clip(1)
    b.audio[3] += 1e-7
    assert not checks.identical("d", a.codes, b.codes, a.audio, b.audio).passed
    assert not checks.identical("d", a.codes, b.codes[:, :-1]).passed


def test_longest_run():
    assert checks.longest_run(np.array([0, 1, 1, 0, 1, 1, 1, 0], bool)) == 3
    assert checks.longest_run(np.zeros(0, bool)) == 0
