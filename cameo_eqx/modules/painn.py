"""PaiNN: the polarizable atom interaction neural network (Schütt, Unke & Gastegger, ICML 2021).

Every bead carries scalar features `s` (n, F) and vector (l = 1) features `v` (n, 3, F). Each of the
`n_layers` interaction layers is, as published,

- a message block: filters `W(r_ij) = Linear(rbf(r_ij)) · f_cut(r_ij)` times `φ(s_j) = MLP(s_j)`, split
  into three: `Δs_i = Σ_j φ_s W_s`, `Δv_i = Σ_j v_j ∘ φ_vv W_vv + (φ_vs W_vs) r̂_ij`;
- an update block: linear maps `U v`, `V v` over features, `a = MLP([s, ‖V v‖])` split in three:
  `Δv = a_vv ∘ U v`, `Δs = a_sv ∘ ⟨U v, V v⟩ + a_ss`;

and the per-bead energy is an MLP readout of the final scalars. Equivariant by construction (vectors
enter only through `r̂_ij`, linear maps over features, norms and scalar products).

Radial basis: the sine Bessel basis `sin(nπr/c)/r` of the paper (`radial.bessel_basis`). The cutoff
function is the paper's cosine cutoff by default (`envelope="cosine"`) or the DimeNet polynomial
envelope (`envelope="polynomial"`). Aggregated messages are divided by `avg_num_neighbors`
(default 1, i.e. the published plain sum). Vectors are stored as `(n, 3, F)` so every linear map over
features is one matmul; aggregations are `segment_sum` over edges (no dense n × n).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ..energy import AbstractBackbone, hyperparameter_dict
from ..graph import Batch
from .radial import SpeciesEmbedding, bessel_basis, polynomial_envelope, safe_norm

PRESETS: dict[str, dict[str, Any]] = {
    # a quick model for tests and CPU smoke runs
    "small": dict(n_features=32, n_layers=2, n_radial_basis=16),
    # CPU-friendly default: the paper's depth and basis at half its width
    "default": dict(n_features=64, n_layers=3, n_radial_basis=20),
    # the paper's QM9/MD17 size (128 features, 3 interactions, 20 radial functions)
    "large": dict(n_features=128, n_layers=3, n_radial_basis=20),
}
"""Size presets; every entry (and every key of `DEFAULTS`) can be overridden by keyword."""

DEFAULTS: dict[str, Any] = dict(
    n_features=64,
    n_layers=3,
    n_radial_basis=20,
    envelope="cosine",  # "cosine" (published) or "polynomial"
    envelope_p=6,  # exponent of the polynomial envelope
    avg_num_neighbors=1.0,  # aggregated messages are divided by this (1 = published sum)
    readout_hidden=0,  # hidden width of the readout MLP; 0 means n_features // 2 (published)
)
"""Hyperparameters not fixed by a preset."""


# ----------------------------------------------------------------------------------------------
# small building blocks (shared with mace.py)


def resolve_hyperparameters(
    model: str,
    presets: Mapping[str, Mapping[str, Any]],
    defaults: Mapping[str, Any],
    preset: str,
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """Defaults, then the named preset, then the user's overrides; unknown names are errors."""
    if preset not in presets:
        raise ValueError(f"{model}: unknown preset {preset!r}; choose one of {sorted(presets)}")
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise TypeError(
            f"{model}: unknown hyperparameter(s) {unknown}; valid ones are {sorted(defaults)}"
        )
    return {**defaults, **presets[preset], **overrides}


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
    """Dense layers with an activation between them (none after the last)."""

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


def cosine_cutoff(r: Float[Array, " n"], cutoff: float) -> Float[Array, " n"]:
    """Behler's cosine cutoff 0.5 (cos(π r / c) + 1) for r < c, else 0 (PaiNN's cutoff function)."""
    return jnp.where(r < cutoff, 0.5 * (jnp.cos(jnp.pi * r / cutoff) + 1.0), 0.0)


