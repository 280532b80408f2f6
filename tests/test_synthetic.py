"""The teacher potential, the synthesize command and the ground-truth check (issue: ground truth)."""

from __future__ import annotations

import json

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from cameo_eqx.data.testdata import compact_chain
from cameo_eqx.graph import Capacity, frame_graph, pack
from cameo_eqx.energy import energy_and_forces
from cameo_eqx.synthetic.generate import (
    SynthesizeConfig,
    chain_topology,
    extended_chain,
    integrated_autocorrelation_time,
    model_forces,
    random_sequence,
    synthesize,
)
from cameo_eqx.priors.teacher import TeacherPotential, hydropathy01

SEQ = "KILVAFLIEGK"


def _batch(x, topo, pad: int = 0, cap: Capacity | None = None):
    fg = frame_graph(np.asarray(x, np.float32), topo, 10.0)
    c = fg.sizes
    if cap is None:
        cap = Capacity(c.n_node + pad, c.n_edge + 7 * pad, 1 + (pad > 0), c.n_bond + pad, c.n_angle + pad,
                       c.n_dih + pad, c.n_pair + 3 * pad)  # fmt: skip
    return pack([fg], cap).to_device()


def _all_pairs(n: int) -> Capacity:
    """A capacity that holds any frame of an n-bead chain (one compile for all)."""
    return Capacity(n, n * (n - 1), 1, n - 1, n - 2, n - 3, n * (n - 1) // 2)


_energy = eqx.filter_jit(lambda model, batch: model.energy(batch))
_energy_and_forces = eqx.filter_jit(energy_and_forces)


@pytest.fixture(scope="module")
def system():
    rng = np.random.default_rng(0)
    topo = chain_topology(random_sequence(14, rng))
    return TeacherPotential.default(), topo, compact_chain(14, rng)


def test_forces_are_minus_the_gradient(system):
    teacher, topo, x = system
    cap = _all_pairs(len(x))
    _, f = _energy_and_forces(teacher, _batch(x, topo, cap=cap))
    rng = np.random.default_rng(1)
    h = 1e-2
    for _ in range(6):
        i, k = int(rng.integers(len(x))), int(rng.integers(3))
        xp, xm = x.copy(), x.copy()
        xp[i, k] += h
        xm[i, k] -= h
        # positions only move a little: same graph, the energy difference is the directional derivative
        ep = float(_energy(teacher, _batch(xp, topo, cap=cap))[0])
        em = float(_energy(teacher, _batch(xm, topo, cap=cap))[0])
        assert float(f[i, k]) == pytest.approx(-(ep - em) / (2 * h), rel=2e-2, abs=2e-2)


def test_energy_is_invariant_and_node_energies_sum_to_it(system):
    teacher, topo, x = system
    cap = _all_pairs(len(x))
    e0, f0 = _energy_and_forces(teacher, _batch(x, topo, cap=cap))
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    q = q * np.sign(np.linalg.det(q))
    e1, f1 = _energy_and_forces(teacher, _batch(x @ q.T + np.array([3.0, -7.0, 1.5]), topo, cap=cap))
    assert float(e1[0]) == pytest.approx(float(e0[0]), abs=1e-3)
    np.testing.assert_allclose(np.asarray(f1), np.asarray(f0) @ q.T, atol=2e-3)
    b = _batch(x, topo)
    assert float(jnp.sum(teacher.node_energies(b))) == pytest.approx(float(teacher.energy(b)[0]), abs=1e-2)
    parts = teacher.components(b)
    assert sum(float(v[0]) for v in parts.values()) == pytest.approx(float(e0[0]), abs=1e-2)
    assert float(parts["contact"][0]) < 0 and float(parts["burial"][0]) != 0


def test_padding_changes_nothing(system):
    teacher, topo, x = system
    e0, f0 = _energy_and_forces(teacher, _batch(x, topo))
    b = _batch(x, topo, pad=9)
    e1, f1 = _energy_and_forces(teacher, b)
    assert float(e1[0]) == pytest.approx(float(e0[0]), abs=1e-4)
    assert float(e1[1]) == 0.0
    np.testing.assert_allclose(np.asarray(f1)[: len(x)], np.asarray(f0), atol=1e-5)
    assert np.all(np.asarray(f1)[len(x) :] == 0)
    assert np.all(np.asarray(teacher.node_energies(b))[len(x) :] == 0)


_burial = eqx.filter_jit(lambda model, batch: jnp.sum(model.burial_energies(batch)))


def test_burial_is_many_body():
    """Three buried beads: the burial energy is not a sum of pair terms (its third-order inclusion-
    exclusion term is far from zero), unlike any pairwise prior."""
    teacher = TeacherPotential.default(burial_half=1.5, burial_steep=0.3)
    topo = chain_topology(["ILE"] * 4)
    far = np.array([[0.0, 0.0, 0.0], [30.0, 0, 0], [0, 30.0, 0], [0, 0, 30.0]])
    near = np.array([[0.0, 0.0, 0.0], [5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])

    def burial(active):
        x = far.copy()
        x[active] = near[active]
        return float(_burial(teacher, _batch(x, topo, cap=_all_pairs(4))))

    e = {s: burial(list(s)) for s in [(0,), (0, 1), (0, 2), (0, 3), (0, 1, 2), (0, 1, 3), (0, 2, 3), (0, 1, 2, 3)]}
    third = e[(0, 1, 2, 3)] - e[(0, 1, 2)] - e[(0, 1, 3)] - e[(0, 2, 3)] + e[(0, 1)] + e[(0, 2)] + e[(0, 3)] - e[(0,)]
    assert abs(third) > 0.5


def test_hydropathy_orders_contacts_and_save_load(tmp_path, system):
    h = hydropathy01()
    assert h.min() == 0.0 and h.max() == 1.0
    teacher, topo, x = system
    p = teacher.save(tmp_path / "teacher.json")
    again = TeacherPotential.load(p)
    b = _batch(x, topo)
    assert float(again.energy(b)[0]) == pytest.approx(float(teacher.energy(b)[0]), abs=1e-5)
    bad = json.loads(p.read_text())
    bad["format"] = "nope"
    with pytest.raises(ValueError, match="format"):
        TeacherPotential.from_config(bad)
    with pytest.raises(ValueError, match="unknown"):
        TeacherPotential.default(eps_nonsense=1.0)


def test_per_replica_temperatures_sample_their_own_bath():
    """BAOAB with one temperature per replica: each group's kinetic temperature is its own bath's."""
    from cameo_eqx.simulate.langevin import Simulator

    teacher = TeacherPotential.default()
    topo = chain_topology(["ALA"] * 6)
    x0 = extended_chain(6, np.random.default_rng(3))
    temps = np.repeat([250.0, 500.0], 16)
    sim = Simulator(teacher.local, topo, temperature=temps, timestep_fs=5.0, friction_per_ps=5.0)
    res = sim.run(sim.init(x0, n_replicas=len(temps), seed=1), 40, 50)
    t = res.frames.temperature[10:]
    assert t[:, :16].mean() == pytest.approx(250.0, rel=0.05)
    assert t[:, 16:].mean() == pytest.approx(500.0, rel=0.05)
    with pytest.raises(ValueError, match="replica temperatures"):
        sim.init(x0, n_replicas=3)


def test_autocorrelation_time_of_ar1():
    rng = np.random.default_rng(0)
    phi, n = 0.9, 20000
    x = np.zeros((n, 4))
    for t in range(1, n):
        x[t] = phi * x[t - 1] + rng.normal(size=4)
    tau = integrated_autocorrelation_time(x, 1.0)
    # exact: 0.5 + phi / (1 - phi) = 9.5; truncating at the first negative value loses a little
    assert 7.5 < tau < 10.5


def test_synthesize_writes_a_prepared_dataset_with_true_forces(tmp_path):
    from cameo_eqx.data.store import PreparedDataset

    cfg = SynthesizeConfig(output=tmp_path / "syn", sequences=("MKVLAGW",), n_random=1, min_length=7,
                           max_length=7, temperatures=(320.0, 450.0), n_replicas=2, frames=40, save_every_ps=0.2,
                           equilibrate_ps=1.0, noise_sigma=5.0, progress=False, seed=3)  # fmt: skip
    path = synthesize(cfg)
    from cameo_eqx.simulate.langevin import load_model

    teacher = load_model(tmp_path / "syn" / "teacher.json")  # what `simulate --model teacher.json` loads
    assert isinstance(teacher, TeacherPotential)
    with PreparedDataset(path) as ds:
        assert ds.names == ["rand000_7", "seq000_7"]
        assert json.loads(ds._h5.attrs["teacher"])["format"] == "cameo_eqx.teacher/1"
        for name in ds.names:
            rec = ds.record(name).load()
            assert rec.n_frames == 40
            assert sorted(set(rec.temperature.tolist())) == [320.0, 450.0]
            noise = rec.forces - rec.forces_true
            assert noise.std() == pytest.approx(5.0, rel=0.15) and abs(noise.mean()) < 0.6
            f, _ = model_forces(teacher, rec.topology, rec.positions[:5])
            np.testing.assert_allclose(f, rec.forces_true[:5], atol=1e-3)
            np.testing.assert_allclose(rec.true_forces(np.array([3, 1])), rec.forces_true[[3, 1]])
            stats = json.loads(rec.attrs["stats"])
            assert stats["noise_floor_true"] == 25.0 and stats["source"] == "teacher"
    with pytest.raises(ValueError, match="sequence"):
        SynthesizeConfig(sequences=("MKXB",))
    with pytest.raises(ValueError, match="frames"):
        SynthesizeConfig(frames=3)


def test_cli_lists_synthesize(capsys):
    import cli

    cli.main(["--help"])
    assert "synthesize" in capsys.readouterr().out


@pytest.mark.slow
def test_student_recovers_the_teacher_ensemble_where_the_prior_alone_cannot(tmp_path):
    """σ = 0 ground truth in miniature: an 11-bead hydrophobic sequence at 350 K, 3,200 teacher frames,
    a tiny PaiNN (~400 steps) on top of the Boltzmann-inverted prior. The prior alone (no attraction)
    swells the chain; the student must reproduce the teacher's Rg distribution far better. (In the slow
    tier: ~2 min on a quiet 2-core machine, several on a loaded one. With half the frames and ~90 steps
    the student stays swollen, Rg 6.9 Å: the check can fail.)"""
    from cameo_eqx.data.store import PreparedDataset
    from cameo_eqx.modules import load
    from cameo_eqx.priors.config import FitPriorsConfig
    from cameo_eqx.priors.fit import fit_prior
    from cameo_eqx.simulate.analysis import histogram, js_divergence, radius_of_gyration
    from cameo_eqx.synthetic.generate import sample
    from cameo_eqx.modules.backbones import BackboneOverrides
    from cameo_eqx.training.config import DataConfig, ModelConfig, StageConfig, TrainConfig
    from cameo_eqx.training.trainer import train

    synthesize(SynthesizeConfig(output=tmp_path / "data", sequences=(SEQ,), n_random=0, temperatures=(350.0,),
                                n_replicas=32, frames=3200, save_every_ps=0.5, equilibrate_ps=10.0,
                                timestep_fs=5.0, progress=False))  # fmt: skip
    with PreparedDataset(tmp_path / "data") as ds:
        prior, _ = fit_prior(ds, FitPriorsConfig())
        rec = ds.record(ds.names[0]).load()
    prior.save(tmp_path / "prior.yaml")
    run = train(TrainConfig(
        output=tmp_path / "runs", name="student", progress=False, log_every=50, checkpoint_every=10_000,
        data=DataConfig(dataset=tmp_path / "data", split_by="frame", val_fraction=0.05, target_nodes=512),
        model=ModelConfig(backbone="painn", preset="small", hyperparameters=BackboneOverrides(n_features=16),
                          prior=tmp_path / "prior.yaml"),
        stages=(StageConfig(name="adabelief", optimizer="adabelief", epochs=6, lr=3e-3),),
    ))  # fmt: skip
    student = load(run / "model.eqx")
    ref = radius_of_gyration(rec.positions)
    rg = {}
    for name, model in (("prior", prior), ("student", student)):
        s = sample(model, rec.topology, rec.positions[0], temperatures=(350.0,), n_replicas=16, n_frames=60,
                   save_every=100, equilibrate=1000, timestep_fs=5.0, seed=5)  # fmt: skip
        rg[name] = radius_of_gyration(s.positions).ravel()
    edges = np.linspace(min(ref.min(), *(v.min() for v in rg.values())) - 1e-3,
                        max(ref.max(), *(v.max() for v in rg.values())) + 1e-3, 21)  # fmt: skip
    js = {k: js_divergence(histogram(v, edges), histogram(ref, edges)) for k, v in rg.items()}
    # measured: teacher data Rg 5.44 Å; prior 7.6 Å (JS 0.77); student 5.5 Å (JS 0.05)
    assert rg["prior"].mean() - ref.mean() > 1.0
    assert abs(rg["student"].mean() - ref.mean()) < 0.4
    assert js["student"] < 0.25 and js["student"] < 0.3 * js["prior"]
