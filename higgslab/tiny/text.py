"""A tiny Llama-3-shaped text tokenizer, built offline in well under a second, for tests and demos.

A byte-level BPE with a few hundred merges learned from the text below, padded with filler tokens that never
occur up to id 127999, then the 256 Llama-3 special slots 128000..128255 with Higgs Audio's names in theirs
(FORMATS.md §5): vocabulary size 128256 as the real checkpoint, so every special id is the real one.
`transformers.AutoTokenizer.from_pretrained(directory)` loads it as a `PreTrainedTokenizerFast`.
"""

from __future__ import annotations

import json
from pathlib import Path

from higgslab.io.text_tokenizer import (
    FIRST_SPECIAL_ID,
    save_llama3_style,
    special_tokens,
    train_byte_level_bpe,
)

TRAINING_TEXT = """\
Generate audio following instruction. The sun rises over the quiet harbour, and the boats begin to move.
She said hello to everyone in the room, then sat down by the window and read her book for an hour.
[SPEAKER0] Are you coming to the meeting this afternoon? [SPEAKER1] Yes, I will be there at three o'clock.
Audio is recorded indoors. The speaker talks clearly, with a calm and friendly voice, at a moderate pace.
Numbers like 1, 2, 3, 10, 42 and 2048 appear in text; so do questions, exclamations! And quotes: "yes".
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
"""


def write_tiny_text_tokenizer(directory: str | Path, merges: int = 300) -> Path:
    """Write `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` into `directory`; return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = json.loads(train_byte_level_bpe(TRAINING_TEXT.splitlines() * 4, merges).to_str())
    vocab = spec["model"]["vocab"]
    # fillers keep the real ids: BPE only emits tokens that merges build, and no merge builds these
    vocab.update({f"<filler_{i}>": i for i in range(len(vocab), FIRST_SPECIAL_ID)})
    return save_llama3_style(spec, special_tokens(), directory, model_max_length=131072)
