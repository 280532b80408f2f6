"""Langevin dynamics: sampling of a known distribution, energy conservation, the neighbour list (overflow
and rebuild), the training-layout batch, the blow-up guard, the HDF5 output and resume, villin with a
prior-only model."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cameo_eqx.data.store import PreparedDataset
from cameo_eqx.energy import AbstractEnergyModel
from cameo_eqx.graph import check_paired, single_frame_batch
from cameo_eqx.simulate import BlowUpError, SimulateConfig, Simulator, simulate, system_batch
from cameo_eqx.simulate import neighborlist as nbl
from cameo_eqx.topology import CGTopology
from cameo_eqx.units import KB_KCAL_PER_MOL_K

STD = dict(temperature=320.0, timestep_fs=2.0, friction_per_ps=1.0)
"""Shared bath settings: tests with the same statics and chunk shape reuse one compiled chunk."""


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def villin_prior(villin_prepared, tmp_path_factory):
    """A physically sensible prior-only model: the full Boltzmann-inverted prior (all weights 1)."""
    from cameo_eqx.priors.config import FitPriorsConfig, PriorConfig
    from cameo_eqx.priors.fit import fit_prior

    with PreparedDataset(villin_prepared) as ds:
        prior, _ = fit_prior(ds, FitPriorsConfig(prior=PriorConfig(weight_bond=1.0, weight_angle=1.0,
                                                                   weight_dihedral=1.0)))  # fmt: skip
    path = prior.save(tmp_path_factory.mktemp("prior") / "prior.yaml")
    return prior, path


@pytest.fixture(scope="module")
def villin(villin_prepared):
    with PreparedDataset(villin_prepared) as ds:
        rec = ds.record("villin").load()
    return rec


class Harmonic(AbstractEnergyModel):
    """U = Σ_i ½ k |x_i|² (each bead in its own well)."""

    k: float = eqx.field(static=True)
    cutoff: ClassVar[None] = None
    n_message_passing_layers: ClassVar[int] = 1
    pair_min_sep: ClassVar[int] = 2

    def node_energies(self, batch):
        return jnp.where(batch.node_mask, 0.5 * self.k * jnp.sum(batch.positions**2, axis=-1), 0.0)


class NaNAfter(AbstractEnergyModel):
    """Harmonic, but NaN once a bead leaves a ball of radius `r` (to trip the guard)."""

    r: float = eqx.field(static=True)
    cutoff: ClassVar[None] = None
    n_message_passing_layers: ClassVar[int] = 1
    pair_min_sep: ClassVar[int] = 2

    def node_energies(self, batch):
        d2 = jnp.sum(batch.positions**2, axis=-1)
        return jnp.where(d2 < self.r**2, 0.5 * d2, jnp.nan)


def free_beads(n: int) -> CGTopology:
    """n beads in n chain segments: no bonded terms."""
    return CGTopology(resname=("ALA",) * n, resid=np.arange(n) * 10, chain=("A",) * n,
                      segment=np.arange(n, dtype=np.int32), species=np.zeros(n, np.int32))  # fmt: skip


# ------------------------------------------------------------------------------------- integrator


def test_harmonic_oscillator_samples_boltzmann():
    """<x²> = kT/k per coordinate and <½ m v²> = ½ kT within statistical error (per-replica spread)."""
    k, m, temp = 10.0, 10.0, 300.0
    n, reps = 8, 32
    sim = Simulator(Harmonic(k), free_beads(n), temperature=temp, timestep_fs=5.0, friction_per_ps=10.0,
                    masses="uniform", uniform_mass=m, cutoff=3.0, skin=1.0)  # fmt: skip
    st = sim.init(np.zeros((n, 3)), n_replicas=reps, seed=1)
    res = sim.run(st, 600, 10, chunk_frames=300)
    assert res.blowup is None
    x = res.frames.positions[100:]  # (T, R, n, 3); 5 ps discarded
    kt = KB_KCAL_PER_MOL_K * temp
    per_rep_var = np.mean(x**2, axis=(0, 2, 3)) / (kt / k)  # one estimate per replica
    se = per_rep_var.std(ddof=1) / np.sqrt(reps)
    assert abs(per_rep_var.mean() - 1.0) < 4 * se + 0.005, (per_rep_var.mean(), se)
    t = res.frames.temperature[100:].mean(axis=0) / temp
    se_t = t.std(ddof=1) / np.sqrt(reps)
    assert abs(t.mean() - 1.0) < 4 * se_t + 0.005, (t.mean(), se_t)  # BAOAB kinetic bias O((ωΔt)²) ≈ 0.3 %
    assert se < 0.02 and se_t < 0.02  # the test has the power to see a 5-10 % error


def test_harmonic_variance_wrong_temperature_is_detected():
    """The statistics above can fail: sampling at 330 K is > 4 SE away from kT/k at 300 K."""
    k, temp = 10.0, 330.0
    sim = Simulator(Harmonic(k), free_beads(8), temperature=temp, timestep_fs=5.0, friction_per_ps=10.0,
                    masses="uniform", uniform_mass=10.0, cutoff=3.0, skin=1.0)  # fmt: skip
    res = sim.run(sim.init(np.zeros((8, 3)), n_replicas=32, seed=2), 600, 10, chunk_frames=300)
    v = np.mean(res.frames.positions[100:] ** 2, axis=(0, 2, 3)) / (KB_KCAL_PER_MOL_K * 300.0 / k)
    assert abs(v.mean() - 1.0) > 4 * v.std(ddof=1) / np.sqrt(32) + 0.005


def test_energy_conserved_without_friction(villin, villin_prior):
    """γ = 0 is velocity Verlet: on villin (prior only, neighbour-list rebuilds included) the total
    energy fluctuates far less than the potential energy and does not drift."""
    prior, _ = villin_prior
    sim = Simulator(prior, villin.topology, **{**STD, "friction_per_ps": 0.0})
    res = sim.run(sim.init(villin.positions[0], n_replicas=2, seed=3), 100, 10, chunk_frames=5)
    assert int(res.state.nbrs.n_builds.max()) > 1
    etot = res.frames.potential.astype(np.float64) + res.frames.kinetic
    assert etot.std(axis=0).max() < 0.02 * res.frames.potential.std(axis=0).min()
    assert np.abs(etot[-1] - etot[0]).max() < 0.1  # kcal/mol over 2 ps (float32 energies of ~3e4)


def test_verlet_energy_error_is_second_order():
    """Zero friction on the harmonic oscillator: the total-energy fluctuation shrinks as Δt²."""

    def fluct(dt):
        sim = Simulator(Harmonic(10.0), free_beads(4), temperature=300.0, timestep_fs=dt, friction_per_ps=0.0,
                        masses="uniform", uniform_mass=10.0, cutoff=3.0)  # fmt: skip
        res = sim.run(sim.init(np.zeros((4, 3)), n_replicas=4, seed=4), 100, int(40 / dt), chunk_frames=100)
        etot = res.frames.potential.astype(np.float64) + res.frames.kinetic
        return etot.std(axis=0).mean() / res.frames.potential.std(axis=0).mean()

    f8, f4 = fluct(8.0), fluct(4.0)
    assert f8 < 0.1
    assert 3.0 < f8 / f4 < 5.0, (f8, f4)


# ------------------------------------------------------------------------------ neighbour list


def test_neighbor_list_overflow_flag_and_growth():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 8, (30, 3)), jnp.float32)
    need = len(nbl.brute_force_pairs(np.asarray(x), 5.0 + 1.0))
    small = nbl.build(x, 5.0, 1.0, capacity=need - 1)
    assert bool(small.overflow) and int(small.count) == need
    ok = nbl.build(x, 5.0, 1.0, capacity=nbl.grow_capacity(int(small.count)))
    assert not bool(ok.overflow)
    s, r, mask, d = nbl.edges(ok, x)
    got = set(zip(np.asarray(s)[np.asarray(mask)].tolist(), np.asarray(r)[np.asarray(mask)].tolist()))
    assert got == nbl.brute_force_pairs(np.asarray(x), 5.0)
    # padding: out-of-range index n at the end, zero distance
    k = int(mask.sum())
    assert np.all(np.asarray(s)[k:] == 30) and np.all(np.asarray(d)[k:] == 0) and np.all(np.asarray(mask)[:k])


def test_neighbor_list_stays_exact_while_beads_move(villin, villin_prior):
    """After many steps (rebuilds by skin), the per-step edges equal a brute-force radius graph."""
    prior, _ = villin_prior
    sim = Simulator(prior, villin.topology, **STD)
    res = sim.run(sim.init(villin.positions[0], n_replicas=2), 20, 10, chunk_frames=5)
    st = res.state
    assert int(st.nbrs.n_builds.max()) > 1  # it did rebuild
    for rep in range(2):
        nl = jax.tree.map(lambda a: a[rep], st.nbrs)
        s, r, mask, _ = nbl.edges(nl, st.positions[rep])
        m = np.asarray(mask)
        got = set(zip(np.asarray(s)[m].tolist(), np.asarray(r)[m].tolist()))
        assert got == nbl.brute_force_pairs(np.asarray(st.positions[rep]), sim.system.cutoff)


def test_overflow_is_detected_and_rebuilt_with_same_forces(villin, villin_prior):
    """Start with far too few slots: the run detects the overflow, grows the list, redoes the chunk and
    ends with exactly the trajectory of a run with enough room; its forces equal those on a host-built
    (matscipy) graph."""
    prior, _ = villin_prior
    x0 = villin.positions[0]
    tiny = Simulator(prior, villin.topology, capacity=32, **STD)
    res_tiny = tiny.run(tiny.init(x0, n_replicas=2, seed=5), 5, 10, chunk_frames=5)
    assert res_tiny.n_rebuilds_for_overflow == 1 and tiny.capacity > 32
    assert not bool(res_tiny.state.nbrs.overflow.any())
    big = Simulator(prior, villin.topology, **STD)  # sized from the start structure
    assert big.init(x0).nbrs.capacity == tiny.capacity  # the same sizing rule: one compiled chunk
    res_big = big.run(big.init(x0, n_replicas=2, seed=5), 5, 10, chunk_frames=5)
    np.testing.assert_array_equal(res_tiny.frames.positions, res_big.frames.positions)
    # forces of the final state against the host graph builder
    xf = np.asarray(res_tiny.state.positions[0])
    _, f_ref = prior.energy_and_forces(single_frame_batch(xf, villin.topology, 10.0).to_device())
    np.testing.assert_allclose(np.asarray(res_tiny.state.forces[0]), np.asarray(f_ref), atol=2e-3, rtol=1e-4)


def test_edge_slots_counted_and_overflow_flagged():
    """The radius graph has its own slots: a build with fewer slots than pairs within the cutoff sets
    the overflow flag and records the count; `update` recounts at every step."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(0, 8, (30, 3)), jnp.float32)
    n_edges = len(nbl.brute_force_pairs(np.asarray(x), 5.0))
    cap = nbl.grow_capacity(len(nbl.brute_force_pairs(np.asarray(x), 6.0)))
    full = nbl.build(x, 5.0, 1.0, cap)
    assert full.edge_slots == cap and int(full.max_edges) == n_edges and not bool(full.overflow)
    tight = nbl.build(x, 5.0, 1.0, cap, edge_capacity=n_edges)
    assert tight.edge_slots == n_edges < cap and not bool(tight.overflow)
    s, r, mask, _ = nbl.edges(tight, x)
    assert s.shape == (n_edges,) and bool(mask.all())
    short = nbl.build(x, 5.0, 1.0, cap, edge_capacity=n_edges - 2)
    assert bool(short.overflow) and int(short.max_edges) == n_edges
    # squeeze the structure: more pairs within the cutoff, no rebuild needed yet, still counted
    nl = jax.tree.map(lambda a: a[None], tight)
    y = x[None] * 0.97  # beads move < skin / 2
    more = len(nbl.brute_force_pairs(np.asarray(y[0]), 5.0))
    assert more > n_edges
    upd = nbl.update(nl, y)
    assert int(upd.n_builds[0]) == 1  # not rebuilt: counted on the step itself
    assert int(upd.max_edges[0]) == more and bool(upd.overflow[0])


