"""Analysis: Kabsch RMSD, Rg, Q, angle conventions, JS divergence, free energies, and `analyze` end to end
(a "simulation" made of the reference frames themselves must match the reference)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cameo_eqx.data.store import PreparedDataset
from cameo_eqx.simulate import AnalyzeConfig, analyze
from cameo_eqx.simulate import analysis as an
from cameo_eqx.simulate.langevin import Frames, TrajectoryWriter


def test_kabsch_rmsd_invariance_and_value():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 3)) * 5
    rot = Rotation.random(random_state=1).as_matrix()
    moved = ref @ rot.T + np.array([3.0, -1.0, 7.0])
    assert an.kabsch_rmsd(moved, ref) < 1e-6
    # a reflection is not a rotation: RMSD stays large
    assert an.kabsch_rmsd(ref * np.array([1, 1, -1]), ref) > 1.0
    # with noise: equals the RMSD after the best rotation found independently (scipy)
    noisy = moved + rng.normal(scale=0.3, size=moved.shape)
    a = noisy - noisy.mean(0)
    b = ref - ref.mean(0)
    r, _ = Rotation.align_vectors(b, a)
    expect = np.sqrt(np.mean(np.sum((r.apply(a) - b) ** 2, axis=-1)))
    np.testing.assert_allclose(an.kabsch_rmsd(noisy, ref), expect, rtol=1e-8)
    # batched
    np.testing.assert_allclose(an.kabsch_rmsd(np.stack([moved, noisy]), ref), [0.0, expect], atol=1e-6)


def test_rg_q_and_angles():
    line = np.zeros((5, 3))
    line[:, 0] = np.arange(5) * 2.0
    assert np.isclose(an.radius_of_gyration(line), np.sqrt(8.0))  # sqrt(mean((x - 4)²)) = sqrt(8)
    # dihedral +90° in the IUPAC convention, trans = ±180°, angle 90°
    quad = np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 1]])
    assert np.isclose(an.dihedral_angles(quad, np.array([[0, 1, 2, 3]]))[0], np.pi / 2)
    trans = np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 1], [-1, 0, 1]])
    assert np.isclose(abs(an.dihedral_angles(trans, np.array([[0, 1, 2, 3]]))[0]), np.pi)
    assert np.isclose(an.bond_angles(quad, np.array([[0, 1, 2]]))[0], np.pi / 2)
    # Q: ≈ 1 for the reference, → 0 when every contact is pulled apart
    rng = np.random.default_rng(2)
    ref = np.cumsum(rng.normal(size=(30, 3)), axis=0) * 1.5
    pairs, r0 = an.native_contacts(ref, 8.0, 3)
    assert len(pairs) > 10 and np.all(pairs[:, 1] - pairs[:, 0] >= 3) and np.all(r0 < 8.0)
    assert an.fraction_native_contacts(ref, pairs, r0) > 0.95
    assert an.fraction_native_contacts(ref * 3.0, pairs, r0) < 0.05


def test_js_divergence_and_free_energy():
    p = np.array([0.5, 0.5, 0, 0])
    q = np.array([0, 0, 0.5, 0.5])
    assert an.js_divergence(p, p) == 0.0
    assert np.isclose(an.js_divergence(p, q), 1.0)
    r = np.array([0.25, 0.25, 0.25, 0.25])
    assert np.isclose(an.js_divergence(p, r), an.js_divergence(r, p))
    assert 0 < an.js_divergence(p, r) < 1
    # F = -kT ln p: for a Gaussian sample F is ≈ x² / (2σ²) kT near the centre
    x = np.random.default_rng(3).normal(size=200_000)
    c, f = an.free_energy_1d(x, np.linspace(-2, 2, 21), 300.0)
    kt = 0.0019872 * 300
    np.testing.assert_allclose(f - f[np.nanargmin(f)], kt * (c**2 - c[np.nanargmin(f)] ** 2) / 2, atol=0.02)
    f2 = an.free_energy_2d(x[:1000], x[1000:2000], np.linspace(-3, 3, 7), np.linspace(-3, 3, 7), 300.0)
    assert f2.shape == (6, 6) and np.nanmin(f2) == 0.0


def _fake_trajectory(path: Path, ds_path: Path, frames: np.ndarray, temperature: float) -> Path:
    """A trajectory file in `simulate`'s layout whose frames are given (2 replicas)."""
    with PreparedDataset(ds_path) as ds:
        rec = ds.record("villin")
        w = TrajectoryWriter.create(path, rec.topology, 2, rec.topology.masses, frames[0, 0],
                                    {"dataset": str(ds.path), "protein": "villin", "frame": 0,
                                     "temperature": temperature, "config": "{}"})  # fmt: skip
    t = len(frames)
    w.append(Frames(frames.astype(np.float32), np.zeros((t, 2)), np.zeros((t, 2)), np.full((t, 2), temperature),
                    np.arange(t), np.arange(t) * 1.0))  # fmt: skip
    w.close(status="done")
    return path


def test_analyze_reference_against_itself(villin_prepared, tmp_path):
    """Frames of the 320 K reference posing as a simulation: every JSD is small, observables agree;
    the 413 K frames against the 320 K reference differ more (the measure can tell)."""
    with PreparedDataset(villin_prepared) as ds:
        rec = ds.record("villin")
        x320 = rec.frames(np.flatnonzero(rec.temperature == 320))[0]
        x413 = rec.frames(np.flatnonzero(rec.temperature == 413))[0]
    same = _fake_trajectory(tmp_path / "same.h5", villin_prepared, x320.reshape(-1, 2, 35, 3), 320.0)
    summ = json.loads(analyze(AnalyzeConfig(trajectory=same, output=tmp_path / "a", discard=0.0, bins=20)).read_text())
    assert summ["reference"]["temperature"] == 320.0
    assert summ["reference"]["n_native_contacts"] > 20
    for k, v in summ["js_divergence"].items():
        assert 0.0 <= v < 0.02, (k, v)
    o = summ["observables"]
    assert abs(o["rmsd"]["sim"]["mean"] - o["rmsd"]["ref"]["mean"]) < 1e-6
    assert summ["contact_map_mae"] < 1e-9
    for p in summ["plots"]:
        assert Path(p).stat().st_size > 1000
    hot = _fake_trajectory(tmp_path / "hot.h5", villin_prepared, x413.reshape(-1, 2, 35, 3), 320.0)
    summ_hot = json.loads(analyze(AnalyzeConfig(trajectory=hot, output=tmp_path / "b", discard=0.0, bins=20,
                                                plots=False)).read_text())  # fmt: skip
    assert summ_hot["js_divergence"]["rmsd"] > summ["js_divergence"]["rmsd"] + 0.05


def test_analyze_bad_input(villin_prepared, tmp_path):
    with pytest.raises(FileNotFoundError, match="run `cli.py simulate`"):
        analyze(AnalyzeConfig(trajectory=tmp_path / "nothing"))
    with h5py.File(tmp_path / "x.h5", "w") as h:
        h.attrs["format"] = "something else"
    with pytest.raises(ValueError, match="not a cameo_eqx trajectory"):
        analyze(AnalyzeConfig(trajectory=tmp_path / "x.h5"))
    with pytest.raises(ValueError, match="discard"):
        analyze(AnalyzeConfig(trajectory=tmp_path / "x.h5", discard=1.0))
