"""The generation CLI's settings, checked before anything loads: `settings_from(cfg) -> GenerateSettings`.

The checks run in this order, each failure one `HiggsLabError` line naming the key, the value and what it
takes: types (an OmegaConf structured merge onto `GenerateSettings`), ranges, combinations that would be
silently ignored, files (the transcript, reference clips and voices: headers only, nothing is decoded),
then the output folder (creatable and writable, probed without leaving anything behind). No model, no
audio tokenizer and no checkpoint file is touched, so a bad setting costs a second, not a load.

Why the dataclass is not registered in Hydra's ConfigStore as the schema of generate.yaml: Hydra would then
check the types while composing, before `main` runs, and report a wrong type in several lines ("Error
merging override seed=abc", the full key, the object type, the HYDRA_FULL_ERROR hint) with exit code 1,
out of reach of `cli_errors`. Checking in `settings_from` keeps every error one line with exit code 2,
works the same for a notebook or a test that composes the config (`compose("generate", overrides=[...])`),
and leaves `--cfg job` as it was. The dataclass has no defaults: generate.yaml (with its groups) holds them,
and a key it lacks is reported here.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from higgslab.errors import HiggsLabError

CHUNK_METHODS = ("auto", "none", "word", "speaker")
REF_TOO_LONG = ("refuse", "cut")
COMPILE_MODES = (
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)  # torch.compile's


@dataclass
class GenerateSettings:
    """Every key of `python -m higgslab.generate` (generate.yaml + generation/ + model/), typed.

    After `settings_from`, `text` is the text to speak (read from `text_file` when that is given)."""

    # what to say
    text: str | None
    text_file: str | None
    scene: str | None
    # whose voice: a voice name or a list of names (one per [SPEAKERn]), or a clip + its transcript
    voice: Any
    voices_dir: str | None
    ref_audio: str | None
    ref_text: str | None
    ref_in_system: bool
    ref_max_s: float | None
    ref_too_long: str
    # long form
    chunk_method: str
    chunk_max_words: int | None
    chunk_max_turns: int | None
    context_chunks: int | None
    chunk_files: bool
    seconds_per_word: float | None
    seconds_extra: float
    # sampling, retries
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    ras_window: int
    ras_max_repeat: int
    cfg_scale: float | None
    seed: int | None
    min_duration_s: float
    max_retries: int
    # model, device, output
    model_path: str | None
    tokenizer_path: str | None
    adapter_path: str | None
    quantize: str | None
    group_size: int
    tokenizer_device: str | None
    device: str
    compile: Any  # auto | true | false | a torch.compile mode
    output_dir: str
    overwrite: bool


def settings_from(cfg: DictConfig) -> GenerateSettings:
    """The composed Hydra config as checked `GenerateSettings`, or one `HiggsLabError` line."""
    s = _typed(cfg)
    _check_ranges(s)
    _check_combinations(s)
    s = dataclasses.replace(s, text=_read_text(s), compile=False if s.compile is None else s.compile)
    _check_text_and_chunks(s)
    _check_references(s)
    if s.adapter_path is not None:
        from higgslab.io.adapter import check_adapter_dir

        check_adapter_dir(s.adapter_path)
    check_output_dir(s.output_dir)
    return s


# ---- types ----------------------------------------------------------------------------------------------
def _takes(annotation) -> str:
    """What a field of `annotation` takes, in words."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    args = typing.get_args(annotation)
    base = next((a for a in args if a is not type(None)), annotation)
    return names.get(base, "a value") + (" or null" if type(None) in args else "")


# the keys of the generation/ and model/ groups that the server and batch synthesis take as generate does
# (sampling defaults, max_new_tokens; which model and how it loads), typed once, in GenerateSettings
MODEL_AND_SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_k", "top_p", "ras_window", "ras_max_repeat",
                           "cfg_scale", "model_path", "tokenizer_path", "adapter_path", "quantize", "group_size",
                           "tokenizer_device", "device")  # fmt: skip


def settings_class(name: str, own_keys: type, module: str, doc: str) -> type:
    """The settings dataclass `name` of another CLI: the fields of `own_keys` (a dataclass, its methods
    too), then `MODEL_AND_SAMPLING_KEYS` typed as in `GenerateSettings`."""
    types = typing.get_type_hints(GenerateSettings)
    cls = dataclasses.make_dataclass(
        name, [(key, types[key]) for key in MODEL_AND_SAMPLING_KEYS], bases=(own_keys,)
    )
    cls.__module__, cls.__doc__ = module, doc
    return cls


