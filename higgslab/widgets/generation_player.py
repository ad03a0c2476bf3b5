"""GenerationPlayer: text, scene and sampling settings in, streamed audio out, then the whole WAV with a
download link and the run's timing."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np

from higgslab.errors import HiggsLabError
from higgslab.generate.voices import list_voices
from higgslab.widgets.media import download_link, wav_bytes

WIDE = {"description_width": "initial"}
NO_VOICE = "none"  # the voice pick for no reference: the model picks a voice


class GenerationPlayer(widgets.VBox):
    """Parts: `text`, `scene`, `voice` (a voice reference from `voices_dir`, the shipped ones by default, or
    "none"; each voice is encoded once, on first use), `seed`, `temperature`, `top_k`, `top_p`, `cfg_scale` (classifier-free
    guidance, starting at the model's own scale; 1 = off), `max_new_tokens`, `button`,
    `progress` (frames so far), `stream_player` (the newest chunk, autoplaying), `player` (the final
    WAV), `download` (an HTML link), `status`. After a press: `chunks` (audio as it arrived) and `result`
    (`Generator.last_result`; `result.audio` is the concatenated chunks). `button.click()` runs it."""

    def __init__(
        self,
        generator,
        text: str = "Hello from higgslab.",
        chunk_frames: int = 25,
        voice: str = NO_VOICE,
        voices_dir=None,
        **defaults,
    ):
        self.generator = generator
        self.chunk_frames = chunk_frames
        self.voices_dir = voices_dir
        self._references: dict[str, list] = {}  # voice name -> its encoded reference
        d = {
            "seed": 1,
            "temperature": 0.3,
            "top_k": 50,
            "top_p": 0.95,
            "max_new_tokens": 200,
            "ras_window": 7,
            "cfg_scale": generator.cfg_scale,
        }
        d.update({k: v for k, v in defaults.items() if k in d and v is not None})
        self.ras_window = d["ras_window"]
        self.text = widgets.Textarea(value=text, description="text", layout=widgets.Layout(width="95%"))
        self.scene = widgets.Text(
            value="",
            description="scene",
            placeholder="Audio is recorded from a quiet room.",
            layout=widgets.Layout(width="95%"),
        )
        self.voice = widgets.Dropdown(
            options=[NO_VOICE, *list_voices(voices_dir)], value=voice, description="voice"
        )
        self.seed = widgets.IntText(value=d["seed"], description="seed")
        self.temperature = widgets.FloatSlider(
            value=d["temperature"], min=0, max=1.5, step=0.05, description="temperature", style=WIDE
        )
        self.top_k = widgets.IntSlider(value=d["top_k"], min=0, max=200, description="top-k")
        self.top_p = widgets.FloatSlider(value=d["top_p"], min=0.05, max=1, step=0.05, description="top-p")
        self.cfg_scale = widgets.FloatSlider(
            value=d["cfg_scale"], min=0, max=6, step=0.5, description="guidance", style=WIDE
        )
        self.max_new_tokens = widgets.IntText(value=d["max_new_tokens"], description="max steps", style=WIDE)
        self.button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="frames")
        self.stream_player = widgets.Audio(format="wav", autoplay=True)
        self.player = widgets.Audio(format="wav", autoplay=False)
        self.download = widgets.HTML()
        self.status = widgets.HTML()
        self.chunks: list[np.ndarray] = []
        self.result = None
        self.button.on_click(lambda _: self.generate())
        settings = widgets.HBox(
            [
                widgets.VBox([self.seed, self.max_new_tokens, self.cfg_scale]),
                widgets.VBox([self.temperature, self.top_k, self.top_p]),
            ]
        )
        super().__init__(
            [
                self.text,
                self.scene,
                self.voice,
                settings,
                widgets.HBox([self.button, self.progress]),
                widgets.HBox([widgets.Label("streaming"), self.stream_player]),
                widgets.HBox([widgets.Label("final"), self.player, self.download]),
                self.status,
            ]
        )

    def generate(self) -> None:
        """Run one generation with the current settings, updating the parts as chunks arrive."""
        gen, rate = self.generator, self._sample_rate()
        n_q = gen.config.num_codebooks
        hop = rate // 25
        self.chunks, self.result = [], None
        self.progress.max = max(self.max_new_tokens.value - n_q, 1)
        self.progress.value, self.progress.bar_style = 0, ""
        self.button.disabled = True
        self.status.value = "generating…"
        try:
            for chunk in gen.stream(
                **self._prompt(),
                chunk_frames=self.chunk_frames,
                max_new_tokens=self.max_new_tokens.value,
                seed=self.seed.value,
                temperature=self.temperature.value,
                top_k=self.top_k.value,
                top_p=self.top_p.value,
                ras_window=self.ras_window,
                cfg_scale=self.cfg_scale.value,
            ):
                if not len(chunk):  # the streaming decoder's lookahead can hold the first frames back
                    continue
                self.chunks.append(np.asarray(chunk, dtype=np.float32))
                self.stream_player.value = wav_bytes(self.chunks[-1], rate)
                self.progress.value = min(sum(len(c) for c in self.chunks) // hop, self.progress.max)
        except HiggsLabError as e:
            self.status.value = f"<span style='color:#d62728'>error: {e}</span>"
            return
        finally:
            self.button.disabled = False
        self._show(gen.last_result, rate)

    def _prompt(self) -> dict:
        """The stream's prompt arguments: the text and scene, with the picked voice's reference."""
        text, scene, name = self.text.value, self.scene.value or None, self.voice.value
        if name == NO_VOICE:
            return {"text": text, "scene": scene}
        if name not in self._references:
            self._references[name] = self.generator.references(voice=name, voices_dir=self.voices_dir)
        p = self.generator.build_prompt(text, scene, references=self._references[name])
        return {"prompt_ids": p.input_ids, "audio_codes": p.audio_codes}

    def _show(self, result, rate: int) -> None:
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        result.audio = audio
        self.result = result
        data = wav_bytes(audio, rate)
        self.player.value = data
        self.download.value = download_link(data, f"higgslab_seed{self.seed.value}.wav")
        self.progress.value, self.progress.bar_style = self.progress.max, "success"
        s = result.stats
        first = "–" if s.time_to_first_audio_s is None else f"{s.time_to_first_audio_s:.2f} s"
        self.status.value = (
            f"{result.codes.shape[1]} frames = {len(audio) / rate:.2f} s of audio; {s.steps} steps; "
            f"prefill {s.prefill_s:.2f} s, decode {s.decode_s:.2f} s ({s.steps_per_s:.1f} steps/s), "
            f"first audio after {first}; {'finished' if result.finished else 'hit max steps'}"
        )

    def _sample_rate(self) -> int:
        tok = self.generator.audio_tokenizer
        if tok is None:
            raise HiggsLabError("GenerationPlayer needs a Generator with an audio tokenizer (tokenizer_path)")
        return tok.sample_rate
