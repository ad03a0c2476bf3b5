"""Widgets driven as a browser would: set a slider, tick a box, click a button; the parts must change."""

import numpy as np
import pytest
import torch

from higgslab import delay
from higgslab.generate.voices import voice_files
from higgslab.viz import demo_clip
from higgslab.widgets import (
    CodebookExplorer,
    DualFFNInspector,
    GenerationPlayer,
    SpectrogramCompare,
    TokenStreamViewer,
)


def is_wav(value) -> bool:
    return bytes(value[:4]) == b"RIFF"  # ipywidgets hands bytes back as a memoryview


def test_spectrogram_compare_update_redraws():
    clip = demo_clip(1.0)
    view = SpectrogramCompare(clip, clip)
    assert view.last_drawn["mel_distance"] == 0
    image = view.image.value
    view.update(0.2 * clip[::-1].copy())
    assert view.last_drawn["mel_distance"] > 0 and view.image.value != image
    assert is_wav(view.reconstruction_player.value)
    assert f"{view.last_drawn['mel_distance']:.4f}" in view.label.value


def test_codebook_explorer_k_slider_redecodes(tokenizer):
    explorer = CodebookExplorer(tokenizer, demo_clip(1.2, 16000), sample_rate=16000)  # resampled to 24 kHz
    assert explorer.codes.shape == (8, 30) and explorer.slider.max == 8 and explorer.k == 8
    before = explorer.last_drawn
    image, sound = explorer.compare.image.value, explorer.player.value
    explorer.slider.value = 2
    after = explorer.last_drawn
    assert after["k"] == 2
    np.testing.assert_array_equal(after["audio"], tokenizer.decode(explorer.codes, k=2))
    assert not np.array_equal(after["reconstruction"], before["reconstruction"])
    np.testing.assert_array_equal(after["original"], before["original"])
    assert explorer.compare.image.value != image and explorer.player.value != sound
    assert "k = 2" in explorer.compare.label.value


def test_token_stream_viewer_steps_through_columns():
    codes = torch.randint(0, 1024, (8, 5))
    ids = delay.StreamIds.after_codes(1024)
    columns = delay.apply(torch.cat([torch.full((8, 1), 1024), codes, torch.full((8, 1), 1025)], 1), ids)
    viewer = TokenStreamViewer(columns, ids)
    assert viewer.step.value == columns.shape[1] and torch.equal(viewer.last_drawn["frames"], codes)
    viewer.step.value = 10  # column 9 completes frame 2 (frame 0 is the all-bos one)
    assert viewer.last_drawn["frames"].shape[1] == 2 and "2 complete frames" in viewer.label.value
    viewer.step.value = 1
    assert viewer.last_drawn["frames"].shape[1] == 0 and "BOS BOS" in viewer.label.value


def test_generation_player_streams_then_offers_the_wav(generator):
    player = GenerationPlayer(generator, text="Hello from higgslab.", chunk_frames=5, max_new_tokens=48)
    assert player.result is None and not player.player.value
    player.button.click()
    assert player.result is not None and len(player.chunks) >= 2, player.status.value
    audio = np.concatenate(player.chunks)
    np.testing.assert_array_equal(player.result.audio, audio)
    assert len(audio) == player.result.codes.shape[1] * 960
    assert is_wav(player.player.value) and is_wav(player.stream_player.value)
    assert 'download="higgslab_seed1.wav"' in player.download.value
    assert player.progress.value == player.progress.max and not player.button.disabled
    first = player.result.codes
    player.button.click()  # same seed, same codes
    assert torch.equal(player.result.codes, first)
    assert player.cfg_scale.value == generator.cfg_scale  # the model's own scale to start with
    player.cfg_scale.value = 6.0  # the slider's top: this random tiny LM barely reads its text
    player.button.click()
    assert player.result is not None and not torch.equal(player.result.codes, first), player.status.value


def test_generation_player_clones_the_picked_voice(generator, tmp_path):
    player = GenerationPlayer(generator, chunk_frames=5, max_new_tokens=24)
    assert player.voice.options == ("none", "alice", "bob") and player.voice.value == "none"
    player.button.click()
    plain = player.result.stats.prompt_tokens
    player.voice.value = "alice"
    player.button.click()
    ids, codes = generator.prompt(
        player.text.value, ref_audio=voice_files("alice")[0], ref_text=voice_files("alice")[1]
    )
    assert (
        player.result.stats.prompt_tokens == len(ids) > plain + codes.shape[1]
    )  # the reference is in the prompt
    assert list(player._references) == ["alice"], player.status.value  # encoded once, reused
    (tmp_path / "carol.wav").write_text("not audio")
    (tmp_path / "carol.txt").write_text("A line.")
    broken = GenerationPlayer(generator, voice="carol", voices_dir=tmp_path, max_new_tokens=24)
    broken.button.click()
    assert "error: voice 'carol':" in broken.status.value and broken.result is None


def test_generation_player_reports_bad_settings(generator):
    player = GenerationPlayer(generator, max_new_tokens=0)
    player.button.click()
    assert "error: max_new_tokens" in player.status.value and player.result is None
    assert not player.button.disabled


@pytest.fixture
def inspector(generator):
    ids, codes = generator.prompt("Hello there.")
    view = DualFFNInspector(generator, ids, codes, max_new_tokens=24, seed=0)
    yield view
    view.reset()


def test_dualffn_inspector_switches_a_layers_audio_ffn(inspector, generator):
    assert inspector.last_drawn["logit_change"] == 0 and inspector.last_drawn["argmax_agreement"] == 1
    image = inspector.image.value
    inspector.switches[1].value = False
    assert generator.model.layers[1].audio_ffn == "skip"
    norms = inspector.last_drawn["norms"]
    assert norms.audio[1] == 0 and norms.audio[0] == inspector.baseline.audio[0]
    assert inspector.last_drawn["logit_change"] > 0 and inspector.image.value != image
    inspector.off_mode.value = "text"
    assert generator.model.layers[1].audio_ffn == "text" and inspector.last_drawn["norms"].audio[1] > 0
    inspector.reset()
    assert [layer.audio_ffn for layer in generator.model.layers] == ["audio", "audio"]
    assert inspector.last_drawn["logit_change"] == 0


def test_dualffn_inspector_listen_regenerates_with_the_switches(inspector, generator):
    baseline = inspector.player.value
    inspector.listen.click()
    assert inspector.player.value == baseline  # all on, same seed: the same audio
    for box in inspector.switches:
        box.value = False
    inspector.listen.click()
    assert is_wav(inspector.player.value) and inspector.player.value != baseline
