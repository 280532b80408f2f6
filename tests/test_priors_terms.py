"""Prior terms and the weighted Prior: finite-difference forces, invariances, masking, degenerate
geometry, golden values of the old defaults, serialisation."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cameo_eqx.graph import Capacity, frame_graph, graph_sum, pack
from cameo_eqx.priors.config import PriorConfig
from cameo_eqx.priors.prior import Prior
from cameo_eqx.geometry import bond_angles, dihedral_angles
from cameo_eqx.priors.terms import (
    FourierAngle,
    HarmonicBond,
    PeriodicDihedral,
    SoftSphereRepulsion,
    n_types,
    pair_type,
    quadruplet_type,
    triplet_type,
)
from cameo_eqx.topology import CGTopology

S = 4  # species in the synthetic tests (charge4-sized tables keep the dihedral table small)


def _chain(n, rng, step=3.8):
    """A random self-avoiding-ish chain with 3.8 Å steps."""
    pos = [np.zeros(3)]
    d = np.array([1.0, 0.0, 0.0])
    while len(pos) < n:
        new = d + 0.9 * rng.normal(size=3)
        new /= np.linalg.norm(new)
        cand = pos[-1] + step * new
        if len(pos) > 2 and np.min(np.linalg.norm(np.asarray(pos[:-2]) - cand, axis=1)) < 3.5:
            continue
        d = new
        pos.append(cand)
    return np.asarray(pos)


def _topo(n, rng, breaks=()):
    seg = np.zeros(n, np.int32)
    for b in breaks:
        seg[b:] += 1
    return CGTopology(tuple(["ALA"] * n), np.arange(n, dtype=np.int32), tuple("A" * n), seg,
                      rng.integers(0, S, n).astype(np.int32))  # fmt: skip


def make_batch(seed=0, sizes=(9, 7), breaks=((4,), ()), pad=True):
    """Frames of different proteins packed with padding (capacity > content)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i, (n, br) in enumerate(zip(sizes, breaks)):
        topo = _topo(n, rng, br)
        pos = _chain(n, rng)
        if br:  # move the second segment away a bit but keep it within the cutoff
            pos[br[0]:] += np.array([1.0, 2.0, 0.5])
        frames.append(frame_graph(pos, topo, 10.0, forces=rng.normal(size=(n, 3)), protein_index=i))
    cap = sum((np.asarray(f.sizes) for f in frames), np.zeros(7, int))
    extra = np.array([5, 11, 2, 3, 4, 5, 7]) if pad else 0
    return pack(frames, Capacity(*(int(c) for c in cap + extra)))


def random_terms(seed=0, per_species=True):
    """One of each term with random (per-type) parameters so that species matter."""
    rng = np.random.default_rng(seed)

    def tab(kind, *shape, lo=0.5, hi=2.0):
        n = n_types(kind, S) if per_species else 1
        return jnp.asarray(rng.uniform(lo, hi, size=(n,) + shape))

    bond = HarmonicBond(tab("pair", lo=3.5, hi=4.0), tab("pair", lo=50, hi=150), per_species, S)
    angle = FourierAngle(tab("triplet", 3, lo=-1, hi=1), tab("triplet", 3, lo=-1, hi=1), per_species, S)
    dih = PeriodicDihedral(tab("quadruplet", 2), tab("quadruplet", 2, lo=-3, hi=3), per_species, S)
    rep = SoftSphereRepulsion(tab("pair", lo=0.5, hi=1.5), tab("pair", lo=2.5, hi=4.0), 4, 2, 10.0,
                              "smooth", 8.0, 0.1, per_species, S)  # fmt: skip
    return [bond, angle, dih, rep]


def to64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if eqx.is_inexact_array(x) else x, tree)


def total_energy(model, batch, pos):
    return jnp.sum(graph_sum(model.node_energies(batch.with_positions(pos)), batch))


# ------------------------------------------------------------------------------------ type indices


