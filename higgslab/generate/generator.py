"""`Generator`: prompt → prefill → KV-cached audio decode → codes → audio, one-shot or streaming.

The LM (`model.lm`) knows nothing of generation; this file owns the loop. One decode step is
`model.decode_audio_step` → `sampling.sample` → `delay.force`: fixed shapes, device tensors only, so
that the whole step can be compiled once (`compile=True`) and, on CUDA, captured as a graph and replayed
(`compile="reduce-overhead"`: torch.compile's CUDA graphs). The default, `compile="auto"`, switches a
CPU run that is still going after `AUTO_COMPILE_AFTER` steps to the compiled step (`Generator.compile_plan`),
so that only long runs pay the compiler's warm-up. The host looks
at the device only every `sync_every` steps (to stop when every row has closed its codebooks) and when
streaming hands out frames.

Classifier-free guidance (`cfg_scale` ≠ 1, for models trained with text dropout such as higgslab-mini):
each prompt runs beside its copy without the text to speak (`Prompt.without_text`) in one batch, and the
codes are sampled from uncond + cfg_scale · (cond − uncond), the stream tokens with their conditional
probability (`sampling.guide`). The default is the checkpoint's own
`generation_config.json` `guidance_scale`, else 1 (off: the real checkpoints were not trained for it).

Temperature 0 is greedy and seed-independent: repetition-aware sampling (a random redraw) is applied
only when sampling (the original also redraws at temperature 0, which makes its "greedy" seed-dependent).

Counting: `max_new_tokens` counts LM steps, the all-stream-bos column included, as transformers' and
the NPU port's generate do. N steps without eos give N - n_q complete frames (FORMATS.md §6).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from higgslab import delay
from higgslab.device import peak_memory, reset_peak_memory, synchronize
from higgslab.errors import HiggsLabError
from higgslab.generate import longform
from higgslab.generate.longform import LongForm
from higgslab.generate.prompt import Prompt, Reference
from higgslab.generate.result import GenerationResult, GenerationStats
from higgslab.generate.sampling import SamplingSettings
from higgslab.generate.session import DecodeSession, Request
from higgslab.model import packing
from higgslab.model.lm import HiggsAudioModel

# compile="auto": a CPU run still going after this many eager steps continues with the compiled step. The
# warm-up (compilation, once per cache bucket) is repaid only over a long remainder, and how long a run
# will be is known only as it goes: a sentence, a notebook's preview or a test ends before this and never
# waits for the compiler, while a long-form chunk or a run to the token limit compiles (bench/RESULTS.md).
AUTO_COMPILE_AFTER = 512


class Generator:
    """Text-to-speech with a `HiggsAudioModel`, an optional audio tokenizer (codes → waveform) and the
    checkpoint's text tokenizer (text → prompt ids)."""

    def __init__(
        self,
        model: HiggsAudioModel,
        audio_tokenizer=None,
        text_tokenizer=None,
        *,
        compile: bool | str = "auto",
        sync_every: int = 16,
        cfg_scale: float = 1.0,
        pack: bool | None = None,
        long_form: LongForm | None = None,
    ):
        """`compile`: compile the decode step (True, or a torch.compile mode), or not (False); "auto": on
        the CPU, the steps of a run after its first `AUTO_COMPILE_AFTER` (`compile_plan`). `pack`: store the
        decode weights fused, in the layout the CPU reads fastest (`model/packing.py`), before each run; None =
        on the CPU only, where it was measured to pay (bench/RESULTS.md); False leaves the model
        as it is. `long_form`: the model's long-form defaults (`generate_long`), from its
        generation_config.json in `from_paths`."""
        if any(type(m).__module__.startswith("peft.") for m in model.modules()):
            # the decode step reads Linear weights directly (model/packing.py): an unmerged adapter is unseen
            raise HiggsLabError(
                "the model has unmerged LoRA (PEFT) layers: merge them first (model.merge_and_unload()), "
                "or load it with adapter_path="
            )
        self.model = model.eval()
        self.audio_tokenizer = audio_tokenizer
        self.text_tokenizer = text_tokenizer
        self.config = model.config
        self.compile = compile
        self.sync_every = sync_every
        self.cfg_scale = cfg_scale  # the default of generate(cfg_scale=None)
        self.pack = model.device.type == "cpu" if pack is None else pack
        self._rng = torch.Generator(device=model.device)
        self._steps: dict = {}  # compiled decode steps, kept across runs (`session.step_function`)
        self.label: str | None = None  # which model this is, when `from_pretrained` knows
        self.long_form = long_form or LongForm()

    def compile_plan(self, max_new_tokens: int) -> tuple[bool | str, int]:
        """(the compile setting, the first step that runs compiled) for a run of `max_new_tokens` steps:
        "auto" resolved (compiled after `AUTO_COMPILE_AFTER` eager steps when the run can go on that long
        on the CPU, else eager), any other setting as given from step 1."""
        if self.compile != "auto":
            return self.compile, 1
        if self.model.device.type == "cpu" and max_new_tokens > AUTO_COMPILE_AFTER + 1:
            return True, AUTO_COMPILE_AFTER + 1
        return False, max_new_tokens

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        device: str = "auto",
        adapter_path: str | Path | None = None,
        **kw,
    ) -> Generator:
        """The model a user means, as the CLI resolves it: no `path` = the embedded default (higgslab-mini,
        or `HIGGSLAB_EMBEDDED=tiny`), `"tiny"` = tiny random checkpoints (noise out, the real plumbing), a
        directory = that checkpoint (with `tokenizer_path` for audio); `adapter_path` = a LoRA adapter
        for it (merged at load). `label` says which one is in use."""
        from higgslab.embedded import TINY_LABEL, resolve_paths, tiny_random_paths

        if str(path) == "tiny":
            model_dir, tokenizer_dir, label = *tiny_random_paths(), TINY_LABEL
        else:
            model_dir, tokenizer_dir, label = resolve_paths(
                None if path is None else str(path), None if tokenizer_path is None else str(tokenizer_path)
            )
        gen = cls.from_paths(model_dir, tokenizer_dir, device=device, adapter_path=adapter_path, **kw)
        gen.label = label if adapter_path is None else f"{label} + LoRA adapter {adapter_path}"
        return gen

    @classmethod
    def from_paths(
        cls,
        model_path: str | Path,
        tokenizer_path: str | Path | None = None,
        device: str = "auto",
        adapter_path: str | Path | None = None,
        quantize: str | None = None,
        group_size: int | None = None,
        tokenizer_device: str | None = None,
        **kw,
    ) -> Generator:
        """Load LM (with the LoRA adapter at `adapter_path` merged into it), text tokenizer (from the LM's
        directory) and audio tokenizer onto `device` (the audio tokenizer onto `tokenizer_device` when
        given, e.g. "cpu" beside an LM on a small GPU). `quantize`: weight-only "int8" | "int4"
        (`group_size`) | "none" | None (as the checkpoint is), as `higgslab.io.load.load_model` takes it.
        The checkpoint's `generation_config.json` `guidance_scale`, if any, becomes the default
        `cfg_scale`, and its "higgslab_long_form" the `long_form` defaults."""
        import json

        from higgslab.device import default_dtype, pick_device
        from higgslab.io.load import load_model
        from higgslab.io.text_tokenizer import load_text_tokenizer

        dev = pick_device(device)
        tok_dev = dev if tokenizer_device is None else pick_device(tokenizer_device)
        model = load_model(
            model_path,
            device=dev,
            dtype=default_dtype(dev),
            adapter_path=adapter_path,
            quantize=quantize,
            group_size=group_size,
            text_head=False,  # generation never reads it (0.8 GB in bf16 at real size)
        )
        text_tok = load_text_tokenizer(model_path)
        audio_tok = None
        if tokenizer_path is not None:
            from higgslab.io.load import load_tokenizer

            audio_tok = load_tokenizer(tokenizer_path, device=tok_dev)
        generation = Path(model_path) / "generation_config.json"
        if generation.is_file():
            defaults = json.loads(generation.read_text())
            scale = defaults.get("guidance_scale")  # null or absent: off
            kw.setdefault("cfg_scale", 1.0 if scale is None else float(scale))
            kw.setdefault(
                "long_form", LongForm.from_config(defaults.get("higgslab_long_form"), str(generation))
            )
        return cls(model, audio_tok, text_tok, **kw)

    # ---- prompts -----------------------------------------------------------------------------------------
    def prompt(
        self, text: str, scene: str | None = None, ref_audio=None, ref_text: str | None = None, context=()
    ):
        """Build the FORMATS.md §5 prompt: `(input_ids [T], audio_codes [n_q, F])`."""
        p = self.build_prompt(text, scene, ref_audio, ref_text, context)
        return p.input_ids, p.audio_codes

    def build_prompt(
        self,
        text: str,
        scene: str | None = None,
        ref_audio=None,
        ref_text: str | None = None,
        context=(),
        *,
        references: Sequence[Reference] | None = None,
        speakers: Sequence[str] = (),
        references_in_system: bool = False,
    ) -> Prompt:
        """The FORMATS.md §5 `Prompt` (ids, audio codes, the span of the text to speak).

        The voice: `references` (from `self.references`, encoded once), or `ref_audio` (a file path,
        `(wav, sample_rate)`, or codes `[n_q, N]`) with `ref_text` (length-checked and encoded here, as
        `references(ref_audio=..., ref_text=...)`). `context` adds (text, codes) turns after it (the previous
        chunks of a long text); `speakers` (the transcript's `prompt.speaker_tags`) picks the multi-speaker
        system message when there is no reference; `references_in_system` puts the references in the system
        message as audio in. The text is checked before any reference is read."""
        from higgslab.generate.prompt import build_prompt, check_user_text, refuse_special_tokens

        if self.text_tokenizer is None:
            raise HiggsLabError(
                "this Generator has no text tokenizer: pass prompt_ids, or load with from_paths"
            )
        check_user_text(text, "text")
        if scene:
            refuse_special_tokens(scene, "scene")
        if references is None:
            references = self.references(ref_audio=ref_audio, ref_text=ref_text)
        elif ref_audio is not None or ref_text is not None:
            raise HiggsLabError("give references or ref_audio/ref_text, not both")
        return build_prompt(
            self.text_tokenizer,
            text,
            scene,
            references,
            context,
            n_q=self.config.num_codebooks,
            stream_ids=self.config.stream_ids,
            speakers=speakers,
            references_in_system=references_in_system,
        )

    def references(
        self,
        voice: str | Sequence[str] | None = None,
        voices_dir: str | Path | None = None,
        ref_audio=None,
        ref_text: str | None = None,
        *,
        ref_max_s: float | None = 30.0,
        ref_too_long: str = "refuse",
    ) -> list[Reference]:
        """The voice references of a run, each encoded once: `voice` names in `voices_dir` (None = the
        shipped voices; a list = one voice per `[SPEAKERn]`, speaker n = its position), or one `ref_audio`
        (a file path, `(wav, sample_rate)` or codes `[n_q, N]`) with its transcript `ref_text`.

        Every clip is length-checked first (a file from its header), before any is read or encoded: longer
        than `ref_max_s` (None = no limit) is refused with one line, or with `ref_too_long="cut"` only its
        first `ref_max_s` seconds are read and encoded."""
        from higgslab.generate import voices
        from higgslab.generate.prompt import check_user_text

        voices.check_limit(ref_max_s, ref_too_long)
        if voice is not None and ref_audio is not None:
            raise HiggsLabError("give voice or ref_audio, not both")
        if ref_text is not None and ref_audio is None:
            raise HiggsLabError("ref_text needs ref_audio (a voice brings its own transcript)")
        if voice is None and ref_audio is None:
            return []
        if voice is not None:
            names = [voice] if isinstance(voice, str) else list(voice)
            if not names:
                raise HiggsLabError("voice is an empty list")
            clips = []  # (transcript, clip, speaker, what)
            for i, name in enumerate(names):
                path, transcript = voices.voice_files(name, voices_dir)
                clips.append((transcript, path, None if isinstance(voice, str) else i, f"voice {name!r}:"))
        else:
            if ref_text is not None:
                check_user_text(ref_text, "ref_text")
            clips = [(ref_text or "(reference voice)", ref_audio, None, "ref_audio")]
        cut = [self._check_reference(clip, ref_max_s, ref_too_long, what) for _, clip, _, what in clips]
        return [
            Reference(transcript.strip(), self._reference_codes(clip, limit, what), speaker)
            for (transcript, clip, speaker, what), limit in zip(clips, cut, strict=True)
        ]

    def _check_reference(self, ref_audio, max_s: float | None, too_long: str, what: str) -> float | None:
        """Check one reference's length before it is read: the seconds to cut it to, or None for all of it
        (`voices.clip_limit`). A file is measured from its header; codes at the audio tokenizer's frame
        rate (unchecked without one)."""
        from higgslab.generate import voices
        from higgslab.io.audio import to_mono

        if isinstance(ref_audio, torch.Tensor) and ref_audio.dtype == torch.long:
            if self.audio_tokenizer is None:
                return None
            duration, what = ref_audio.shape[-1] / self.audio_tokenizer.frame_rate, f"{what} (codes)"
        elif isinstance(ref_audio, (str, Path)):
            duration, what = voices.clip_seconds(ref_audio, what), f"{what} {ref_audio}"
        else:
            wav, sr = ref_audio
            duration, what = len(to_mono(wav)) / sr, f"{what} (audio array)"
        return voices.clip_limit(duration, max_s, too_long, what)

    def _reference_codes(
        self, ref_audio, max_s: float | None = None, what: str = "ref_audio"
    ) -> torch.Tensor:
        """Codes `[n_q, N]` of one reference (a file path, `(wav, sample_rate)` or codes), of only its first
        `max_s` seconds when given (a file: only those are read)."""
        from higgslab.generate import voices
        from higgslab.io.audio import to_mono

        if isinstance(ref_audio, torch.Tensor) and ref_audio.dtype == torch.long:
            if max_s is None:
                return ref_audio  # already codes [n_q, N]
            return ref_audio[..., : round(max_s * self.audio_tokenizer.frame_rate)]
        if self.audio_tokenizer is None:
            raise HiggsLabError("a reference audio needs an audio tokenizer (tokenizer_path)")
        if isinstance(ref_audio, (str, Path)):
            if max_s is None:
                return self.audio_tokenizer.encode_file(ref_audio)
            return self.audio_tokenizer.encode(*voices.read_clip(ref_audio, max_s, what))
        wav, sr = ref_audio
        if max_s is None:
            return self.audio_tokenizer.encode(wav, sr)
        return self.audio_tokenizer.encode(to_mono(wav)[: round(max_s * sr)], sr)

    # ---- generation ------------------------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: torch.Tensor | None = None,
        text: str | None = None,
        scene: str | None = None,
        ref_audio=None,
        ref_text: str | None = None,
        max_new_tokens: int = 2048,
        temperature: float = 0.3,
        top_k: int = 50,
        top_p: float = 0.95,
        ras_window: int = 7,
        ras_max_repeat: int = 2,
        seed: int | None = None,
        audio_codes: torch.Tensor | None = None,
        decode_audio: bool = True,
        progress: Callable[[int], object] | None = None,
        cfg_scale: float | None = None,
        unconditional_ids: torch.Tensor | None = None,
    ) -> GenerationResult:
        """One prompt → `GenerationResult`. Give `prompt_ids` `[T]` (+ `audio_codes` `[n_q, F]` for its
        audio placeholders), or `text` (+ `scene`, `ref_audio` path/codes, `ref_text`). With `cfg_scale` ≠ 1
        (None: the model's default), the unconditional prompt is `unconditional_ids` if given, else the
        prompt with its last user turn's content cut out. `seed` None draws one (`result.seed`)."""
        settings = self._settings(cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                                  ras_window=ras_window, ras_max_repeat=ras_max_repeat)  # fmt: skip
        ids, codes, uncond = self._one_prompt(
            prompt_ids, audio_codes, text, scene, ref_audio, ref_text, unconditional_ids, settings
        )
        results: list[GenerationResult] = []
        runs = self._run([ids], [codes], max_new_tokens, settings, seed, results, progress=progress,
                         unconditional=[uncond])  # fmt: skip
        for _ in runs:
            pass
        result = results[0]
        if decode_audio and self.audio_tokenizer is not None:
            t0 = time.perf_counter()
            result.audio = self._decode(result.codes)
            result.stats.audio_decode_s = time.perf_counter() - t0
        return result

    def request(
        self,
        text: str,
        *,
        scene: str | None = None,
        voice: str | Sequence[str] | None = None,
        voices_dir: str | Path | None = None,
        references: Sequence[Reference] | None = None,
        max_new_tokens: int = 2048,
        seed: int | None = None,
        cfg_scale: float | None = None,
        **sampling_kw,
    ) -> Request:
        """The `Request` that `generate(text=..., ...)` decodes, for a `DecodeSession` or a
        `batching.ContinuousBatcher`: the prompt (with the `voice` from `voices_dir`, or `references`),
        the settings (checked), `seed` (None: drawn) and, with guidance, the prompt without its text."""
        from higgslab.generate.prompt import check_user_text

        settings = self._settings(cfg_scale, **sampling_kw)
        settings.check()
        if max_new_tokens < 1:
            raise HiggsLabError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        check_user_text(text, "text")
        if references is None:
            references = self.references(voice, voices_dir)
        p = self.build_prompt(text, scene, references=references)
        return Request(
            p.input_ids,
            p.audio_codes,
            settings,
            longform.draw_seed() if seed is None else seed,
            max_new_tokens,
            p.without_text() if settings.cfg_scale != 1 else None,
        )

    def _decode(self, codes: torch.Tensor) -> np.ndarray:
        """Codes `[n_q, F]` → float32 audio; no frame (stream closed at once) → no samples."""
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self.audio_tokenizer.decode(codes), dtype=np.float32)

    # long text, chunk by chunk, as the official generation example does: `longform.generate_long`
    generate_long = longform.generate_long

    def generate_batch(
        self, prompts: list[torch.Tensor], audio_codes: list[torch.Tensor | None] | None = None, **kw
    ) -> list[GenerationResult]:
        """Several prompts (token ids `[T_i]`) at once, left-padded; each row stops on its own."""
        seed = kw.pop("seed", None)
        max_new_tokens = kw.pop("max_new_tokens", 2048)
        decode_audio = kw.pop("decode_audio", True)
        unconditional = kw.pop("unconditional_ids", None)  # one per prompt, for cfg_scale != 1
        settings = self._settings(**kw)
        if settings.cfg_scale != 1 and unconditional is None:
            unconditional = [self._without_text(torch.as_tensor(p), settings.cfg_scale) for p in prompts]
        codes = audio_codes or [None] * len(prompts)
        results: list[GenerationResult] = []
        for _ in self._run(list(prompts), codes, max_new_tokens, settings, seed, results,
                           unconditional=unconditional):  # fmt: skip
            pass
        if decode_audio and self.audio_tokenizer is not None:
            for r in results:
                r.audio = self._decode(r.codes)
        return results

    def stream(
        self,
        prompt_ids=None,
        text=None,
        scene=None,
        ref_audio=None,
        ref_text=None,
        chunk_frames=10,
        max_new_tokens=2048,
        seed=None,
        audio_codes=None,
        unconditional_ids=None,
        **sampling_kw,
    ) -> Iterator[np.ndarray | torch.Tensor]:
        """Yield audio chunks (float32 24 kHz) as frames complete; codes `[n_q, k]` without a tokenizer.
        `self.last_result` holds the full result when the iterator ends."""
        settings = self._settings(**sampling_kw)
        ids, codes, uncond = self._one_prompt(
            prompt_ids, audio_codes, text, scene, ref_audio, ref_text, unconditional_ids, settings
        )
        decoder = self.audio_tokenizer.streaming_decoder() if self.audio_tokenizer is not None else None
        pending: list[torch.Tensor] = []
        t_start = time.perf_counter()
        first = None
        results: list[GenerationResult] = []
        for frames in self._run([ids], [codes], max_new_tokens, settings, seed, results, stream=True,
                                unconditional=[uncond]):  # fmt: skip
            pending.append(frames)
            if sum(f.shape[1] for f in pending) < chunk_frames:
                continue
            chunk = torch.cat(pending, 1)
            pending = []
            out = decoder.push(chunk) if decoder is not None else chunk
            if out.shape[-1] == 0:  # the streaming decoder may hold its first frames back (lookahead)
                continue
            if first is None:
                first = time.perf_counter() - t_start
            yield out
        tail = torch.cat(pending, 1) if pending else None
        if decoder is not None:
            out = decoder.push(tail, last=True) if tail is not None else decoder.flush()
            if out.size:
                yield out
        elif tail is not None:
            yield tail
        self.last_result = results[0]
        self.last_result.stats.time_to_first_audio_s = first

    def _settings(self, cfg_scale: float | None = None, **kw) -> SamplingSettings:
        """SamplingSettings with `cfg_scale` None → this generator's default (the checkpoint's own)."""
        return SamplingSettings(**kw, cfg_scale=self.cfg_scale if cfg_scale is None else cfg_scale)

    def _one_prompt(self, prompt_ids, audio_codes, text, scene, ref_audio, ref_text, unconditional, settings):
        """(ids `[T]`, audio codes, the ids without the text to speak — None when guidance is off)."""
        guided = settings.cfg_scale != 1
        if prompt_ids is None and text is None:
            raise HiggsLabError("give prompt_ids or text")
        if prompt_ids is None:
            p = self.build_prompt(text, scene, ref_audio, ref_text)
            return p.input_ids, p.audio_codes, (p.without_text() if guided else None)
        prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.long)
        if prompt_ids.dim() != 1 or prompt_ids.numel() == 0:
            raise HiggsLabError(
                f"prompt_ids must be a non-empty [T] tensor, got shape {tuple(prompt_ids.shape)}"
            )
        if guided and unconditional is None:
            unconditional = self._without_text(prompt_ids, settings.cfg_scale)
        return prompt_ids, audio_codes, (torch.as_tensor(unconditional) if guided else None)

    def _without_text(self, ids: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """`ids` `[T]` with the last user turn's content cut out (as `Prompt.without_text`)."""
        from higgslab.generate.prompt import without_text

        if self.text_tokenizer is None:
            raise HiggsLabError(
                f"cfg_scale={cfg_scale} needs the prompt without its text: give unconditional_ids "
                "(Prompt.without_text()) with prompt_ids, a text tokenizer to find it, or cfg_scale=1"
            )
        return without_text(ids, self.text_tokenizer)

    # ---- the loop ------------------------------------------------------------------------------------------
    def _run(
        self,
        prompts,
        prompt_codes,
        max_new_tokens,
        settings: SamplingSettings,
        seed,
        results: list[GenerationResult],
        stream: bool = False,
        progress=None,
        unconditional=None,
    ):
        """Prefill every prompt together (a `DecodeSession`), then step it; yields `[n_q, k]` newly complete
        frames of row 0 when `stream`; calls `progress(n_steps)` at each host sync. Appends one
        `GenerationResult` per prompt to `results` when done. With guidance, `unconditional` holds each
        prompt's ids without its text; they run as rows B..2B-1 of the batch and cache."""
        settings.check()
        if max_new_tokens < 1:
            raise HiggsLabError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        model, c, dev = self.model, self.config, self.model.device
        B = len(prompts)
        if settings.cfg_scale != 1:
            if unconditional is None or len(unconditional) != B or any(u is None for u in unconditional):
                raise HiggsLabError(
                    f"cfg_scale={settings.cfg_scale} needs unconditional_ids for every prompt"
                )
        # None: a seed of our own, never torch.seed(), which would reseed torch's global generator
        seed = longform.draw_seed() if seed is None else seed
        self._rng.manual_seed(seed)
        requests = [
            Request(p, x, settings, seed, max_new_tokens, None if unconditional is None else u, self._rng)
            for p, x, u in zip(prompts, prompt_codes, unconditional or [None] * B, strict=True)
        ]
        reset_peak_memory(dev)
        compile, compile_from = self.compile_plan(max_new_tokens)
        if self.pack:  # idempotent: repacks only layers whose weights were replaced, cast or moved
            packing.pack_for_decode(model)
        session = DecodeSession(model, compile=compile, compile_from=compile_from, steps=self._steps)
        # the first compiled step has passed its guards and later ones skip them, unless streaming: the
        # caller runs between steps and may change the model
        session.compile_skips_guards = not stream
        t0 = time.perf_counter()
        session.prefill(requests)
        synchronize(dev)
        stats = GenerationStats(prompt_tokens=session.used, device=str(dev))
        stats.prefill_s = time.perf_counter() - t0

        n_q = c.num_codebooks
        scheduler = delay.DelayScheduler(n_q, c.stream_ids) if stream else None
        if scheduler is not None:
            scheduler.push(session.column[0])
        t1 = time.perf_counter()
        steps = max_new_tokens
        for t in range(1, max_new_tokens):
            column = session.step()
            if t == n_q and stats.time_to_first_audio_s is None:  # column n_q completes frame 0
                synchronize(dev)
                stats.time_to_first_audio_s = stats.prefill_s + time.perf_counter() - t1
            if scheduler is not None:  # streaming: one host sync per step, the price of frame-by-frame audio
                frames = scheduler.push(column[0], end_frame=int(session.state.end_frame[0]))
                if frames.shape[1]:
                    yield frames
            if (t + 1) % self.sync_every == 0:
                if progress is not None:
                    progress(self.sync_every)
                if session.all_done():
                    steps = t + 1
                    break
        synchronize(dev)
        stats.decode_s = time.perf_counter() - t1
        if progress is not None and steps % self.sync_every:
            progress(steps % self.sync_every)
        stats.steps = steps
        stats.peak_memory_bytes = peak_memory(dev)
        rate = self.audio_tokenizer.sample_rate if self.audio_tokenizer is not None else 24000
        for b in range(B):
            result = session.finish(b, steps)
            result.sample_rate = rate
            result.stats = dataclasses.replace(stats, frames=result.codes.shape[1])
            results.append(result)
