"""A small byte-level BPE text tokenizer trained on the corpus, with the Higgs/Llama-3 special tokens.

The Llama-3 tokenizer is not reachable offline and its 128k rows would dwarf a mini LM, so the mini model
gets `merges` learned merges after the 256 byte symbols, then the 256 special slots of Llama-3 in their
usual order (`<|begin_of_text|>` first, `<|AUDIO_OUT|>` 16th): special id = `first_special` + (Llama id -
128000). `special_token_ids` returns the ids the LM config must carry; nothing else hard-codes them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from higgslab.generate.prompt import SYSTEM_MESSAGE
from higgslab.io.text_tokenizer import (
    FIRST_SPECIAL_ID,
    save_llama3_style,
    special_tokens,
    train_byte_level_bpe,
)

TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def train_bpe(texts: list[str], merges: int) -> Tokenizer:
    """Byte-level BPE with `256 + merges` tokens learned from `texts` (plus the prompt's system line)."""
    return train_byte_level_bpe([SYSTEM_MESSAGE, "system", "user", "assistant", *texts], merges)


def write_text_tokenizer(directory: str | Path, texts: list[str], merges: int = 1000) -> dict[str, int]:
    """Train on `texts` and write `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` into
    `directory` (loadable with `transformers.AutoTokenizer`). Returns `special_token_ids(directory)`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = json.loads(train_bpe(texts, merges).to_str())
    first = len(spec["model"]["vocab"])  # the special tokens follow the small vocabulary, in Llama-3's order
    specials = {first + i - FIRST_SPECIAL_ID: s for i, s in special_tokens().items()}
    save_llama3_style(spec, specials, directory, model_max_length=4096)
    return special_token_ids(directory)


def special_token_ids(directory: str | Path) -> dict[str, int]:
    """The `HiggsConfig` token-id fields (and `vocab_size`) read off the written tokenizer by name."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory))
    ids = {
        "bos_token_id": "<|begin_of_text|>",
        "pad_token_id": "<|end_of_text|>",
        "eot_token_id": "<|eot_id|>",
        "audio_bos_token_id": "<|audio_bos|>",
        "audio_eos_token_id": "<|audio_eos|>",
        "audio_out_bos_token_id": "<|audio_out_bos|>",
        "audio_delay_token_id": "<|reserved_special_token_6|>",  # Llama id 128014, as the real config
        "audio_in_token_id": "<|AUDIO|>",
        "audio_out_token_id": "<|AUDIO_OUT|>",
    }
    return {field: tok.convert_tokens_to_ids(name) for field, name in ids.items()} | {"vocab_size": len(tok)}