def typed_settings(cls: type, cfg: DictConfig, command: str):
    """`cfg` (a composed Hydra config) as an instance of the settings dataclass `cls`, or one
    `HiggsLabError` line: an unknown key, a missing one, a value of the wrong type. `command` names the
    CLI in the unknown-key line."""
    hints = typing.get_type_hints(cls)
    raw = OmegaConf.to_container(cfg, resolve=False)
    for key, value in raw.items():  # OmegaConf would read overwrite=2 or overwrite=yes as true
        if hints.get(key) is bool and not isinstance(value, bool):
            raise HiggsLabError(f"{key}={value}: takes true or false")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), cfg))
    except ConfigKeyError as e:
        raise HiggsLabError(f"{e.key}: not a setting of {command} (the keys: --cfg job)") from None
    except MissingMandatoryValue as e:
        key = str(e.full_key)
        what = 'text="what to say"' if key == "text" else f"{key}=..."
        raise HiggsLabError(f"{key} is not set: pass {what}") from None
    except ValidationError as e:
        key = str(e.full_key)
        raise HiggsLabError(f"{key}={raw.get(key)}: takes {_takes(hints.get(key))}") from None
    except OmegaConfBaseException as e:  # an interpolation in a quoted value that does not resolve
        raise HiggsLabError(f"{e.full_key}: {str(e.msg).splitlines()[0]}") from None


def _typed(cfg: DictConfig) -> GenerateSettings:
    s = typed_settings(GenerateSettings, cfg, "generate")
    if not (s.compile is None or isinstance(s.compile, bool) or s.compile in ("auto", *COMPILE_MODES)):
        modes = ", ".join(COMPILE_MODES)
        raise HiggsLabError(f"compile={s.compile}: takes auto, true, false or a torch.compile mode ({modes})")
    voices = [s.voice] if isinstance(s.voice, str) else s.voice if isinstance(s.voice, list) else [None]
    if s.voice is not None and not (voices and all(isinstance(v, str) and v for v in voices)):
        raise HiggsLabError(f"voice={s.voice}: takes a voice name or a list of names, e.g. voice=[alice,bob]")
    return s


# ---- ranges ---------------------------------------------------------------------------------------------
def _check_ranges(s: GenerateSettings) -> None:
    from higgslab.generate.sampling import SamplingSettings

    SamplingSettings(s.temperature, s.top_k, s.top_p, s.ras_window, s.ras_max_repeat,
                     1.0 if s.cfg_scale is None else s.cfg_scale).check()  # fmt: skip
    at_least = {"max_new_tokens": 1, "min_duration_s": 0, "max_retries": 0, "seconds_extra": 0,
                "chunk_max_words": 1, "chunk_max_turns": 1, "context_chunks": 0, "seed": 0}  # fmt: skip
    for key, low in at_least.items():
        value = getattr(s, key)
        if value is not None and not value >= low:
            raise HiggsLabError(f"{key} must be >= {low}, got {value}")
    for key in ("seconds_per_word", "ref_max_s"):
        value = getattr(s, key)
        if value is not None and not value > 0:
            raise HiggsLabError(f"{key} must be > 0 (or null), got {value}")
    if s.seed is not None and s.seed >= 2**63:
        raise HiggsLabError(f"seed must be < 2**63, got {s.seed}")
    for key, choices in (("chunk_method", CHUNK_METHODS), ("ref_too_long", REF_TOO_LONG)):
        if getattr(s, key) not in choices:
            raise HiggsLabError(f"{key}={getattr(s, key)}: takes {' | '.join(choices)}")
    check_model_settings(s)


LOAD_KEYS = ("adapter_path", "quantize", "group_size", "tokenizer_device")  # how a CLI's model is loaded


def load_settings(s) -> dict:
    """The `Generator.from_paths` keywords among a CLI's settings (generate, eval): `LOAD_KEYS`."""
    return {key: getattr(s, key) for key in LOAD_KEYS}


def check_model_settings(s) -> None:
    """device, quantize, group_size and tokenizer_device of a settings object (generate, eval): one line
    for an unknown or absent device, an unknown quantization, int4 where torch has no kernel for it."""
    from higgslab.device import pick_device
    from higgslab.model.quant import QuantSpec, check_device

    device = pick_device(s.device)  # here, not after the files are read
    check_device(QuantSpec.parse(s.quantize, s.group_size), device)
    if s.tokenizer_device is not None:
        pick_device(s.tokenizer_device)


