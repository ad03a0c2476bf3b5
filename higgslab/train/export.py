"""Ship a trained higgslab-mini as the embedded default: `higgslab/assets/mini/{model,tokenizer}/`.

    python -m higgslab.train.export                       # runs/mini → higgslab/assets/mini
    python -m higgslab.train.export --run-dir runs/mini --lm lm --dest /tmp/mini

The LM is re-read with `load_model` (the real loading path) and written in the ORIGINAL layout in float16
with its text tokenizer and generation config (the guidance scale) beside it; the audio tokenizer is stage
1's original-layout export, copied. Both are loaded back before the function returns, and the total size is
checked against the budget.

float16, not bfloat16: guidance multiplies the difference of two logit sets, and bfloat16's 8-bit mantissa
in the weights made that difference noisy enough to cost the guided mini much of its recognised sentences,
where float16 scores as the float32 original does (bench/RESULTS.md, *higgslab-mini*: the export rows).
Both fit the budget; float32 does not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from higgslab.errors import HiggsLabError
from higgslab.io.atomic import atomic_dir

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "mini"
BUDGET_BYTES = 30 * 2**20


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export_mini(
    run_dir: str | Path, dest: str | Path = ASSETS, lm: str = "lm", dtype: torch.dtype = torch.float16
) -> Path:
    """Copy `<run_dir>/<lm>/model` and `<run_dir>/tokenizer/tokenizer` into `dest/{model,tokenizer}`; the
    new directory replaces the old one whole. Returns `dest`."""
    from higgslab.io.load import load_model, load_tokenizer
    from higgslab.train.lm import export_model

    run_dir, dest = Path(run_dir), Path(dest)
    model_dir, tok_dir = run_dir / lm / "model", run_dir / "tokenizer" / "tokenizer"
    for d in (model_dir, tok_dir):
        if not (d / "config.json").is_file():
            raise HiggsLabError(f"{d}: not trained yet (run python -m higgslab.train.tokenizer / .lm first)")
    generation = model_dir / "generation_config.json"
    generation = json.loads(generation.read_text()) if generation.is_file() else None
    with atomic_dir(dest) as tmp:
        export_model(load_model(model_dir), model_dir, tmp / "model", dtype, generation)
        shutil.copytree(tok_dir, tmp / "tokenizer")
        size = directory_bytes(tmp)
        if size > BUDGET_BYTES:
            raise HiggsLabError(
                f"mini export is {size / 2**20:.1f} MiB, over the {BUDGET_BYTES / 2**20:.0f} MiB budget"
            )
        load_model(tmp / "model"), load_tokenizer(tmp / "tokenizer")  # the real loading path, before shipping
    return dest


def main(argv: list[str] | None = None) -> None:
    import argparse

    from higgslab.errors import cli_errors

    parser = argparse.ArgumentParser(description="Ship a trained higgslab-mini into higgslab/assets/mini")
    parser.add_argument("--run-dir", default="runs/mini")
    parser.add_argument("--lm", default="lm", help="which LM run under run-dir (lm | lm_no_dualffn)")
    parser.add_argument("--dest", default=str(ASSETS))
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args(argv)
    with cli_errors():
        dest = export_mini(args.run_dir, args.dest, args.lm, getattr(torch, args.dtype))
        print(f"wrote {dest} ({directory_bytes(dest) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
