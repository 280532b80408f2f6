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

The filters are computed once per pair, and their derivative in the distance is taken in forward mode
(`radial.pair_function`): one more (pairs, 3F) matmul of the basis's slope, and a row-wise dot in the
reverse pass. Plain reverse mode keeps the filters for the backward pass and writes their full cotangent for a
transposed matmul. On the H200 compile (`benchmarks/bench_hlo.py painn --target h200`) a 128-replica step
moves 2.45 GB instead of 3.12 (floor 0.88 → 0.74 ms), a 1,024-replica step 16.7 instead of 22.0, and a
training step 8.9 instead of 10.4.

The first message block sees `v = 0`, so its `v_j ∘ φ_vv W_vv` term is left out, with the φ_vv and W_vv
columns it would need: the same function (`tests/test_painn_mace.py` checks the energies against a
transcription of the paper's equations), and on the H200 compile a 128-replica step moves 2.19 GB instead of
2.37, a training step 8.43 instead of 8.55.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..energy import AbstractBackbone
from ..graph import Batch
from .radial import (MLP, Dense, SpeciesEmbedding, bessel_basis, cosine_cutoff, edge_geometry,
                     hyperparameter_values, pair_function, polynomial_envelope)  # fmt: skip

PRESETS: dict[str, dict[str, Any]] = {
    # a quick model for tests and CPU smoke runs
    "small": dict(n_features=32, n_layers=2, n_radial_basis=16),
    # CPU-friendly default: the paper's depth and basis at half its width
    "default": dict(n_features=64, n_layers=3, n_radial_basis=20),
    # the paper's QM9/MD17 size (128 features, 3 interactions, 20 radial functions)
    "large": dict(n_features=128, n_layers=3, n_radial_basis=20),
}
"""Size presets (resolved by `modules.backbones.make_backbone`); every constructor keyword can be
overridden."""


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
    - `n_features`: width of the scalar and vector features.
    - `n_layers`: interaction (message + update) layers.
    - `n_radial_basis`: Bessel radial basis functions.
    - `envelope`: cutoff function, `"cosine"` (published) or `"polynomial"`.
    - `envelope_p`: exponent of the polynomial envelope.
    - `avg_num_neighbors`: aggregated messages are divided by this (1: the published plain sum).
    - `readout_hidden`: hidden width of the readout MLP; 0 means `n_features // 2` (published).

    Size presets are in `PRESETS`; `modules.backbones.make_backbone` resolves them.
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
        n_features: int = 64,
        n_layers: int = 3,
        n_radial_basis: int = 20,
        envelope: str = "cosine",
        envelope_p: int = 6,
        avg_num_neighbors: float = 1.0,
        readout_hidden: int = 0,
    ):
        if envelope not in ("cosine", "polynomial"):
            raise ValueError(f"PaiNN: envelope must be 'cosine' or 'polynomial', got {envelope!r}")
        for name, value in (("n_features", n_features), ("n_layers", n_layers),
                            ("n_radial_basis", n_radial_basis)):  # fmt: skip
            if int(value) < 1:
                raise ValueError(f"PaiNN: {name} must be >= 1, got {value!r}")
        if n_species < 1 or cutoff <= 0:
            raise ValueError(f"PaiNN: need n_species >= 1 and cutoff > 0, got {n_species}, {cutoff}")
        self.n_species = int(n_species)
        self.cutoff = float(cutoff)
        self.n_features = f = int(n_features)
        self.n_layers = int(n_layers)
        self.n_radial_basis = int(n_radial_basis)
        self.envelope = str(envelope)
        self.envelope_p = int(envelope_p)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.readout_hidden = int(readout_hidden) or max(f // 2, 1)
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
        return hyperparameter_values(self)

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
        # radial basis, cutoff and filters once per pair (on a paired batch; else per edge)
        pg = geo.pair_view()

        def cut(r):
            if self.envelope == "cosine":
                return cosine_cutoff(r, self.cutoff)
            return polynomial_envelope(r, self.cutoff, self.envelope_p)

        def filters(r, wb):  # W(r) = Linear(rbf(r)) f_cut(r), (pairs, 3F)
            fc = cut(r)[:, None]
            return jnp.concatenate([bessel_basis(r, self.cutoff, self.n_radial_basis) * fc, fc], -1) @ wb

        snd, rcv = batch.senders, batch.receivers
        inv_avg = 1.0 / self.avg_num_neighbors

        s = self.embedding(batch.species).astype(dtype)  # (n, F)
        v = None  # (n, 3, F), zero until the first message block
        for msg, upd in zip(self.messages, self.updates):
            # message block
            with jax.named_scope("painn_message"):
                wb = jnp.concatenate([msg.filter.weight, msg.filter.bias[None]])
                phi = msg.phi(s)
                if v is None:  # v = 0: the v_j ∘ φ_vv W_vv term is zero, so its columns are not computed
                    wb, phi = (jnp.concatenate([a[:, :f], a[:, 2 * f :]], axis=1) for a in (wb, phi))
                w = jnp.where(pg.mask[:, None], pair_function(filters, pg.distances, wb), 0.0)
                x = phi[snd] * geo.spread(w)  # (E, 3F), or (E, 2F) in the first block; zero on padding
                x_s, x_vs = x[:, :f], x[:, -f:]
                dv_e = x_vs[:, None, :] * geo.unit[:, :, None]
                if v is not None:
                    dv_e = dv_e + x[:, None, f : 2 * f] * v[snd]
                agg = jax.ops.segment_sum(jnp.concatenate([x_s[:, None, :], dv_e], axis=1), rcv, num_segments=n)
                ds, dv = agg[:, 0], agg[:, 1:]  # (n, F), (n, 3, F)
                if self.avg_num_neighbors != 1.0:
                    ds, dv = ds * inv_avg, dv * inv_avg
                s = s + ds
                v = dv if v is None else v + dv
            # update block
            with jax.named_scope("painn_update"):
                # U v and V v (both bias-free) as one matmul, and one per derivative: fewer, larger GEMMs
                uvv = v @ jnp.concatenate([upd.u.weight, upd.v.weight], axis=1)
                uv, vv = uvv[..., :f], uvv[..., f:]
                sq = jnp.sum(vv * vv, axis=1)  # (n, F)
                ok = sq > 1e-12
                vnorm = jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)
                a = upd.mlp(jnp.concatenate([s, vnorm], axis=-1))
                a_vv, a_sv, a_ss = a[:, :f], a[:, f : 2 * f], a[:, 2 * f :]
                v = v + a_vv[:, None, :] * uv
                s = s + a_sv * jnp.sum(uv * vv, axis=1) + a_ss
        e = self.readout(s)[:, 0]
        return jnp.where(batch.node_mask, e, 0.0)
