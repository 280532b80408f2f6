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


@pytest.mark.parametrize("name, model", [("mace-grouped-messages", "mace"), ("allegro-sparse-tp", "allegro")])
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


def test_sparse_tensor_product_and_its_derivatives():
    """allegro-sparse-tp's building block equals the dense contraction with the summed path tensor, and its
    custom VJPs agree with finite differences to third order (training differentiates forces once more)."""
    from jax.test_util import check_grads

    from cameo_eqx.modules import allegro
    from cameo_eqx.modules.radial import sh_irreps

    irs_in, irs_out = allegro.layer_irreps(3, 2, False)[0]
    spec, values = variants._sparse_plan(irs_in, sh_irreps(2), irs_out)
    o, xi, yi, n_o, n_x, n_y = spec
    assert values.shape == (allegro._path_tensors(irs_in, sh_irreps(2), irs_out).shape[0], len(o))
    dense = np.zeros((3, n_x, n_y, n_o))
    bilinear = variants._sparse_ops()
    with jax.enable_x64(True):  # finite differences of second derivatives need float64
        k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(k1, (5, 3, n_x), jnp.float64)
        y = jax.random.normal(k2, (5, 3, n_y), jnp.float64)
        w = jax.random.normal(k3, (3, len(o)), jnp.float64)
        dense[:, np.asarray(xi), np.asarray(yi), np.asarray(o)] = np.asarray(w)
        np.testing.assert_allclose(bilinear(x, y, w, spec), jnp.einsum("eci,ecj,cijk->eck", x, y, dense),
                                   rtol=1e-12, atol=1e-12)  # fmt: skip
        check_grads(lambda x, y, w: bilinear(x, y, w, spec), (x, y, w), order=3, modes=["rev"])
