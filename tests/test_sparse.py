"""modules.sparse: the bilinear map over the nonzeros of a coupling tensor equals the dense contraction, with
and without channel broadcasting, and its custom VJPs agree with finite differences to third order
(training differentiates forces, which are first derivatives, once more)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cameo_eqx.modules.sparse import bilinear, sparse_spec


def _coupling(rng, d_x=4, d_y=5, d_out=3, density=0.3, paths=2):
    t = rng.normal(size=(paths, d_x, d_y, d_out)) * (rng.uniform(size=(1, d_x, d_y, d_out)) < density)
    t[:, 0, 0, 0] = 1.0  # at least one nonzero
    return t


@pytest.mark.parametrize("first", [False, True], ids=["channels-first", "irreps-first"])
@pytest.mark.parametrize("cx, cy, cw", [(3, 3, 3), (3, 1, 1), (1, 3, 3), (3, 3, 1)])
def test_bilinear_equals_dense_contraction_and_its_derivatives(cx, cy, cw, first):
    """Full channels (Allegro: per-channel weights) and broadcast ones (MACE: one Y per edge, fixed CG
    values), in both layouts ((e, c, d) and (d, e, c)). A gradient swapped between the factors, a wrong spec
    permutation, a reduction over the wrong axis or a cotangent not summed back over a broadcast axis fails
    this."""
    rng = np.random.default_rng(0)
    t = _coupling(rng)
    spec, values = sparse_spec(t)
    assert values.shape == (2, len(spec[0])) and len(spec[0]) < t[0].size
    with jax.enable_x64(True):  # finite differences of third derivatives need float64
        k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(k1, (5, cx, t.shape[1]), jnp.float64)
        y = jax.random.normal(k2, (5, cy, t.shape[2]), jnp.float64)
        w = jax.random.normal(k3, (cw, 2), jnp.float64) @ jnp.asarray(values)  # per-channel path weights
        o, xi, yi = (np.asarray(a) for a in spec[:3])
        dense = np.zeros((cw, *t.shape[1:]))
        dense[:, xi, yi, o] = np.asarray(w)  # the nonzeros sit at distinct places
        want = jnp.einsum("eci,ecj,cijk->eck", jnp.broadcast_to(x, (5, 3, t.shape[1])),
                          jnp.broadcast_to(y, (5, 3, t.shape[2])), jnp.broadcast_to(dense, (3, *t.shape[1:])))  # fmt: skip
        if first:  # the same arrays stored irreps-first
            x, y, want = (jnp.moveaxis(a, -1, 0) for a in (x, y, want))
        np.testing.assert_allclose(bilinear(x, y, w, spec, irreps_first=first), want, rtol=1e-10, atol=1e-10)
        check_grads(lambda x, y, w: bilinear(x, y, w, spec, irreps_first=first), (x, y, w), order=3, modes=["rev"])


def test_sparse_spec_lists_the_nonzeros():
    t = np.zeros((2, 3, 4))  # (d_x, d_y, d_out)
    t[1, 2, 0], t[0, 2, 3] = 2.0, -1.0
    spec, values = sparse_spec(t)
    assert spec == ((3, 0), (0, 1), (2, 2), 4, 2, 3)
    np.testing.assert_array_equal(values, [-1.0, 2.0])
