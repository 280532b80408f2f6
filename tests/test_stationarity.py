"""Stationarity: blocking error bars, drift with autocorrelation, Hutchinson Laplacian, configurational
temperature of exactly Boltzmann-sampled configurations, the verdict, and `analyze`'s stationarity section."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cameo_eqx.data.store import PreparedDataset
from cameo_eqx.priors.prior import Prior
from cameo_eqx.priors.terms import HarmonicBond
from cameo_eqx.simulate import AnalyzeConfig, analyze
from cameo_eqx.simulate import stationarity as st
from cameo_eqx.simulate.langevin import Frames, TrajectoryWriter
from cameo_eqx.topology import CGTopology
from cameo_eqx.units import KB_KCAL_PER_MOL_K


def ar1(rng, n, phi, sigma=1.0, size=()):
    """A stationary AR(1) series x_t = φ x_{t-1} + e_t with unit marginal variance × sigma²."""
    e = rng.normal(size=(*size, n)) * np.sqrt(1 - phi**2)
    x = np.empty_like(e)
    x[..., 0] = rng.normal(size=size)
    for t in range(1, n):
        x[..., t] = phi * x[..., t - 1] + e[..., t]
    return sigma * x


def test_block_average_error_bar_of_correlated_series():
    """For AR(1) with φ = 0.8 the statistical inefficiency is (1 + φ)/(1 - φ) = 9: blocking finds it and
    its error bars cover the true mean about as often as they should (the naive ones would not)."""
    rng = np.random.default_rng(0)
    xs = ar1(rng, 4000, 0.8, size=(200,))
    est = [st.block_average(x) for x in xs]
    g = np.median([e.inefficiency for e in est])
    assert 6.5 < g < 11.5, g
    cover = np.mean([abs(e.mean) < 2 * e.sem for e in est])
    assert 0.88 < cover < 0.995, cover
    naive = np.mean([abs(x.mean()) < 2 * x.std() / np.sqrt(len(x)) for x in xs])
    assert naive < 0.7  # the check can tell
    # white noise: inefficiency ≈ 1; a constant: zero error
    assert st.block_average(rng.normal(size=4000)).inefficiency < 1.6
    assert st.block_average(np.ones(10)).sem == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        st.block_average(np.ones(1))


def test_linear_drift_recovered_within_its_error():
    """A known slope under AR(1) noise: the estimate lies within 2 SE in ~95% of realisations (an SE
    that ignored the autocorrelation would cover far less often)."""
    rng = np.random.default_rng(1)
    t = np.arange(2000) * 0.01  # ps
    slope = 0.3
    noise = ar1(rng, len(t), 0.8, size=(150,))
    fits = [st.linear_drift(t, 2.0 + slope * t + e) for e in noise]
    z = np.array([(f.slope - slope) / f.sem for f in fits])
    assert 0.88 < np.mean(np.abs(z) < 2) < 0.995, np.mean(np.abs(z) < 2)
    f = fits[0]
    assert abs(f.change - f.slope * (t[-1] - t[0])) < 1e-9 and 0.8 < f.residual_std < 1.2
    # strong drift is many SE away from zero
    big = st.linear_drift(t, 5.0 * t + noise[0])
    assert abs(big.slope - 5.0) < 4 * big.sem and big.slope > 20 * big.sem
    with pytest.raises(ValueError, match="at least 3"):
        st.linear_drift(t[:2], t[:2])


def _verdict(potential, temperature, obs, target=300.0, tconf=None, **kw):
    t = np.arange(len(potential)) * 0.1
    return st.replica_stationarity(t, potential, temperature, obs, 0, target, AnalyzeConfig(**kw), tconf)


def test_verdict_stationary_ar1_and_drifting_series():
    rng = np.random.default_rng(2)
    n = 3000
    u = -100 + 3.0 * ar1(rng, n, 0.9)
    temp = 300 + 10 * ar1(rng, n, 0.5)
    obs = {"rg": 10 + 0.2 * ar1(rng, n, 0.95), "q": 0.9 + 0.02 * ar1(rng, n, 0.95), "rmsd": 2 + ar1(rng, n, 0.9)}
    nums, reasons = _verdict(u, temp, obs)
    assert reasons == [], reasons
    assert nums["notes"] == []  # 3000 frames: every blocking reached its plateau
    short, _ = _verdict(u[:60], temp[:60], {k: v[:60] for k, v in obs.items()})
    assert "lower bounds" in short["notes"][0] and "rg" in short["notes"][0]
    assert abs(nums["kinetic_temperature"]["mean"] - 300) < 3 * nums["kinetic_temperature"]["sem"] + 1
    assert set(nums["block_averages"]) == {"potential_energy", "rg", "q", "rmsd"}
    # energy still falling, too hot, Q unfolding: each is named
    t = np.arange(n) * 0.1
    q_unfold = obs["q"] - 0.5 * t / t[-1]
    _, reasons = _verdict(u - 0.05 * t, temp + 30, {**obs, "q": q_unfold}, tconf=None)
    text = " | ".join(reasons)
    assert "potential energy drifts" in text and "kinetic temperature" in text and "q moves" in text, text
    _, reasons = _verdict(u, temp, obs, tconf=(360.0, 5.0))
    assert len(reasons) == 1 and "configurational temperature" in reasons[0]
    _, reasons = _verdict(u, temp, obs, tconf=(310.0, 5.0))  # within 10%
    assert reasons == []


def test_hutchinson_laplacian_equals_exact_trace():
    """On a small non-quadratic function: the probe average converges to tr(H) from jax.hessian; with a
    diagonal Hessian a single probe is exact."""
    a = jax.random.normal(jax.random.PRNGKey(0), (6, 6))

    def u(x):
        return jnp.sum(jnp.tanh(a @ x) ** 2) + 0.3 * jnp.sum(x**4)

    x = jax.random.normal(jax.random.PRNGKey(1), (6,))
    exact = float(jnp.trace(jax.hessian(u)(x)))
    est = float(st.hutchinson_laplacian(jax.grad(u), x, jax.random.PRNGKey(2), n_probes=20000))
    assert abs(est - exact) < 0.02 * abs(exact) + 0.05, (est, exact)
    diag = float(st.hutchinson_laplacian(jax.grad(lambda y: jnp.sum(y**4)), x, jax.random.PRNGKey(3), 1))
    np.testing.assert_allclose(diag, float(jnp.sum(12 * x**2)), rtol=1e-5)


def _chain(n: int) -> CGTopology:
    return CGTopology(resname=("ALA",) * n, resid=np.arange(n), chain=("A",) * n,
                      segment=np.zeros(n, np.int32), species=np.zeros(n, np.int32))  # fmt: skip


def _boltzmann_chain(rng, n_frames, n_beads, r0, k, temperature):
    """Exact Boltzmann samples of a chain with only harmonic bonds: bond vectors are independent, their
    length has density ∝ b² exp(-k (b - r0)² / 2kT) (rejection from the Gaussian), direction uniform."""
    kt = KB_KCAL_PER_MOL_K * temperature
    sd = np.sqrt(kt / k)
    need = n_frames * (n_beads - 1)
    out = []
    while sum(len(o) for o in out) < need:
        b = r0 + sd * rng.normal(size=2 * need)
        keep = rng.uniform(size=b.shape) < (np.clip(b, 0, None) / (r0 + 8 * sd)) ** 2
        out.append(b[keep])
    b = np.concatenate(out)[:need]
    d = rng.normal(size=(need, 3))
    vec = (b / np.linalg.norm(d, axis=-1))[:, None] * d
    x = np.concatenate([np.zeros((n_frames, 1, 3)), np.cumsum(vec.reshape(n_frames, n_beads - 1, 3), axis=1)], 1)
    return x


def test_configurational_temperature_of_boltzmann_samples():
    """A Prior with one harmonic bond term on a 6-bead chain, frames drawn exactly from exp(-U/kT):
    T_conf from the model (autodiff forces, Hutchinson Laplacian) is the temperature within a few %."""
    rng = np.random.default_rng(4)
    temp, r0, k = 320.0, 3.8, 20.0
    prior = Prior([HarmonicBond.init(r0=r0, k=k, n_species=1)], [1.0])
    x = _boltzmann_chain(rng, 300, 6, r0, k, temp)
    g2, lap = st.configurational_terms(prior, _chain(6), x, cutoff=10.0, pair_min_sep=2,
                                       key=jax.random.PRNGKey(0), n_probes=4)  # fmt: skip
    tc, sem = st.configurational_temperature(g2, lap)
    assert abs(tc - temp) < 0.04 * temp and abs(tc - temp) < 4 * sem, (tc, sem)
    # the same frames judged at another temperature are off: the estimate can tell
    assert abs(tc - 1.3 * temp) > 0.15 * temp
    # a single frame has no error bar; a non-positive Laplacian has no temperature
    assert np.isnan(st.configurational_temperature(g2[:1], lap[:1])[1])
    assert np.isnan(st.configurational_temperature(np.ones(3), -np.ones(3))[0])


# ------------------------------------------------------------------------------------ analyze


def _trajectory(path, ds_path, frames, potential, temperature, model):
    with PreparedDataset(ds_path) as ds:
        rec = ds.record("villin")
        w = TrajectoryWriter.create(path, rec.topology, frames.shape[1], rec.topology.masses, frames[0, 0],
                                    {"dataset": str(ds.path), "protein": "villin", "frame": 0, "model": str(model),
                                     "temperature": 320.0, "config": "{}", "cutoff": 10.0, "pair_min_sep": 2})  # fmt: skip
    t = len(frames)
    w.append(Frames(frames.astype(np.float32), potential, np.zeros_like(potential), temperature,
                    np.arange(t), np.arange(t) * 0.1))  # fmt: skip
    w.close(status="done")
    return path


def test_analyze_reports_stationarity(villin_prepared, tmp_path):
    """A "simulation" that repeats one reference frame with a falling potential energy: not stationary,
    the drift is named; T_conf comes from a prior file, and a missing model gives null with the reason."""
    with PreparedDataset(villin_prepared) as ds:
        x0 = ds.record("villin").frames(np.arange(1))[0][0]
    rng = np.random.default_rng(5)
    t = 200
    frames = x0[None, None] + 0.05 * rng.normal(size=(t, 2, *x0.shape))
    temp = 320 + 5 * rng.normal(size=(t, 2))
    prior_path = Prior([HarmonicBond.init(r0=3.8, k=50.0, n_species=20)], [1.0]).save(tmp_path / "prior.yaml")
    flat = _trajectory(tmp_path / "flat.h5", villin_prepared, frames, rng.normal(size=(t, 2)), temp, prior_path)
    summ = json.loads(analyze(AnalyzeConfig(trajectory=flat, output=tmp_path / "a", plots=False,
                                            tconf_frames=5, tconf_probes=2,  # noise frames: T_conf arbitrary
                                            configurational_temperature_tolerance=100.0)).read_text())["stationarity"]  # fmt: skip
    assert summ["configurational_temperature"]["available"], summ["configurational_temperature"]
    assert summ["stationary"], summ["reasons"]
    assert np.isfinite(summ["replicas"][0]["configurational_temperature"]["mean"])
    falling = -3.0 * np.arange(t)[:, None] * 0.1 + rng.normal(size=(t, 2))
    drift = _trajectory(tmp_path / "drift.h5", villin_prepared, frames, falling, temp, tmp_path / "missing.eqx")
    summ = json.loads(analyze(AnalyzeConfig(trajectory=drift, output=tmp_path / "b", plots=False)).read_text())
    s = summ["stationarity"]
    assert not s["stationary"] and any("potential energy drifts" in r for r in s["reasons"]), s["reasons"]
    assert s["configurational_temperature"]["available"] is False
    assert "missing.eqx" in s["configurational_temperature"]["reason"]
    assert abs(s["replicas"][1]["energy_drift"]["slope"] + 3.0) < 0.2
    # the demo's closing lines: native-state numbers and the verdict with its reasons
    from cameo_eqx.simulate.analysis import verdict_lines

    text = "\n".join(verdict_lines(summ))
    assert "stationary: no" in text and "potential energy drifts" in text and "RMSD" in text and "T_conf n/a" in text


# allegro in the slow tier (34 s here): test_variants' allegro-sparse-tp check already differentiates the
# forces of its GPU formulation in reverse mode (the training gradient), in the default tier
@pytest.mark.parametrize("name", [pytest.param("allegro", marks=pytest.mark.slow), "mace"])
def test_laplacian_through_gpu_tensor_products(name, monkeypatch):
    """The Hessian-vector products go through custom VJPs: the GPU formulation of Allegro's tensor product
    and of MACE's edge products (forced on CPU here) gives the Laplacian the CPU formulation gives, with the
    same probes (the patched formulation records that it was traced). Forward mode (jax.jvp of the gradient
    under jit and vmap, as the estimator used it) fails on such a model on any platform: both formulations
    are traced."""
    from cameo_eqx.data.testdata import compact_chain
    from cameo_eqx.modules import ForceField, make_backbone, mace
    from cameo_eqx.modules.allegro import _AllegroLayer

    topo = _chain(10)
    x = compact_chain(10, np.random.default_rng(0)).astype(np.float32)[None]
    preset = "small" if name == "mace" else "default"
    ff = ForceField(make_backbone(name, 1, 6.0, preset, key=jax.random.PRNGKey(0)), None, cutoff=6.0)
    kw = dict(cutoff=6.0, pair_min_sep=3, key=jax.random.PRNGKey(1), n_probes=4)
    g0, lap0 = st.configurational_terms(ff, topo, x, **kw)
    traced = []
    if name == "allegro":
        sparse_tp = _AllegroLayer.sparse_tp
        monkeypatch.setattr(_AllegroLayer, "node_matrices", lambda *a: traced.append(1) or sparse_tp(*a))
    else:
        monkeypatch.setattr(mace, "_edge_products", lambda x, y, blk, sp: traced.append(1) or mace._edge_sparse(x, y, sp))
    g1, lap1 = st.configurational_terms(ff, topo, x, **kw)
    assert np.isfinite(lap0).all() and abs(lap0[0]) > 0
    np.testing.assert_allclose(g1, g0, rtol=1e-4)
    np.testing.assert_allclose(lap1, lap0, rtol=1e-3)
    assert traced  # the monkeypatch reached the model: the sparse path ran
