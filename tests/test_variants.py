"""The experimental backbone variants of benchmarks/variants.py (A/B runs on a GPU) compute the same
function as the default formulation: energies, forces and the training gradient (forces differentiated
by the parameters) on a compact chain."""

from __future__ import annotations

import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import variants  # noqa: E402
from bench_gpu import CUTOFF, backbone, chain_system  # noqa: E402

from cameo_eqx.modules import ForceField  # noqa: E402


def _energy_forces_grad(ff, batch):
    dyn, st = eqx.partition(ff, eqx.is_inexact_array)

    def loss(d):
        _, f = eqx.combine(d, st).energy_and_forces(batch)
        return jnp.sum(f**2)

    e, f = eqx.filter_jit(lambda d: eqx.combine(d, st).energy_and_forces(batch))(dyn)
    g = eqx.filter_jit(jax.grad(loss))(dyn)
    return float(jnp.sum(e)), np.asarray(f), [np.asarray(x) for x in jax.tree.leaves(g)]


# Slow tier (30-60 s each here), to keep make test near 15 minutes: mace-grouped-messages is a benchmark-only
# formulation (rejected on the GPU compile); MACE's GPU products are also checked in the default tier, against
# the CPU ones, by test_stationarity (forces and the Laplacian) and test_sparse (to third order).
@pytest.mark.parametrize("name, model", [pytest.param("mace-grouped-messages", "mace", marks=pytest.mark.slow),
                                         pytest.param("mace-sparse-tp", "mace", marks=pytest.mark.slow),
                                         ("allegro-sparse-tp", "allegro")])
def test_variant_computes_the_default_function(name, model):
    topo, x = chain_system(24)
    ff = ForceField(backbone(model), None, cutoff=CUTOFF)
    batch = ff.batch_for(x, topo)
    e0, f0, g0 = _energy_forces_grad(ff, batch)
    with variants.applied(name):
        e1, f1, g1 = _energy_forces_grad(ff, batch)
    e2, f2, _ = _energy_forces_grad(ff, batch)  # restored after the block
    assert np.isfinite(f0).all() and np.abs(f0).max() > 0 and len(g0) == len(g1) > 0
    assert e1 == pytest.approx(e0, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(f1, f0, rtol=0, atol=1e-5 * np.abs(f0).max())
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * max(np.abs(a).max(), 1e-12))
    assert not np.array_equal(f1, f0)  # another formulation: other rounding, so the variant did run
    assert e2 == e0 and np.array_equal(f2, f0)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        variants.apply("nope")


@pytest.mark.parametrize("model, cpu_scope, gpu_scope, force_cpu, force_gpu", [
    ("allegro", "allegro_node_matrices", "allegro_sparse_tp", "allegro-node-matrices", "allegro-sparse-tp"),
    ("mace", "mace_edge_dots", "mace_sparse_tp", "mace-edge-dots", "mace-sparse-tp"),
])  # fmt: skip
def test_formulation_variants_pick_one_for_every_platform(model, cpu_scope, gpu_scope, force_cpu, force_gpu):
    """A backbone with two formulations lowers one per platform, and the variants force one whatever the
    compile target: lowered for a GPU, `force_cpu` gives the CPU path; lowered for CPU, `force_gpu` gives the
    GPU path. Names in the lowered text come from each formulation's scope."""
    topo, x = chain_system(12)
    ff = ForceField(backbone(model), None, cutoff=CUTOFF)
    batch = ff.batch_for(x, topo)

    def scopes(platform):
        f = jax.jit(lambda ff, b: ff.energy_and_forces(b)[1])
        text = f.trace(ff, batch).lower(lowering_platforms=(platform,)).as_text(debug_info=True)
        return {s for s in (cpu_scope, gpu_scope) if s in text}

    assert scopes("cuda") == {gpu_scope} and scopes("cpu") == {cpu_scope}
    with variants.applied(force_cpu):
        assert scopes("cuda") == {cpu_scope}
    with variants.applied(force_gpu):
        assert scopes("cpu") == {gpu_scope}
    assert scopes("cuda") == {gpu_scope}  # restored