class EdgeGeometry(eqx.Module):
    """Per-edge geometry of a batch, computed once per energy call.

    `vectors` point from the receiver (the centre bead i) to the sender (the neighbour j); padded
    edges get zero vectors, zero distance and a zero unit vector, with zero gradient.
    """

    vectors: Float[Array, "n_edge 3"]
    distances: Float[Array, " n_edge"]
    unit: Float[Array, "n_edge 3"]
    mask: Bool[Array, " n_edge"]


def edge_geometry(batch: Batch) -> EdgeGeometry:
    """Edge vectors, lengths and directions with padding masked out (see `EdgeGeometry`)."""
    pos = batch.positions
    mask = batch.edge_mask
    vec = pos[batch.senders] - pos[batch.receivers]
    vec = jnp.where(mask[:, None], vec, 0.0)
    r = safe_norm(vec, mask)
    unit = vec / jnp.where(r > 0, r, 1.0)[:, None]
    return EdgeGeometry(vectors=vec, distances=r, unit=unit, mask=mask)


# ----------------------------------------------------------------------------------------------
# PaiNN


class _Message(eqx.Module):
    phi: MLP
    filter: Dense

    def __init__(self, n_features: int, n_radial_basis: int, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        f = n_features
        self.phi = MLP((f, f, 3 * f), key=k1)
        self.filter = Dense(n_radial_basis, 3 * f, key=k2)


class _Update(eqx.Module):
    u: Dense
    v: Dense
    mlp: MLP

    def __init__(self, n_features: int, *, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        f = n_features
        self.u = Dense(f, f, key=k1, bias=False)
        self.v = Dense(f, f, key=k2, bias=False)
        self.mlp = MLP((2 * f, f, 3 * f), key=k3)


class PaiNN(AbstractBackbone):
    """PaiNN energy model: per-bead energies (kcal/mol) from scalar and vector features.

    **Arguments (constructor):**

    - `n_species`: number of bead species.
    - `cutoff`: radial cutoff in Å (the radius graph of the batch must use the same cutoff).
    - `key`: PRNG key for the initial parameters.
    - `preset`: one of `PRESETS` (`small`, `default`, `large`).
    - `**hyperparameters`: overrides of any key of `DEFAULTS`: `n_features`, `n_layers`,
      `n_radial_basis`, `envelope` (`"cosine"` | `"polynomial"`), `envelope_p`, `avg_num_neighbors`,
      `readout_hidden`.
    """

    embedding: SpeciesEmbedding
    messages: tuple[_Message, ...]
    updates: tuple[_Update, ...]
    readout: MLP
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    n_species: int = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    n_features: int = eqx.field(static=True)
    n_layers: int = eqx.field(static=True)
    n_radial_basis: int = eqx.field(static=True)
    envelope: str = eqx.field(static=True)
    envelope_p: int = eqx.field(static=True)
    avg_num_neighbors: float = eqx.field(static=True)
    readout_hidden: int = eqx.field(static=True)

    def __init__(
        self,
        n_species: int,
        cutoff: float = 10.0,
        *,
        key: PRNGKeyArray,
        preset: str = "default",
        **hyperparameters: Any,
    ):
        hp = resolve_hyperparameters("PaiNN", PRESETS, DEFAULTS, preset, hyperparameters)
        if hp["envelope"] not in ("cosine", "polynomial"):
            raise ValueError(
                f"PaiNN: envelope must be 'cosine' or 'polynomial', got {hp['envelope']!r}"
            )
        for name in ("n_features", "n_layers", "n_radial_basis"):
            if int(hp[name]) < 1:
                raise ValueError(f"PaiNN: {name} must be >= 1, got {hp[name]!r}")
        if n_species < 1 or cutoff <= 0:
            raise ValueError(f"PaiNN: need n_species >= 1 and cutoff > 0, got {n_species}, {cutoff}")
        self.n_species = int(n_species)
        self.cutoff = float(cutoff)
        self.n_features = f = int(hp["n_features"])
        self.n_layers = int(hp["n_layers"])
        self.n_radial_basis = int(hp["n_radial_basis"])
        self.envelope = str(hp["envelope"])
        self.envelope_p = int(hp["envelope_p"])
        self.avg_num_neighbors = float(hp["avg_num_neighbors"])
        self.readout_hidden = int(hp["readout_hidden"]) or max(f // 2, 1)
        ke, km, ku, kr = jax.random.split(key, 4)
        self.embedding = SpeciesEmbedding(n_species, f, key=ke)
        self.messages = tuple(
            _Message(f, self.n_radial_basis, key=k) for k in jax.random.split(km, self.n_layers)
        )
        self.updates = tuple(_Update(f, key=k) for k in jax.random.split(ku, self.n_layers))
        self.readout = MLP((f, self.readout_hidden, 1), key=kr)

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor keywords that rebuild this model's skeleton (JSON-friendly; used by
        `forcefield.save`)."""
        return hyperparameter_dict(self, DEFAULTS)

    @property
    def n_message_passing_layers(self) -> int:
        """Receptive field in graph hops: a bead's energy depends on beads up to this many hops away."""
        return self.n_layers

    def node_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        """Per-bead energies in kcal/mol, exactly zero (with zero gradient) on padded beads.

        **Arguments:**

        - `batch`: a packed batch (no leading device axis) whose edges use this model's cutoff.

        **Returns:** an `(n_node,)` array.
        """
        n = batch.n_node
        f = self.n_features
        geo = edge_geometry(batch)
        dtype = batch.positions.dtype
        rbf = bessel_basis(geo.distances, self.cutoff, self.n_radial_basis)
        if self.envelope == "cosine":
            fcut = cosine_cutoff(geo.distances, self.cutoff)
        else:
            fcut = polynomial_envelope(geo.distances, self.cutoff, self.envelope_p)
        fcut = jnp.where(geo.mask, fcut, 0.0)
        snd, rcv = batch.senders, batch.receivers
        inv_avg = 1.0 / self.avg_num_neighbors

        s = self.embedding(batch.species).astype(dtype)  # (n, F)
        v = jnp.zeros((n, 3, f), dtype)  # (n, 3, F)
        for msg, upd in zip(self.messages, self.updates):
            # message block
            x = msg.phi(s)[snd] * (msg.filter(rbf) * fcut[:, None])  # (E, 3F); zero on padding
            x_s, x_vv, x_vs = x[:, :f], x[:, f : 2 * f], x[:, 2 * f :]
            dv_e = x_vv[:, None, :] * v[snd] + x_vs[:, None, :] * geo.unit[:, :, None]
            agg = jax.ops.segment_sum(jnp.concatenate([x_s[:, None, :], dv_e], axis=1), rcv, num_segments=n)
            ds, dv = agg[:, 0], agg[:, 1:]  # (n, F), (n, 3, F)
            if self.avg_num_neighbors != 1.0:
                ds, dv = ds * inv_avg, dv * inv_avg
            s = s + ds
            v = v + dv
            # update block
            uv = upd.u(v)
            vv = upd.v(v)
            sq = jnp.sum(vv * vv, axis=1)  # (n, F)
            ok = sq > 1e-12
            vnorm = jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)
            a = upd.mlp(jnp.concatenate([s, vnorm], axis=-1))
            a_vv, a_sv, a_ss = a[:, :f], a[:, f : 2 * f], a[:, 2 * f :]
            v = v + a_vv[:, None, :] * uv
            s = s + a_sv * jnp.sum(uv * vv, axis=1) + a_ss
        e = self.readout(s)[:, 0]
        return jnp.where(batch.node_mask, e, 0.0)
