"""Atomic file output: every result file is written to a temporary file in its own directory,
flushed to disk, then renamed over the target, so a reader never sees half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import (os.umask can only be read by setting it)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Writes `data` to `path` via a temporary file in the same directory and a rename.

    **Arguments:**

    - `path`: the file to write (its directory is created if missing).
    - `data`: the contents; `str` is written as UTF-8 text.

    **Returns:** `path` as a `Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # the permissions open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
