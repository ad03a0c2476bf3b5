"""One error type for bad input, and a CLI guard that prints it as one line.

Library code raises `HiggsLabError` with a message that names the file, key or value at fault;
command-line entry points wrap their body in `cli_errors()` so users see `error: …` and exit code 2,
never a traceback from deep inside.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class HiggsLabError(ValueError):
    """Bad input (a file, a key, a shape, a setting): the message says which and why, in one line."""


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn `HiggsLabError` (and a missing file) into one `error: …` line on stderr and exit code 2."""
    try:
        yield
    except (HiggsLabError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