def test_type_indices_symmetric_and_complete():
    s = 5
    a, b, c, d = np.meshgrid(*[np.arange(s)] * 4, indexing="ij")
    a, b, c, d = (x.ravel() for x in (a, b, c, d))
    assert np.array_equal(pair_type(a, b, s), pair_type(b, a, s))
    assert len(np.unique(pair_type(a, b, s))) == n_types("pair", s)
    assert pair_type(a, b, s).max() == n_types("pair", s) - 1
    assert np.array_equal(triplet_type(a, b, c, s), triplet_type(c, b, a, s))
    assert len(np.unique(triplet_type(a, b, c, s))) == n_types("triplet", s)
    q, qr = quadruplet_type(a, b, c, d, s), quadruplet_type(d, c, b, a, s)
    assert np.array_equal(q, qr)
    # distinct classes {t, reverse(t)} get distinct indices
    classes = {min((w, x, y, z), (z, y, x, w)) for w, x, y, z in zip(a, b, c, d)}
    assert len(np.unique(q)) == len(classes)
    assert q.max() < n_types("quadruplet", s)
    # JAX arrays give the same indices
    assert np.array_equal(np.asarray(quadruplet_type(*(jnp.asarray(x) for x in (a, b, c, d)), s)), q)


# ---------------------------------------------------------------------------- finite differences


@pytest.mark.parametrize("per_species", [False, True])
@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_forces_match_finite_differences(which, per_species):
    with jax.enable_x64(True):
        batch = jax.tree.map(jnp.asarray, make_batch(seed=which))
        batch = batch.with_positions(batch.positions.astype(jnp.float64))
        term = to64(random_terms(seed=which, per_species=per_species)[which])
        f = jax.jit(lambda p: total_energy(term, batch, p))
        g = np.asarray(jax.grad(f)(batch.positions))
        pos = np.asarray(batch.positions)
        h = 1e-5
        rng = np.random.default_rng(1)
        real = np.flatnonzero(np.asarray(batch.node_mask))
        for i in rng.choice(real, size=6, replace=False):
            for k in range(3):
                pp, pm = pos.copy(), pos.copy()
                pp[i, k] += h
                pm[i, k] -= h
                fd = (float(f(jnp.asarray(pp))) - float(f(jnp.asarray(pm)))) / (2 * h)
                np.testing.assert_allclose(g[i, k], fd, rtol=1e-6, atol=1e-7)
        assert float(f(batch.positions)) != 0.0


def test_prior_components_sum_to_total_and_fd():
    with jax.enable_x64(True):
        batch = jax.tree.map(jnp.asarray, make_batch(seed=3))
        batch = batch.with_positions(batch.positions.astype(jnp.float64))
        prior = to64(Prior(random_terms(3), weights=[0.5, 0.25, 0.25, 1.0]))
        e, f = prior.energy_and_forces(batch)
        comps = prior.components(batch)
        assert set(comps) == {"bond", "angle", "dihedral", "repulsion"}
        np.testing.assert_allclose(sum(c[0] for c in comps.values()), e, rtol=1e-12)
        np.testing.assert_allclose(sum(c[1] for c in comps.values()), f, rtol=1e-10, atol=1e-12)
        # per-bead energies sum to the per-frame totals
        np.testing.assert_allclose(graph_sum(prior.node_energies(batch), batch), e, rtol=1e-12)
        # and weights multiply
        for w, t in zip(prior.weights, prior.terms):
            np.testing.assert_allclose(comps[t.name][0], w * graph_sum(t.node_energies(batch), batch),
                                       rtol=1e-12)  # fmt: skip
        # FD of a frame energy along a random direction
        d = np.random.default_rng(0).normal(size=batch.positions.shape) * np.asarray(batch.node_mask)[:, None]
        h = 1e-5
        ep = prior.energy(batch.with_positions(batch.positions + h * d)).sum()
        em = prior.energy(batch.with_positions(batch.positions - h * d)).sum()
        np.testing.assert_allclose(-(ep - em) / (2 * h), float(jnp.sum(f * d)), rtol=1e-7)


# ------------------------------------------------- fused analytic forces (prior_frame_energies) vs autodiff


def _autodiff_energy(prior, batch):
    """The reference path: graph_sum of the weighted per-bead energies, differentiated by autodiff."""
    return graph_sum(prior.node_energies(batch), batch)


@eqx.filter_jit  # one compile per call site, not one per op
def _forces(energy_fn, prior, batch, pos):
    return -jax.grad(lambda p: jnp.sum(energy_fn(prior, batch.with_positions(p))))(pos)


