"""Pieces shared by the backbones: radial basis, cutoff envelope, species embedding (`safe_norm` comes from
`cameo_eqx.geometry`)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..geometry import safe_norm  # noqa: F401  (re-exported: the backbones take it from here)


def bessel_basis(
    r: Float[Array, " n"], cutoff: float, n_basis: int
) -> Float[Array, "n n_basis"]:
    """Sine Bessel basis sqrt(2/c) sin(n π r / c) / r (DimeNet/NequIP), finite at r = 0."""
    n = jnp.arange(1, n_basis + 1, dtype=r.dtype)
    x = n[None, :] * jnp.pi * r[:, None] / cutoff
    # sin(x)/r = (nπ/c) sinc(x/π), which is smooth at r = 0
    return jnp.sqrt(2.0 / cutoff) * (n[None, :] * jnp.pi / cutoff) * jnp.sinc(x / jnp.pi)


def polynomial_envelope(r: Float[Array, " n"], cutoff: float, p: int = 6) -> Float[Array, " n"]:
    """Smooth cutoff envelope of DimeNet: 1 at r = 0, zero with p-1 vanishing derivatives at the cutoff."""
    x = r / cutoff
    env = (
        1.0
        - (p + 1.0) * (p + 2.0) / 2.0 * x**p
        + p * (p + 2.0) * x ** (p + 1)
        - p * (p + 1.0) / 2.0 * x ** (p + 2)
    )
    return jnp.where(x < 1.0, env, 0.0)


class SpeciesEmbedding(eqx.Module):
    """Learned embedding of bead species (one row per species)."""

    weight: Float[Array, "n_species dim"]

    def __init__(self, n_species: int, dim: int, *, key: PRNGKeyArray):
        self.weight = jax.random.normal(key, (n_species, dim)) / np.sqrt(dim)

    def __call__(self, species: Int[Array, " n"]) -> Float[Array, "n dim"]:
        return self.weight[species]
