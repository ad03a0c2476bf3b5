"""Does the embedded higgslab-mini still end its stream with a voice reference, and how long is its audio?

    python bench/voice_refs.py [--voice alice] [--seeds 0 1] [--max-new-tokens 1024]

Each sentence is generated three ways with the same seed: no reference, the voice as a user/assistant
reference pair, and the voice as audio in the system message (`references_in_system`). The mini was trained
only on single-sentence prompts without references, so this measures what a user gets, not cloning. Eager
decode steps (compile=False): only lengths and ends are measured here. Prints one row per run and a summary.
"""

from __future__ import annotations

import argparse

from higgslab.generate.generator import Generator

SENTENCES = [
    "The baker carried a basket to the market.",
    "Emma found a small key near the river.",
    "Tonight the wind was cold and noisy.",
    "Please close the kitchen door before dinner.",
    "Yesterday the teacher painted a green bicycle.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voice", default="alice")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    args = parser.parse_args()

    gen = Generator.from_pretrained(compile=False)
    refs = gen.references(voice=args.voice)
    modes = {"none": None, "turns": False, "system": True}  # references_in_system, None = no reference
    rows = []
    for text in SENTENCES:
        for seed in args.seeds:
            for mode, in_system in modes.items():
                p = gen.build_prompt(text, references=refs if in_system is not None else [],
                                     references_in_system=bool(in_system))  # fmt: skip
                r = gen.generate(p.input_ids, audio_codes=p.audio_codes, seed=seed,
                                 max_new_tokens=args.max_new_tokens, decode_audio=False)  # fmt: skip
                seconds = r.codes.shape[1] / gen.audio_tokenizer.frame_rate
                rows.append((mode, r.finished, seconds))
                print(
                    f"{mode:6s} seed {seed} finished {r.finished!s:5s} {seconds:6.2f} s  {text}", flush=True
                )
    print(f"voice {args.voice!r}, max_new_tokens {args.max_new_tokens}:")
    for mode in modes:
        runs = [(f, s) for m, f, s in rows if m == mode]
        ended = [s for f, s in runs if f]
        print(
            f"  {mode:6s}: finished {len(ended)}/{len(runs)}; audio of finished runs "
            f"{min(ended, default=0):.2f}-{max(ended, default=0):.2f} s, "
            f"mean {sum(ended) / max(len(ended), 1):.2f} s"
        )


if __name__ == "__main__":
    main()