# ---- combinations that would be ignored ---------------------------------------------------------------
def _check_combinations(s: GenerateSettings) -> None:
    refusals = [
        (s.text is not None and s.text_file is not None, "give text= or text_file=, not both"),
        (s.text is None and s.text_file is None, 'no text: pass text="what to say" or text_file=path'),
        (s.model_path is not None and s.tokenizer_path is None,
         "tokenizer_path is needed with model_path: the audio tokenizer turns codes into audio"),
        (s.tokenizer_path is not None and s.model_path is None,
         f"tokenizer_path={s.tokenizer_path} is used only with model_path= (the embedded model has its own)"),
        (s.ref_text is not None and s.ref_audio is None,
         "ref_text is the transcript of ref_audio: pass ref_audio= too (or voice=name)"),
        (s.voice is not None and s.ref_audio is not None, "give voice= or ref_audio=, not both"),
        (s.voices_dir is not None and s.voice is None, "voices_dir is used only with voice=name"),
        (s.ref_in_system and s.voice is None and s.ref_audio is None,
         "ref_in_system=true needs a reference: voice=name or ref_audio=path"),
    ]  # fmt: skip
    for refused, message in refusals:
        if refused:
            raise HiggsLabError(message)
    if s.chunk_method == "none":
        for key in ("chunk_max_words", "chunk_max_turns", "context_chunks"):
            if getattr(s, key) is not None:
                raise HiggsLabError(f"{key}={getattr(s, key)} is ignored with chunk_method=none")


def _check_text_and_chunks(s: GenerateSettings) -> None:
    """The checks that need the text: the chunk keys the method ignores, one voice per speaker tag."""
    from higgslab.generate.prompt import SPEAKER_TAG, check_user_text

    check_user_text(s.text, "text" if s.text_file is None else f"text_file {s.text_file}")
    for key in ("scene", "ref_text"):
        if getattr(s, key) is not None:
            check_user_text(getattr(s, key), key)
    tags = sorted({int(re.search(r"\d+", m.group()).group()) for m in SPEAKER_TAG.finditer(s.text)})
    method = ("speaker" if tags else "word") if s.chunk_method == "auto" else s.chunk_method
    if method == "speaker" and not tags:
        raise HiggsLabError("chunk_method=speaker needs [SPEAKERn] tags in the text (one chunk per turn)")
    ignored = {"word": "chunk_max_turns", "speaker": "chunk_max_words"}.get(method)
    if ignored is not None and getattr(s, ignored) is not None:
        why = "" if s.chunk_method != "auto" else f" (chunk_method=auto chose {method})"
        raise HiggsLabError(f"{ignored}={getattr(s, ignored)} is ignored with chunk_method={method}{why}")
    if isinstance(s.voice, list):  # voice i speaks [SPEAKERi]
        speakers = [f"SPEAKER{i}" for i in range(len(s.voice))]
        if missing := [f"[SPEAKER{t}]" for t in tags if t >= len(s.voice)]:
            raise HiggsLabError(f"the text has {', '.join(missing)} but voice= names {len(s.voice)} "
                                f"voices (for {', '.join(speakers)})")  # fmt: skip
        if unused := [name for i, name in enumerate(s.voice) if i not in tags]:
            raise HiggsLabError(f"voice {', '.join(unused)} would be ignored: a voice list gives "
                                f"[SPEAKER0], [SPEAKER1], ... their voices, and the text has no such tag")  # fmt: skip


# ---- files ----------------------------------------------------------------------------------------------
def _read_text(s: GenerateSettings) -> str:
    """The text to speak: `text`, or `text_file` read as UTF-8 (no Hydra interpolation ever touches it)."""
    if s.text_file is None:
        return s.text
    path = Path(s.text_file)
    if not path.is_file():
        raise HiggsLabError(f"text_file {path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HiggsLabError(f"text_file {path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise HiggsLabError(f"text_file {path}: cannot read it ({e.strerror})") from None


def _check_references(s: GenerateSettings) -> None:
    """Each reference clip exists and is not too long (its header only); each voice has a clean transcript."""
    from higgslab.generate import voices
    from higgslab.generate.prompt import check_user_text

    if s.ref_audio is not None:
        voices.check_clip(Path(s.ref_audio), s.ref_max_s, s.ref_too_long)  # exists, readable, not too long
    for name in [s.voice] if isinstance(s.voice, str) else s.voice or []:
        wav, transcript = voices.voice_files(name, None if s.voices_dir is None else Path(s.voices_dir))
        check_user_text(transcript, f"voice {name!r}: its transcript")
        voices.check_clip(wav, s.ref_max_s, s.ref_too_long, what=f"voice {name!r}:")


def check_output_dir(output_dir: str) -> None:
    """`output_dir` exists as a writable folder or can be made: the nearest existing folder on its path takes
    a file (an anonymous temporary one, gone when closed). Nothing is created."""
    out = Path(output_dir)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == out else f": {existing}"
        raise HiggsLabError(f"output_dir {out}{where} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise HiggsLabError(f"output_dir {out}: cannot write in {existing} ({e.strerror})") from None
