"""Fault injection (issue 14): every failure a new user can cause gives a clear error naming the file,
and nothing already written is lost or silently wrong. Tiny configs and synthetic data (CPU, fast)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import equinox as eqx
import numpy as np
import pytest

from cameo_eqx.graph import single_frame_batch
from cameo_eqx.modules.forcefield import FORMAT, ForceField, load, load_config, save, skeleton_config
from cameo_eqx.priors.config import PriorConfig
from cameo_eqx.priors.prior import Prior
from cameo_eqx.topology import CGTopology

# ------------------------------------------------------------------- case 3: model files are checksummed


def _prior_ff() -> tuple[ForceField, object]:
    n = 9
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(n, 3)) * 2.2, axis=0).astype(np.float32)
    topo = CGTopology(("ALA",) * n, np.arange(n), ("A",) * n, np.zeros(n, np.int32),
                      rng.integers(0, 20, n).astype(np.int32))  # fmt: skip
    return ForceField(None, Prior.from_prior_config(PriorConfig())), single_frame_batch(x, topo, 7.0).to_device()


def _split(path: Path) -> tuple[bytes, bytes]:
    raw = path.read_bytes()
    i = raw.index(b"\n")
    return raw[: i + 1], raw[i + 1 :]


def test_model_file_flipped_bytes_is_an_error(tmp_path: Path):
    ff, _ = _prior_ff()
    path = save(tmp_path / "model.eqx", ff)
    head, params = _split(path)
    bad = bytearray(params)
    for i in range(len(bad) - 64, len(bad)):  # 64 bytes flipped inside the parameters
        bad[i] ^= 0xFF
    path.write_bytes(head + bytes(bad))
    with pytest.raises(ValueError, match=r"model\.eqx.*checksum mismatch"):
        load(path)
    path.write_bytes(head + params[:-10])  # truncated
    with pytest.raises(ValueError, match=r"model\.eqx.*truncated"):
        load(path)


def test_model_file_without_checksum_still_loads_and_gets_one(tmp_path: Path):
    """A model.eqx written before checksums existed (header without sha256) loads with the same forces;
    saving it again writes the checksum."""
    ff, batch = _prior_ff()
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, ff)
    legacy = tmp_path / "legacy.eqx"
    legacy.write_bytes(json.dumps({"format": FORMAT, "model": skeleton_config(ff), "config": {}}).encode()
                       + b"\n" + buf.getvalue())  # fmt: skip
    ff2 = load(legacy)
    np.testing.assert_array_equal(np.asarray(ff.energy_and_forces(batch)[1]),
                                  np.asarray(ff2.energy_and_forces(batch)[1]))  # fmt: skip
    path = save(tmp_path / "model.eqx", ff2)
    head = load_config(path)
    assert head["sha256"] == hashlib.sha256(_split(path)[1]).hexdigest()


# ------------------------------------------------------------------- case 7: the small ones


def test_model_header_without_model_is_a_clear_error(tmp_path: Path):
    ff, _ = _prior_ff()
    path = save(tmp_path / "model.eqx", ff)
    head, params = _split(path)
    h = json.loads(head)
    del h["model"]
    path.write_bytes(json.dumps(h).encode() + b"\n" + params)
    with pytest.raises(ValueError, match=r"model\.eqx.*no 'model'"):
        load(path)
    with pytest.raises(ValueError, match=r"model\.eqx.*no 'model'"):
        load_config(path)
