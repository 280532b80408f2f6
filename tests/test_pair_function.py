"""`radial.pair_function`: a per-pair function of the distance whose derivative in r is taken in forward
mode (PaiNN's filters) must have the derivatives of the plain function, to every order the training
step uses (forces are a gradient in r; the loss on them is differentiated again in the weights)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cameo_eqx.modules.radial import bessel_basis, cosine_cutoff, pair_function

CUTOFF = 8.0


def _filters(r, params):
    """A radial filter as PaiNN's (Linear of the Bessel basis times the cutoff) followed by a SiLU layer,
    so that the function is not linear in its weights."""
    w, b, w2 = params
    fc = cosine_cutoff(r, CUTOFF)[:, None]
    x = jnp.concatenate([bessel_basis(r, CUTOFF, 6) * fc, fc], -1) @ jnp.concatenate([w, b[None]])
    return jax.nn.silu(x) @ w2


@pytest.fixture
def data():
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.PRNGKey(0), 5)
        r = jax.random.uniform(k[0], (7,), jnp.float64, 0.5, CUTOFF + 1.0)  # two or so beyond the cutoff
        r = r.at[0].set(0.0)  # a padded pair's distance
        params = (jax.random.normal(k[1], (6, 5), jnp.float64), jax.random.normal(k[2], (5,), jnp.float64),
                  jax.random.normal(k[3], (5, 4), jnp.float64))  # fmt: skip
        cot = jax.random.normal(k[4], (7, 4), jnp.float64)
        yield r, params, cot


def _both(r, params, cot):
    """A scalar of the function and of its gradient in r, as a force-matching loss is: plain and custom."""

    def loss(f):
        def energy(r, p):
            return jnp.sum(cot * f(r, p))

        g = jax.grad(energy)(r, params)
        return energy(r, params) + jnp.sum(jnp.sin(g))

    return loss(_filters), loss(lambda r, p: pair_function(_filters, r, p))


def test_values_and_derivatives_match_the_plain_function(data):
    r, params, cot = data
    with jax.enable_x64(True):
        np.testing.assert_allclose(pair_function(_filters, r, params), _filters(r, params), rtol=1e-14)
        # first order: in r (forces) and in the weights
        for argnums in (0, 1):
            plain = jax.grad(lambda r, p: jnp.sum(cot * _filters(r, p)), argnums)(r, params)
            ours = jax.grad(lambda r, p: jnp.sum(cot * pair_function(_filters, r, p)), argnums)(r, params)
            for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        # second order, the training step's: the weights' gradient of a loss on the r-gradient
        plain, ours = (jax.grad(lambda p, i=i: _both(r, p, cot)[i])(params) for i in (0, 1))
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
        # under jit and vmap (the simulator's replicas)
        rs = jnp.stack([r, r[::-1]])
        np.testing.assert_allclose(
            jax.jit(jax.vmap(jax.grad(lambda r: jnp.sum(cot * pair_function(_filters, r, params)))))(rs),
            jax.vmap(jax.grad(lambda r: jnp.sum(cot * _filters(r, params))))(rs), rtol=1e-12, atol=1e-14,
        )  # fmt: skip


def test_check_grads_to_second_order(data):
    """Forward and reverse mode, against finite differences, in r and in the weights together."""
    r, params, _ = data
    r = r[1:]  # finite differences need r away from the sinc's expansion point
    with jax.enable_x64(True):
        check_grads(lambda r, p: pair_function(_filters, r, p), (r, params), order=2, modes=("fwd", "rev"))
