"""Evaluation: `python -m higgslab.eval mode=all|precision|performance|quality` (see `__main__`).

checks.py       pure pass/fail checks on codes and audio
precision.py    validity, determinism, integrity per seed
performance.py  steps/s, frames/s, prefill, first audio, decode, RTF, memory per length
quality.py      WER (offline Whisper) and speaker similarity (resemblyzer); the `eval` extra. Its
                `speak_and_hear` loop also scores higgslab-mini's held-out sentences (train.listen)
                and `score_folder` the clips of a synthesize folder (mode=quality audio_dir=DIR)
report.py       report.json (report.schema.json), PNG plots, summary table
"""