_energy_and_forces = eqx.filter_jit(lambda prior, batch: prior.energy_and_forces(batch))


@pytest.mark.parametrize("per_species", [False, True])
@pytest.mark.parametrize("which", [0, 1, 2, 3, None])
def test_fused_forces_match_finite_differences(which, per_species):
    """Prior.energy_and_forces (analytic per-tuple forces in a custom VJP) vs central differences of
    Prior.energy, per term and for all terms together, float64."""
    with jax.enable_x64(True):
        batch = jax.tree.map(jnp.asarray, make_batch(seed=20 + (which or 0)))
        batch = batch.with_positions(batch.positions.astype(jnp.float64))
        terms = to64(random_terms(seed=20 + (which or 0), per_species=per_species))
        prior = Prior(terms if which is None else [terms[which]], weights=None if which is None else [0.7])
        e, f = jax.jit(lambda b: prior.energy_and_forces(b))(batch)
        etot = jax.jit(lambda p: jnp.sum(prior.energy(batch.with_positions(p))))
        pos = np.asarray(batch.positions)
        h = 1e-5
        rng = np.random.default_rng(2)
        for i in rng.choice(np.flatnonzero(np.asarray(batch.node_mask)), size=6, replace=False):
            for k in range(3):
                pp, pm = pos.copy(), pos.copy()
                pp[i, k] += h
                pm[i, k] -= h
                fd = -(float(etot(jnp.asarray(pp))) - float(etot(jnp.asarray(pm)))) / (2 * h)
                np.testing.assert_allclose(float(f[i, k]), fd, rtol=1e-6, atol=1e-7)
        assert float(jnp.sum(jnp.abs(f))) > 0.0


@pytest.mark.parametrize("per_species", [False, True])
def test_fused_equals_autodiff_values_and_grad_of_grad(per_species):
    """Energies, forces, parameter gradients of the energy, and parameter gradients of a force-matching
    loss (grad of grad) of the fused path equal those of autodiff through node_energies (float64)."""
    with jax.enable_x64(True):
        batch = jax.tree.map(jnp.asarray, make_batch(seed=31))
        batch = batch.with_positions(batch.positions.astype(jnp.float64))
        prior = to64(Prior(random_terms(31, per_species=per_species), weights=[0.5, 0.25, 0.25, 1.0]))
        pos = batch.positions
        np.testing.assert_allclose(prior.energy(batch), _autodiff_energy(prior, batch), rtol=1e-12, atol=1e-12)
        f_fused = _forces(lambda m, b: m.energy(b), prior, batch, pos)
        f_auto = _forces(_autodiff_energy, prior, batch, pos)
        np.testing.assert_allclose(f_fused, f_auto, rtol=1e-10, atol=1e-10)
        np.testing.assert_array_equal(np.asarray(f_fused)[~np.asarray(batch.node_mask)], 0.0)
        # parameter gradients of a frame-weighted energy (the per-frame cotangent matters)
        wf = jnp.asarray(np.random.default_rng(3).normal(size=batch.n_graph))

        def e_loss(fn):
            return eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(wf * fn(m, batch))))(prior)

        g1, g2 = e_loss(lambda m, b: m.energy(b)), e_loss(_autodiff_energy)
        # force matching: d/dθ Σ |F(θ) - F_ref|², F through each path
        target = batch.forces.astype(jnp.float64)

        def f_loss(fn):
            def loss(m):
                f = _forces(fn, m, batch, pos)
                return jnp.sum(jnp.where(batch.node_mask[:, None], (f - target) ** 2, 0.0))

            return eqx.filter_jit(eqx.filter_grad(loss))(prior)

        h1, h2 = f_loss(lambda m, b: m.energy(b)), f_loss(_autodiff_energy)
        for x1, x2 in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
            np.testing.assert_allclose(x1, x2, rtol=1e-9, atol=1e-10, err_msg="energy parameter gradient")
        for (path, x1), x2 in zip(jax.tree_util.tree_leaves_with_path(h1), jax.tree.leaves(h2)):
            np.testing.assert_allclose(x1, x2, rtol=1e-9, atol=1e-9,
                                       err_msg=f"force-loss parameter gradient {jax.tree_util.keystr(path)}")  # fmt: skip
            assert np.all(np.isfinite(x1))
        assert all(float(jnp.max(jnp.abs(x))) > 0 for x in jax.tree.leaves(h1))


