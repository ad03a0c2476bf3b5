"""Adapt higgslab-mini to a voice it never heard, with each fine-tuning method, and measure before and after.

    python bench/finetune_voice.py data                        # speak ~10 min of the target voice, prepare it
    python bench/finetune_voice.py train --steps 300           # lora, audio, full: the same steps and batch
    python bench/finetune_voice.py score --seeds 0 1 2         # base and each method on held-out sentences

The target voice is espeak-ng `en-us+Annie` at 160 wpm, pitch 60: a variant outside the corpus the mini was
trained on (`higgslab.train.data.VARIANTS`), spoken at one fixed speed and pitch. `data` speaks training
sentences (`make_sentences` with its own seed, none of them a held-out sentence) until `--minutes` of speech,
and the mini's 40 held-out sentences (`train.listen.held_out_clips`) as the target's held-out clips; then
`python -m higgslab.prepare` encodes the training clips. `train` runs `python -m higgslab.finetune` once per
method, same steps, batch, seed and data order. `score` generates the held-out sentences with the base model
and each adapted one, one pass per seed (temperature 0.3, the model's guidance), and measures:

- speaker similarity (the eval's measure: cosine of resemblyzer embeddings) of each generated clip to the
  target voice: the held-out target clips joined into one reference (its embedding is the mean over
  windows), passed through the mini's codec ("codec", the headline: every generated clip is codec output,
  and the codec alone moves resemblyzer's embedding far) and as spoken ("raw"); the target's own held-out
  clips through the codec give the ceiling of each;
- intelligibility with the project's listening measure (Whisper: WER, identification among the sentences).

Everything is written under `--work` (default runs/voice); each stage skips what is already there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

VOICE, SPEED, PITCH = "en-us+Annie", 160, 60
TRAIN_SEED = 20261203  # the training sentences' seed: not the corpus's (0)
METHODS = ["lora", "audio", "full"]


def data(work: Path, minutes: float, held_out: int) -> None:
    import soundfile as sf

    from higgslab.train.data import speak_folder
    from higgslab.train.listen import held_out_clips
    from higgslab.train.sentences import make_sentences

    held = [c.text for c in held_out_clips(held_out)]
    speak_folder(held, work / "heldout", VOICE, SPEED, PITCH)
    texts = [t for t in make_sentences(max(20, int(minutes * 80)), TRAIN_SEED) if t not in set(held)]
    spoken, n = 0.0, 0
    while spoken < 60 * minutes:  # speak in blocks until the minutes are there (a clip is ~3 s: 20 a minute)
        if n >= len(texts):
            raise SystemExit(
                f"{len(texts)} sentences gave only {spoken / 60:.1f} min of speech: lower --minutes"
            )
        n += 20
        speak_folder(texts[:n], work / "train", VOICE, SPEED, PITCH)
        spoken = sum(sf.info(p).duration for p in (work / "train").glob("*.wav"))
    print(f"target voice {VOICE} ({SPEED} wpm, pitch {PITCH}): {n} training clips, {spoken / 60:.1f} min; "
          f"{len(held)} held-out clips")  # fmt: skip
    run(
        [
            sys.executable,
            "-m",
            "higgslab.prepare",
            f"data={work / 'train'}",
            f"output_dir={work / 'prepared'}",
        ]
    )


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def train(work: Path, steps: int, batch_size: int, methods: list[str], extra: list[str], tag: str) -> None:
    for method in methods:
        out = work / f"{method}{tag}"
        run([sys.executable, "-m", "higgslab.finetune", f"data={work / 'prepared'}", f"output_dir={out}",
             f"method={method}", f"steps={steps}", f"batch_size={batch_size}", "eval_examples=16",
             f"checkpoint_every={steps}", *extra])  # fmt: skip


def reference_embeddings(work: Path, codec) -> dict[str, np.ndarray]:
    """The target voice as two speaker embeddings of the held-out target clips joined into one (resemblyzer
    averages its windows): "raw" as espeak-ng spoke them, "codec" through the audio tokenizer (encode ->
    decode), which is the most any generated clip can sound like the target; computed once."""
    import soundfile as sf

    from higgslab.eval.quality import speaker_embedding

    raw = [sf.read(p, dtype="float32")[0] for p in sorted((work / "heldout").glob("*.wav"))]
    coded = [np.asarray(codec.decode(codec.encode(c))) for c in raw]
    return {
        "raw": speaker_embedding(np.concatenate(raw), 24000),
        "codec": speaker_embedding(np.concatenate(coded), 24000),
        "clips": coded,
    }


def similarities(audio: np.ndarray, targets: dict) -> dict[str, float]:
    """The eval's speaker similarity (cosine of resemblyzer embeddings) of a 24 kHz clip to each target."""
    from higgslab.eval.quality import speaker_embedding

    e = speaker_embedding(audio, 24000)
    return {
        k: float(e @ targets[k] / (np.linalg.norm(e) * np.linalg.norm(targets[k]))) for k in ("raw", "codec")
    }


