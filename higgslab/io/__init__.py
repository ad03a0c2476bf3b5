"""Everything on disk: every checkpoint format, read and written, and audio files.

load.py            load_model / load_tokenizer: the entry points (either layout in, a model out)
lm_format.py       LM checkpoints, original Boson and transformers layouts (FORMATS.md §1–2); convert
codec_format.py    audio tokenizer checkpoints, both layouts (FORMATS.md §3–4)
keys.py            the tensor-name rule tables' machinery (one table per format, used in both directions)
text_tokenizer.py  Llama-3-style text tokenizer files (byte-level BPE + the Higgs special tokens)
hub.py             fetching the real checkpoints from the Hugging Face hub
audio.py           audio files and resampling to 24 kHz mono
atomic.py          files and directories written whole or not at all
"""
