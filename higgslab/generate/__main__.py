"""`python -m higgslab.generate text="..."`: text → speech → `output_<seed>.wav` (24 kHz mono 16-bit).

Hydra config `higgslab/conf/generate.yaml`; every NPU-port flag is an override (`temperature=0.3 seed=7
model_path=model_cache tokenizer_path=tokenizer_cache ...`). `--help` and `--cfg job` work as usual.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from higgslab.conf import CONF_DIR
from higgslab.errors import HiggsLabError, cli_errors


def output_path(output_dir: str, seed: int, overwrite: bool) -> Path:
    """Check the output location before any work is done."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise HiggsLabError(f"output_dir {out} is a file, not a directory")
    path = out / f"output_{seed}.wav"
    if path.exists() and not overwrite:
        raise HiggsLabError(f"{path} already exists (pass overwrite=true to replace it, or another seed)")
    return path


def run(cfg: DictConfig) -> Path:
    from tqdm import tqdm

    from higgslab.embedded import resolve_paths
    from higgslab.generate.generator import Generator
    from higgslab.io.audio import write_wav

    text = cfg.text
    if not isinstance(text, str) or not text.strip():
        raise HiggsLabError('text is empty: pass text="what to say"')
    if cfg.ref_audio is not None and not Path(cfg.ref_audio).is_file():
        raise HiggsLabError(f"ref_audio {cfg.ref_audio}: no such file")
    output_path(cfg.output_dir, cfg.seed, cfg.overwrite)
    if cfg.model_path is not None and cfg.tokenizer_path is None:
        raise HiggsLabError(
            "tokenizer_path is needed with model_path: the audio tokenizer turns codes into audio"
        )
    model_path, tokenizer_path, label = resolve_paths(cfg.model_path, cfg.tokenizer_path)
    gen = Generator.from_paths(model_path, tokenizer_path, device=cfg.device, compile=cfg.compile or False)
    n = gen.model.num_parameters(text_head=False)
    print(f"model: {label}")
    size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
    print(f"device: {gen.model.device} ({gen.model.dtype}), parameters: {size} ({n:,})")

    ids, codes = gen.prompt(text, cfg.scene, cfg.ref_audio, cfg.ref_text)  # once: retries change the seed
    cfg_scale = gen.cfg_scale if cfg.cfg_scale is None else cfg.cfg_scale
    guidance = f", classifier-free guidance {cfg_scale:g}" if cfg_scale != 1 else ""
    print(f"prompt: {len(ids)} tokens{guidance}")
    seed = cfg.seed
    for attempt in range(cfg.max_retries + 1):
        with tqdm(total=cfg.max_new_tokens, desc="generating", unit="step", file=sys.stdout) as bar:
            result = gen.generate(
                ids,
                audio_codes=codes,
                cfg_scale=cfg_scale,  # guided: generate cuts the text out of ids for the textless rows
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                ras_window=cfg.ras_window,
                ras_max_repeat=cfg.ras_max_repeat,
                seed=seed,
                progress=bar.update,
            )
            bar.total = bar.n  # it stops once every codebook has closed: end the bar there, complete
        s = result.stats
        print(
            f"{s.steps} steps in {s.decode_s:.2f} s = {s.steps_per_s:.1f} steps/s ({s.frames_per_s:.1f} frames/s); "
            f"prefill {s.prefill_s:.3f} s; audio decode {s.audio_decode_s:.3f} s; {result.duration_s:.2f} s of audio"
        )
        if result.duration_s >= cfg.min_duration_s or attempt == cfg.max_retries:
            break
        print(
            f"audio is {result.duration_s:.2f} s, shorter than {cfg.min_duration_s} s: retrying with seed {seed + 1}"
        )
        seed += 1
    path = output_path(cfg.output_dir, seed, cfg.overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, result.audio, result.sample_rate, overwrite=cfg.overwrite)
    print(f"wrote {path}")
    return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    with cli_errors():
        run(cfg)


FREE_TEXT = ("text=", "scene=", "ref_text=")


def quote_free_text(argv: list[str]) -> list[str]:
    """Let `text=Hello, world!` work as typed: Hydra's override grammar would read the comma as a list."""
    out = []
    for arg in argv:
        key = next((k for k in FREE_TEXT if arg.startswith(k)), None)
        value = arg[len(key) :] if key else ""
        if key and value and value[0] not in "'\"":
            arg = key + "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.argv[1:] = quote_free_text(sys.argv[1:])
    main()
