"""ForceField: sums, per-term forces, filter specs, notebook `forces`, save/load, with a stand-in prior."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float

import cameo_eqx.modules as modules
from cameo_eqx.graph import Batch, Capacity, frame_graph, pack
from cameo_eqx.modules import AbstractEnergyModel, AbstractPrior, ForceField, load, make_backbone, save, trainable_filter
from cameo_eqx.modules.forcefield import load_config, register_prior
from cameo_eqx.topology import CGTopology

CUTOFF = 7.0
TINY = dict(n_layers=2, n_radial_basis=6, n_tensor_features=4, latent_dim=16, two_body_hidden=(16,),
            latent_hidden=(16,), edge_energy_hidden=(8,), embed_dim=8)  # fmt: skip


@register_prior
class StandInPrior(AbstractPrior):
    """Harmonic bonds 0.5 k (r - r0)² + soft repulsion eps (sigma/r)^4 on pairs; half to each bead."""

    k: Float[Array, ""]
    r0: Float[Array, ""]
    eps: Float[Array, ""]
    sigma: float = eqx.field(static=True)
    cutoff: ClassVar[None] = None
    n_message_passing_layers: ClassVar[int] = 1
    pair_min_sep: ClassVar[int] = 2

    def __init__(self, k=10.0, r0=3.8, eps=0.5, sigma=4.0):
        self.k, self.r0, self.eps = jnp.asarray(k), jnp.asarray(r0), jnp.asarray(eps)
        self.sigma = float(sigma)

    def to_config(self) -> dict:
        return {"sigma": self.sigma}

    @classmethod
    def from_config(cls, config: dict) -> "StandInPrior":
        return cls(sigma=config["sigma"])

    def _dist(self, pos, idx, mask):
        d = jnp.where(mask[:, None], pos[idx[:, 1]] - pos[idx[:, 0]], 1.0)
        return jnp.sqrt(jnp.sum(d * d, -1))

    def component_node_energies(self, batch: Batch) -> dict[str, Float[Array, " n_node"]]:
        n = batch.n_node
        r = self._dist(batch.positions, batch.bonds, batch.bond_mask)
        eb = jnp.where(batch.bond_mask, 0.5 * self.k * (r - self.r0) ** 2, 0.0)
        rp = self._dist(batch.positions, batch.pairs, batch.pair_mask)
        ep = jnp.where(batch.pair_mask, self.eps * (self.sigma / rp) ** 4, 0.0)

        def to_nodes(e, idx):
            return 0.5 * (jax.ops.segment_sum(e, idx[:, 0], n) + jax.ops.segment_sum(e, idx[:, 1], n))

        return {"bond": to_nodes(eb, batch.bonds), "repulsion": to_nodes(ep, batch.pairs)}

    def node_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        c = self.component_node_energies(batch)
        return jnp.where(batch.node_mask, c["bond"] + c["repulsion"], 0.0)

    def term_forces(self, batch: Batch) -> dict[str, Float[Array, "n_node 3"]]:
        out = {}
        for name in ("bond", "repulsion"):
            def total(pos, name=name):
                return jnp.sum(self.component_node_energies(batch.with_positions(pos))[name] * batch.node_mask)
            out[name] = jnp.where(batch.node_mask[:, None], -jax.grad(total)(batch.positions), 0.0)
        return out


class OpaquePrior(AbstractEnergyModel):
    """A prior with no components and no config (treated as one term; cannot be saved)."""

    k: Float[Array, ""]
    cutoff: ClassVar[None] = None
    n_message_passing_layers: ClassVar[int] = 1
    pair_min_sep: ClassVar[int] = 2

    def node_energies(self, batch):
        return jnp.where(batch.node_mask, self.k * jnp.sum(batch.positions**2, -1), 0.0)


def chain(n, seed=0):
    rng = np.random.default_rng(seed)
    pos = [np.zeros(3)]
    for _ in range(n - 1):
        for _ in range(100):
            d = rng.normal(size=3)
            p = pos[-1] + 3.8 * d / np.linalg.norm(d)
            if len(pos) < 2 or np.min(np.linalg.norm(np.asarray(pos[:-1]) - p, axis=1)) > 4.5:
                break
        pos.append(p)
    pos = np.asarray(pos)
    return pos - pos.mean(0)


def topo(n, species=None):
    species = np.arange(n) % 4 if species is None else species
    return CGTopology(resname=("ALA",) * n, resid=np.arange(n), chain=("A",) * n,
                      segment=np.zeros(n, np.int32), species=np.asarray(species, np.int32))  # fmt: skip


def packed(frames_pos, capacity=None):
    frames = [frame_graph(p, topo(len(p)), CUTOFF) for p in frames_pos]
    if capacity is None:
        sizes = [f.sizes for f in frames]
        capacity = Capacity(*(sum(s[k] for s in sizes) for k in range(7)))
    return pack(frames, capacity).to_device()


@pytest.fixture(scope="module")
def ff():
    bb = make_backbone("allegro", 4, CUTOFF, key=jax.random.PRNGKey(1), **TINY)
    return ForceField(bb, StandInPrior())


def test_energy_is_backbone_plus_prior(ff):
    b = packed([chain(12, 1), chain(9, 2)], Capacity(30, 400, 3, 30, 30, 30, 200))
    e = ff.energy(b)
    e_ml = ForceField(ff.backbone, None).energy(b)
    e_pr = ForceField(None, ff.prior, cutoff=CUTOFF).energy(b)
    np.testing.assert_allclose(e, e_ml + e_pr, rtol=1e-6, atol=1e-6)
    assert e.shape == (3,) and float(e[2]) == 0.0  # padded frame
    np.testing.assert_allclose(jnp.sum(ff.node_energies(b)), jnp.sum(e), rtol=1e-6, atol=1e-6)


def test_forces_and_term_forces(ff):
    b = packed([chain(12, 1), chain(9, 2)], Capacity(30, 400, 3, 30, 30, 30, 200))
    e, f = ff.energy_and_forces(b)
    terms = ff.term_forces(b)
    assert set(terms) == {"ml", "bond", "repulsion"}
    np.testing.assert_allclose(sum(terms.values()), f, atol=1e-5)
    assert np.all(np.asarray(f[21:]) == 0)
    for t in terms.values():
        assert np.all(np.asarray(t[21:]) == 0)
    # a prior with no components is one term
    ff2 = ForceField(ff.backbone, OpaquePrior(jnp.asarray(0.1)))
    t2 = ff2.term_forces(b)
    assert set(t2) == {"ml", "prior"}
    np.testing.assert_allclose(t2["prior"][:21], -0.2 * np.asarray(b.positions[:21]), rtol=1e-5)


def test_forces_convenience(ff):
    pos = chain(15, 3)
    t = topo(15)
    b = packed([pos])
    _, f_ref = eqx.filter_jit(ForceField.energy_and_forces)(ff, b)
    np.testing.assert_allclose(ff.forces(pos, t), f_ref, atol=1e-5)
    np.testing.assert_allclose(ff.forces(pos, t.species), f_ref, atol=1e-5)  # one chain by default
    np.testing.assert_allclose(ff.forces(pos, t.species, t), f_ref, atol=1e-5)
    # several frames at once equal one at a time
    pos2 = pos + np.random.default_rng(0).normal(scale=0.1, size=pos.shape)
    fs = ff.forces(np.stack([pos, pos2]), t)
    assert fs.shape == (2, 15, 3)
    np.testing.assert_allclose(fs[1], ff.forces(pos2, t), atol=1e-5)
    with pytest.raises(ValueError, match="species must have shape"):
        ff.forces(pos, t.species[:-1])
    with pytest.raises(ValueError, match="out of range"):
        ff.forces(pos, np.full(15, 7))


def test_trainable_filter(ff):
    b = packed([chain(10, 4)])

    def loss(params, static):
        m = eqx.combine(params, static)
        return jnp.sum(m.energy_and_forces(b)[1] ** 2)

    n_bb = len(jax.tree.leaves(eqx.filter(ff.backbone, eqx.is_inexact_array)))
    for tb, tp, n_expected in ((True, True, n_bb + 3), (False, True, 3), (True, False, n_bb)):
        spec = trainable_filter(ff, train_backbone=tb, train_prior=tp)
        params, static = eqx.partition(ff, spec)
        leaves = jax.tree.leaves(params)
        assert len(leaves) == n_expected
        grads = eqx.filter_jit(jax.grad(loss))(params, static)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert (params.prior is None) or not jax.tree.leaves(params.prior)


def test_save_load_round_trip(ff, tmp_path):
    # perturb every parameter so the round trip cannot pass by re-initialisation
    leaves, tdef = jax.tree.flatten(eqx.filter(ff, eqx.is_inexact_array))
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    ff2 = eqx.combine(jax.tree.unflatten(tdef, [x + 0.01 * jax.random.normal(k, x.shape)
                                                for x, k in zip(leaves, keys)]), ff)  # fmt: skip
    b = packed([chain(12, 1), chain(9, 2)])
    for model in (ff2, ForceField(ff2.backbone, None), ForceField(None, ff2.prior, cutoff=5.0)):
        path = save(tmp_path / "model.eqx", model, {"run": "test", "lr": 1e-3})
        loaded = load(path)
        assert loaded.cutoff == model.cutoff
        e_and_f = eqx.filter_jit(lambda m: (m.energy(b), m.energy_and_forces(b)[1]))  # one compile per model
        for got, want in zip(e_and_f(loaded), e_and_f(model)):
            np.testing.assert_array_equal(got, want)
    assert load_config(path)["config"] == {"run": "test", "lr": 1e-3}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers
    header = load_config(tmp_path / "model.eqx")
    assert header["model"]["prior"]["class"].endswith(":StandInPrior")


def test_save_load_errors(ff, tmp_path):
    with pytest.raises(ValueError, match="to_config"):
        save(tmp_path / "x.eqx", ForceField(ff.backbone, OpaquePrior(jnp.asarray(1.0))))
    bad = tmp_path / "bad.eqx"
    bad.write_bytes(b"not a model\n")
    with pytest.raises(ValueError, match="not a cameo_eqx force-field file"):
        load(bad)
    with pytest.raises(ValueError, match="neither"):
        ForceField(None, None)
    # a skeleton mismatch is named
    path = save(tmp_path / "m.eqx", ForceField(ff.backbone, None))
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\n")
    head = head.replace(b'"latent_dim": 16', b'"latent_dim": 12')
    path.write_bytes(head + b"\n" + body)
    with pytest.raises(ValueError, match="do not match"):
        load(path)


def test_backbone_registry_lazy():
    assert "allegro" in modules.BACKBONES
    for name, cls in modules.BACKBONES.items():
        assert "default" in modules.backbone_presets(cls), name


def test_forcefield_energy_uses_the_prior_fast_path_and_matches_autodiff():
    """`ForceField.energy` (what training, simulation and refinement differentiate) sums the parts'
    `energy`, so the real Prior's analytic-force VJP is used; it must agree with differentiating the
    per-bead energies, on a padded batch, for forces and for the parameter gradient of a force loss."""
    from cameo_eqx.graph import graph_sum
    from cameo_eqx.energy import energy_and_forces
    from cameo_eqx.priors.config import PriorConfig
    from cameo_eqx.priors.prior import Prior

    prior = Prior.from_prior_config(PriorConfig())
    backbone = make_backbone("allegro", 4, CUTOFF, key=jax.random.PRNGKey(1), **TINY)
    field = ForceField(backbone, prior, cutoff=CUTOFF)
    tight = packed([chain(12, 0), chain(9, 1)])
    batch = packed([chain(12, 0), chain(9, 1)], Capacity(*(2 * s for s in tight.capacity)))

    def slow(m, b):  # autodiff through the per-bead energies
        def total(pos):
            e = graph_sum(m.node_energies(b.with_positions(pos)), b)
            return jnp.sum(e), e

        g, e = jax.grad(total, has_aux=True)(b.positions)
        return e, jnp.where(b.node_mask[:, None], -g, 0.0)

    jaxpr = str(jax.make_jaxpr(lambda p: field.energy(batch.with_positions(p)))(batch.positions))
    assert "custom_vjp" in jaxpr  # the prior's analytic-force path, not autodiff of node energies
    e_fast, f_fast = eqx.filter_jit(energy_and_forces)(field, batch)  # jitted: one compile, not one per op
    e_slow, f_slow = eqx.filter_jit(slow)(field, batch)
    np.testing.assert_allclose(e_fast, e_slow, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(f_fast, f_slow, rtol=1e-4, atol=1e-3)
    assert float(jnp.max(jnp.abs(f_fast))) > 1.0  # the check is not vacuous

    def loss(m, pred):
        return jnp.sum(pred(m, batch)[1] ** 2)

    g_fast = eqx.filter_jit(eqx.filter_grad(lambda m: loss(m, energy_and_forces)))(field)
    g_slow = eqx.filter_jit(eqx.filter_grad(lambda m: loss(m, slow)))(field)
    for a, b in zip(jax.tree.leaves(g_fast.prior), jax.tree.leaves(g_slow.prior)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-3 * float(jnp.max(jnp.abs(b))) + 1e-6)


@pytest.mark.parametrize("name", ["painn", "mace", "allegro"])
def test_paired_edges_give_the_per_edge_results_with_fewer_flops(name):
    """On a paired batch (`Batch.edges_paired`) the backbones compute the pair geometry, radial
    terms and spherical harmonics once per pair: energies and forces equal those of the per-edge
    path on the same graph in the frames' own edge order (an odd edge capacity, which cannot be
    paired), padding included, and XLA counts fewer FLOPs."""
    if name == "allegro":
        bb = make_backbone(name, 4, CUTOFF, key=jax.random.PRNGKey(3), **TINY)
    else:
        bb = make_backbone(name, 4, CUTOFF, "small", key=jax.random.PRNGKey(3))
    frames = [frame_graph(p, topo(len(p)), CUTOFF) for p in (chain(14, 1), chain(9, 2))]
    sizes = [f.sizes for f in frames]
    cap = Capacity(*(sum(s[k] for s in sizes) + 4 for k in range(7)))
    cap = cap._replace(n_edge=cap.n_edge + cap.n_edge % 2 + 10)
    paired = pack(frames, cap).to_device()
    plain = pack(frames, cap._replace(n_edge=cap.n_edge + 1)).to_device()
    assert paired.edges_paired and not plain.edges_paired

    def e_and_f(b):
        e, vjp = jax.vjp(lambda x: bb.node_energies(b.with_positions(x)), b.positions)
        return e, -vjp(jnp.ones_like(e))[0]

    compiled = [jax.jit(e_and_f).lower(b).compile() for b in (paired, plain)]  # one compile each
    (e1, f1), (e0, f0) = compiled[0](paired), compiled[1](plain)
    np.testing.assert_allclose(np.asarray(e1), np.asarray(e0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(f1), np.asarray(f0), rtol=1e-4, atol=1e-5 * float(jnp.abs(f0).max()))
    assert float(jnp.abs(f0).max()) > 0

    def flops(c):
        c = c.cost_analysis()
        return float((c[0] if isinstance(c, (list, tuple)) else c)["flops"])

    ratio = flops(compiled[0]) / flops(compiled[1])
    assert ratio < (0.995 if name == "allegro" else 0.9), ratio