def test_model_graph_sized_by_cutoff_and_grown_on_overflow(villin, villin_prior):
    """The model's graph has slots for the pairs within the cutoff (not the cutoff + skin candidates);
    a run that starts with too few redoes the chunk with more and ends as a run with enough room."""
    prior, _ = villin_prior
    x0 = villin.positions[0]
    sim = Simulator(prior, villin.topology, **STD)
    st = sim.init(x0, n_replicas=2, seed=5)
    n_edges = len(nbl.brute_force_pairs(np.asarray(x0), sim.system.cutoff))
    assert sim.edge_capacity == nbl.grow_capacity(n_edges, factor=1.25)
    assert n_edges <= st.nbrs.edge_slots < st.nbrs.capacity
    res = sim.run(st, 5, 10, chunk_frames=5)
    assert res.n_rebuilds_for_overflow == 0
    tiny = Simulator(prior, villin.topology, edge_capacity=32, **STD)
    res_tiny = tiny.run(tiny.init(x0, n_replicas=2, seed=5), 5, 10, chunk_frames=5)
    assert res_tiny.n_rebuilds_for_overflow == 1 and tiny.edge_capacity >= n_edges
    assert not bool(res_tiny.state.nbrs.overflow.any())
    # only the amount of padding differs between the two runs
    np.testing.assert_allclose(np.asarray(res_tiny.frames.positions), np.asarray(res.frames.positions),
                               atol=1e-4)  # fmt: skip


