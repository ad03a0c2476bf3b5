"""`HiggsConfig`: one description of a Higgs Audio V2 LM, read from either `config.json` flavour.

The original Boson checkpoint (`model_type: higgs_audio`) nests a Llama `text_config` and names the audio
settings `audio_*`; the transformers port (`model_type: higgs_audio_v2`) is a flat LlamaConfig plus
`num_codebooks`/`codebook_size`. Both become the same dataclass, and both can be written back.

Shapes, ids and the numbers the forward pass uses come only from the checkpoint's own file: a missing key
that sets one is a one-line `HiggsLabError` naming it, never a default (transformers' own defaults carry
other llama3 RoPE numbers and a head_dim of 128: FORMATS.md §1, §9). The tables below say which keys each
flavour must have (`*_REQUIRED`) and which the real files may leave out, with the value both formats'
readers give them then (`*_OPTIONAL`): Llama's bias/activation/tying defaults, and the three Llama-3
reserved-slot ids that Boson's file does not name (FORMATS.md §5; transformers' may leave out the delay one).
The dataclass defaults below are the real 3B model, for configs built in code.

Converting between the layouts (`higgslab.convert`) is exact both ways, key for key: original ->
transformers -> original and transformers -> original -> transformers give back the file read. Each layout
writes its own `model_type` and `architectures`; the keys both hold are renamed by one table, `RENAMES`,
used in both directions:

    original (`text_config.` = its nested Llama config)   transformers
    text_config.<Llama key> (sizes, eps, biases, ...)      <Llama key> (the same name, flat)
    text_config.bos_token_id                               bos_token_id
    text_config.rope_theta (+ rope_scaling)                rope_parameters (one dict)
    audio_num_codebooks                                    num_codebooks
    audio_codebook_size (codes: 1024)                      codebook_size (codes + stream bos/eos: 1026)
    audio_stream_bos_id, audio_stream_eos_id, pad_token_id (the same names)
    eot_token_id                                           eos_token_id
    audio_out_bos_token_id                                 audio_bos_token_id
    audio_delay_token_id                                   audio_delay_token_id
    audio_out_token_idx                                    audio_token_id

A key a file may leave out (`READER_DEFAULTS`: the reserved-slot ids, Llama's bias/activation/tying, no
rope_scaling) is written only where the file read had it or its value is not the one assumed without it.

Every other key of the file read that the target layout would not give back as it was travels along
verbatim in one namespaced key, `CARRIED[source layout]`: the transformers file gets `higgslab_original_keys`
(e.g. a small model's `audio_eos_token_id`, `audio_adapter_type: dual_ffn`, Boson's token strings) and the
original file gets `higgslab_transformers_keys` (e.g. `dtype`, `transformers_version`). Converting back
puts them where they were. transformers' HiggsAudioV2 loads such a file (it keeps an unknown key as an
attribute); ours also reads the original-only ids from `higgslab_original_keys` (`ORIGINAL_ONLY`), so a
converted small model keeps ids inside its vocabulary. A key that a layout has no reader default for and
the source file lacks (Boson's `use_delay_pattern`, say) is written anew: its value is the one assumed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from higgslab.errors import HiggsLabError

LayerKind = Literal["dual_ffn", "fast_forward", "llama"]
Layout = Literal["original", "transformers"]
ADAPTER_TYPES = ("dual_ffn", "dual_ffn_fast_forward")


@dataclass
class HiggsConfig:
    # Llama backbone
    vocab_size: int = 128256
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_layers: int = 28
    num_heads: int = 24
    num_kv_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    rope: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 500000.0})
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    tie_word_embeddings: bool = True
    # audio adapter: which layers carry an audio FFN, what the others do with audio positions
    adapter_type: str = "dual_ffn_fast_forward"
    dual_ffn_layers: tuple[int, ...] = tuple(range(28))
    audio_self_attention: bool = False
    # audio codes: `codebook_size` real codes per codebook; stream bos/eos are two extra rows
    num_codebooks: int = 8
    codebook_size: int = 1024
    stream_bos_id: int = 1024
    stream_eos_id: int = 1025
    # text token ids (Llama-3 reserved slots)
    bos_token_id: int = 128000
    pad_token_id: int = 128001
    eot_token_id: int = 128009
    audio_bos_token_id: int = 128011
    audio_eos_token_id: int = 128012
    audio_out_bos_token_id: int = 128013
    audio_delay_token_id: int = 128014
    audio_in_token_id: int = 128015
    audio_out_token_id: int = 128016
    # where it came from, and the file's own dict (kept so conversion writes back what it read)
    source_format: Literal["original", "transformers", "new"] = field(default="new", compare=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # ---- derived facts -------------------------------------------------------------------------------
    @property
    def codebook_entries(self) -> int:
        """Rows per codebook in the audio embedding and head: codes + stream bos + stream eos."""
        return self.codebook_size + 2

    def layer_kind(self, i: int) -> LayerKind:
        """What layer `i` does with audio positions (see `higgslab.model.dualffn`)."""
        if i in self.dual_ffn_layers:
            return "dual_ffn"
        return "fast_forward" if self.adapter_type == "dual_ffn_fast_forward" else "llama"

    @property
    def layer_kinds(self) -> list[LayerKind]:
        return [self.layer_kind(i) for i in range(self.num_layers)]

    @property
    def stream_ids(self) -> StreamIds:
        """The audio stream's ids (codes, stream bos, stream eos), as `higgslab.delay` takes them."""
        return StreamIds(self.codebook_size, self.stream_bos_id, self.stream_eos_id)

    # ---- reading -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> HiggsConfig:
        if not isinstance(d, dict):
            raise HiggsLabError(f"{where}: expected a JSON object, got {type(d).__name__}")
        kind = d.get("model_type")
        for key in CARRIED.values():
            if key in d and not isinstance(d[key], dict):
                raise HiggsLabError(f"{where}: '{key}' must be a JSON object, got {type(d[key]).__name__}")
        if kind == "higgs_audio":
            cfg = cls._from_original(d, where)
        elif kind == "higgs_audio_v2":
            cfg = cls._from_transformers(d, where)
        else:
            raise HiggsLabError(
                f"{where}: unknown model_type {kind!r} (expected 'higgs_audio' or 'higgs_audio_v2')"
            )
        cfg.raw = d
        cfg.validate(where)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> HiggsConfig:
        """Read `config.json` (or the directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise HiggsLabError(f"{path}: no such config file")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HiggsLabError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, where=str(path))

    @staticmethod
    def _llama_fields(t: _Keys) -> dict[str, Any]:
        """The Llama backbone from a (flat or nested) LlamaConfig dict."""
        return t.fields(LLAMA_REQUIRED, LLAMA_OPTIONAL) | {"rope": _rope_from(t)}

    @classmethod
    def _from_original(cls, d: dict[str, Any], where: str) -> HiggsConfig:
        t = d.get("text_config")
        if not isinstance(t, dict):
            raise HiggsLabError(f"{where}: model_type 'higgs_audio' needs a 'text_config' object")
        text = _Keys(t, where, "text_config.")
        fields = cls._llama_fields(text) | _Keys(d, where).fields(ORIGINAL_REQUIRED, ORIGINAL_OPTIONAL)
        text_ffn = (fields["hidden_size"], fields["intermediate_size"])
        audio_ffn = (
            d.get("audio_ffn_hidden_size", text_ffn[0]),
            d.get("audio_ffn_intermediate_size", text_ffn[1]),
        )
        if audio_ffn != text_ffn:  # absent: the text FFN's sizes
            raise HiggsLabError(f"{where}: an audio FFN of another size than the text FFN is not supported")
        fields["dual_ffn_layers"] = tuple(fields["dual_ffn_layers"] or ())
        fields["audio_self_attention"] = bool(fields["audio_self_attention"])
        return cls(**fields, bos_token_id=text.need("bos_token_id"), source_format="original")

    @classmethod
    def _from_transformers(cls, d: dict[str, Any], where: str) -> HiggsConfig:
        keys = _Keys(d, where)
        carried = d.get(CARRIED["original"], {})  # the original-only keys a converted file brought along
        fields = (
            cls._llama_fields(keys)
            | keys.fields(TRANSFORMERS_REQUIRED, TRANSFORMERS_OPTIONAL)
            | _Keys(carried, where, f"{CARRIED['original']}.").fields({}, ORIGINAL_ONLY)
        )
        fields["codebook_size"] -= 2  # transformers' codebook_size counts the two stream tokens (1026 there)
        layers = fields["dual_ffn_layers"]  # every layer is DualFFN there, unless the carried keys name them
        fields["dual_ffn_layers"] = tuple(range(fields["num_layers"]) if layers is None else layers)
        fields["audio_self_attention"] = bool(fields["audio_self_attention"])
        eos = d.get("eos_token_id")
        return cls(
            **fields,
            eot_token_id=eos if isinstance(eos, int) else 128009,  # may be absent, null or a list there
            bos_token_id=d.get("bos_token_id") or 128000,  # may be null there
            source_format="transformers",
        )

    def validate(self, where: str = "config") -> None:
        if self.adapter_type not in ADAPTER_TYPES:
            raise HiggsLabError(
                f"{where}: audio_adapter_type {self.adapter_type!r} is not supported (use {ADAPTER_TYPES})"
            )
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise HiggsLabError(
                f"{where}: heads do not divide evenly (hidden {self.hidden_size}, "
                f"heads {self.num_heads}, kv heads {self.num_kv_heads})"
            )
        bad = [i for i in self.dual_ffn_layers if not 0 <= i < self.num_layers]
        if bad:
            raise HiggsLabError(f"{where}: audio_dual_ffn_layers {bad} outside 0..{self.num_layers - 1}")
        if {self.stream_bos_id, self.stream_eos_id} != {self.codebook_size, self.codebook_size + 1}:
            raise HiggsLabError(f"{where}: stream bos/eos ids must be codebook_size and codebook_size + 1")

    # ---- writing -------------------------------------------------------------------------------------
    def to_original_dict(self) -> dict[str, Any]:
        """The Boson `config.json` (model_type `higgs_audio`): the file read with its own keys kept, or
        converted from the transformers one (module docstring), or a new file for a config built in code."""
        return self._to_layout("original")

    def to_transformers_dict(self) -> dict[str, Any]:
        """The transformers `config.json` (model_type `higgs_audio_v2`), as `to_original_dict`."""
        if sorted(set(self.dual_ffn_layers)) != list(range(self.num_layers)):
            raise HiggsLabError("the transformers format holds only models whose every layer is DualFFN")
        if self.audio_self_attention:
            raise HiggsLabError("the transformers format has no separate audio attention")
        return self._to_layout("transformers")

    def _to_layout(self, fmt: Layout) -> dict[str, Any]:
        if self.source_format == "new":
            return self._written(fmt, None)
        if self.source_format == fmt:
            return self._written(fmt, self.raw)
        other: Layout = self.source_format
        raw = _flat(self.raw)
        restored = _flat(raw.pop(CARRIED[fmt], None) or {})  # what an earlier `fmt` file carried here
        out = _flat(self._written(fmt, _nest(_renamed(raw, fmt) | restored)))
        if restored and HiggsConfig.from_dict(_nest(out | restored)) == self:
            out |= restored  # the earlier file's own values, unless a field was changed since
        # carry every key of the file read that converting `out` back would not give back as it was
        reread = HiggsConfig.from_dict(_nest(out), where=f"the {fmt} config written")
        back = _flat(reread._written(other, _nest(_renamed(out, other))))
        carried = {k: v for k, v in raw.items() if k not in back or not _same(back[k], v)}
        return _nest(out | ({CARRIED[other]: _nest(carried)} if carried else {}))

    def _written(self, fmt: Layout, base: dict[str, Any] | None) -> dict[str, Any]:
        """The fields as layout `fmt`'s keys, onto `base` (None: a new file). A key `base` lacks is added
        unless its value is the one the reader assumes without it; `NEW_FILE_KEYS` only fill a new file."""
        full = _flat(self._original_keys() if fmt == "original" else self._transformers_keys())
        if base is None:
            return _nest(full)
        out, assumed = _flat(base), READER_DEFAULTS[fmt]
        for k, v in full.items():
            if k in NEW_FILE_KEYS[fmt]:
                out.setdefault(k, v)
            elif k in out or not (k in assumed and _same(assumed[k], v)):
                out[k] = v
        return _nest(out)

    def _llama_dict(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "hidden_act": self.hidden_act,
            "tie_word_embeddings": self.tie_word_embeddings,
        }

    def _original_keys(self) -> dict[str, Any]:
        """Every key of a new Boson file, in its order."""
        return {
            "model_type": "higgs_audio",
            "architectures": ["HiggsAudioModel"],
            "audio_adapter_type": self.adapter_type,
            "audio_dual_ffn_layers": list(self.dual_ffn_layers),
            "use_audio_out_self_attention": int(self.audio_self_attention),
            "audio_ffn_hidden_size": self.hidden_size,
            "audio_ffn_intermediate_size": self.intermediate_size,
            "audio_num_codebooks": self.num_codebooks,
            "audio_codebook_size": self.codebook_size,
            "audio_stream_bos_id": self.stream_bos_id,
            "audio_stream_eos_id": self.stream_eos_id,
            "eot_token_id": self.eot_token_id,  # not in Boson's files; kept so small vocabularies round-trip
            "audio_bos_token_id": self.audio_bos_token_id,
            "audio_delay_token_id": self.audio_delay_token_id,
            "audio_eos_token_id": self.audio_eos_token_id,
            "audio_out_bos_token_id": self.audio_out_bos_token_id,
            "audio_in_token_idx": self.audio_in_token_id,
            "audio_out_token_idx": self.audio_out_token_id,
            "use_delay_pattern": True,
            "skip_audio_tower": True,
            "encode_audio_in_tokens": True,
            "audio_embed_avg": False,
            "hidden_size": self.hidden_size,
            "pad_token_id": self.pad_token_id,
            "text_config": {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                **self._llama_dict(),
                "bos_token_id": self.bos_token_id,
                **_rope_to_legacy(self.rope),
            },
        }

    def _transformers_keys(self) -> dict[str, Any]:
        """Every key of a new transformers file."""
        return {
            **self._llama_dict(),
            "model_type": "higgs_audio_v2",
            "architectures": ["HiggsAudioV2ForConditionalGeneration"],
            "rope_parameters": dict(self.rope),
            "num_codebooks": self.num_codebooks,
            "codebook_size": self.codebook_entries,
            "audio_token_id": self.audio_out_token_id,
            "audio_bos_token_id": self.audio_out_bos_token_id,
            "audio_delay_token_id": self.audio_delay_token_id,
            "audio_stream_bos_id": self.stream_bos_id,
            "audio_stream_eos_id": self.stream_eos_id,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eot_token_id,
        }

    def to_llama_config(self, attn_implementation: str = "sdpa"):
        """A transformers `LlamaConfig` for the building blocks (attention, RoPE, norms, MLP)."""
        from transformers import LlamaConfig

        cfg = LlamaConfig(**self._llama_dict(), rope_parameters=dict(self.rope))
        cfg._attn_implementation = attn_implementation
        return cfg

    def replace(self, **changes: Any) -> HiggsConfig:
        return dataclasses.replace(self, **changes)


class StreamIds(NamedTuple):
    """One checkpoint's audio stream: real codes are 0..codebook_size-1, then stream bos and stream eos.

    Everything in `higgslab.delay` takes one; a model's is `HiggsConfig.stream_ids`, a tokenizer-only
    view's is `StreamIds.after_codes(tokenizer.codebook_size)`."""

    codebook_size: int
    bos: int  # stream-bos: codebook not started yet
    eos: int  # stream-eos: codebook ended

    @classmethod
    def after_codes(cls, codebook_size: int) -> StreamIds:
        """The layout every Higgs checkpoint uses: bos = codebook_size, eos = codebook_size + 1."""
        return cls(codebook_size, codebook_size, codebook_size + 1)


