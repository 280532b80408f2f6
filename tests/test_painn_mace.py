"""PaiNN and MACE backbones: symmetries, forces vs finite differences, padding/packing independence,
tracing per capacity bucket, finite parameter gradients on real data, and the receptive field.

Models are tiny so the whole file runs in well under two minutes on two cores.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cameo_eqx.graph import Capacity, frame_graph, graph_sum, pack, single_frame_batch
from cameo_eqx.modules.backbones import make_backbone
from cameo_eqx.modules.painn import PRESETS as PAINN_PRESETS
from cameo_eqx.modules.painn import PaiNN
from cameo_eqx.topology import CGTopology

N_SPECIES = 4
CUTOFF = 7.0

TINY = {
    "painn": (PaiNN, dict(n_features=8, n_layers=2, n_radial_basis=6)),
}
PRESET_TABLES = {"painn": PAINN_PRESETS}

try:  # MACE is optional in this file until it exists
    from cameo_eqx.modules.mace import MACE
    from cameo_eqx.modules.mace import PRESETS as MACE_PRESETS

    TINY["mace"] = (
        MACE,
        dict(hidden_irreps="4x0e + 4x1o", l_max=2, correlation=3, n_layers=2, n_radial_basis=6,
             radial_hidden=(8,), readout_hidden=4),
    )  # fmt: skip
    PRESET_TABLES["mace"] = MACE_PRESETS
except ImportError:  # pragma: no cover
    pass

NAMES = sorted(TINY)


def make_model(name: str, seed: int = 0, cutoff: float = CUTOFF, n_species: int = N_SPECIES, **kw):
    _, hp = TINY[name]
    return make_backbone(name, n_species, cutoff, "small", key=jax.random.PRNGKey(seed), **{**hp, **kw})


# ------------------------------------------------------------------------------------ test proteins


def helix(n: int, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    """An alpha-helix-like CA trace (rise 1.5 Å, 100° per bead, radius 2.3 Å) with noise."""
    t = np.arange(n) * np.deg2rad(100.0)
    x = np.stack([2.3 * np.cos(t), 2.3 * np.sin(t), 1.5 * np.arange(n)], axis=-1)
    return (x + noise * np.random.default_rng(seed).normal(size=x.shape)).astype(np.float32)


def topo(n: int, seed: int = 0) -> CGTopology:
    spc = np.random.default_rng(seed + 100).integers(0, N_SPECIES, n).astype(np.int32)
    return CGTopology(("ALA",) * n, np.arange(n, dtype=np.int32), ("A",) * n,
                      np.zeros(n, np.int32), spc)  # fmt: skip


def energy_forces(model, batch):
    """Per-frame energies, per-bead energies and forces = -dE/dR."""

    def total(pos):
        e = model.node_energies(batch.with_positions(pos))
        return jnp.sum(e), e

    (_, e), g = jax.value_and_grad(total, has_aux=True)(batch.positions)
    return graph_sum(e, batch), e, -g


jit_energy_forces = eqx.filter_jit(energy_forces)


def random_orthogonal(seed: int, proper: bool = True) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return q.astype(np.float32)


def permute(batch, perm: np.ndarray):
    """The same single-frame batch with beads renumbered: new bead k is old bead perm[k]."""
    inv = np.argsort(perm).astype(np.int32)
    return dataclasses.replace(
        batch, positions=batch.positions[perm], species=batch.species[perm],
        senders=inv[batch.senders], receivers=inv[batch.receivers],
    )  # fmt: skip


# ----------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", NAMES)
def test_presets_and_bad_hyperparameters(name):
    cls, _ = TINY[name]
    assert {"small", "default", "large"} <= set(PRESET_TABLES[name])
    with pytest.raises(ValueError, match="preset"):
        make_backbone(name, N_SPECIES, preset="nope")
    with pytest.raises(TypeError, match="no_such_thing"):
        cls(N_SPECIES, key=jax.random.PRNGKey(0), no_such_thing=3)
    with pytest.raises(ValueError, match=f"backbone '{name}' has no hyperparameter.*no_such_thing"):
        make_backbone(name, N_SPECIES, no_such_thing=3)
    m = make_model(name)
    assert m.n_message_passing_layers == 2
    # hyperparameters are static: the only leaves are arrays
    leaves = jax.tree.leaves(m)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)


@pytest.mark.parametrize("name", NAMES)
def test_symmetries(name):
    model = make_model(name)
    n = 14
    pos = helix(n, seed=1)
    b = single_frame_batch(pos, topo(n), CUTOFF).to_device()
    E0, e0, F0 = jit_energy_forces(model, b)
    assert np.all(np.isfinite(np.asarray(F0))) and float(jnp.abs(F0).max()) > 0
    scale_e = float(jnp.abs(E0).max()) + 1e-3
    scale_f = float(jnp.abs(F0).max())
    # rotations (proper) and reflections: invariant energy, equivariant forces; plus a translation
    for seed, proper in [(0, True), (1, True), (2, False)]:
        q = random_orthogonal(seed, proper)
        shift = np.array([3.0, -7.0, 11.0], np.float32)
        E1, e1, F1 = jit_energy_forces(model, b.with_positions(jnp.asarray(pos @ q.T + shift)))
        np.testing.assert_allclose(E1, E0, atol=2e-5 * scale_e, rtol=2e-5)
        np.testing.assert_allclose(e1, e0, atol=2e-5 * scale_e, rtol=2e-5)
        np.testing.assert_allclose(F1, np.asarray(F0) @ q.T, atol=2e-5 * scale_f, rtol=1e-4)
    # bead permutations
    perm = np.random.default_rng(3).permutation(n)
    bp = permute(single_frame_batch(pos, topo(n), CUTOFF), perm).to_device()
    E2, e2, F2 = jit_energy_forces(model, bp)
    np.testing.assert_allclose(E2, E0, atol=2e-5 * scale_e, rtol=2e-5)
    np.testing.assert_allclose(e2, np.asarray(e0)[perm], atol=2e-5 * scale_e, rtol=2e-5)
    np.testing.assert_allclose(F2, np.asarray(F0)[perm], atol=2e-5 * scale_f, rtol=1e-4)


def painn_reference(model: PaiNN, pos: np.ndarray, species: np.ndarray, drop_vv: bool = False) -> np.ndarray:
    """Per-bead energies of PaiNN written from the paper's equations, in float64 NumPy, on the dense
    all-pairs neighbourhood r_ij < cutoff, with the model's parameters (`drop_vv` leaves out the
    v_j ∘ φ_vv W_vv term everywhere, to show that the comparison sees it)."""
    p = lambda a: np.asarray(a, np.float64)  # noqa: E731

    def mlp(m, x):
        for i, layer in enumerate(m.layers):
            x = x @ p(layer.weight) + (0.0 if layer.bias is None else p(layer.bias))
            if i < len(m.layers) - 1:
                x = x * 0.5 * (1.0 + np.tanh(0.5 * x))  # silu, x·sigmoid(x)
        return x

    f, c, n = model.n_features, model.cutoff, len(pos)
    d = pos[None, :, :] - pos[:, None, :]  # d[i, j] = x_j - x_i
    r = np.linalg.norm(d, axis=-1)
    nb = (r < c) & ~np.eye(n, dtype=bool)
    k = np.arange(1, model.n_radial_basis + 1)
    safe = np.where(nb, r, 1.0)
    rbf = np.sqrt(2.0 / c) * np.sin(k * np.pi * safe[..., None] / c) / safe[..., None]
    fcut = np.where(nb, 0.5 * (np.cos(np.pi * safe / c) + 1.0), 0.0)[..., None]
    unit = d / safe[..., None]
    s, v = p(model.embedding.weight)[species], np.zeros((n, 3, f))
    for msg, upd in zip(model.messages, model.updates):
        w = (rbf @ p(msg.filter.weight) + p(msg.filter.bias)) * fcut  # (i, j, 3F), zero off the graph
        x = mlp(msg.phi, s)[None, :, :] * w
        s = s + x[..., :f].sum(1)
        dv = np.einsum("ijf,ijc->icf", x[..., 2 * f :], unit)
        if not drop_vv:
            dv = dv + np.einsum("ijf,jcf->icf", x[..., f : 2 * f], v)
        v = v + dv
        uv, vv = v @ p(upd.u.weight), v @ p(upd.v.weight)
        a = mlp(upd.mlp, np.concatenate([s, np.linalg.norm(vv, axis=1)], -1))
        v = v + a[:, None, :f] * uv
        s = s + a[:, f : 2 * f] * np.sum(uv * vv, axis=1) + a[:, 2 * f :]
    return mlp(model.readout, s)[:, 0]


def test_painn_is_the_published_equations():
    """PaiNN's per-bead energies equal a float64 transcription of the paper's message and update
    blocks on dense neighbourhoods (three layers, so the vector messages v_j ∘ φ_vv W_vv, which the
    model skips in the first block where v = 0, are exercised), paired and unpaired edges alike."""
    model = make_backbone("painn", N_SPECIES, CUTOFF, key=jax.random.PRNGKey(7), n_features=8, n_layers=3,
                          n_radial_basis=6)  # fmt: skip
    leaves, tdef = jax.tree.flatten(model)  # larger weights than at initialisation: large vector features
    keys = jax.random.split(jax.random.PRNGKey(8), len(leaves))
    model = jax.tree.unflatten(tdef, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    n = 12
    pos, t = helix(n, seed=2), topo(n, 2)
    ref = painn_reference(model, pos.astype(np.float64), t.species)
    scale = float(np.abs(ref).max())
    frame = frame_graph(pos, t, CUTOFF)
    cap = Capacity(*frame.sizes)
    for b in (pack([frame], cap), pack([frame], cap._replace(n_edge=cap.n_edge + 1))):
        e = eqx.filter_jit(lambda m, b: m.node_energies(b))(model, b.to_device())
        np.testing.assert_allclose(np.asarray(e)[:n], ref, rtol=1e-5, atol=1e-6 * scale)
    assert b.edges_paired is False and pack([frame], cap).edges_paired
    off = np.abs(painn_reference(model, pos.astype(np.float64), t.species, drop_vv=True) - ref).max()
    assert off > 100 * 1e-6 * scale, off / scale  # the vector messages are far above the tolerance


@pytest.mark.parametrize("name", NAMES)
def test_forces_match_finite_differences_float64(name):
    with jax.enable_x64(True):
        model = make_model(name)
        model = jax.tree.map(
            lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, model
        )
        n = 9
        b = single_frame_batch(helix(n, seed=4), topo(n, 4), CUTOFF).to_device()
        pos = jnp.asarray(b.positions, jnp.float64)
        b = b.with_positions(pos)

        @jax.jit
        def energy(p):
            return jnp.sum(model.node_energies(b.with_positions(p)))

        g = jax.jit(jax.grad(energy))(pos)
        assert g.dtype == jnp.float64
        h = 1e-4
        rng = np.random.default_rng(0)
        for i, k in zip(rng.integers(0, n, 8), rng.integers(0, 3, 8)):
            d = jnp.zeros_like(pos).at[i, k].set(h)
            fd = (energy(pos + d) - energy(pos - d)) / (2 * h)
            np.testing.assert_allclose(float(g[i, k]), float(fd), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_alone_vs_packed_and_padded(name):
    model = make_model(name)
    fa = frame_graph(helix(11, seed=5), topo(11, 5), CUTOFF)
    fb = frame_graph(helix(7, seed=6), topo(7, 6), CUTOFF)
    fc = frame_graph(helix(13, seed=7), topo(13, 7), CUTOFF)
    alone = pack([fa], fa.sizes).to_device()
    Ea, ea, Fa = jit_energy_forces(model, alone)
    sizes = [f.sizes for f in (fb, fa, fc)]
    cap = Capacity(*[sum(s[k] for s in sizes) + extra for k, extra in
                     zip(range(7), (9, 40, 2, 3, 3, 3, 5))])  # fmt: skip
    for frames, j, start in (([fb, fa, fc], 1, 7), ([fa], 0, 0)):
        packed = pack(frames, cap).to_device()
        E, e, F = jit_energy_forces(model, packed)
        sl = slice(start, start + 11)
        np.testing.assert_allclose(e[sl], ea, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(F[sl], Fa, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(E[j], Ea[0], atol=1e-5, rtol=1e-5)
        pad = ~np.asarray(packed.node_mask)
        assert pad.sum() >= 9
        assert np.all(np.asarray(e)[pad] == 0.0), "padded beads must get exactly zero energy"
        assert np.all(np.asarray(F)[pad] == 0.0), "padded beads must get exactly zero gradient"
        assert np.all(np.asarray(E)[len(frames):] == 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_traces_once_per_capacity_bucket(name):
    model = make_model(name)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=2)
    def step(model, batch):
        return energy_forces(model, batch)

    frames = [frame_graph(helix(n, seed=n), topo(n, n), CUTOFF) for n in (6, 9, 12, 8)]
    small = Capacity(24, 200, 3, 30, 30, 30, 60)
    big = Capacity(40, 400, 4, 60, 60, 60, 120)
    for cap, sel in ((small, [0, 1]), (small, [2, 3]), (big, [0, 1, 2]), (small, [3]),
                     (big, [3, 2, 1, 0])):  # fmt: skip
        step(model, pack([frames[i] for i in sel], cap).to_device())


@pytest.mark.parametrize("name", NAMES)
def test_receptive_field_is_n_layers_hops(name):
    """On a zigzag line with only nearest neighbours inside the cutoff, changing bead 0 changes the
    energies of beads 0..K and leaves bead K+1 onwards exactly unchanged (K = message passing layers)."""
    n, cutoff = 9, 5.0
    x = np.stack([3.5 * np.arange(n), 0.6 * (np.arange(n) % 2), np.zeros(n)], -1).astype(np.float32)
    t = topo(n, 8)
    model = make_model(name, cutoff=cutoff, n_layers=3, avg_num_neighbors=2.0)
    k = model.n_message_passing_layers
    assert k == 3
    b0 = single_frame_batch(x, t, cutoff).to_device()
    assert len(b0.senders) == 2 * (n - 1)  # a path graph
    x1 = x.copy()
    x1[0] += np.array([0.3, -0.4, 0.5], np.float32)
    b1 = single_frame_batch(x1, t, cutoff).to_device()
    assert len(b1.senders) == 2 * (n - 1)
    _, e0, _ = jit_energy_forces(model, b0)
    _, e1, _ = jit_energy_forces(model, b1)
    diff = np.abs(np.asarray(e1) - np.asarray(e0))
    assert np.all(diff[: k + 1] > 0.0), diff
    assert np.all(diff[k + 1 :] == 0.0), diff


def villin_batch(path, cutoff: float, n_frames: int = 2):
    from cameo_eqx.data.mdcath import MDCATHFile, cg_topology

    with MDCATHFile(path) as f:
        sel = f.beads()
        coords, forces = f.read(320, 0, [0, 100][:n_frames])
    ca = coords[:, sel.ca_index]
    t = cg_topology(sel, ca[0])
    frames = [frame_graph(c, t, cutoff, forces=fo[sel.ca_index]) for c, fo in zip(ca, forces)]
    sizes = [fr.sizes for fr in frames]
    cap = Capacity(*[sum(s[k] for s in sizes) + 5 for k in range(7)])
    return pack(frames, cap).to_device(), int(t.species.max()) + 1


@pytest.mark.parametrize("name", NAMES)
def test_parameter_gradients_finite_on_villin(name, villin_h5):
    batch, n_sp = villin_batch(villin_h5, 10.0)
    model = make_model(name, cutoff=10.0, n_species=20)
    assert n_sp <= 20

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def loss(model):
        _, _, f = energy_forces(model, batch)
        err = jnp.where(batch.node_mask[:, None], f - batch.forces, 0.0)
        return jnp.sum(err**2) / jnp.sum(batch.node_mask)

    value, grads = loss(model)
    assert np.isfinite(float(value))
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


@pytest.mark.parametrize("l_max", [1, 2, 3])
def test_mace_paths_are_sliced_from_their_own_block(l_max):
    """`_Layer.messages` scales path p by radial weight p as the columns `offsets[p] - offsets[paths.start]`
    of its input irrep's block: those columns must hold that path's Clebsch-Gordan coefficients, i.e. be
    nonzero only on one spherical-harmonic irrep l2 with |l1 - l2| <= l3 <= l1 + l2 and the right parity. An
    input irrep without paths (0o with l_max 1) gets an empty range."""
    from cameo_eqx.modules.mace import _block_paths, _conv_plan, _dim, _sh_irs

    in_irs = ((0, 1), (0, -1), (1, -1), (2, 1), (1, 1))
    sh = tuple(_sh_irs(l_max))
    blocks, path_irs = _conv_plan(in_irs, sh)
    ranges = _block_paths(in_irs, sh)
    offsets = np.concatenate([[0], np.cumsum([_dim(i) for i in path_irs])])
    sh_off = np.concatenate([[0], np.cumsum([_dim(i) for i in sh])])
    assert [p for r in ranges for p in r] == list(range(len(path_irs)))
    if l_max == 1:
        assert not ranges[1]
    for (l1, p1), blk, paths in zip(in_irs, blocks, ranges):
        assert blk.shape[-1] == sum(_dim(path_irs[p]) for p in paths)
        for p in paths:
            l3, p3 = path_irs[p]
            cols = blk[..., offsets[p] - offsets[paths.start] : offsets[p + 1] - offsets[paths.start]]
            rows = np.flatnonzero(np.abs(cols).sum(axis=(1, 2)) > 1e-9)
            (j,) = {int(np.searchsorted(sh_off, r, side="right") - 1) for r in rows}  # one l2 per path
            l2, p2 = sh[j]
            assert abs(l1 - l2) <= l3 <= l1 + l2 and p3 == p1 * p2
