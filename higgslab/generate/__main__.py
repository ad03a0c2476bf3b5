"""`python -m higgslab.generate text="..."`: text → speech → `output_<seed>.wav` (24 kHz mono 16-bit).

Hydra config `higgslab/conf/generate.yaml`; every NPU-port flag is an override (`temperature=0.3 seed=7
model_path=model_cache tokenizer_path=tokenizer_cache ...`); `adapter_path=DIR` adds a LoRA adapter (merged at
load). `--help` and `--cfg job` work as usual.

A run: the settings are checked first (`settings.settings_from`: a bad one is one `error:` line, exit code
2, nothing loaded or written), then the model loads and `Generator.generate_long` speaks the text chunk by
chunk (a sentence is one chunk), and the joined audio is written atomically as `output_<seed>.wav`, named
after the requested seed whichever seed a retry used (the log says). A chunk that gave up (it did not end,
or stayed too short, in 1 + max_retries tries) is said in the last line, and the exit code is 1.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from omegaconf import DictConfig

from higgslab.conf import command
from higgslab.errors import HiggsLabError
from higgslab.generate.settings import GenerateSettings, load_settings, settings_from


def output_path(output_dir: str, seed: int, overwrite: bool, chunk_files: bool = False) -> Path:
    """`output_<seed>.wav` in `output_dir`, checked before any work: it (and with `chunk_files` any
    `output_<seed>_chunk<i>.wav`) must not exist unless `overwrite`."""
    path = Path(output_dir) / f"output_{seed}.wav"
    taken = [path] if path.exists() else []
    if chunk_files:
        taken += sorted(path.parent.glob(f"output_{seed}_chunk*.wav"))
    if taken and not overwrite:
        raise HiggsLabError(f"{taken[0]} already exists (pass overwrite=true to replace it, or another seed)")
    return path


def run(cfg: DictConfig) -> int:
    """One CLI run; returns the exit code (0, or 1 when a chunk gave up)."""
    from tqdm import tqdm

    from higgslab.generate.generator import Generator
    from higgslab.io.audio import write_wav
    from higgslab.model.quant import spec_of

    s = settings_from(cfg)
    seed = s.seed
    if seed is None:  # drawn from the OS: torch's global generator is never reseeded
        from higgslab.generate.longform import draw_seed

        seed = draw_seed()
        print(f"seed: {seed} (drawn for seed=null; pass seed={seed} to repeat this run)")
    path = output_path(s.output_dir, seed, s.overwrite, s.chunk_files)

    gen = Generator.from_pretrained(
        s.model_path, s.tokenizer_path, device=s.device, compile=s.compile, **load_settings(s)
    )
    n = gen.model.num_parameters(text_head=False)
    print(f"model: {gen.label}")
    size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
    quant = spec_of(gen.model)
    weights = "" if quant is None else f", decoder layers {quant.method}"
    print(f"device: {gen.model.device} ({gen.model.dtype}{weights}), parameters: {size} ({n:,})")
    cfg_scale = gen.cfg_scale if s.cfg_scale is None else s.cfg_scale
    if cfg_scale != 1:
        print(f"classifier-free guidance {cfg_scale:g}")

    references = None
    if s.voice is not None or s.ref_audio is not None:  # encoded once, for every chunk and retry
        references = gen.references(s.voice, s.voices_dir, s.ref_audio, s.ref_text,
                                    ref_max_s=s.ref_max_s, ref_too_long=s.ref_too_long)  # fmt: skip
    chunking = {
        k: v for k, v in (("max_words", s.chunk_max_words), ("max_turns", s.chunk_max_turns)) if v is not None
    }
    with tqdm(total=0, desc="generating", unit="step", file=sys.stdout) as bar:

        def sized(limit: int) -> None:  # before each try: the bar grows by that chunk's own token limit
            bar.total += limit
            bar.refresh()

        result = gen.generate_long(
            s.text,
            s.scene,
            references=references,
            references_in_system=s.ref_in_system,
            chunk_method=s.chunk_method,
            **{f"chunk_{k}": v for k, v in chunking.items()},  # unset: generate_long's own defaults
            context_chunks=s.context_chunks,  # None: the model's own default
            max_new_tokens=s.max_new_tokens,
            seconds_per_word=s.seconds_per_word,
            seconds_extra=s.seconds_extra,
            max_retries=s.max_retries,
            min_duration_s=s.min_duration_s,
            seed=seed,
            on_event=lambda line: bar.write(line, file=sys.stdout),
            on_limit=sized,
            progress=bar.update,  # a try that ends early is filled up to its limit: the bar ends complete
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            ras_window=s.ras_window,
            ras_max_repeat=s.ras_max_repeat,
            cfg_scale=s.cfg_scale,
        )
    for i, c in enumerate(result.chunks, 1):
        print(f"chunk {i}/{len(result.chunks)}: {c.words} words, prompt {c.prompt_tokens} tokens, seed {c.seed}, "
              f"{c.steps}/{c.max_new_tokens} steps, {c.duration_s:.2f} s" + ("" if c.finished else ", gave up"))  # fmt: skip
    st = result.stats
    print(
        f"{st.steps} steps in {st.decode_s:.2f} s = {st.steps_per_s:.1f} steps/s ({st.frames_per_s:.1f} frames/s); "
        f"prefill {st.prefill_s:.3f} s; audio decode {st.audio_decode_s:.3f} s; {result.duration_s:.2f} s of audio"
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, result.audio, result.sample_rate, overwrite=s.overwrite)
    print(f"wrote {path}")
    if s.chunk_files:
        for i, c in enumerate(result.chunks, 1):
            chunk_path = path.with_name(f"{path.stem}_chunk{i}.wav")
            write_wav(
                chunk_path, result.audio[c.start_sample : c.end_sample], result.sample_rate, s.overwrite
            )
            print(f"wrote {chunk_path}")
    gave_up = [why for i, c in enumerate(result.chunks, 1) if (why := gave_up_line(i, c, s))]
    if gave_up:
        print(f"gave up: {'; '.join(gave_up)}; wrote {path} with the last try of each")
    return 1 if gave_up else 0


def gave_up_line(i: int, chunk, s: GenerateSettings) -> str | None:
    """Why chunk `i` (a `longform.ChunkReport`) gave up, or None when its kept try passed."""
    if chunk.finished and chunk.duration_s >= s.min_duration_s:
        return None
    seeds = [seed for seed, _ in chunk.tries]
    if not seeds or seeds[-1] != chunk.seed:
        seeds.append(chunk.seed)
    why = chunk.tries[-1][1] if chunk.tries else f"short: {chunk.duration_s:.2f} s < {s.min_duration_s} s"
    tries = (
        f"1 try (seed {seeds[0]})"
        if len(seeds) == 1
        else f"{len(seeds)} tries (seeds {', '.join(map(str, seeds))})"
    )
    return f"chunk {i} after {tries}, the last {why}"


main = command("generate", run)


FREE_TEXT = ("text=", "scene=", "ref_text=")


def hydra_quoted(value: str) -> str:
    """`value` as a single-quoted override value that Hydra and OmegaConf read back as exactly `value`.

    OmegaConf would resolve `${...}` (an unknown key is an error, `${oc.env:HOME}` is expanded): it is
    escaped as `\\${`, a backslash run before it doubled. In Hydra's quoted strings a backslash run escapes
    only before a quote or the end of the string: those runs are doubled and quotes escaped."""
    value = re.sub(r"(\\*)\$\{", lambda m: m[1] * 2 + "\\${", value)
    value = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value)
    return f"'{value}'"


def quote_free_text(argv: list[str]) -> list[str]:
    """Let `text=Hello, world!` and `text=Costs ${price}` work as typed: Hydra's override grammar would read
    the comma as a list and OmegaConf the `${...}` as an interpolation. A value already in quotes is the
    user's own Hydra syntax and stays as it is."""
    out = []
    for arg in argv:
        key = next((k for k in FREE_TEXT if arg.startswith(k)), None)
        value = arg[len(key) :] if key else ""
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        out.append(key + hydra_quoted(value) if key and value and not quoted else arg)
    return out


if __name__ == "__main__":
    sys.argv[1:] = quote_free_text(sys.argv[1:])
    main()