def test_fused_padding_invariance():
    """The same frames with and without padding capacity give the same energies, forces on real beads
    and parameter gradients (float32, fused path)."""
    b_pad = jax.tree.map(jnp.asarray, make_batch(seed=32, pad=True))
    b_tight = jax.tree.map(jnp.asarray, make_batch(seed=32, pad=False))
    prior = Prior(random_terms(32))
    e0, f0 = _energy_and_forces(prior, b_tight)
    e1, f1 = _energy_and_forces(prior, b_pad)
    n, g = b_tight.n_node, b_tight.n_graph
    np.testing.assert_allclose(e1[:g], e0, rtol=1e-6)
    np.testing.assert_array_equal(e1[g:], 0.0)
    np.testing.assert_allclose(f1[:n], f0, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(f1[n:], 0.0)
    p0 = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(m.energy(b_tight))))(prior)
    p1 = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(m.energy(b_pad))))(prior)
    for x0, x1 in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
        np.testing.assert_allclose(x1, x0, rtol=1e-5, atol=1e-5)


def test_fused_degenerate_geometry_matches_autodiff():
    """Collinear triplets, zero-length bonds and coincident pairs: the analytic forces are finite and
    equal autodiff's (which is zero along undefined angle/dihedral directions), float64."""
    with jax.enable_x64(True):
        p = np.asarray([[0.0, 0, 0], [3.8, 0, 0], [7.6, 0, 0], [7.6, 0, 0], [11.4, 0, 0], [11.4, 3.8, 0]])
        n = len(p)
        topo = CGTopology(tuple(["ALA"] * n), np.arange(n), tuple("A" * n), np.zeros(n, np.int32),
                          np.zeros(n, np.int32))  # fmt: skip
        host = pack([frame_graph(p, topo, 10.0)], Capacity(7, 40, 2, 6, 5, 4, 12))
        b = jax.tree.map(jnp.asarray, host)
        b = b.with_positions(b.positions.astype(jnp.float64))
        prior = to64(Prior(random_terms(0, per_species=False)))
        e, f = _energy_and_forces(prior, b)
        assert np.all(np.isfinite(e)) and np.all(np.isfinite(f))
        np.testing.assert_allclose(e, _autodiff_energy(prior, b), rtol=1e-12)
        np.testing.assert_allclose(f, _forces(_autodiff_energy, prior, b, b.positions), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------ invariances


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_rotation_translation_invariance():
    batch = jax.tree.map(jnp.asarray, make_batch(seed=5))
    prior = Prior(random_terms(5))
    e0, f0 = prior.energy_and_forces(batch)
    rot = jnp.asarray(_rotation(5), jnp.float32)
    moved = batch.with_positions(batch.positions @ rot.T + jnp.array([3.0, -7.0, 11.0]))
    e1, f1 = prior.energy_and_forces(moved)
    np.testing.assert_allclose(e1, e0, rtol=2e-5, atol=1e-4)
    np.testing.assert_allclose(f1, f0 @ rot.T, rtol=1e-3, atol=2e-3)


def _permute(batch, perm):
    """Permutes the real beads of a host batch (perm over real indices) and remaps every index array."""
    n = batch.n_node
    real = int(batch.node_mask.sum())
    full = np.concatenate([perm, np.arange(real, n)])  # new position i holds old bead full[i]
    inv = np.empty(n + 1, np.int64)
    inv[full] = np.arange(n)
    inv[n] = n  # padding index stays
    node = dict(positions=batch.positions[full], species=batch.species[full],
                node_mask=batch.node_mask[full], graph_index=batch.graph_index[full],
                forces=batch.forces[full])  # fmt: skip
    idx = {k: inv[getattr(batch, k)].astype(np.int32)
           for k in ("senders", "receivers", "bonds", "angles", "dihedrals", "pairs")}  # fmt: skip
    return dataclasses.replace(batch, **node, **idx), full


def test_bead_permutation_within_packed_batch():
    host = make_batch(seed=7)
    real = int(host.node_mask.sum())
    perm = np.random.default_rng(7).permutation(real)
    permuted, full = _permute(host, perm)
    prior = Prior(random_terms(7))
    b0, b1 = jax.tree.map(jnp.asarray, host), jax.tree.map(jnp.asarray, permuted)
    e0, f0 = prior.energy_and_forces(b0)
    e1, f1 = prior.energy_and_forces(b1)
    np.testing.assert_allclose(e1, e0, rtol=1e-5)
    np.testing.assert_allclose(f1, np.asarray(f0)[full], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prior.node_energies(b1), np.asarray(prior.node_energies(b0))[full],
                               rtol=1e-5, atol=1e-6)  # fmt: skip


# ---------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize("garbage", [1e4, np.nan])
def test_padding_garbage_changes_nothing(garbage):
    host = make_batch(seed=11)
    assert not host.node_mask.all() and not host.bond_mask.all() and not host.pair_mask.all()
    dirty = dataclasses.replace(host, positions=np.where(host.node_mask[:, None], host.positions,
                                                          np.float32(garbage)))  # fmt: skip
    prior = Prior(random_terms(11))
    b0, b1 = jax.tree.map(jnp.asarray, host), jax.tree.map(jnp.asarray, dirty)
    e0, f0 = prior.energy_and_forces(b0)
    e1 = prior.energy(b1)
    g1 = jax.grad(lambda p: jnp.sum(prior.energy(b1.with_positions(p))))(b1.positions)
    np.testing.assert_array_equal(e1, e0)
    assert np.all(np.isfinite(g1))
    np.testing.assert_array_equal(np.asarray(g1)[~host.node_mask], 0.0)
    np.testing.assert_array_equal(-np.asarray(g1)[host.node_mask], np.asarray(f0)[host.node_mask])
    np.testing.assert_array_equal(np.asarray(prior.node_energies(b1))[~host.node_mask], 0.0)
    # parameter gradients finite too
    pg = eqx.filter_grad(lambda m: jnp.sum(m.energy(b1)))(prior)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(pg))
    assert float(e0[-1]) == 0.0  # padded frame


