"""Write a file or a directory whole or not at all: into a temporary sibling, then renamed over the target."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_write(target: Path, write: Callable[[str], object]) -> Path:
    """Call `write(tmp_path)`, then rename onto `target`: readers never see a half-written file, and a
    failure leaves no file behind. The result gets ordinary permissions (mkstemp's are owner-only)."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling (yielded) and swap it into place at the end; on an
    error nothing of it remains and `target` is untouched. An existing `target` is replaced: callers
    decide beforehand whether that is allowed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