# ---- what each config.json flavour must hold: dataclass field -> key --------------------------------------
LLAMA_REQUIRED = {  # the flat transformers file, or the original's `text_config`
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "rms_norm_eps": "rms_norm_eps",
    "max_position_embeddings": "max_position_embeddings",
}  # and RoPE: `rope_parameters`, or `rope_theta` (+ optional `rope_scaling`)
LLAMA_OPTIONAL = {  # LlamaConfig's and HiggsAudioV2Config's own defaults
    "attention_bias": ("attention_bias", False),
    "mlp_bias": ("mlp_bias", False),
    "hidden_act": ("hidden_act", "silu"),
    "tie_word_embeddings": ("tie_word_embeddings", False),
}
ORIGINAL_REQUIRED = {  # top level of the original file (its `text_config` holds `bos_token_id`)
    "adapter_type": "audio_adapter_type",
    "dual_ffn_layers": "audio_dual_ffn_layers",
    "audio_self_attention": "use_audio_out_self_attention",
    "num_codebooks": "audio_num_codebooks",
    "codebook_size": "audio_codebook_size",
    "stream_bos_id": "audio_stream_bos_id",
    "stream_eos_id": "audio_stream_eos_id",
    "pad_token_id": "pad_token_id",
    "audio_eos_token_id": "audio_eos_token_id",
    "audio_out_bos_token_id": "audio_out_bos_token_id",
    "audio_in_token_id": "audio_in_token_idx",
    "audio_out_token_id": "audio_out_token_idx",
}
ORIGINAL_OPTIONAL = {  # not in Boson's file: the Llama-3 reserved slots (FORMATS.md §5)
    "eot_token_id": ("eot_token_id", 128009),
    "audio_bos_token_id": ("audio_bos_token_id", 128011),
    "audio_delay_token_id": ("audio_delay_token_id", 128014),
}
TRANSFORMERS_REQUIRED = {
    "num_codebooks": "num_codebooks",
    "codebook_size": "codebook_size",  # codes + the two stream tokens
    "stream_bos_id": "audio_stream_bos_id",
    "stream_eos_id": "audio_stream_eos_id",
    "pad_token_id": "pad_token_id",
    "audio_out_bos_token_id": "audio_bos_token_id",
    "audio_out_token_id": "audio_token_id",
}
TRANSFORMERS_OPTIONAL = {  # transformers' HiggsAudioV2Config default, the same slot as the original's
    "audio_delay_token_id": ("audio_delay_token_id", 128014),
}
ORIGINAL_ONLY = {  # fields the transformers layout has no key for: from its `higgslab_original_keys`, else these
    "adapter_type": ("audio_adapter_type", "dual_ffn_fast_forward"),
    "dual_ffn_layers": ("audio_dual_ffn_layers", None),  # None: every layer
    "audio_self_attention": ("use_audio_out_self_attention", 0),
    "audio_eos_token_id": ("audio_eos_token_id", 128012),
    "audio_in_token_id": ("audio_in_token_idx", 128015),
    "audio_bos_token_id": ("audio_bos_token_id", 128011),
}

