"""Atomic file output: every result file is written to a temporary file in its own directory,
flushed to disk, then renamed over the target, so a reader never sees half a file. `DirLock` gives one
command at a time a run folder or output directory; a full disk is reported as `NoSpaceError` ("no space
left on device: <path>")."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import (os.umask can only be read by setting it)


class NoSpaceError(OSError):
    """The disk (or quota) is full; the message names the file that could not be written."""


def is_no_space(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, is ENOSPC/EDQUOT (h5py and equinox wrap it: HDF5
    says "errno = 28" in text, equinox raises a `TreePathError` from the `OSError`)."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "errno = 28," in text or "Disk quota exceeded" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def no_space_error(path: str | os.PathLike, hint: str = "") -> NoSpaceError:
    """The error to raise when writing `path` ran out of space (`hint`: what was kept, what to do)."""
    err = NoSpaceError(f"no space left on device: {path}" + (f"; {hint}" if hint else ""))
    err.errno = errno.ENOSPC
    return err


@contextmanager
def reporting_no_space(path: str | os.PathLike, hint: str = ""):
    """Re-raises a full-disk error from the block as `NoSpaceError` naming `path` (other errors pass)."""
    try:
        yield
    except NoSpaceError:
        raise
    except Exception as e:
        if is_no_space(e):
            raise no_space_error(path, hint) from e
        raise


def check_free_space(path: str | os.PathLike, need_bytes: int, hint: str = "") -> None:
    """Raises `NoSpaceError` before a write of about `need_bytes` into `path`'s file system when less is
    free (HDF5 can crash the process, not raise, when the disk fills during a write)."""
    p = Path(path)
    d = p if p.is_dir() else p.parent
    free = shutil.disk_usage(d).free
    if free < need_bytes:
        raise no_space_error(p, f"{need_bytes / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free" +
                             (f"; {hint}" if hint else ""))  # fmt: skip


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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception) and is_no_space(e):
            raise no_space_error(path, "the previous version, if any, is unchanged") from e
        raise
    return path


LOCK_FILE = ".lock"


class LockedError(RuntimeError):
    """Another process holds the lock of a run folder or output directory."""


class DirLock:
    """An exclusive lock on a directory (`fcntl.flock` on `<dir>/.lock`), held by one command at a time.

    The lock file holds the holder's pid and host, so a refused second command can name it. The kernel
    drops the lock when the holder exits, even on kill -9, so a stale file never blocks. On release the
    file is removed (an acquirer that finds the file replaced under it tries again).

    **Arguments:** `directory` (created if missing) and `what` (the command, for messages).
    """

    def __init__(self, directory: str | os.PathLike, what: str):
        self.directory, self.what = Path(directory), what
        self.path = self.directory / LOCK_FILE
        self.fd: int | None = None

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "another process (pid unknown)"
        return f"{info.get('command', 'another command')} (pid {info.get('pid')} on {info.get('host')})"

    def acquire(self) -> "DirLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockedError(f"{self.directory} is in use by {self._holder()}; wait for it to finish or "
                                  f"choose another output for this {self.what}") from None  # fmt: skip
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we opened it: lock the new one
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.what}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing drops the lock
            self.fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
