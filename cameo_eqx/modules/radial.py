"""Pieces shared by the backbones (Allegro, PaiNN, MACE), in one module: edge geometry, radial basis,
cutoff functions, per-pair functions differentiated in r in forward mode (`pair_function`), species
embedding, dense layers and MLPs, irreps helpers, and the constructor-keyword helpers behind
`hyperparameters()` (`safe_norm` comes from `cameo_eqx.geometry`).

All three follow the edge convention of `cameo_eqx.graph.Batch` (the edge's message or energy belongs
to `receivers`, the centre); `edge_geometry` gives vectors from the centre to the neighbour.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ..graph import Batch

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


def pair_function(
    fn: Callable[[Float[Array, " n"], Any], Float[Array, "n d"]], r: Float[Array, " n"], params: Any
) -> Float[Array, "n d"]:
    """`fn(r, params)`, a function of one scalar per row (a radial filter or radial MLP of the pair distances),
    whose derivative in `r` is taken in forward mode.

    The Jacobian of `fn` in `r` is one column per row, so its JVP in `r` is one more forward pass (the slope
    `∂fn/∂r`, a `(n, d)` array kept for the reverse pass), and the gradient in `r` is a row-wise dot of the
    cotangent with it. Plain reverse mode instead keeps the activations and runs the transposed matmuls per
    row. The JVP in `params` is the usual one. Every derivative order works (the rule is plain JAX), forward
    mode included.

    PaiNN's filters use it (a (pairs, 3F) linear map of the basis: fewer bytes in both the simulation and the
    training step on the H200 compile). MACE's radial MLPs and Allegro's two-body radial were measured with it
    and do not: MACE's training step moved 21.9 GB instead of 20.3, Allegro's 24.9 instead of 24.8, for no
    gain in the simulation step.

    **Arguments:**

    - `fn`: `fn(r, params) -> (n, d)`, row k depending on `r[k]` only (not checked).
    - `r`: `(n,)` distances.
    - `params`: a pytree of float arrays (the weights).

    **Returns:** `fn(r, params)`.
    """
    return _pair_function(fn, r, params)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _pair_function(fn, r, params):
    return fn(r, params)


@functools.partial(_pair_function.defjvp, symbolic_zeros=True)
def _pair_function_jvp(fn, primals, tangents):
    r, params = primals
    dr, dparams = tangents
    zero = jax.custom_derivatives.SymbolicZero
    if isinstance(dr, zero):
        return jax.jvp(lambda p: fn(r, p), (params,), (_instantiate(dparams, params),))
    out, slope = jax.jvp(lambda x: fn(x, params), (r,), (jnp.ones_like(r),))
    tangent = slope * dr[:, None]
    if not all(isinstance(t, zero) for t in jax.tree.leaves(dparams, is_leaf=lambda t: isinstance(t, zero))):
        tangent = tangent + jax.jvp(lambda p: fn(r, p), (params,), (_instantiate(dparams, params),))[1]
    return out, tangent


def _instantiate(tangents, primals):
    zero = jax.custom_derivatives.SymbolicZero
    return jax.tree.map(lambda t, p: jnp.zeros_like(p) if isinstance(t, zero) else t, tangents, primals,
                        is_leaf=lambda t: isinstance(t, zero))


class SpeciesEmbedding(eqx.Module):
    """Learned embedding of bead species (one row per species)."""

    weight: Float[Array, "n_species dim"]

    def __init__(self, n_species: int, dim: int, *, key: PRNGKeyArray):
        self.weight = jax.random.normal(key, (n_species, dim)) / np.sqrt(dim)

    def __call__(self, species: Int[Array, " n"]) -> Float[Array, "n dim"]:
        return self.weight[species]


def cosine_cutoff(r: Float[Array, " n"], cutoff: float) -> Float[Array, " n"]:
    """Behler's cosine cutoff 0.5 (cos(π r / c) + 1) for r < c, else 0 (PaiNN's cutoff function)."""
    return jnp.where(r < cutoff, 0.5 * (jnp.cos(jnp.pi * r / cutoff) + 1.0), 0.0)


class EdgeGeometry(eqx.Module):
    """Per-edge geometry of a batch, computed once per energy call.

    `vectors` point from the receiver (the centre bead i) to the sender (the neighbour j); padded
    edges get zero vectors, zero distance and a zero unit vector, with zero gradient.

    On a batch with paired edges (`Batch.edges_paired`) the geometry is computed once per pair and
    `per_pair` evaluates a function of the pair geometry once per pair: a backbone calls it for
    everything that is the same for both directions (radial basis, envelope, filters) or changes only
    by a parity sign (spherical harmonics, `flip`).
    """

    vectors: Float[Array, "n_edge 3"]
    distances: Float[Array, " n_edge"]
    unit: Float[Array, "n_edge 3"]
    mask: Bool[Array, " n_edge"]
    paired: bool = eqx.field(static=True, default=False)

    def pair_view(self) -> "EdgeGeometry":
        """The geometry of one direction per pair: the first half of the edges when paired, else all."""
        if not self.paired:
            return self
        h = self.mask.shape[0] // 2
        return EdgeGeometry(self.vectors[:h], self.distances[:h], self.unit[:h], self.mask[:h])

    def per_pair(
        self, fn: Callable[["EdgeGeometry"], Array], flip: Array | float | None = None
    ) -> Array:
        """`fn` of the edge geometry, evaluated once per pair when paired and spread to both directions.

        **Arguments:**

        - `fn`: maps an `EdgeGeometry` (of `k` edges) to an array with leading axis `k`.
        - `flip`: how the value changes when the edge is reversed (r̂ → -r̂): None for unchanged, else a
          factor broadcast against the value of one edge (e.g. the parity `(-1)^l` of each spherical
          harmonic component).

        **Returns:** `fn(self)` (up to float rounding), with leading axis `n_edge`.
        """
        return self.spread(fn(self.pair_view()), flip)

    def spread(self, y: Array, flip: Array | float | None = None) -> Array:
        """Values computed on `pair_view()` edges spread to all edges (`flip` as in `per_pair`)."""
        if not self.paired:
            return y
        back = y if flip is None else y * jnp.asarray(flip, y.dtype)
        return jnp.concatenate([y, back], axis=0)


def edge_geometry(batch: Batch) -> EdgeGeometry:
    """Edge vectors, lengths and directions with padding masked out (see `EdgeGeometry`).

    **Arguments:**

    - `batch`: a packed batch (no leading device axis).

    **Returns:** the `EdgeGeometry` of its edges.
    """
    pos = batch.positions
    snd, rcv, mask = batch.senders, batch.receivers, batch.edge_mask
    paired = bool(batch.edges_paired)
    if paired:  # one direction per pair; the reverse edges are its mirror image
        h = mask.shape[0] // 2
        snd, rcv, mask = snd[:h], rcv[:h], mask[:h]
    vec = pos[snd] - pos[rcv]
    vec = jnp.where(mask[:, None], vec, 0.0)
    r = safe_norm(vec, mask)
    unit = vec / jnp.where(r > 0, r, 1.0)[:, None]
    if paired:
        vec, unit = jnp.concatenate([vec, -vec]), jnp.concatenate([unit, -unit])
        r, mask = jnp.concatenate([r, r]), jnp.concatenate([mask, mask])
    return EdgeGeometry(vectors=vec, distances=r, unit=unit, mask=mask, paired=paired)


class Dense(eqx.Module):
    """`x @ W + b` on the last axis of an array of any leading shape (LeCun-normal weights)."""

    weight: Float[Array, "d_in d_out"]
    bias: Float[Array, " d_out"] | None

    def __init__(self, d_in: int, d_out: int, *, key: PRNGKeyArray, bias: bool = True):
        self.weight = jax.random.normal(key, (d_in, d_out)) / np.sqrt(d_in)
        self.bias = jnp.zeros((d_out,), self.weight.dtype) if bias else None

    def __call__(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_out"]:
        y = x @ self.weight
        return y if self.bias is None else y + self.bias


class MLP(eqx.Module):
    """Dense layers with an activation between them (none after the last); `bias=False` gives the
    bias-free MLPs of Allegro and of MACE's radial weights."""

    layers: tuple[Dense, ...]
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        key: PRNGKeyArray,
        bias: bool = True,
        activation: Callable = jax.nn.silu,
    ):
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            Dense(a, b, key=k, bias=bias) for a, b, k in zip(sizes[:-1], sizes[1:], keys)
        )
        self.activation = activation

    def __call__(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_out"]:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


Irrep = tuple[int, int]
"""An O(3) irrep as (l, parity ±1)."""


def irrep_dim(ir: Irrep) -> int:
    """Dimension 2l + 1 of an irrep (l, p)."""
    return 2 * ir[0] + 1


def sh_irreps(l_max: int) -> tuple[Irrep, ...]:
    """The irreps of the spherical harmonics up to `l_max`: (0, +1), (1, -1), (2, +1), ..."""
    return tuple((l, (-1) ** l) for l in range(l_max + 1))


def sh_flip(l_max: int) -> np.ndarray:
    """Per component of the spherical harmonics up to `l_max`, the factor (-1)^l they take when the
    direction is reversed (`EdgeGeometry.per_pair`'s `flip`)."""
    return np.concatenate([np.full(2 * l + 1, (-1.0) ** l, np.float32) for l in range(l_max + 1)])


def hyperparameter_names(cls: type) -> tuple[str, ...]:
    """A backbone class's hyperparameters: the keyword-only arguments of its constructor except `key`
    (their defaults are the values a preset does not set)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "key")


def hyperparameter_values(model: eqx.Module) -> dict[str, Any]:
    """The constructor keywords of a backbone (`hyperparameter_names`) read from the instance, as a
    JSON-friendly dict (tuples become lists); `forcefield.save` stores it to rebuild the skeleton."""
    out = {}
    for name in hyperparameter_names(type(model)):
        v = getattr(model, name)
        out[name] = list(v) if isinstance(v, tuple) else v
    return out
