"""Allegro: a strictly local, E(3)-equivariant pair-energy backbone (Musaelian et al., Nat. Commun. 2023).

Our own implementation on e3nn-jax conventions (real spherical harmonics and Clebsch-Gordan tensors of
`e3nn_jax`), following the published architecture. Every quantity lives on a directed edge ij of the
radius graph, with centre i = `receivers[e]` and neighbour j = `senders[e]` (the edge convention of
`graph.Batch`; both directions are present in the batch, so every unordered pair gives two
edge energies, one per centre):

1. two-body latent: `x_ij = u(r_ij) MLP_2b(emb(Z_i) ‖ emb(Z_j) ‖ B(r_ij) u(r_ij))` with a sine Bessel
   basis `B` and the polynomial envelope `u`;
2. tensor track: per channel c (`n_tensor_features` of them) and per spherical-harmonic order l,
   `V_ij = w_ij ⊙ Y(r̂_ij)` with weights `w_ij = Linear(x_ij)`;
3. each layer: the centre's embedded environment `Γ_i = Σ_{k∈N(i)} w_ik ⊙ Y(r̂_ik) / sqrt(avg_num_neighbors)`
   (weights from the current latents), a channel-wise ("uuu") tensor product `V_ij ⊗ Γ_i` with learned
   per-channel path weights, a per-irrep linear mix of channels; the scalar (0e) outputs join the latent:
   `x_ij ← a x_ij + b u(r_ij) MLP_latent(x_ij ‖ scalars)` with learned a² + b² = 1 (residual mixing);
4. edge energy `E_ij = u(r_ij) MLP_out(x_ij)`, summed onto the centre bead, then a learnable per-species
   scale and shift: `E_i = s[Z_i] Σ_j E_ij + t[Z_i]`.

Only irreps that can still reach the final scalars are tracked (the last layer computes 0e only). All
MLPs are bias-free with SiLU on hidden layers, as in the reference, so a zero latent gives a zero energy.

Hyperparameters (constructor keywords; the presets in `PRESETS`, resolved by
`modules.backbones.make_backbone`, differ in `n_layers` and `n_radial_basis`): `n_layers`,
`n_radial_basis` (Bessel functions), `l_max` (2), `parity` (False: only natural-parity
irreps 0e, 1o, 2e, ... are tracked ("o3_restricted", ~4x cheaper tensor products); True: both parities
("o3_full")), `n_tensor_features` (channels of the tensor track, 16), `latent_dim` (64), `two_body_hidden`
((64,)), `latent_hidden` ((64,)), `edge_energy_hidden` ((32,)), `embed_dim` (16), `avg_num_neighbors`
(20.0: CA beads at 10 Å have ~15-30 neighbours), `envelope_p` (6).

The tensor product has two formulations of one function, picked by the compile target
(`_AllegroLayer.tensor_product`): per-node matrices gathered per edge on CPU, and on GPUs a per-edge
contraction over the nonzeros of the Clebsch-Gordan tensor whose custom VJPs avoid scatter-adds (fewer bytes
and atomics in the H200 compile). Use reverse mode for derivatives of any order, on every platform: both
formulations are traced (the compile keeps one) and a custom VJP has no forward mode, so forward mode can fail
on CPU too (`jax.jvp` of the gradient under `jit` and `vmap` does). The tensor track is stored irreps-first,
`(d, e, c)`, on both (see `_AllegroLayer.tensor_product`).

The energy is O(3) invariant (it cannot tell a protein from its mirror image: chirality must come from the
prior's dihedral term).
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ..energy import AbstractBackbone
from ..graph import Batch
from .radial import (MLP, Irrep, SpeciesEmbedding, bessel_basis, edge_geometry, hyperparameter_values,
                     polynomial_envelope, sh_flip)  # fmt: skip
from .radial import irrep_dim as _dim
from .radial import sh_irreps
from .sparse import bilinear, sparse_spec

PRESETS: dict[str, dict] = {
    "default": dict(n_layers=3, n_radial_basis=24),
    "large": dict(n_layers=4, n_radial_basis=36),
    "med": dict(n_layers=3, n_radial_basis=18),
}
"""Size presets (layers, radial basis functions); other hyperparameters keep their defaults."""


def _products(a: Irrep, b: Irrep) -> list[Irrep]:
    return [(l, a[1] * b[1]) for l in range(abs(a[0] - b[0]), a[0] + b[0] + 1)]


def _sort(irs) -> tuple[Irrep, ...]:
    # 0e first (scalars are read from index 0), then by l, even before odd
    return tuple(sorted(set(irs), key=lambda ir: (ir[0], -ir[1])))


def layer_irreps(n_layers: int, l_max: int, parity: bool) -> tuple[tuple[tuple[Irrep, ...], ...], ...]:
    """Input and output irreps of every layer's tensor product, pruned to what reaches the final 0e.

    **Arguments:** the number of layers, the largest l, and whether both parities are tracked.

    **Returns:** `((in_0, out_0), (in_1, out_1), ...)`, each a tuple of (l, p) with 0e first.
    """
    sh = sh_irreps(l_max)
    allowed = [(l, p) for l in range(l_max + 1) for p in ((1, -1) if parity else ((-1) ** l,))]
    ins, outs = [sh], []
    for layer in range(n_layers):
        target = [(0, 1)] if layer == n_layers - 1 else allowed
        reach = {c for a in ins[-1] for b in sh for c in _products(a, b)}
        out = _sort(ir for ir in target if ir in reach)
        outs.append(out)
        ins.append(out)
    ins = ins[:-1]
    # backward pruning: keep an input irrep only if it has a path into this layer's (pruned) outputs
    for layer in reversed(range(n_layers)):
        keep = _sort(a for a in ins[layer] if any(c in outs[layer] for b in sh for c in _products(a, b)))
        ins[layer] = keep
        if layer > 0:
            outs[layer - 1] = keep
    if (0, 1) not in ins[0]:
        raise ValueError("Allegro irreps: no path to a scalar energy")
    return tuple((tuple(i), tuple(o)) for i, o in zip(ins, outs))


def _offsets(irs: tuple[Irrep, ...]) -> list[int]:
    return list(np.cumsum([0] + [_dim(ir) for ir in irs]))


@functools.lru_cache(maxsize=None)
def _path_tensors(irs_in: tuple[Irrep, ...], irs_sh: tuple[Irrep, ...], irs_out: tuple[Irrep, ...]):
    """Dense per-path Clebsch-Gordan tensors `(n_path, D_in, D_sh, D_out)` (float64 NumPy).

    Component normalisation: each output irrep has unit variance for unit-variance inputs and
    unit-variance path weights (factor sqrt(2 l_out + 1) / sqrt(paths into that output)).
    """
    oi, os_, oo = _offsets(irs_in), _offsets(irs_sh), _offsets(irs_out)
    paths = [
        (a, b, c)
        for a, ia in enumerate(irs_in)
        for b, ib in enumerate(irs_sh)
        for c, ic in enumerate(irs_out)
        if ic in _products(ia, ib)
    ]
    fan = {c: sum(1 for p in paths if p[2] == c) for c in range(len(irs_out))}
    t = np.zeros((len(paths), oi[-1], os_[-1], oo[-1]))
    for k, (a, b, c) in enumerate(paths):
        cg = np.asarray(e3nn.clebsch_gordan(irs_in[a][0], irs_sh[b][0], irs_out[c][0]))
        cg = cg * math.sqrt(_dim(irs_out[c])) / math.sqrt(fan[c])
        t[k, oi[a] : oi[a + 1], os_[b] : os_[b + 1], oo[c] : oo[c + 1]] = cg
    return t


def _irrep_index(irs: tuple[Irrep, ...]) -> np.ndarray:
    """For every component, the index of its irrep (to expand per-irrep weights to components)."""
    return np.concatenate([np.full(_dim(ir), k) for k, ir in enumerate(irs)]).astype(np.int32)


@functools.lru_cache(maxsize=None)
def _sparse_plan(irs_in: tuple[Irrep, ...], irs_sh: tuple[Irrep, ...], irs_out: tuple[Irrep, ...]):
    """The nonzeros of the summed path tensor (`sparse.sparse_spec`) and the per-path values on them,
    `(n_path, n_nonzero)`."""
    return sparse_spec(_path_tensors(irs_in, irs_sh, irs_out))


class _AllegroLayer(eqx.Module):
    """One Allegro layer: environment embedding, channel-wise TP, channel mix, latent update."""

    path_weights: Float[Array, "channels n_path"]
    mix: Float[Array, "n_irrep_out channels channels"]
    latent: MLP  # bias-free, as every Allegro MLP
    env: Float[Array, "latent channels_x_nsh"] | None  # env weights of the NEXT layer (None: last)
    resnet: Float[Array, ""]
    irs_in: tuple[Irrep, ...] = eqx.field(static=True)
    irs_sh: tuple[Irrep, ...] = eqx.field(static=True)
    irs_out: tuple[Irrep, ...] = eqx.field(static=True)

    def __init__(self, irs_in, irs_sh, irs_out, channels, latent_dim, latent_hidden, last, *, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.irs_in, self.irs_sh, self.irs_out = irs_in, irs_sh, irs_out
        n_path = _path_tensors(irs_in, irs_sh, irs_out).shape[0]
        self.path_weights = jax.random.normal(k1, (channels, n_path))
        self.mix = jax.random.normal(k2, (len(irs_out), channels, channels)) / math.sqrt(channels)
        self.latent = MLP((latent_dim + channels, *latent_hidden, latent_dim), key=k3, bias=False)
        self.env = (
            None
            if last
            else jax.random.normal(k4, (latent_dim, channels * len(irs_sh))) / math.sqrt(latent_dim)
        )
        self.resnet = jnp.zeros(())

    def tensor_product(
        self, v: Float[Array, "d_in e c"], gamma: Float[Array, "d_sh n c"], center: Array
    ) -> Float[Array, "d_out e c"]:
        """Channel-wise TP `V_ij ⊗ Γ_i` with per-channel path weights, then a per-irrep channel mix.

        The tensor track is stored irreps-first, `(d, e, c)`: the mix is then a batched matmul whose batch
        (irreps) axis is major, which cuBLAS runs without transposing its operand and result as `(e, c, d)`
        needed (the H200 compile of a training step moves 21.5 GB instead of 23.6, `benchmarks/bench_hlo.py
        --target h200`).

        Two formulations of the same function, chosen by the platform the program is compiled for
        (`lax.platform_dependent`: a saved model runs either way; an exported artifact carries the formulation of
        the platform it was lowered for):
        `node_matrices` on CPU, `sparse_tp` on GPUs (see each).

        **Arguments:** the edge features `v`, the node environments `gamma`, each edge's centre `center`.

        **Returns:** the mixed TP per edge, `(d_out, e, c)`.
        """
        out = jax.lax.platform_dependent(  # closures: the branches are hashed, and bound methods hash arrays
            v, gamma, center, cpu=lambda *a: self.node_matrices(*a), default=lambda *a: self.sparse_tp(*a)
        )
        mix = self.mix[_irrep_index(self.irs_out)]  # (d_out, c, c)
        return jnp.einsum("dec,dcf->def", out, mix)

    def node_matrices(
        self, v: Float[Array, "d_in e c"], gamma: Float[Array, "d_sh n c"], center: Array
    ) -> Float[Array, "d_out e c"]:
        """The TP through per-node matrices (the CPU formulation). It is linear in Γ, which lives on
        nodes: `M_i = W · Γ_i` (a `d_in x d_out` matrix per node and channel) is formed per node and each
        edge does one small matrix-vector product, ~9x fewer flops than contracting the dense CG tensor
        per edge (and a 2x faster backward pass on CPU). On a GPU the gathered `(e, c, 9, 9)` matrices and
        their scatter-added gradients dominate the traffic."""
        with jax.named_scope("allegro_node_matrices"):
            cg = jnp.asarray(_path_tensors(self.irs_in, self.irs_sh, self.irs_out), v.dtype)
            w = jnp.einsum("cp,pijk->cijk", self.path_weights.astype(v.dtype), cg)
            m = jnp.einsum("jnc,cijk->ncik", gamma, w)
            return jnp.einsum("eci,ecik->eck", jnp.moveaxis(v, 0, -1), m[center]).transpose(2, 0, 1)

    def sparse_tp(
        self, v: Float[Array, "d_in e c"], gamma: Float[Array, "d_sh n c"], center: Array
    ) -> Float[Array, "d_out e c"]:
        """The TP per edge over the nonzeros of the summed Clebsch-Gordan tensor (83 of 729 at l_max 2,
        the GPU formulation): `out[o, e, c] = Σ_z w[c, z] V[i_z, e, c] Γ[j_z, center_e, c]`. Its custom VJPs
        are again gathers, products and reductions, to any order (`sparse.bilinear`), where autodiff of the node
        matrices scatters onto nodes. The H200 compile of a 128-replica simulation step moves 7.3 GB
        instead of 10.9 and scatters 191 M elements instead of 493; a training step 24.8 GB instead of
        33.4 (`benchmarks/bench_hlo.py --target h200`). On CPU it is 3.5-5.5x slower."""
        with jax.named_scope("allegro_sparse_tp"):
            spec, values = _sparse_plan(self.irs_in, self.irs_sh, self.irs_out)
            wz = self.path_weights.astype(v.dtype) @ jnp.asarray(values, v.dtype)  # (c, n_nonzero)
            return bilinear(v, gamma[:, center], wz, spec, irreps_first=True)


def _env_features(weights, y, sh_dims: tuple[int, ...], channels):
    """w ⊙ Y per channel, irreps-first: weights (e, c*n_sh) and Y (e, d_sh) → (d_sh, e, c), each irrep's
    weight broadcast over its `sh_dims` components. Broadcasts, not a gather: the gather's transpose
    scatter-adds onto zeroed (e, c, n_sh) buffers (atomics on a GPU)."""
    w = weights.reshape(weights.shape[0], channels, len(sh_dims))
    offsets = np.cumsum([0, *sh_dims])
    return jnp.concatenate(
        [y[:, offsets[k] : offsets[k + 1]].T[:, :, None] * w[None, :, :, k] for k in range(len(sh_dims))], axis=0
    )


class Allegro(AbstractBackbone):
    """Allegro pair-energy backbone (see the module docstring for the architecture and hyperparameters).

    **Arguments (constructor):**

    - `n_species`: number of bead species.
    - `cutoff`: radius-graph cutoff in Å (edges beyond it must not be in the batch; the envelope makes
      energies smooth at it).
    - `key`: PRNG key for the initial parameters.
    - the hyperparameters listed in the module docstring, as keywords.
    """

    embedding: SpeciesEmbedding
    two_body: MLP | None
    two_body_center: Float[Array, "embed hidden"]
    two_body_neighbour: Float[Array, "embed hidden"]
    two_body_radial: Float[Array, "n_radial_basis hidden"]
    env0: Float[Array, "latent channels_x_nsh"]
    layers: tuple[_AllegroLayer, ...]
    edge_energy: MLP
    species_scale: Float[Array, " n_species"]
    species_shift: Float[Array, " n_species"]

    n_species: int = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    n_layers: int = eqx.field(static=True)
    n_radial_basis: int = eqx.field(static=True)
    l_max: int = eqx.field(static=True)
    parity: bool = eqx.field(static=True)
    n_tensor_features: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    two_body_hidden: tuple[int, ...] = eqx.field(static=True)
    latent_hidden: tuple[int, ...] = eqx.field(static=True)
    edge_energy_hidden: tuple[int, ...] = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    avg_num_neighbors: float = eqx.field(static=True)
    envelope_p: int = eqx.field(static=True)

    PRESETS: ClassVar[dict[str, dict]] = PRESETS

    def __init__(
        self,
        n_species: int,
        cutoff: float = 10.0,
        *,
        key: PRNGKeyArray,
        n_layers: int = 3,
        n_radial_basis: int = 24,
        l_max: int = 2,
        parity: bool = False,
        n_tensor_features: int = 16,
        latent_dim: int = 64,
        two_body_hidden: tuple[int, ...] = (64,),
        latent_hidden: tuple[int, ...] = (64,),
        edge_energy_hidden: tuple[int, ...] = (32,),
        embed_dim: int = 16,
        avg_num_neighbors: float = 20.0,
        envelope_p: int = 6,
    ):
        if n_species < 1 or n_layers < 1 or l_max < 0 or n_radial_basis < 1 or n_tensor_features < 1:
            raise ValueError(
                f"Allegro: need n_species >= 1, n_layers >= 1, l_max >= 0, n_radial_basis >= 1, "
                f"n_tensor_features >= 1; got {n_species}, {n_layers}, {l_max}, {n_radial_basis}, "
                f"{n_tensor_features}"
            )
        if not cutoff > 0:
            raise ValueError(f"Allegro: cutoff must be positive (Å), got {cutoff}")
        self.n_species, self.cutoff = int(n_species), float(cutoff)
        self.n_layers, self.n_radial_basis, self.l_max = int(n_layers), int(n_radial_basis), int(l_max)
        self.parity, self.n_tensor_features = bool(parity), int(n_tensor_features)
        self.latent_dim = int(latent_dim)
        self.two_body_hidden = tuple(int(h) for h in two_body_hidden)
        self.latent_hidden = tuple(int(h) for h in latent_hidden)
        self.edge_energy_hidden = tuple(int(h) for h in edge_energy_hidden)
        self.embed_dim, self.avg_num_neighbors = int(embed_dim), float(avg_num_neighbors)
        self.envelope_p = int(envelope_p)

        keys = jax.random.split(key, 8 + n_layers)
        sizes = (self.two_body_hidden or (self.latent_dim,))
        h0 = sizes[0]
        self.embedding = SpeciesEmbedding(n_species, embed_dim, key=keys[0])
        fan = 2 * embed_dim + n_radial_basis
        self.two_body_center = jax.random.normal(keys[1], (embed_dim, h0)) / math.sqrt(fan)
        self.two_body_neighbour = jax.random.normal(keys[2], (embed_dim, h0)) / math.sqrt(fan)
        self.two_body_radial = jax.random.normal(keys[3], (n_radial_basis, h0)) / math.sqrt(fan)
        # the rest of the two-body MLP after the (split) first layer
        self.two_body = (
            MLP((*sizes, self.latent_dim), key=keys[4], bias=False) if self.two_body_hidden else None
        )
        irs = layer_irreps(n_layers, l_max, parity)
        self.env0 = jax.random.normal(keys[5], (latent_dim, n_tensor_features * (l_max + 1))) / math.sqrt(
            latent_dim
        )
        sh = sh_irreps(l_max)
        self.layers = tuple(
            _AllegroLayer(
                irs[k][0], sh, irs[k][1], n_tensor_features, latent_dim, self.latent_hidden,
                last=k == n_layers - 1, key=keys[8 + k],
            )  # fmt: skip
            for k in range(n_layers)
        )
        self.edge_energy = MLP((latent_dim, *self.edge_energy_hidden, 1), key=keys[6], bias=False)
        self.species_scale = jnp.ones((n_species,))
        self.species_shift = jnp.zeros((n_species,))

    def hyperparameters(self) -> dict:
        """The constructor keywords that rebuild this model's skeleton (JSON-friendly)."""
        return hyperparameter_values(self)

    def edge_energies(self, batch: Batch) -> Float[Array, " n_edge"]:
        """Per-edge energies E_ij (kcal/mol) with centre `receivers`, zero on padded edges.

        **Arguments:**

        - `batch`: a packed batch (no leading device axis).

        **Returns:** an `(n_edge,)` array.
        """
        center, nb = batch.receivers, batch.senders
        dtype = batch.positions.dtype
        geo = edge_geometry(batch)
        # envelope, radial basis and spherical harmonics once per pair (paired batch; else per edge)
        pg = geo.pair_view()
        u_p = polynomial_envelope(pg.distances, self.cutoff, self.envelope_p) * (pg.mask & (pg.distances > 0))
        u = geo.spread(u_p)
        sh = e3nn.Irreps.spherical_harmonics(self.l_max)
        y = geo.per_pair(
            lambda g: e3nn.spherical_harmonics(sh, g.unit, normalize=False, normalization="component").array,
            flip=sh_flip(self.l_max),
        ).astype(dtype)  # (e, d_sh)
        sh_dims = tuple(_dim(ir) for ir in sh_irreps(self.l_max))
        c = self.n_tensor_features
        n_node = batch.n_node

        # two-body latent; the first linear layer is split so species terms are done per node and
        # the radial term per pair
        with jax.named_scope("allegro_two_body"):
            emb = self.embedding(batch.species)
            radial = bessel_basis(pg.distances, self.cutoff, self.n_radial_basis) * u_p[:, None]
            h = (emb @ self.two_body_center)[center] + (emb @ self.two_body_neighbour)[nb]
            h = h + geo.spread(radial @ self.two_body_radial)
            x = self.two_body(jax.nn.silu(h)) if self.two_body is not None else h
            x = x * u[:, None]

        env_w = x @ self.env0
        v = _env_features(env_w, y, sh_dims, c)  # V^0 = w ⊙ Y, (d_sh, e, c)
        norm = 1.0 / math.sqrt(self.avg_num_neighbors)
        for layer in self.layers:
            with jax.named_scope("allegro_tensor_product"):
                wy = _env_features(env_w, y, sh_dims, c)
                gamma = jax.ops.segment_sum(wy.transpose(1, 0, 2), center, num_segments=n_node)
                gamma = gamma.transpose(1, 0, 2) * norm  # (d_sh, n, c)
                v = layer.tensor_product(v, gamma, center)
            with jax.named_scope("allegro_latent"):
                scalars = v[0]
                new = layer.latent(jnp.concatenate([x, scalars], axis=-1)) * u[:, None]
                b = jax.nn.sigmoid(layer.resnet)
                x = (x + b * new) / jnp.sqrt(1.0 + b * b)
                if layer.env is not None:
                    env_w = x @ layer.env
        return self.edge_energy(x)[:, 0] * u

    @property
    def n_message_passing_layers(self) -> int:
        """Receptive field in graph hops: 1, Allegro is strictly local (a bead's energy depends only on
        its own edges, whatever `n_layers`), so the exporter's nbr_order is [1, 2]."""
        return 1

    def node_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        """Per-bead energies (kcal/mol): edge energies summed onto the centre, per-species scale/shift.

        **Arguments:**

        - `batch`: a packed batch (no leading device axis).

        **Returns:** an `(n_node,)` array, zero on padded beads.
        """
        e = jax.ops.segment_sum(self.edge_energies(batch), batch.receivers, num_segments=batch.n_node)
        z = batch.species
        e = self.species_scale[z] * e + self.species_shift[z]
        return jnp.where(batch.node_mask, e, 0.0)
