"""`python -m higgslab.convert SRC DST --to {transformers,original}`: remap LM checkpoint weights."""

from __future__ import annotations

import argparse

from higgslab.errors import cli_errors
from higgslab.io.lm_format import convert


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m higgslab.convert", description=__doc__)
    p.add_argument("src", help="checkpoint directory (either layout)")
    p.add_argument("dst", help="output directory (must not exist, unless --overwrite)")
    p.add_argument("--to", required=True, choices=["transformers", "original"], help="target layout")
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="shard size limit in GiB (default 5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    args = p.parse_args(argv)
    with cli_errors():
        out = convert(args.src, args.dst, args.to, int(args.max_shard_gb * 2**30), args.overwrite)
        print(f"wrote {args.to} checkpoint to {out}")


if __name__ == "__main__":
    main()
