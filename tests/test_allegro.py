"""Allegro backbone: symmetries, finite differences, padding/packing, strict locality, tracing, real data."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cameo_eqx.graph import Capacity, frame_graph, pack
from cameo_eqx.modules import Allegro, make_backbone
from cameo_eqx.modules.allegro import PRESETS, layer_irreps
from cameo_eqx.topology import CGTopology, normalise_resname, species_of

CUTOFF = 6.0
TINY = dict(n_layers=2, n_radial_basis=6, l_max=2, n_tensor_features=4, latent_dim=16, two_body_hidden=(16,),
            latent_hidden=(16,), edge_energy_hidden=(8,), embed_dim=8, avg_num_neighbors=8.0)  # fmt: skip


def chain(n: int, seed: int = 0, bond: float = 3.8) -> np.ndarray:
    """A compact random CA-like chain (3.8 Å steps, no two beads closer than 4 Å where possible)."""
    rng = np.random.default_rng(seed)
    radius = (3 * n * 135.0 / (4 * np.pi)) ** (1 / 3)
    pos = np.zeros((n, 3))
    for i in range(1, n):
        best, best_bad = None, np.inf
        for _ in range(100):
            d = rng.normal(size=3)
            p = pos[i - 1] + bond * d / np.linalg.norm(d)
            bad = max(0.0, np.linalg.norm(p) - radius)
            if i > 1:
                bad += np.sum(np.clip(4.0 - np.linalg.norm(pos[: i - 1] - p, axis=1), 0, None))
            if bad < best_bad:
                best, best_bad = p, bad
            if bad == 0:
                break
        pos[i] = best
    return pos


def topo(species: np.ndarray) -> CGTopology:
    n = len(species)
    return CGTopology(resname=("ALA",) * n, resid=np.arange(n), chain=("A",) * n,
                      segment=np.zeros(n, np.int32), species=np.asarray(species, np.int32))  # fmt: skip


def batch_of(frames_pos, frames_species, capacity=None, cutoff=CUTOFF, dtype=np.float32):
    frames = [frame_graph(p, topo(s), cutoff) for p, s in zip(frames_pos, frames_species)]
    if capacity is None:
        sizes = [f.sizes for f in frames]
        capacity = Capacity(*(sum(s[k] for s in sizes) for k in range(7)))
    b = pack(frames, capacity)
    b = eqx.tree_at(lambda b: b.positions, b,
                    np.concatenate([np.asarray(p, dtype) for p in frames_pos]
                                   + [np.zeros((capacity.n_node - sum(len(p) for p in frames_pos), 3), dtype)]))  # fmt: skip
    return b.to_device()


def model(key=0, **kw):
    return Allegro(5, CUTOFF, key=jax.random.PRNGKey(key), **{**TINY, **kw})


@eqx.filter_jit  # one compile per model and capacity, not one per op
def energy_forces(m, b):
    def total(pos):
        return jnp.sum(m.node_energies(b.with_positions(pos)))

    e, g = jax.value_and_grad(total)(b.positions)
    return e, -g


def random_rotation(rng, reflect=False):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    if reflect:
        q = q @ np.diag([1.0, 1.0, -1.0])
    return q


@pytest.fixture(scope="module")
def system():
    pos = chain(20, seed=1)
    species = np.random.default_rng(1).integers(0, 5, 20)
    return pos, species


def test_presets_and_irreps():
    assert PRESETS["default"] == dict(n_layers=3, n_radial_basis=24)
    assert PRESETS["large"] == dict(n_layers=4, n_radial_basis=36)
    assert PRESETS["med"] == dict(n_layers=3, n_radial_basis=18)
    m = make_backbone("allegro", 4, 10.0, "large", latent_dim=8, n_tensor_features=2)
    assert (m.n_layers, m.n_radial_basis, m.latent_dim, m.n_tensor_features) == (4, 36, 8, 2)
    irs = layer_irreps(3, 2, True)
    assert irs[-1][1] == ((0, 1),)  # the last layer computes scalars only
    assert (1, 1) in irs[0][1] and (1, 1) not in irs[1][1]  # 1e pruned where it cannot reach 0e
    with pytest.raises(ValueError, match="unknown allegro preset"):
        make_backbone("allegro", 4, preset="huge")
    with pytest.raises(ValueError, match="unknown backbone"):
        make_backbone("transformer", 4)


@pytest.mark.parametrize("parity", [False, True])
def test_rotation_reflection_translation(system, parity):
    pos, species = system
    m = model(parity=parity)
    e0, f0 = energy_forces(m, batch_of([pos], [species]))
    rng = np.random.default_rng(2)
    for reflect in (False, True):
        q = random_rotation(rng, reflect)
        shift = rng.normal(size=3) * 5
        e1, f1 = energy_forces(m, batch_of([pos @ q.T + shift], [species]))
        np.testing.assert_allclose(e1, e0, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(f1, np.asarray(f0) @ q.T, atol=2e-5 * max(1.0, float(jnp.abs(f0).max())))
    assert float(jnp.abs(f0).max()) > 1e-3  # not trivially zero


def test_permutation(system):
    pos, species = system
    m = model()
    b = batch_of([pos], [species])
    e0, f0 = energy_forces(m, b)
    n0 = m.node_energies(b)
    perm = np.random.default_rng(3).permutation(len(pos))
    bp = batch_of([pos[perm]], [species[perm]])
    e1, f1 = energy_forces(m, bp)
    np.testing.assert_allclose(e1, e0, rtol=1e-5)
    np.testing.assert_allclose(f1, np.asarray(f0)[perm], atol=1e-5)
    np.testing.assert_allclose(m.node_energies(bp), np.asarray(n0)[perm], atol=1e-5)


def test_forces_match_finite_differences(system):
    pos, species = system
    with jax.enable_x64(True):
        m = Allegro(5, CUTOFF, key=jax.random.PRNGKey(0), **{**TINY, "parity": True})
        m = jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, m)
        b = batch_of([pos], [species], dtype=np.float64)
        assert b.positions.dtype == jnp.float64
        _, f = energy_forces(m, b)
        efn = jax.jit(lambda p: jnp.sum(m.node_energies(b.with_positions(p))))
        h = 1e-5
        rng = np.random.default_rng(4)
        for i in rng.choice(len(pos), 5, replace=False):
            for a in range(3):
                d = jnp.zeros_like(b.positions).at[i, a].set(h)
                fd = -(efn(b.positions + d) - efn(b.positions - d)) / (2 * h)
                np.testing.assert_allclose(f[i, a], fd, rtol=1e-6, atol=1e-8)


def test_padding_and_packing_change_nothing(system):
    pos, species = system
    m = model()
    _, f_alone = energy_forces(m, batch_of([pos], [species]))
    others = [chain(13, seed=7), chain(31, seed=8)]
    osp = [np.zeros(13, int), np.full(31, 4)]
    cap = Capacity(n_node=100, n_edge=2000, n_graph=5, n_bond=100, n_angle=100, n_dih=100, n_pair=1000)
    b = batch_of([others[0], pos, others[1]], [osp[0], species, osp[1]], capacity=cap)
    e, f = energy_forces(m, b)
    np.testing.assert_allclose(f[13 : 13 + len(pos)], f_alone, atol=1e-5)
    assert np.all(np.asarray(f[13 + len(pos) + 31 :]) == 0)  # padded beads
    assert np.all(np.asarray(m.node_energies(b))[13 + len(pos) + 31 :] == 0)
    # padding capacity alone changes nothing either
    b1 = batch_of([pos], [species], capacity=cap)
    np.testing.assert_allclose(energy_forces(m, b1)[1][: len(pos)], f_alone, atol=1e-5)


def test_strictly_local(system):
    pos, species = system
    m = model()
    n = len(pos)
    # 1) a bead moved beyond the cutoff of every other bead changes nothing for the others
    far1, far2 = pos.copy(), pos.copy()
    far1[0] = pos.mean(0) + np.array([50.0, 0, 0])
    far2[0] = pos.mean(0) + np.array([0, -80.0, 10.0])
    b1, b2 = batch_of([far1], [species]), batch_of([far2], [species])
    np.testing.assert_allclose(energy_forces(m, b1)[1][1:], energy_forces(m, b2)[1][1:], atol=1e-6)
    np.testing.assert_allclose(m.node_energies(b1)[1:], m.node_energies(b2)[1:], atol=1e-6)
    # 2) per-bead energies only see beads within the cutoff: moving bead j (staying out of i's
    #    cutoff) leaves E_i unchanged, even when j is a neighbour of i's neighbours (no message passing)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    i, j = np.argwhere((d > CUTOFF + 1.0) & (d < 2 * CUTOFF))[0]
    assert np.any((d[i] < CUTOFF) & (d[j] < CUTOFF))  # shares a neighbour
    moved = pos.copy()
    step = (pos[j] - pos[i]) / d[i, j] * 0.5
    moved[j] = pos[j] + step  # moves away from i
    e_a, e_b = m.node_energies(batch_of([pos], [species])), m.node_energies(batch_of([moved], [species]))
    assert abs(float(e_a[i] - e_b[i])) < 1e-6
    far_from_j = np.where(d[j] >= CUTOFF + 0.5)[0]
    changed = np.where(np.abs(np.asarray(e_a - e_b)) > 1e-6)[0]
    assert set(changed).isdisjoint(set(far_from_j) - {j})


def test_traces_once_per_capacity_bucket():
    m = model()
    caps = [Capacity(64, 1200, 4, 64, 64, 64, 600), Capacity(128, 2400, 8, 128, 128, 128, 1200)]

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=2)
    def step(m, b):
        return energy_forces(m, b)

    for k in range(3):
        for cap in caps:
            frames = [chain(10 + 3 * k, seed=k), chain(12, seed=10 + k)]
            b = batch_of(frames, [np.arange(len(p)) % 5 for p in frames], capacity=cap)
            e, f = step(m, b)
            assert np.all(np.isfinite(np.asarray(f)))


def villin_frames(path, n_frames=2):
    import h5py

    with h5py.File(path, "r") as h:
        g = h["villinHP35"]
        pdb = g["pdbProteinAtoms"][()].decode().splitlines()
        atoms = [line for line in pdb if line.startswith(("ATOM", "HETATM"))]
        ca = [k for k, line in enumerate(atoms) if line[12:16].strip() == "CA"]
        resnames = [normalise_resname(atoms[k][17:21]) for k in ca]
        coords = g["320"]["0"]["coords"][:n_frames][:, ca]
    return np.asarray(coords, np.float64), species_of(resnames)


def test_parameter_gradients_finite_on_villin(villin_h5):
    coords, species = villin_frames(villin_h5)
    assert coords.shape == (2, 35, 3)
    m = Allegro(20, 10.0, key=jax.random.PRNGKey(0), n_layers=2, n_radial_basis=8, n_tensor_features=4,
                latent_dim=16)  # fmt: skip
    b = batch_of(list(coords), [species, species], cutoff=10.0)

    def loss(m):
        _, f = energy_forces(m, b)
        return jnp.mean(f**2)

    grads = eqx.filter_jit(eqx.filter_grad(loss))(m)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


def test_sparse_plan_is_the_summed_path_tensor():
    """The GPU formulation's nonzeros and per-path values rebuild every path tensor exactly."""
    from cameo_eqx.modules import allegro
    from cameo_eqx.modules.radial import sh_irreps

    irs_in, irs_out = layer_irreps(3, 2, False)[0]
    t = allegro._path_tensors(irs_in, sh_irreps(2), irs_out)
    (o, xi, yi, n_o, n_x, n_y), values = allegro._sparse_plan(irs_in, sh_irreps(2), irs_out)
    assert (n_x, n_y, n_o) == t.shape[1:] and values.shape == (t.shape[0], len(o)) and len(o) < t[0].size / 4
    rebuilt = np.zeros_like(t)
    rebuilt[:, np.asarray(xi), np.asarray(yi), np.asarray(o)] = values
    np.testing.assert_array_equal(rebuilt, t)
