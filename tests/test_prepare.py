"""The prepare command end to end on real files: content, atomic no-op re-runs, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from cameo_eqx.data.config import PrepareConfig
from cameo_eqx.data import forcemap as fm
from cameo_eqx.data.mdcath import MDCATHFile
from cameo_eqx.data.prepare import PrepareError, prepare
from cameo_eqx.data.store import PreparedDataset


def test_prepare_villin_content(villin_h5: Path, tmp_path: Path):
    cfg = PrepareConfig(inputs=(str(villin_h5),), output=tmp_path / "ds", force_map="basic")
    out = prepare(cfg)
    with PreparedDataset(out) as ds, MDCATHFile(villin_h5) as f:
        assert ds.names == ["villinHP35"]
        rec = ds.record("villinHP35")
        beads = f.beads()
        assert rec.n_beads == 35 and rec.n_frames == 400
        assert sorted(set(rec.temperature.tolist())) == [320.0, 348.0]
        coords, forces = f.read(348, 0, slice(0, 200))
        i = np.flatnonzero(rec.temperature == 348)
        r, F = rec.frames(i)
        np.testing.assert_array_equal(r, coords[:, beads.ca_index])
        groups = fm.constraint_groups(f.n_atoms, fm.hydrogen_bond_pairs(f.atoms.element, coords[0]))
        want = fm.basic_map(beads.ca_index, f.n_atoms, groups).apply(forces)
        np.testing.assert_allclose(F, want, rtol=1e-6, atol=1e-5)
        assert rec.topology.resname[0] == "LEU"  # villin HP35 starts LSDEDFKAV...
        stats = json.loads(rec.attrs["stats"])
        assert 0 < stats["noise_floor"] < stats["msq_basic"]
        cfg_saved = ds.config
        assert cfg_saved["force_map"] == "basic"


def test_rerun_is_noop_and_config_change_rewrites(villin_h5: Path, tmp_path: Path):
    cfg = PrepareConfig(inputs=(str(villin_h5),), output=tmp_path / "ds", max_frames=20,
                        noise_estimate=False)  # fmt: skip
    out = prepare(cfg)
    mtime = out.stat().st_mtime_ns
    assert prepare(cfg) == out and out.stat().st_mtime_ns == mtime
    out2 = prepare(dataclasses.replace(cfg, max_frames=10))
    with PreparedDataset(out2) as ds:
        assert ds.record("villinHP35").n_frames == 20  # 2 trajectories x 10
    assert not (out.parent / "dataset.h5.tmp").exists()


def test_coordinate_only_input(ntl9_coords_h5: Path, villin_h5: Path, tmp_path: Path):
    out = tmp_path / "ds"
    cfg = PrepareConfig(inputs=(str(villin_h5), str(ntl9_coords_h5)), output=out, max_frames=5,
                        noise_estimate=False)  # fmt: skip
    with pytest.raises(PrepareError, match="2hbaA00.*coordinate-only"):
        prepare(cfg)
    assert not (out / "dataset.h5").exists()
    path = prepare(dataclasses.replace(cfg, on_error="skip"))
    with PreparedDataset(path) as ds:
        assert ds.names == ["villinHP35"]
    path = prepare(dataclasses.replace(cfg, require_forces=False, output=tmp_path / "c"))
    with PreparedDataset(path) as ds:
        rec = ds.record("2hbaA00")
        assert rec.forces is None and rec.n_beads == 52


def test_nan_forces_fail_before_writing(villin_h5: Path, tmp_path: Path):
    bad = tmp_path / "mdcath_dataset_villinHP35.h5"
    shutil.copyfile(villin_h5, bad)
    bad.chmod(0o644)
    with h5py.File(bad, "r+") as h:
        h["villinHP35/348/0/forces"][17, 3, 1] = np.nan
    cfg = PrepareConfig(inputs=(str(bad),), output=tmp_path / "ds")
    with pytest.raises(PrepareError, match=r"348/0.*17"):
        prepare(cfg)
    assert not (tmp_path / "ds" / "dataset.h5").exists()


def test_workers_give_identical_output(villin_h5: Path, cln025_h5: Path, tmp_path: Path):
    base = PrepareConfig(inputs=(str(villin_h5), str(cln025_h5)), max_frames=30,
                         noise_estimate=False)  # fmt: skip
    a = prepare(dataclasses.replace(base, output=tmp_path / "a"))
    b = prepare(dataclasses.replace(base, output=tmp_path / "b", workers=2))
    with PreparedDataset(a) as da, PreparedDataset(b) as db:
        assert da.names == db.names == ["cln025", "villinHP35"]
        for n in da.names:
            ra, rb = da.record(n).load(), db.record(n).load()
            np.testing.assert_array_equal(ra.positions, rb.positions)
            np.testing.assert_array_equal(ra.forces, rb.forces)
