"""`python -m higgslab.download [--only model|tokenizer] [--root DIR]`: fetch the real checkpoints."""

from __future__ import annotations

import argparse

from higgslab.errors import cli_errors
from higgslab.io.hub import REPOS, download


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m higgslab.download", description=__doc__)
    p.add_argument("--only", choices=sorted(REPOS), help="fetch one repository only")
    p.add_argument("--root", default=".", help="where model_cache/ and tokenizer_cache/ go (default: .)")
    p.add_argument("--endpoint", default=None, help="a hub mirror, e.g. https://hf-mirror.com")
    args = p.parse_args(argv)
    with cli_errors():
        for name, path in download(
            (args.only,) if args.only else tuple(REPOS), args.root, args.endpoint
        ).items():
            print(f"{name}: {path}")


if __name__ == "__main__":
    main()
