"""A small byte-level BPE text tokenizer trained on the corpus, with the Higgs/Llama-3 special tokens.

The Llama-3 tokenizer is not reachable offline and its 128k rows would dwarf a mini LM, so the mini model
gets `merges` learned merges after the 256 byte symbols, then the 256 special slots of Llama-3 in their
usual order (`<|begin_of_text|>` first, `<|AUDIO_OUT|>` 16th): special id = `first_special` + (Llama id -
128000). `special_token_ids` returns the ids the LM config must carry; nothing else hard-codes them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from higgslab.generate.prompt import SYSTEM_MESSAGE
from higgslab.tiny.text import FIRST_SPECIAL_ID, special_tokens

TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def train_bpe(texts: list[str], merges: int) -> Tokenizer:
    """Byte-level BPE with `256 + merges` tokens learned from `texts` (plus the prompt's system line)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + merges, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator([SYSTEM_MESSAGE, "system", "user", "assistant", *texts], trainer)
    return tok


def write_text_tokenizer(directory: str | Path, texts: list[str], merges: int = 1000) -> dict[str, int]:
    """Train on `texts` and write `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` into
    `directory` (loadable with `transformers.AutoTokenizer`). Returns `special_token_ids(directory)`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = json.loads(train_bpe(texts, merges).to_str())
    first = len(spec["model"]["vocab"])
    specials = {first + i - FIRST_SPECIAL_ID: s for i, s in special_tokens().items()}
    spec["added_tokens"] = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False}
        | {"normalized": False, "special": True}
        for i, s in specials.items()
    ]
    bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    spec["post_processor"] = {  # Llama-3 prepends <|begin_of_text|> when asked for special tokens
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [first], "tokens": ["<|begin_of_text|>"]}
        },
    }
    (directory / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    special_map = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, **special_map}, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
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
