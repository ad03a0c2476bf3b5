"""Seconds per word of a model's speech, and how its long-form chunks end with 0, 1, 2 earlier chunks as context.

    python bench/longform_band.py band [--sentences 30] [--seeds 1 2 3] [--temperature 0.3]
    python bench/longform_band.py context [--context 0 1 2] [--seed 1]

`band`: one-shot generation of the first held-out sentences of the mini's corpus (`train.listen`), each
with each seed and the CLI's limit of 2048 steps; prints duration / word_count per sentence that ended,
their min / median / max, and how many did not end. That band sizes `generate_long`'s token-limit rule
(`seconds_per_word`, `seconds_extra`) and the long-form checks of tests/generate/test_longform.py.
`context`: `generate_long` on tests/data/longform_story.txt (3 paragraphs of 100 words) with each `context_chunks`; prints each
chunk's words, steps, seconds and whether it finished. Both use the embedded model (`--model` for another).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from higgslab.generate.generator import Generator
from higgslab.generate.longform import word_count

STORY = (
    Path(__file__).resolve().parents[1] / "tests" / "data" / "longform_story.txt"
)  # 3 paragraphs, 280 words


def band(gen: Generator, sentences: int, seeds: list[int], temperature: float) -> None:
    from higgslab.train.listen import held_out_clips

    ratios, runaways, short = [], 0, 0
    for clip in held_out_clips(sentences):
        for seed in seeds:
            r = gen.generate(text=clip.text, seed=seed, temperature=temperature, max_new_tokens=2048)
            if not r.finished or r.duration_s < 0.5:  # what generate_long retries (min_duration_s=0.5)
                runaways += not r.finished
                short += r.finished
                print(
                    f"  seed {seed}: {'short' if r.finished else 'did not end'} ({r.duration_s:.2f} s): {clip.text}"
                )
                continue
            ratios.append(r.duration_s / word_count(clip.text))
            print(f"{r.duration_s / word_count(clip.text):6.3f} s/word  {r.duration_s:5.2f} s  {clip.text}")
    q = statistics.quantiles(ratios, n=20)
    print(f"{len(ratios)} ended, {runaways} did not, {short} under 0.5 s; s/word min {min(ratios):.3f}  p5 {q[0]:.3f}  "
          f"median {statistics.median(ratios):.3f}  p95 {q[-1]:.3f}  max {max(ratios):.3f}")  # fmt: skip


def context(gen: Generator, contexts: list[int], seed: int, temperature: float, max_words: int) -> None:
    story = STORY.read_text()
    print(f"{STORY.name}: {word_count(story)} words")
    for n in contexts:
        r = gen.generate_long(story, context_chunks=n, seed=seed, temperature=temperature, max_retries=0,
                              seconds_per_word=None, chunk_max_words=max_words)  # fmt: skip
        rows = [
            f"{c.words}w {c.steps}st {c.duration_s:.1f}s {'ok' if c.finished else 'RUNAWAY'}"
            for c in r.chunks
        ]
        print(f"context_chunks={n}: {r.duration_s:.1f} s, {sum(c.finished for c in r.chunks)}/{len(r.chunks)} "
              f"finished, {r.duration_s / word_count(story):.3f} s/word | " + "; ".join(rows))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["band", "context"])
    parser.add_argument("--model", default=None, help="a checkpoint directory (default: the embedded model)")
    parser.add_argument("--sentences", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--context", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-words", type=int, default=100, help="chunk_max_words")
    parser.add_argument("--temperature", type=float, default=0.3)
    args = parser.parse_args()
    gen = Generator.from_pretrained(args.model, device="cpu")
    print(gen.label, gen.long_form)
    if args.what == "band":
        band(gen, args.sentences, args.seeds, args.temperature)
    else:
        context(gen, args.context, args.seed, args.temperature, args.max_words)


if __name__ == "__main__":
    main()
