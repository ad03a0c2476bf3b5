"""Precision mode on stub generators: passes on good clips, fails on each kind of broken one."""

import numpy as np

from higgslab.eval.precision import run_precision
from tests.eval.stubs import HOP, IDS, StubGenerator, truncated


def precision(gen):
    return run_precision(gen, seeds=[1, 2, 3], temperature=0.3, max_new_tokens=200, hop_length=HOP, ids=IDS)


def failed(report) -> set[str]:
    names = {c["name"] for c in report["checks"] if not c["passed"]}
    for s in report["seeds"]:
        names |= {c["name"] for c in s["checks"] if not c["passed"]}
    return names


def test_good_generator_passes_and_reports_every_seed():
    gen = StubGenerator()
    report = precision(gen)
    assert report["status"] == "passed" and failed(report) == set()
    assert [s["seed"] for s in report["seeds"]] == [1, 2, 3]
    assert gen.calls == 3 + 2 + 1  # the seeds, temperature 0 twice, the first seed again
    s = report["seeds"][0]
    assert s["frames"] == 150 and s["finished"] and 0.01 < s["rms"] < 0.2
    assert len(s["codebook_usage"]["distinct"]) == 8


def test_non_deterministic_generator_fails_both_determinism_checks():
    report = precision(StubGenerator(deterministic=False))
    assert report["status"] == "failed"
    assert failed(report) == {"deterministic_greedy", "deterministic_seed"}


def test_nan_audio_fails_the_seed_and_the_run():
    def nan_in_seed_2(clip, seed):
        if seed == 2:
            clip.audio[100] = np.nan
        return clip

    report = precision(StubGenerator(mutate=nan_in_seed_2))
    assert report["status"] == "failed"
    assert [s["passed"] for s in report["seeds"]] == [True, False, True]
    assert "audio_finite" in failed(report) and "all_seeds_valid" in failed(report)
    assert report["seeds"][1]["rms"] is not None  # figures still reported from the finite samples


def test_truncated_stream_fails():
    report = precision(StubGenerator(mutate=truncated))
    assert report["status"] == "failed" and "not_truncated" in failed(report)


def test_silent_block_fails():
    def silence(clip, seed):
        clip.audio[: int(2.1 * 24000)] = 0.0
        return clip

    report = precision(StubGenerator(mutate=silence))
    assert report["status"] == "failed" and failed(report) == {"silent_blocks", "all_seeds_valid"}


def test_missing_audio_fails():
    def no_audio(clip, seed):
        clip.audio = None
        return clip

    report = precision(StubGenerator(mutate=no_audio))
    assert {"audio_finite", "frames_decode"} <= failed(report)
