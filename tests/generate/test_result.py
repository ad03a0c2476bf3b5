"""GenerationStats: a step is one delayed column, a frame one decodable output frame."""

import math

import pytest

from higgslab.generate.result import GenerationStats


def test_steps_and_frames_per_second_count_different_things():
    stats = GenerationStats(steps=40, frames=32, decode_s=2.0)  # 40 steps without eos: 32 complete frames
    assert stats.steps_per_s == pytest.approx(20.0)
    assert stats.frames_per_s == pytest.approx(16.0)
    assert math.isnan(GenerationStats(steps=3, frames=0).steps_per_s)  # nothing timed: no rate