def test_masked_entries_contribute_exactly_zero():
    host = make_batch(seed=12, pad=False)
    prior = Prior(random_terms(12))
    for mask_name, idx_name in (("bond_mask", "bonds"), ("angle_mask", "angles"),
                                ("dihedral_mask", "dihedrals"), ("pair_mask", "pairs")):  # fmt: skip
        m = getattr(host, mask_name).copy()
        m[0] = False
        off = dataclasses.replace(host, **{mask_name: m})
        # the same batch with entry 0 removed altogether
        keep = np.arange(1, len(m))
        rem = {mask_name: getattr(host, mask_name)[keep], idx_name: getattr(host, idx_name)[keep]}
        if idx_name == "pairs":
            rem["pair_sep"] = host.pair_sep[keep]
        removed = dataclasses.replace(host, **rem)
        e_off = prior.energy(jax.tree.map(jnp.asarray, off))
        e_rem = prior.energy(jax.tree.map(jnp.asarray, removed))
        e_all = prior.energy(jax.tree.map(jnp.asarray, host))
        np.testing.assert_allclose(e_off, e_rem, rtol=1e-6, err_msg=mask_name)
        assert not np.allclose(e_off, e_all), mask_name


def test_repulsion_min_sep_and_segments():
    host = make_batch(seed=13, pad=False)
    b = jax.tree.map(jnp.asarray, host)
    rep2 = SoftSphereRepulsion.init(min_sep=2, n_species=S)
    rep6 = SoftSphereRepulsion.init(min_sep=6, n_species=S)
    e2, e6 = rep2.energies(b), rep6.energies(b)
    sep = host.pair_sep
    assert np.all(np.asarray(e2)[sep >= 2] > 0)
    np.testing.assert_array_equal(np.asarray(e6)[sep < 6], 0.0)
    cross = sep == (1 << 30)
    assert cross.any()
    np.testing.assert_array_equal(np.asarray(e6)[cross], np.asarray(e2)[cross])
    assert np.all(np.asarray(e6)[cross] > 0)


