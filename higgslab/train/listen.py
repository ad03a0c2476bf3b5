"""Does higgslab-mini say what it is asked? Held-out sentences in, three measures out.

    python -m higgslab.train.listen                          # the embedded model, 40 held-out sentences
    python -m higgslab.train.listen --model runs/mini/lm_no_dualffn/model --tokenizer runs/mini/tokenizer/tokenizer
    python -m higgslab.train.listen --quantize int4          # the LM weight-only quantized (`--group-size`)

The sentences are the corpus's validation split (never trained on), rebuilt from the seed, so no corpus
needs to be on disk. For each one the LM generates speech (temperature 0.3, top-k 50, top-p 0.95, RAS, one
seed; `--temperature` to change it), and:

1. **duration**: Pearson r between the sentence's length in characters and the generated duration, and the
   ratio of generated to espeak-ng duration (espeak-ng speaks the same sentence at the clip's speed);
2. **ASR** (independent of the LM, the codec and espeak-ng): Whisper tiny.en transcribes the speech; WER
   against the requested sentence, beside the same ASR's WER on the espeak-ng original and on the codec's
   resynthesis of it, the ceilings a perfect LM could reach;
3. **identification**: the held-out sentence whose text is closest (WER) to the transcript; accuracy
   against chance 1/N. Speech that is recognisably the requested sentence is identified far above chance.
   The same is reported for the espeak-ng originals and their codec resynthesis (the ceilings).

`--codec-only` skips the LM and reports the ceilings alone: is the audio tokenizer intelligible?
ASR needs the optional extra (`pip install 'higgslab[eval]'`); without it, `--no-asr` reports duration only.
The LM's speech goes through the eval's own generate -> transcribe -> score loop
(`higgslab.eval.quality.speak_and_hear`, as `python -m higgslab.eval mode=quality` runs it); this module
adds the held-out sentences, their espeak-ng references and the measures over them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from higgslab.errors import HiggsLabError
from higgslab.train.data import Clip, plan


def held_out_clips(n: int) -> list[Clip]:
    """The first `n` validation clips (text, voice, speed) of the corpus `higgslab/conf/experiment/mini.yaml` plans."""
    from omegaconf import OmegaConf

    from higgslab.conf import CONF_DIR
    from higgslab.train.sentences import make_sentences

    data = OmegaConf.load(Path(CONF_DIR) / "experiment" / "mini.yaml").data
    clips = plan(make_sentences(data.sentences, data.seed), data.seed, data.valid_every)
    return [c for c in clips if c.split == "valid"][:n]


@dataclass
class Heard:
    text: str
    seconds: float | None  # generated speech (None: the LM was not run)
    espeak_seconds: float | None  # espeak-ng's rendering of the same clip
    finished: bool | None  # every codebook closed before max_new_tokens
    transcript: str | None = None
    wer: float | None = None
    espeak_wer: float | None = None  # ASR ceiling: the original clip
    resynth_wer: float | None = None  # codec ceiling: the original through encode → decode
    espeak_transcript: str | None = None
    resynth_transcript: str | None = None


def pearson(x: list[float], y: list[float]) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def listen(
    gen,
    clips: list[Clip],
    seed: int = 0,
    asr: bool = True,
    max_new_tokens: int = 500,
    lm: bool = True,
    temperature: float = 0.3,
    cfg_scale: float | None = None,
) -> dict:
    """Generate every clip's text with `gen` (a `Generator` with an audio tokenizer) and score it; returns
    the JSON-ready report: `summary` and one `items` row per clip. `lm=False`: the ceilings only."""
    from tqdm import tqdm

    from higgslab.eval.harness import generator_fn
    from higgslab.eval.quality import Spoken, hear, speak_and_hear
    from higgslab.train.data import SAMPLE_RATE, synthesize

    espeak = shutil.which("espeak-ng")  # without it: no reference durations or ceilings, the rest still runs
    if not (lm or espeak):
        raise HiggsLabError(
            "the codec ceilings need espeak-ng on PATH (Debian/Ubuntu: apt-get install espeak-ng)"
        )
    spoken: Iterator[Spoken | None] = (None for _ in clips)
    if lm:
        speak = generator_fn(gen, None, None, None, None, {"cfg_scale": cfg_scale})
        texts = [c.text for c in clips]
        spoken = speak_and_hear(speak, texts, seed, temperature, max_new_tokens, asr=asr)
    rows: list[Heard] = []
    for clip, said in tqdm(zip(clips, spoken, strict=True), total=len(clips), desc="listen", unit="sentence"):
        original = synthesize(clip.text, clip.voice, clip.speed, clip.pitch, espeak) if espeak else None
        espeak_seconds = None if original is None else len(original) / SAMPLE_RATE
        lm_heard = (said.duration_s, said.finished, said.transcript, said.wer) if said else (None,) * 4
        seconds, finished, transcript, error = lm_heard
        row = Heard(clip.text, seconds, espeak_seconds, finished, transcript, error)
        if asr and original is not None:  # the ceilings: the same ASR on the original and its resynthesis
            resynth = np.asarray(gen.audio_tokenizer.decode(gen.audio_tokenizer.encode(original)))
            row.espeak_transcript, row.espeak_wer = hear(clip.text, original, SAMPLE_RATE)
            row.resynth_transcript, row.resynth_wer = hear(clip.text, resynth, SAMPLE_RATE)
        rows.append(row)
    return {"summary": summarise(rows), "items": [asdict(r) for r in rows]}


def summarise(rows: list[Heard]) -> dict:
    """Duration tracking, mean WERs and identification accuracy over `rows`."""
    summary = {"sentences": len(rows)}
    if all(r.seconds is not None for r in rows):
        summary["finished"] = sum(r.finished for r in rows)
        summary["duration_vs_chars_r"] = pearson([len(r.text) for r in rows], [r.seconds for r in rows])
        if all(r.espeak_seconds for r in rows):
            espeak = [r.espeak_seconds for r in rows]
            summary["duration_vs_espeak_r"] = pearson(espeak, [r.seconds for r in rows])
            summary["duration_ratio"] = float(
                np.mean([r.seconds / e for r, e in zip(rows, espeak, strict=True)])
            )
    texts = [r.text for r in rows]
    sources = {"": "transcript", "espeak_": "espeak_transcript", "resynth_": "resynth_transcript"}
    for prefix, source in sources.items():
        heard = [getattr(r, source) for r in rows]
        if None in heard:
            continue  # not transcribed (no ASR, no LM run, or no espeak-ng)
        from higgslab.eval.quality import wer  # needs the eval extra: imported only when there is text

        summary[f"{prefix}wer"] = float(np.mean([wer(t, h) for t, h in zip(texts, heard, strict=True)]))
        summary[f"{prefix}identified"] = float(np.mean(identified(texts, heard)))
    if any(key.endswith("identified") for key in summary):
        summary["identified_chance"] = 1 / len(rows)
    return summary


def identified(texts: list[str], heard: list[str]) -> list[bool]:
    """Whether each transcript `heard[i]` is closest (WER) to its own sentence `texts[i]` among all `texts`."""
    from higgslab.eval.quality import wer

    return [int(np.argmin([wer(t, h) for t in texts])) == i for i, h in enumerate(heard)]


def main(argv: list[str] | None = None) -> None:
    import argparse

    from higgslab.embedded import resolve_paths
    from higgslab.errors import cli_errors
    from higgslab.generate.generator import Generator
    from higgslab.model.quant import METHODS, QuantSpec, spec_of

    parser = argparse.ArgumentParser(description="Score higgslab-mini's speech on held-out sentences")
    parser.add_argument("--model", default=None, help="LM directory (default: the embedded model)")
    parser.add_argument("--tokenizer", default=None, help="audio tokenizer directory")
    parser.add_argument("--sentences", type=int, default=40, help="how many held-out sentences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.3, help="0: greedy (with RAS)")
    parser.add_argument("--cfg-scale", type=float, default=None,
                        help="classifier-free guidance (default: the model's own; 1 = off)")  # fmt: skip
    parser.add_argument("--no-asr", action="store_true", help="duration only (no Whisper)")
    parser.add_argument(
        "--codec-only", action="store_true", help="the espeak-ng and resynthesis ceilings only"
    )
    parser.add_argument("--quantize", choices=METHODS, default=None,
                        help="weight-only quantize the LM (default: as the checkpoint is)")  # fmt: skip
    parser.add_argument("--group-size", type=int, default=128, help="int4: inputs per scale")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    if args.sentences < 2:
        parser.error("--sentences must be at least 2 (a correlation and an identification need two)")
    if args.codec_only and args.no_asr:
        parser.error("--codec-only reports ASR ceilings: it cannot be combined with --no-asr")
    if args.model and not args.tokenizer:
        parser.error("--model needs --tokenizer (the audio tokenizer its codes belong to)")
    with cli_errors():
        model, tokenizer, label = resolve_paths(args.model, args.tokenizer)
        if args.tokenizer:  # --codec-only may name a tokenizer alone: the LM is then never run
            tokenizer, label = Path(args.tokenizer), f"{label}; audio tokenizer {args.tokenizer}"
        print(f"model: {label}")
        gen = Generator.from_paths(
            model, tokenizer, device="cpu", quantize=args.quantize, group_size=args.group_size
        )
        spec = spec_of(gen.model) or QuantSpec("none")  # as loaded: a quantized checkpoint says so too
        group = spec.group_size if spec.method == "int4" else None
        if spec.active:
            print(f"quantize: {spec.method}" + (f", group size {group}" if group else ""))
        report = listen(
            gen,
            held_out_clips(args.sentences),
            args.seed,
            asr=not args.no_asr,
            lm=not args.codec_only,
            temperature=args.temperature,
            cfg_scale=args.cfg_scale,
        )
        report["model"] = label
        report["quantize"] = {"method": spec.method, "group_size": group}
        for key, value in report["summary"].items():
            print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")
        if args.out:
            from higgslab.io.atomic import atomic_write

            atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
            print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
