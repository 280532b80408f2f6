"""cameo_eqx.geometry: known values, gradients, invariances, and agreement with an independent NumPy
float64 reference, on JAX and on NumPy inputs (single frames and stacks of frames)."""

from __future__ import annotations

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cameo_eqx import geometry as g


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q  # proper rotation (det +1): keeps the dihedral's sign


def _dihedral_points(phi: float) -> np.ndarray:
    """Four beads with unit bonds, 90° angles and dihedral `phi` (IUPAC)."""
    return np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 1], [np.cos(phi), np.sin(phi), 1]])


# independent reference: unit normals and a signed angle from arccos, all float64
def _ref_angle(p0, p1, p2):
    u, v = p0 - p1, p2 - p1
    c = np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return np.arccos(np.clip(c, -1, 1))


def _ref_dihedral(p0, p1, p2, p3):
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1 = np.cross(b1, b2)
    n2 = np.cross(b2, b3)
    n1 /= np.linalg.norm(n1, axis=-1, keepdims=True)
    n2 /= np.linalg.norm(n2, axis=-1, keepdims=True)
    mag = np.arccos(np.clip(np.sum(n1 * n2, -1), -1, 1))
    sign = np.sign(np.sum(np.cross(n1, n2) * b2, -1))
    return np.where(sign < 0, -mag, mag)


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_known_values(xp):
    p = xp.asarray(np.array([[1.0, 0, 0], [0, 0, 0], [0, 2.0, 0]]))
    assert np.isclose(float(g.bond_lengths(p[0], p[2])), np.sqrt(5.0))
    np.testing.assert_allclose(np.asarray(g.bond_vectors(p[0], p[2])), [-1.0, 2.0, 0.0])
    assert np.isclose(float(g.bond_angles(p[0], p[1], p[2])), np.pi / 2)
    straight = xp.asarray(np.array([[0.0, 0, 0], [1, 0, 0], [2.5, 0, 0]]))
    assert np.isclose(float(g.bond_angles(*straight)), np.pi)
    assert np.isclose(float(g.bond_angles(straight[1], straight[0], straight[2])), 0.0)
    for phi_deg, want in ((180, np.pi), (0, 0.0), (60, np.pi / 3), (-60, -np.pi / 3), (90, np.pi / 2)):
        phi = float(g.dihedral_angles(*xp.asarray(_dihedral_points(np.deg2rad(phi_deg)))))
        if phi_deg == 180:  # trans: ±π
            assert np.isclose(abs(phi), np.pi, atol=1e-6), phi
        else:
            assert np.isclose(phi, want, atol=1e-6), (phi_deg, phi)


def test_numpy_in_numpy_out_keeps_precision():
    x = np.random.default_rng(0).normal(size=(5, 4, 3))
    for out in (g.bond_lengths(x[:, 0], x[:, 1]), g.bond_angles(*x.transpose(1, 0, 2)[:3]),
                g.dihedral_angles(*x.transpose(1, 0, 2))):  # fmt: skip
        assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (5,)
    assert g.bond_angles(*x.astype(np.float32).transpose(1, 0, 2)[:3]).dtype == np.float32
    assert isinstance(g.bond_angles(*jnp.asarray(x).transpose(1, 0, 2)[:3]), jax.Array)


def test_batches_of_frames_match_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 3, 12, 3)) * 4.0  # (frames, replicas, beads, xyz)
    ang = np.array([[i, i + 1, i + 2] for i in range(10)])
    dih = np.array([[i, i + 1, i + 2, i + 3] for i in range(9)])
    th = g.bond_angles(*g.tuple_positions(x, ang))
    ph = g.dihedral_angles(*g.tuple_positions(x, dih))
    assert th.shape == (6, 3, 10) and ph.shape == (6, 3, 9)
    np.testing.assert_allclose(th, _ref_angle(*g.tuple_positions(x, ang)), rtol=0, atol=1e-10)
    np.testing.assert_allclose(ph, _ref_dihedral(*g.tuple_positions(x, dih)), rtol=0, atol=1e-10)
    b = np.array([[i, i + 1] for i in range(11)])
    np.testing.assert_allclose(g.bond_lengths(*g.tuple_positions(x, b)),
                               np.linalg.norm(x[..., b[:, 1], :] - x[..., b[:, 0], :], axis=-1), rtol=1e-14)  # fmt: skip
    # JAX (float32) agrees with the float64 reference to float32 rounding
    xj = jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(g.bond_angles(*g.tuple_positions(xj, ang)), th, atol=2e-5)
    np.testing.assert_allclose(g.dihedral_angles(*g.tuple_positions(xj, dih)), ph, atol=2e-5)


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_rotation_translation_invariance(xp):
    x = np.random.default_rng(2).normal(size=(20, 4, 3)) * 3.0
    rot, shift = _rotation(3), np.array([10.0, -4.0, 7.5])
    y = x @ rot.T + shift
    for f in (g.bond_lengths, g.bond_angles, g.dihedral_angles):
        k = {g.bond_lengths: 2, g.bond_angles: 3, g.dihedral_angles: 4}[f]
        a = np.asarray(f(*xp.asarray(x.transpose(1, 0, 2)[:k])))
        b = np.asarray(f(*xp.asarray(y.transpose(1, 0, 2)[:k])))
        np.testing.assert_allclose(a, b, atol=1e-4 if xp is jnp else 1e-10)
    # a mirror image flips the dihedral's sign
    m = x * np.array([1.0, 1.0, -1.0])
    np.testing.assert_allclose(g.dihedral_angles(*m.transpose(1, 0, 2)), -g.dihedral_angles(*x.transpose(1, 0, 2)),
                               atol=1e-10)  # fmt: skip


def _fd_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = h
        out[i] = (f(x + d) - f(x - d)) / (2 * h)
    return out


def test_gradients_match_finite_differences():
    x = np.random.default_rng(4).normal(size=(4, 3)) * 2.0
    for f in (lambda p: g.bond_lengths(p[0], p[1]), lambda p: g.bond_angles(p[0], p[1], p[2]),
              lambda p: g.dihedral_angles(*p)):  # fmt: skip
        with jax.enable_x64(True):
            auto = np.asarray(jax.grad(lambda p: f(p))(jnp.asarray(x, jnp.float64)))
        fd = _fd_grad(lambda p: float(f(p)), x)  # NumPy float64 path
        np.testing.assert_allclose(auto, fd, rtol=1e-6, atol=1e-8)


def test_degenerate_geometry_is_finite():
    p = jnp.zeros((4, 3))
    line = jnp.asarray([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]])
    for pts in (p, line):
        for f, k in ((g.bond_lengths, 2), (g.bond_angles, 3), (g.dihedral_angles, 4)):
            val, grad = jax.value_and_grad(lambda q: f(*q[:k]))(pts)
            assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(grad)))
    assert float(g.safe_atan2(jnp.zeros(()), jnp.zeros(()))) == 0.0
    assert float(jax.grad(lambda y: g.safe_atan2(y, jnp.zeros(())))(jnp.zeros(()))) == 0.0


def test_is_a_core_module():
    """geometry imports nothing from the package (a core layer)."""
    tree = ast.parse(Path(g.__file__).read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert not any(isinstance(n, ast.ImportFrom) and n.level > 0 for n in ast.walk(tree))
    assert mods <= {"__future__", "jax", "numpy", "jaxtyping"}, mods