# ---------------------------------------------------------------------------------- degenerate


def test_degenerate_geometry_is_finite():
    p = jnp.asarray([[0.0, 0, 0], [3.8, 0, 0], [7.6, 0, 0], [7.6, 0, 0], [11.4, 0, 0]])
    # collinear angle (π), zero-length bond, coincident pair, collinear dihedral (atan2(0,0))
    for f, idx in ((bond_angles, (0, 1, 2)), (bond_angles, (1, 2, 3)),
                   (dihedral_angles, (0, 1, 2, 4)), (dihedral_angles, (1, 2, 3, 4))):  # fmt: skip
        def fn(pos):
            return jnp.sum(f(*(pos[i][None] for i in idx)))

        val, g = jax.value_and_grad(fn)(p)
        assert np.isfinite(val) and np.all(np.isfinite(g)), (f.__name__, idx)
    np.testing.assert_allclose(bond_angles(p[0:1], p[1:2], p[2:3]), np.pi, rtol=1e-6)
    # the whole prior on a collinear chain with two coincident beads
    n = 5
    topo = CGTopology(tuple(["ALA"] * n), np.arange(n), tuple("A" * n), np.zeros(n, np.int32),
                      np.zeros(n, np.int32))  # fmt: skip
    host = pack([frame_graph(np.asarray(p), topo, 10.0)], Capacity(6, 30, 2, 5, 4, 3, 8))
    prior = Prior(random_terms(0))
    b = jax.tree.map(jnp.asarray, host)
    e, f = _energy_and_forces(prior, b)
    assert np.all(np.isfinite(e)) and np.all(np.isfinite(f))
    pg = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(m.energy(b))))(prior)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(pg))


def test_angle_and_dihedral_values():
    p0, p1, p2 = jnp.array([[1.0, 0, 0]]), jnp.zeros((1, 3)), jnp.array([[0.0, 2.0, 0]])
    np.testing.assert_allclose(bond_angles(p0, p1, p2), np.pi / 2, rtol=1e-6)
    # IUPAC sign: trans = π, cis = 0, +60° for a right-handed twist
    a, b, c = jnp.array([[1.0, 1, 0]]), jnp.array([[0.0, 0, 0]]), jnp.array([[0.0, 0, 1]])
    for deg in (0.0, 60.0, -60.0, 180.0, 120.0):
        t = np.deg2rad(deg)
        # d is a rotated by deg about the b→c axis (counterclockwise seen from c): dihedral = +deg
        az = np.deg2rad(45.0) + t
        d = jnp.array([[np.cos(az), np.sin(az), 1.0]])
        phi = float(dihedral_angles(a, b, c, d)[0])
        np.testing.assert_allclose(np.cos(phi), np.cos(t), atol=1e-6)
        np.testing.assert_allclose(np.sin(phi), np.sin(t), atol=1e-6)


# --------------------------------------------------------------------------------- golden values


def _golden_batch(positions, segment=None):
    n = len(positions)
    seg = np.zeros(n, np.int32) if segment is None else np.asarray(segment, np.int32)
    topo = CGTopology(tuple(["ALA"] * n), np.arange(n, dtype=np.int32), tuple("A" * n), seg,
                      np.zeros(n, np.int32))  # fmt: skip
    fg = frame_graph(np.asarray(positions, np.float64), topo, 10.0)
    return jax.tree.map(jnp.asarray, pack([fg], fg.sizes))


