"""Llama-3-style text tokenizer files: a byte-level BPE plus the Higgs Audio special tokens (FORMATS.md §5).

The Llama-3 vocabulary ends with 256 special slots, 128000..128255; Higgs Audio renames some of them
(`<|AUDIO_OUT|>` = 128016, ...). `save_llama3_style` writes `tokenizer.json`, `tokenizer_config.json` and
`special_tokens_map.json` as the real checkpoint has them, loadable with `transformers.AutoTokenizer`, for any
BPE and any placement of the special slots (the mini LM puts them right after its small vocabulary).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from higgslab.errors import HiggsLabError

FIRST_SPECIAL_ID = 128000
VOCAB_SIZE = 128256

# Llama-3.2's special slots as the Higgs Audio checkpoint renames them; the rest are reserved tokens.
NAMED_SPECIALS = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128004: "<|finetune_right_pad_id|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
    128010: "<|python_tag|>",
    128011: "<|audio_bos|>",
    128012: "<|audio_eos|>",
    128013: "<|audio_out_bos|>",
    128015: "<|AUDIO|>",
    128016: "<|AUDIO_OUT|>",
    128018: "<|scene_desc_start|>",
    128019: "<|scene_desc_end|>",
}


def special_tokens() -> dict[int, str]:
    """Every special id 128000..128255 → its token string (named or `<|reserved_special_token_N|>`)."""
    out = {}
    for i in range(FIRST_SPECIAL_ID, VOCAB_SIZE):
        # Llama-3.1+ numbering: 128002, 128003, 128005 are reserved 0..2, then 128011 + n is reserved 3 + n
        reserved = {128002: 0, 128003: 1, 128005: 2}.get(i, i - 128008)
        out[i] = NAMED_SPECIALS.get(i, f"<|reserved_special_token_{reserved}|>")
    return out


def train_byte_level_bpe(lines: list[str], merges: int) -> Tokenizer:
    """A byte-level BPE (GPT-2/Llama-3 style) of `256 + merges` tokens learned from `lines`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + merges, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(lines, trainer)
    return tok


def save_llama3_style(spec: dict, specials: dict[int, str], directory: Path, model_max_length: int) -> Path:
    """Give a trained BPE (`spec`: its tokenizer.json dict) the special tokens at the ids in `specials` and
    Llama-3's habit of prepending `<|begin_of_text|>`, and write `tokenizer.json`, `tokenizer_config.json`
    and `special_tokens_map.json` (loadable with `transformers.AutoTokenizer`)."""
    spec["added_tokens"] = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False}
        | {"normalized": False, "special": True}
        for i, s in specials.items()
    ]
    bos_id = next(i for i, s in specials.items() if s == "<|begin_of_text|>")
    bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos_id], "tokens": ["<|begin_of_text|>"]}
        },
    }
    (directory / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    special_map = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, **special_map}, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    return directory


def load_text_tokenizer(model_dir: str | Path):
    """The checkpoint's text tokenizer (`transformers.AutoTokenizer` on the LM's directory), without
    transformers' warning that config.json's model type is not a tokenizer's; unusable files: one line."""
    from transformers import AutoTokenizer
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise HiggsLabError(
            f"{model_dir}: no usable text tokenizer files ({str(e).splitlines()[0]})"
        ) from None
    finally:
        logging.set_verbosity(level)
