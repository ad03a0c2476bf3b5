"""A tiny Llama-3-shaped text tokenizer, built offline in well under a second, for tests and demos.

A byte-level BPE with a few hundred merges learned from the text below, padded with filler tokens that never
occur up to id 127999, then the 256 Llama-3 special slots 128000..128255 with Higgs Audio's names in theirs
(FORMATS.md §5): vocabulary size 128256 as the real checkpoint, so every special id is the real one.
`transformers.AutoTokenizer.from_pretrained(directory)` loads it as a `PreTrainedTokenizerFast`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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

TRAINING_TEXT = """\
Generate audio following instruction. The sun rises over the quiet harbour, and the boats begin to move.
She said hello to everyone in the room, then sat down by the window and read her book for an hour.
[SPEAKER0] Are you coming to the meeting this afternoon? [SPEAKER1] Yes, I will be there at three o'clock.
Audio is recorded indoors. The speaker talks clearly, with a calm and friendly voice, at a moderate pace.
Numbers like 1, 2, 3, 10, 42 and 2048 appear in text; so do questions, exclamations! And quotes: "yes".
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
"""


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


def write_tiny_text_tokenizer(directory: str | Path, merges: int = 300) -> Path:
    """Write `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` into `directory`; return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = json.loads(train_byte_level_bpe(TRAINING_TEXT.splitlines() * 4, merges).to_str())
    vocab = spec["model"]["vocab"]
    # fillers keep the real ids: BPE only emits tokens that merges build, and no merge builds these
    vocab.update({f"<filler_{i}>": i for i in range(len(vocab), FIRST_SPECIAL_ID)})
    return save_llama3_style(spec, special_tokens(), directory, model_max_length=131072)