def test_old_defaults_golden_energies():
    """Hand-computed: beads (0,0,0), (4,0,0), (4,3,0) with the unfitted defaults (`PriorConfig()`).

    bonds r = 4 and 3: 0.5·154.5·0.16² = 1.9776 and 0.5·154.5·0.84² = 54.5076, weight 0.5 → 28.2426;
    pair (0,2) at r = 5, separation 2: 1·(3/5)⁴ = 0.1296 (inside the switch-on radius, weight 1);
    angle and dihedral coefficients are zero. Total 28.3722 kcal/mol. With `old_min_sep_6` (repulsion
    only from separation 6) there is no repulsion here: 28.2426.
    """
    b = _golden_batch([[0, 0, 0], [4, 0, 0], [4, 3, 0]])
    prior = Prior.from_prior_config(PriorConfig())
    np.testing.assert_allclose(prior.energy(b), [28.3722], rtol=1e-6)
    comps = prior.components(b)
    np.testing.assert_allclose(comps["bond"][0], [28.2426], rtol=1e-6)
    np.testing.assert_allclose(comps["repulsion"][0], [0.1296], rtol=1e-6)
    np.testing.assert_allclose(comps["angle"][0], [0.0])
    # bond force on bead 0: -dU/dr along the bond, 0.5·154.5·0.16 = 12.36 towards bead 1 (+x) ...
    # plus the repulsion from bead 2: 4·(3/5)⁴/5 = 0.10368 along (0,0,0)-(4,3,0) unit vector (-0.8, -0.6)
    f0 = np.asarray(prior.energy_and_forces(b)[1][0])
    np.testing.assert_allclose(f0, [12.36 - 0.8 * 0.10368, -0.6 * 0.10368, 0.0], rtol=1e-5)
    old = Prior.from_prior_config(PriorConfig(old_min_sep_6=True))
    np.testing.assert_allclose(old.energy(b), [28.2426], rtol=1e-6)


def test_repulsion_switch_and_segments_golden():
    """Two one-bead segments at r: different segments always repel.

    r = 9 Å: plain (3/9)⁴ = 0.0123457; smooth switch from 8 to 10 at x = 0.5 is 0.5 → 0.00617284;
    'shift' subtracts (3/10)⁴ = 0.0081 → 0.0042457; at r ≥ 10 every variant gives 0.
    """
    for r, expected in ((9.0, {"none": 1 / 81, "smooth": 0.5 / 81, "shift": 1 / 81 - 0.0081}),):
        b = _golden_batch([[0, 0, 0], [r, 0, 0]], segment=[0, 1])
        assert int(b.pair_sep[0]) == 1 << 30
        for sw, val in expected.items():
            p = Prior.from_prior_config(PriorConfig(old_min_sep_6=True, repulsion_switch=sw))
            np.testing.assert_allclose(p.energy(b), [val], rtol=1e-5, err_msg=sw)
    rep = SoftSphereRepulsion.init(switch="smooth")
    r = jnp.linspace(7.5, 10.5, 61)
    u = rep.pair_energy(r, jnp.zeros(61, jnp.int32))
    du = jax.vmap(jax.grad(lambda x: rep.pair_energy(x[None], jnp.zeros(1, jnp.int32))[0]))(r)
    assert float(u[-1]) == 0.0 and abs(float(u[r >= 10.0][0])) < 1e-9
    assert np.all(np.abs(np.asarray(du)[np.asarray(r) >= 9.99]) < 1e-5)  # force continuous at rc


# --------------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_load_round_trip(tmp_path, suffix):
    prior = Prior(random_terms(2), weights=[0.5, 0.25, 0.25, 1.0],
                  provenance={"dataset": "x", "counts": {"bond": 10}})  # fmt: skip
    path = prior.save(tmp_path / f"prior{suffix}")
    back = Prior.load(path)
    assert back.names == prior.names and back.weights == prior.weights
    assert back.provenance == prior.provenance
    for a, b in zip(jax.tree.leaves(prior), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b))
    batch = jax.tree.map(jnp.asarray, make_batch(2))
    np.testing.assert_array_equal(back.energy(batch), prior.energy(batch))


def test_per_species_default_table_is_compact(tmp_path):
    prior = Prior.from_prior_config(PriorConfig(bond_per_species=True, angle_per_species=True,
                                                dihedral_per_species=True, repulsion_per_species=True))  # fmt: skip
    cfg = prior.to_config()
    assert cfg["terms"]["dihedral"]["params"]["k"]["rows"] == {}
    back = Prior.from_config(cfg)
    assert back.term("dihedral").k.shape == (20**4, 3)


def test_bad_config_named():
    cfg = Prior.from_prior_config(PriorConfig()).to_config()
    cfg["terms"]["bond"]["params"]["r0"] = [1.0, 2.0]
    with pytest.raises(ValueError, match="bond.*r0"):
        Prior.from_config(cfg)