def score_model(gen, texts: list[str], targets: dict, seeds: list[int], max_new_tokens: int) -> dict:
    """Each text spoken with each seed: speaker similarity to `targets`, Whisper WER and identification."""
    from higgslab.eval.harness import generator_fn
    from higgslab.eval.quality import hear
    from higgslab.train.listen import Heard, summarise

    per_seed = []
    speak = generator_fn(gen, None, None, None, None, {})
    for seed in seeds:
        rows, sims = [], []
        for text in texts:
            clip = speak(seed=seed, temperature=0.3, max_new_tokens=max_new_tokens, text=text)
            audio = np.nan_to_num(np.asarray(clip.audio))
            transcript, wer = hear(text, audio, clip.sample_rate)
            rows.append(
                Heard(text, len(audio) / clip.sample_rate, None, bool(clip.finished), transcript, wer)
            )
            if audio.size:
                sims.append(similarities(audio, targets))
        summary = summarise(rows)
        summary["similarity"] = float(np.mean([x["codec"] for x in sims]))
        summary["similarity_raw"] = float(np.mean([x["raw"] for x in sims]))
        per_seed.append(summary)
        print(f"  seed {seed}: similarity {summary['similarity']:.3f} (raw {summary['similarity_raw']:.3f})  identified {summary['identified']:.3f}  "
              f"WER {summary['wer']:.2f}  ended {summary['finished']}/{len(rows)}", flush=True)  # fmt: skip
    return {"seeds": seeds, "per_seed": per_seed}


def score(work: Path, seeds: list[int], held_out: int, max_new_tokens: int, models: list[str]) -> None:
    from higgslab.embedded import resolve_paths
    from higgslab.generate.generator import Generator
    from higgslab.train.listen import held_out_clips

    results = read_scores(work)  # one file per model and seeds: several `score` runs may go at once
    _, tokenizer_dir, _ = resolve_paths(None, None)
    base = Generator.from_pretrained(device="cpu")
    targets = reference_embeddings(work, base.audio_tokenizer)
    if (
        "ceiling" not in results
    ):  # the target's own held-out clips through the codec (each is 1/40 of a target)
        sims = [similarities(c, targets) for c in targets["clips"]]
        results["ceiling"] = {k: float(np.mean([x[k] for x in sims])) for k in ("codec", "raw")}
        write_score(work, "ceiling", results["ceiling"])
        print(f"ceiling (target clips through the codec): {results['ceiling']}", flush=True)
    texts = [c.text for c in held_out_clips(held_out)]
    for name in models:
        key = f"{name}@{','.join(map(str, seeds))}"
        if key in results:
            continue
        print(f"{name}:", flush=True)
        if name == "base":
            gen = base
        elif (work / name / "model" / "adapter_config.json").is_file():  # a LoRA adapter of the mini
            gen = Generator.from_pretrained(device="cpu", adapter_path=work / name / "model")
        else:
            gen = Generator.from_paths(work / name / "model", tokenizer_dir, device="cpu")
        results[key] = score_model(gen, texts, targets, seeds, max_new_tokens)
        write_score(work, key, results[key])
    table(read_scores(work))


def read_scores(work: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted((work / "scores").glob("*.json"))}


def write_score(work: Path, key: str, result: dict) -> None:
    from higgslab.io.atomic import atomic_write

    (work / "scores").mkdir(parents=True, exist_ok=True)
    atomic_write(
        work / "scores" / f"{key}.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1))
    )


def table(results: dict) -> None:
    """One row per model, its seeds' runs pooled (`score` runs with other seeds add to a model's row)."""
    pooled: dict[str, list[dict]] = {}
    for key, r in results.items():
        if key != "ceiling":
            pooled.setdefault(key.split("@")[0], []).extend(r["per_seed"])
    print("| model | seeds | speaker similarity, codec target: mean ± sd over seeds (each) | raw target "
          "| identified: pooled (each seed) | WER | ended |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, per in pooled.items():
        sim = [p["similarity"] for p in per]
        ident = [p["identified"] for p in per]
        n = sum(p["sentences"] for p in per)
        print(f"| {name} | {len(per)} | {np.mean(sim):.3f} ± {np.std(sim, ddof=1) if len(sim) > 1 else 0:.3f} "
              f"({' / '.join(f'{s:.3f}' for s in sim)}) | {np.mean([p['similarity_raw'] for p in per]):.3f} | "
              f"{np.mean(ident):.3f} ({' / '.join(f'{i:.3f}' for i in ident)}) | "
              f"{np.mean([p['wer'] for p in per]):.2f} | {sum(p['finished'] for p in per)}/{n} |")  # fmt: skip
    if "ceiling" in results:
        print(f"ceiling (the target's held-out clips through the codec): {results['ceiling']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["data", "train", "score", "table"])
    parser.add_argument("--work", type=Path, default=Path("runs/voice"))
    parser.add_argument("--minutes", type=float, default=10.0, help="data: minutes of training speech")
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-new-tokens", type=int, default=500)
    parser.add_argument("--models", nargs="+", default=["base", *METHODS])
    parser.add_argument("--tag", default="", help="train: suffix of the run folders (lora<tag>, ...)")
    args, extra = parser.parse_known_args()  # train: extra finetune overrides (lr=..., lora.rank=...)
    if args.stage == "data":
        data(args.work, args.minutes, args.held_out)
    elif args.stage == "train":
        train(args.work, args.steps, args.batch_size, args.methods, extra, args.tag)
    elif args.stage == "score":
        score(args.work, args.seeds, args.held_out, args.max_new_tokens, args.models)
    else:
        table(read_scores(args.work))


if __name__ == "__main__":
    main()
