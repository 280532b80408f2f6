"""Atomic, checksummed training checkpoints.

A checkpoint is a directory `<run>/checkpoints/step_<NNNNNNNNN>/` with

- `state.eqx`: `eqx.tree_serialise_leaves` of the training state (model, optimiser state, EMA);
- `meta.json`: stage, epoch, step, data-order position, RNG state, best validation loss, the resolved
  config, and the SHA-256 and size of `state.eqx`.

Both are written into a temporary directory, fsynced, and the directory is renamed into place, so a
crash leaves either the previous checkpoints or a complete new one. On load the checksum is verified;
a corrupt or truncated checkpoint is reported and the previous one is used. Leftovers of a process
killed mid-save (`.step_*.tmp<pid>`, `.step_*.old<pid>`) are removed on the next save or resume, and an
`.old` directory whose replacement never arrived is renamed back into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import equinox as eqx

from ..fileio import is_no_space, no_space_error

log = logging.getLogger(__name__)

STATE_FILE = "state.eqx"
META_FILE = "meta.json"
FORMAT = "cameo_eqx.checkpoint/1"


class CorruptCheckpointError(ValueError):
    """A checkpoint's files are missing, truncated or do not match their checksum."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


_LEFTOVER = re.compile(r"^\.(step_\d+)\.(tmp|old)(\d+)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours
        return True
    return True


def clean_leftovers(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Removes temporary checkpoint directories left by a process that was killed mid-save.

    A `.step_N.old<pid>` whose `step_N` is missing (killed between the two renames) still holds a
    complete checkpoint: it is renamed back. Directories of a live process are left alone.

    **Returns:** the paths removed or restored.
    """
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    done = []
    for p in sorted(root.iterdir()):
        m = _LEFTOVER.match(p.name)
        if m is None or not p.is_dir() or _alive(int(m.group(3))):
            continue
        final = root / m.group(1)
        if m.group(2) == "old" and not final.exists():
            os.replace(p, final)
        else:
            shutil.rmtree(p, ignore_errors=True)
        done.append(p)
    if done:
        log.info("cleaned %d leftover checkpoint folder(s) in %s", len(done), root)
    return done


def checkpoint_name(step: int) -> str:
    return f"step_{int(step):09d}"


def save_checkpoint(ckpt_dir: str | os.PathLike, step: int, state: Any, meta: dict[str, Any],
                    keep: int = 3) -> Path:  # fmt: skip
    """Writes one checkpoint atomically and removes the oldest beyond `keep`.

    **Arguments:**

    - `ckpt_dir`: the run's checkpoints directory (created if needed).
    - `step`: the global optimiser step (names the checkpoint; a later save of the same step replaces it).
    - `state`: the pytree to serialise (host or device arrays).
    - `meta`: JSON-serialisable metadata (position, RNG, best loss, config).
    - `keep`: checkpoints kept (>= 1).

    **Returns:** the checkpoint directory.
    """
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    clean_leftovers(root)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        sp = tmp / STATE_FILE
        with open(sp, "wb") as f:
            eqx.tree_serialise_leaves(f, state)
            f.flush()
            os.fsync(f.fileno())
        full = {**meta, "format": FORMAT, "step": int(step), "sha256": _sha256(sp), "size": sp.stat().st_size}
        with open(tmp / META_FILE, "w") as f:
            json.dump(full, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        old = None
        if final.exists():
            old = root / f".{final.name}.old{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and is_no_space(e):
            raise no_space_error(final, "the previous checkpoints are kept; free some space and rerun "
                                        "with --resume auto") from e  # fmt: skip
        raise
    for p in list_checkpoints(root)[: -max(1, int(keep))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint directories, oldest first (temporary and partial ones excluded)."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    out = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")]
    return sorted(out, key=lambda p: p.name)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and verifies one checkpoint's metadata and state checksum.

    **Raises:** `CorruptCheckpointError` naming the checkpoint and what is wrong.
    """
    p = Path(path)
    mp, sp = p / META_FILE, p / STATE_FILE
    if not mp.exists() or not sp.exists():
        raise CorruptCheckpointError(f"checkpoint {p}: missing {META_FILE if not mp.exists() else STATE_FILE}")
    try:
        meta = json.loads(mp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"checkpoint {p}: unreadable {META_FILE}: {e}") from None
    if meta.get("format") != FORMAT:
        raise CorruptCheckpointError(f"checkpoint {p}: format {meta.get('format')!r}, expected {FORMAT!r}")
    size = sp.stat().st_size
    if size != meta.get("size"):
        raise CorruptCheckpointError(
            f"checkpoint {p}: {STATE_FILE} has {size} bytes, expected {meta.get('size')} (truncated?)"
        )
    digest = _sha256(sp)
    if digest != meta.get("sha256"):
        raise CorruptCheckpointError(f"checkpoint {p}: {STATE_FILE} checksum mismatch (corrupt)")
    return meta


def latest_valid(ckpt_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose checksum verifies; corrupt ones are reported (logged) and skipped.

    **Returns:** `(path, meta)` or None when there is no valid checkpoint.
    """
    clean_leftovers(ckpt_dir)
    for p in reversed(list_checkpoints(ckpt_dir)):
        try:
            return p, read_meta(p)
        except CorruptCheckpointError as e:
            log.warning("%s; using the previous checkpoint", e)
            print(f"warning: {e}; using the previous checkpoint", flush=True)
    return None


def load_state(path: str | os.PathLike, template: Any) -> Any:
    """Deserialises a checkpoint's state into the structure of `template` (checksum verified first)."""
    p = Path(path)
    read_meta(p)
    try:
        with open(p / STATE_FILE, "rb") as f:
            return eqx.tree_deserialise_leaves(f, template)
    except Exception as e:
        raise CorruptCheckpointError(f"checkpoint {p}: state does not match the model/optimiser: {e}") from e
