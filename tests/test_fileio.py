"""`fileio.write_atomic`: contents, permissions like a plain write, and nothing half-written."""

from __future__ import annotations

import os
import stat

import pytest

from cameo_eqx.fileio import write_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_atomic_contents_directories_and_permissions(tmp_path):
    out = write_atomic(tmp_path / "a" / "b" / "r.json", "{\"x\": 1}\n")
    assert out.read_text() == "{\"x\": 1}\n"
    write_atomic(out, b"\x00\x01")
    assert out.read_bytes() == b"\x00\x01"
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives under this umask (mkstemp alone would give 0600)
    assert _mode(out) == _mode(plain)
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.json"]  # no temporary left


def test_write_atomic_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.eqx"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # type: ignore[arg-type]  (fails while writing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.eqx"]