# ---- converting between the layouts (module docstring) ------------------------------------------------------
# The keys both layouts hold, (original, transformers), used both ways; `text_config.` = inside the original's
# Llama config. The converted values come from the fields: rope_parameters is rope_theta + rope_scaling there,
# codebook_size counts the two stream tokens there.
LLAMA_SHARED = (
    *LLAMA_REQUIRED.values(),
    *(key for key, _ in LLAMA_OPTIONAL.values()),
    "bos_token_id",
    "attention_dropout",
    "initializer_range",
    "pretraining_tp",
    "use_cache",
)
RENAMES: tuple[tuple[str, str], ...] = (
    *((f"text_config.{key}", key) for key in LLAMA_SHARED),
    ("text_config.rope_theta", "rope_parameters"),
    ("audio_num_codebooks", "num_codebooks"),
    ("audio_codebook_size", "codebook_size"),
    ("audio_stream_bos_id", "audio_stream_bos_id"),
    ("audio_stream_eos_id", "audio_stream_eos_id"),
    ("pad_token_id", "pad_token_id"),
    ("eot_token_id", "eos_token_id"),
    ("audio_out_bos_token_id", "audio_bos_token_id"),
    ("audio_delay_token_id", "audio_delay_token_id"),
    ("audio_out_token_idx", "audio_token_id"),
)
# where a converted file keeps the keys of the other layout's file that it has no name for
CARRIED: dict[Layout, str] = {
    "original": "higgslab_original_keys",
    "transformers": "higgslab_transformers_keys",
}
# keys a file may leave out, with the value the reader then takes: written only where the value differs
READER_DEFAULTS: dict[Layout, dict[str, Any]] = {
    "original": dict(ORIGINAL_OPTIONAL.values())
    | {f"text_config.{key}": default for key, default in LLAMA_OPTIONAL.values()}
    | {"text_config.rope_scaling": None},
    "transformers": dict(
        [*LLAMA_OPTIONAL.values(), *TRANSFORMERS_OPTIONAL.values(), ("eos_token_id", 128009)]
    ),
}
# keys no field sets: a new file gets them, a file read keeps its own
NEW_FILE_KEYS: dict[Layout, set[str]] = {
    "original": {"architectures", "use_delay_pattern", "skip_audio_tower", "encode_audio_in_tokens",
                 "audio_embed_avg", "text_config.model_type", "text_config.architectures"},
    "transformers": {"architectures"},
}  # fmt: skip


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    """One level of keys: the original's `text_config` entries become `text_config.<key>`."""
    out = {k: v for k, v in d.items() if k != "text_config"}
    if isinstance(d.get("text_config"), dict):
        out |= {f"text_config.{k}": v for k, v in d["text_config"].items()}
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """`_flat` undone."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if k.startswith("text_config."):
            out.setdefault("text_config", {})[k.removeprefix("text_config.")] = v
        else:
            out[k] = v
    return out


def _renamed(flat: dict[str, Any], to: Layout) -> dict[str, Any]:
    """The keys of a flat config dict that layout `to` has a name for (`RENAMES`), under that name."""
    pairs = RENAMES if to == "transformers" else [(theirs, ours) for ours, theirs in RENAMES]
    return {dst: flat[src] for src, dst in pairs if src in flat}


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON, types included (`0` is not `false`, `1` is not `1.0`)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class _Keys:
    """One config object being read: a missing key that sets a shape, an id or a number is a one-line error
    naming it (`need`); optional keys take the defaults of their table (`fields`)."""

    def __init__(self, d: dict[str, Any], where: str, prefix: str = ""):
        self.d, self.where, self.prefix = d, where, prefix

    def need(self, key: str) -> Any:
        if key not in self.d:
            raise HiggsLabError(f"{self.where}: missing key '{self.prefix}{key}'")
        return self.d[key]

    def fields(
        self, required: dict[str, str], optional: dict[str, tuple[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Dataclass fields from a `*_REQUIRED` table (field -> key) and a `*_OPTIONAL` one (field -> (key, default))."""
        out = {name: self.need(key) for name, key in required.items()}
        return out | {name: self.d.get(key, default) for name, (key, default) in (optional or {}).items()}


def _rope_from(t: _Keys) -> dict[str, Any]:
    """RoPE settings in transformers-5 form, from either `rope_parameters` or legacy `rope_theta`+`rope_scaling`."""
    if isinstance(t.d.get("rope_parameters"), dict):
        rope = dict(t.d["rope_parameters"])
    else:
        rope = dict(t.d.get("rope_scaling") or {})
        if "rope_theta" not in rope:
            rope["rope_theta"] = t.need("rope_theta")
    rope["rope_type"] = rope.pop("type", None) or rope.get("rope_type") or "default"
    return rope


def _rope_to_legacy(rope: dict[str, Any]) -> dict[str, Any]:
    """`rope_theta` + `rope_scaling` as the original (transformers 4.x) config writes them."""
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    return {
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rope_scaling": None if scaling.get("rope_type") == "default" else scaling,
    }