def test_system_batch_has_training_layout(villin, villin_prior):
    """Edges, bonded terms and non-bonded pairs (with pair_sep) equal those of the host packer; so do
    the energy and forces the integrator carries."""
    prior, _ = villin_prior
    sim = Simulator(prior, villin.topology, **STD)
    st = sim.run(sim.init(villin.positions[0], n_replicas=2, seed=7), 5, 10, chunk_frames=5).state
    x = np.asarray(st.positions[0])
    nl = jax.tree.map(lambda a: a[0], st.nbrs)
    b = system_batch(sim.system, jnp.asarray(x), nl)
    ref = single_frame_batch(x, villin.topology, 10.0)
    assert b.edges_paired and ref.edges_paired  # both in the paired layout, which check_paired verifies
    check_paired(b)
    np.testing.assert_array_equal(np.asarray(b.edge_mask).sum(), np.asarray(ref.edge_mask).sum())

    def edge_set(bb):
        m = np.asarray(bb.edge_mask)
        return set(zip(np.asarray(bb.senders)[m].tolist(), np.asarray(bb.receivers)[m].tolist()))

    def pair_dict(bb):
        m = np.asarray(bb.pair_mask)
        return dict(zip(map(tuple, np.asarray(bb.pairs)[m].tolist()), np.asarray(bb.pair_sep)[m].tolist()))

    assert edge_set(b) == edge_set(ref)
    assert pair_dict(b) == pair_dict(ref)
    for f in ("bonds", "angles", "dihedrals", "species"):
        np.testing.assert_array_equal(np.asarray(getattr(b, f)), np.asarray(getattr(ref, f)))
    n = x.shape[0]
    pm = np.asarray(b.pair_mask)
    assert np.all(np.asarray(b.pairs)[~pm] == n)  # padding indices out of range
    e_ref, f_ref = prior.energy_and_forces(ref.to_device())
    np.testing.assert_allclose(np.asarray(st.potential[0]), np.asarray(e_ref[0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(st.forces[0]), np.asarray(f_ref), atol=1e-3, rtol=1e-4)


# ---------------------------------------------------------------------------------------- guard


def test_guard_stops_on_stretched_bond(villin, villin_prior):
    prior, _ = villin_prior
    sim = Simulator(prior, villin.topology, **{**STD, "max_bond_length": 3.0})  # bonds are ~3.8 Å
    res = sim.run(sim.init(villin.positions[0]), 5, 10, chunk_frames=5)
    assert res.blowup is not None and "bond longer" in res.blowup and "step 1 " in res.blowup
    assert len(res.frames.step) == 0


def test_guard_stops_on_nan_and_keeps_earlier_frames():
    sim = Simulator(NaNAfter(1.5), free_beads(4), temperature=3000.0, friction_per_ps=0.0,
                    masses="uniform", uniform_mass=10.0, cutoff=3.0)  # fmt: skip
    x0 = np.asarray([[0.0, 0, 0], [1.4, 0, 0], [0, 1.4, 0], [0, 0, 1.4]])
    res = sim.run(sim.init(x0, seed=0), 50, 5, chunk_frames=10)
    assert res.blowup is not None and "non-finite" in res.blowup
    first = int(res.blowup.split("at step ")[1].split()[0])
    assert np.all(res.frames.step < first)
    assert np.all(np.isfinite(res.frames.positions))


# ------------------------------------------------------------------------------------ files, resume


def _cfg(villin_prepared, prior_path, out, **kw) -> SimulateConfig:
    base = dict(model=prior_path, dataset=villin_prepared, protein="villin", frame=0, output=out,
                n_replicas=2, temperature=320.0, n_steps=200, save_every=10, chunk_frames=5, progress=False)
    base.update(kw)
    return SimulateConfig(**base)


def test_simulate_writes_hdf5_and_resumes_exactly(villin_prepared, villin_prior, tmp_path):
    _, prior_path = villin_prior
    straight = simulate(_cfg(villin_prepared, prior_path, tmp_path / "a"))
    with h5py.File(straight) as h:
        assert h.attrs["status"] == "done" and h.attrs["protein"] == "villin"
        assert h["positions"].shape == (21, 2, 35, 3)
        np.testing.assert_array_equal(h["step"][()], np.arange(21) * 10)
        np.testing.assert_allclose(h["time_ps"][-1], 0.4)
        pos_a = h["positions"][()]
        np.testing.assert_array_equal(pos_a[0, 0], h["start_positions"][()])
        assert np.all(np.isfinite(h["potential_energy"][()]))
    # the first half, then the same command with more steps continues from the checkpoint
    simulate(_cfg(villin_prepared, prior_path, tmp_path / "b", n_steps=100))
    resumed = simulate(_cfg(villin_prepared, prior_path, tmp_path / "b"))
    with h5py.File(resumed) as h:
        assert h["positions"].shape == pos_a.shape
        np.testing.assert_allclose(h["positions"][()], pos_a, atol=1e-5)
    # a finished run is a no-op; a changed physics config is refused by name
    simulate(_cfg(villin_prepared, prior_path, tmp_path / "b"))
    with pytest.raises(ValueError, match="temperature"):
        simulate(_cfg(villin_prepared, prior_path, tmp_path / "b", temperature=350.0))


def test_simulate_reports_blowup_with_step_and_reason(villin_prepared, villin_prior, tmp_path):
    _, prior_path = villin_prior
    with pytest.raises(BlowUpError, match="bond longer than max_bond_length"):
        simulate(_cfg(villin_prepared, prior_path, tmp_path / "c", max_bond_length=3.0))
    with h5py.File(tmp_path / "c" / "trajectory.h5") as h:
        assert h.attrs["status"] == "blown_up" and "step 1 " in h.attrs["message"]
        assert h["positions"].shape[0] == 1  # only the start frame


def test_simulate_bad_input_is_named(villin_prepared, villin_prior, tmp_path):
    _, prior_path = villin_prior
    with pytest.raises(IndexError, match="frame 9999"):
        simulate(_cfg(villin_prepared, prior_path, tmp_path / "d", frame=9999))
    with pytest.raises(KeyError, match="nope"):
        simulate(_cfg(villin_prepared, prior_path, tmp_path / "d", protein="nope"))
    with pytest.raises(ValueError, match="multiple of save_every"):
        simulate(_cfg(villin_prepared, prior_path, tmp_path / "d", n_steps=201))
    with pytest.raises(FileNotFoundError, match="no model"):
        simulate(_cfg(villin_prepared, tmp_path / "missing.eqx", tmp_path / "d"))


# ------------------------------------------------------------------------------------------ villin


def _villin_run(prior, rec, n_steps, save_every=10, chunk_frames=5):
    sim = Simulator(prior, rec.topology, **STD)
    res = sim.run(sim.init(rec.positions[0], n_replicas=2, seed=11), n_steps // save_every, save_every,
                  chunk_frames=chunk_frames)
    return sim, res


def test_villin_prior_only_6ps_is_stable(villin, villin_prior):
    prior, _ = villin_prior
    sim, res = _villin_run(prior, villin, 3000)
    assert res.blowup is None
    assert abs(res.frames.temperature[len(res.frames.step) // 2:].mean() - 320.0) < 25.0
    bonds = villin.topology.bonds
    d = np.linalg.norm(res.frames.positions[:, :, bonds[:, 1]] - res.frames.positions[:, :, bonds[:, 0]], axis=-1)
    assert 3.4 < d.min() and d.max() < 4.4  # CA-CA bonds stay physical


@pytest.mark.slow
def test_villin_prior_only_100ps_without_blowup(villin, villin_prior):
    """100 ps at 320 K (2 replicas): no blow-up, physical bonds, no bead overlaps, temperature kept."""
    prior, _ = villin_prior
    sim, res = _villin_run(prior, villin, 50_000, save_every=500, chunk_frames=20)
    assert res.blowup is None
    x = res.frames.positions
    bonds = villin.topology.bonds
    d = np.linalg.norm(x[:, :, bonds[:, 1]] - x[:, :, bonds[:, 0]], axis=-1)
    assert 3.3 < d.min() and d.max() < 4.5
    dd = np.linalg.norm(x[:, :, :, None] - x[:, :, None], axis=-1)
    iu = np.triu_indices(x.shape[2], 2)
    assert dd[:, :, iu[0], iu[1]].min() > 3.0  # repulsion keeps non-bonded beads apart
    assert abs(res.frames.temperature[20:].mean() - 320.0) < 10.0
