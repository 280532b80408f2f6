"""MACE: higher-order equivariant message passing (Batatia, Kovács, Simm, Ortner & Csányi, NeurIPS 2022).

Our own implementation on e3nn-jax building blocks (real spherical harmonics and Clebsch-Gordan
coefficients, the reduced symmetric tensor-product basis). Node features are E(3) irreps with one
multiplicity `C` for every irrep of `hidden_irreps` (e.g. `"32x0e + 32x1o"`), stored per irrep as
`(n, C, 2l+1)` arrays. Each of the `n_layers` interaction layers does, as published:

1. `linear_up`: a channel-mixing linear map per irrep of the input features `h^t`.
2. One-particle basis (the "A-basis"): for every path `l1 ⊗ l2 → l3` (input irrep `l1`, spherical
   harmonic `l2 ≤ l_max`, target irrep `l3` among the spherical-harmonic irreps)
   `φ_ij = R_path,c(r_ij) (h_j ⊗ Y(r̂_ij))_l3`, summed over neighbours j and divided by
   `avg_num_neighbors`, then a linear map mixing (paths × channels) → `C` channels per `l3`.
   The radial weights `R` are an MLP (no biases, SiLU) of the Bessel basis times the polynomial
   envelope, so they vanish smoothly at the cutoff. The products `h_j ⊗ Y` have two formulations,
   picked by the compile target (`_edge_products`): batched dots per edge on CPU, a contraction over
   the Clebsch-Gordan blocks' nonzeros with scatter-free custom VJPs on GPUs (`sparse.bilinear`). As
   with Allegro, use reverse mode for derivatives of any order.
3. Higher body order (the "B-basis"): per channel, symmetric contractions of `A` with itself up to
   the correlation order `ν = correlation`, `B_L = Σ_ν Σ_k W^ν_{z_i,k,c} (U^{ν,L}_k · A^{⊗ν})`, with
   learnable weights per bead species `z_i` and the generalised Clebsch-Gordan basis `U` from
   `e3nn.reduced_symmetric_tensor_product_basis`. `A^{⊗ν}` is evaluated on the distinct (sorted)
   monomials only, with `U` summed over permutations, and only on `U`'s nonzero entries (~2%):
   row gathers of `A`, products, and one sorted `segment_sum` into the basis functions.
4. Update: `h^{t+1} = Linear(B) + Linear_{z_i}(h^t)` (the species-dependent residual of MACE; the
   first layer, whose input is the species embedding, has none, as in MACE).
5. Readout of every layer's scalars: linear for all but the last layer, a one-hidden-layer SiLU MLP
   for the last; per-bead energies are their sum. The last layer only computes scalar outputs.

Presets (`PRESETS`, resolved by `modules.backbones.make_backbone`; every constructor keyword can be
overridden):

- `small`: `16x0e + 16x1o`, `l_max = 2`, correlation 3, 2 layers, radial MLP (32, 32): tests, CPU smoke.
- `default`: `32x0e + 32x1o`, `l_max = 3`, correlation 3, 2 layers, radial MLP (64, 64, 64): CPU training.
- `large`: `64x0e + 64x1o + 64x2e`, `l_max = 3`, correlation 3, 2 layers: the MACE paper's accuracy setting.

Aggregations are `segment_sum` over the (padded) edge list; no dense n × n arrays. Padded edges get
zero radial weights and padded beads exactly zero energy.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..energy import AbstractBackbone
from ..graph import Batch
from .radial import (MLP, Dense, SpeciesEmbedding, bessel_basis, edge_geometry, hyperparameter_values,
                     sh_flip)  # fmt: skip
from .radial import Irrep as Ir
from .radial import irrep_dim as _dim
from .radial import polynomial_envelope
from .radial import sh_irreps as _sh_irs
from .sparse import bilinear, sparse_spec

PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(hidden_irreps="16x0e + 16x1o", l_max=2, correlation=3, n_layers=2,
                  radial_hidden=(32, 32), readout_hidden=8),
    "default": dict(hidden_irreps="32x0e + 32x1o", l_max=3, correlation=3, n_layers=2,
                    radial_hidden=(64, 64, 64), readout_hidden=16),
    "large": dict(hidden_irreps="64x0e + 64x1o + 64x2e", l_max=3, correlation=3, n_layers=2,
                  radial_hidden=(64, 64, 64), readout_hidden=16),
}  # fmt: skip
"""Size presets; the other constructor keywords keep their defaults unless overridden."""


# ----------------------------------------------------------------------------------------------
# static plans (NumPy constants built once per configuration, embedded in the jaxpr as constants)


def _parse_hidden(hidden_irreps: str) -> tuple[int, tuple[Ir, ...]]:
    irreps = e3nn.Irreps(hidden_irreps)
    muls = {mul for mul, _ in irreps}
    if len(muls) != 1:
        raise ValueError(
            f"MACE: hidden_irreps {hidden_irreps!r} must use one multiplicity for every irrep "
            "(the symmetric contraction is channel-wise)"
        )
    irs = tuple((ir.l, ir.p) for _, ir in irreps)
    if len(set(irs)) != len(irs):
        raise ValueError(f"MACE: hidden_irreps {hidden_irreps!r} repeats an irrep")
    if (0, 1) not in irs:
        raise ValueError(f"MACE: hidden_irreps {hidden_irreps!r} must contain 0e (the energy)")
    return muls.pop(), irs


def _irreps_str(irs: Sequence[Ir]) -> str:
    return " + ".join(str(e3nn.Irrep(l, p)) for l, p in irs)


@functools.lru_cache(maxsize=None)
def _conv_plan(in_irs: tuple[Ir, ...], sh_irs: tuple[Ir, ...]):
    """Paths `l1 ⊗ l2 → l3` (l3 among the spherical-harmonic irreps) and their CG blocks.

    Returns `(blocks, path_irs)`: per input irrep a `(d_sh, d1, D1)` array mapping `Y ⊗ h` to the
    concatenated outputs of its paths, and the target irrep of every path (in output order).
    """
    sh_off = np.concatenate([[0], np.cumsum([_dim(i) for i in sh_irs])])
    blocks, path_irs = [], []
    for l1, p1 in in_irs:
        cols = []
        for j, (l2, p2) in enumerate(sh_irs):
            for l3, p3 in sh_irs:
                if p3 != p1 * p2 or not abs(l1 - l2) <= l3 <= l1 + l2:
                    continue
                cg = np.asarray(e3nn.clebsch_gordan(l1, l2, l3), np.float64) * np.sqrt(2 * l3 + 1)
                block = np.zeros((sh_off[-1], 2 * l1 + 1, 2 * l3 + 1))
                block[sh_off[j] : sh_off[j + 1]] = cg.transpose(1, 0, 2)
                cols.append(block)
                path_irs.append((l3, p3))
        blocks.append(np.concatenate(cols, axis=-1) if cols else np.zeros((sh_off[-1], 2 * l1 + 1, 0)))
    return tuple(blocks), tuple(path_irs)


@functools.lru_cache(maxsize=None)
def _block_paths(in_irs: tuple[Ir, ...], sh_irs: tuple[Ir, ...]) -> tuple[range, ...]:
    """Per input irrep, the indices in `_conv_plan`'s `path_irs` of its paths: its block's columns, in order
    (an input irrep without paths has an empty range)."""
    blocks, path_irs = _conv_plan(in_irs, sh_irs)
    out, p = [], 0
    for b in blocks:
        start, width = p, 0
        while width < b.shape[-1]:
            width, p = width + _dim(path_irs[p]), p + 1
        if width != b.shape[-1]:
            raise AssertionError("_conv_plan's paths do not tile its blocks")
        out.append(range(start, p))
    if p != len(path_irs):
        raise AssertionError("_conv_plan has paths outside its blocks")
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _conv_sparse_plan(in_irs: tuple[Ir, ...], sh_irs: tuple[Ir, ...]) -> tuple:
    """Per input irrep, the nonzeros of its `_conv_plan` block as `(spec, values)` (`sparse.sparse_spec`
    with x = the input irrep's components, y = the spherical harmonics); None for a block without paths."""
    blocks, _ = _conv_plan(in_irs, sh_irs)
    return tuple(sparse_spec(b.transpose(1, 0, 2)) if b.shape[-1] else None for b in blocks)


@functools.lru_cache(maxsize=None)
def _symmetric_plan(sh_irs: tuple[Ir, ...], out_irs: tuple[Ir, ...], correlation: int):
    """The generalised CG basis of the symmetric contraction, on distinct monomials of A.

    Returns `(monomials, ubar, slices)`: per degree ν an `(m_ν, ν)` array of sorted component
    indices; the matrix `(Σ m_ν, Σ_L K_L d_L)` from those monomials to every output irrep's basis
    functions; and per output irrep `(offset, K_L)` into the columns.
    """
    a_irreps = e3nn.Irreps(_irreps_str(sh_irs))
    d = a_irreps.dim
    per_nu: list[list[np.ndarray]] = []  # [nu][L] -> (d,)*nu x K x d_L
    for nu in range(1, correlation + 1):
        row = []
        for ir in out_irs:
            u = e3nn.reduced_symmetric_tensor_product_basis(a_irreps, nu, keep_ir=[e3nn.Irrep(*ir)])
            arr = np.asarray(u.array, np.float64)
            row.append(arr.reshape((d,) * nu + (-1, _dim(ir))))
        per_nu.append(row)
    monomials, rows = [], []
    for nu, row in enumerate(per_nu, start=1):
        mono = np.asarray(list(itertools.combinations_with_replacement(range(d), nu)), np.int64)
        # every index tuple -> its sorted monomial; U summed over the permutations of each monomial
        flat_idx = np.asarray(list(itertools.product(range(d), repeat=nu)), np.int64)
        key = np.ravel_multi_index(np.sort(flat_idx, axis=1).T, (d,) * nu)
        pos = {k: i for i, k in enumerate(np.ravel_multi_index(mono.T, (d,) * nu))}
        target = np.asarray([pos[k] for k in key])
        sym = []
        for arr in row:
            acc = np.zeros((len(mono),) + arr.shape[nu:])
            np.add.at(acc, target, arr.reshape((-1,) + arr.shape[nu:]))
            sym.append(acc)
        keep = np.zeros(len(mono), bool)
        for acc in sym:
            keep |= np.abs(acc).reshape(len(mono), -1).max(axis=1) > 1e-9
        monomials.append(mono[keep].astype(np.int32))
        rows.append([acc[keep] for acc in sym])
    # block layout: columns per output irrep L = (K_L = Σ_ν K_ν,L) x d_L, rows = monomials by degree
    n_rows = sum(len(m) for m in monomials)
    row_off = np.concatenate([[0], np.cumsum([len(m) for m in monomials])])
    cols, slices, col = [], [], 0
    for i, ir in enumerate(out_irs):
        ks = [rows[nu][i].shape[1] for nu in range(correlation)]
        blk = np.zeros((n_rows, sum(ks), _dim(ir)))
        for nu in range(correlation):
            k0 = sum(ks[:nu])
            blk[row_off[nu] : row_off[nu + 1], k0 : k0 + ks[nu]] = rows[nu][i]
        cols.append(blk.reshape(n_rows, -1))
        slices.append((col, sum(ks)))
        col += sum(ks) * _dim(ir)
    ubar = np.concatenate(cols, axis=1)
    return tuple(monomials), ubar, tuple(slices)


@functools.lru_cache(maxsize=None)
def _sparse_symmetric_plan(sh_irs: tuple[Ir, ...], out_irs: tuple[Ir, ...], correlation: int):
    """The symmetric contraction as a sparse list (the generalised CG basis is ~2% dense).

    Returns `(idx, vals, cols, n_cols, slices)`: for every nonzero entry its monomial as
    `correlation` component indices (lower degrees padded with `d_sh`, which indexes a row of ones),
    its coefficient and its output column, sorted by column; and `slices` as in `_symmetric_plan`.
    """
    monomials, ubar, slices = _symmetric_plan(sh_irs, out_irs, correlation)
    d = sum(_dim(i) for i in sh_irs)
    padded = np.concatenate(
        [np.pad(m, ((0, 0), (0, correlation - m.shape[1])), constant_values=d) for m in monomials]
    )
    rows, cols = np.nonzero(np.abs(ubar) > 1e-12)
    order = np.argsort(cols, kind="stable")
    rows, cols = rows[order], cols[order]
    return (padded[rows].astype(np.int32), ubar[rows, cols], cols.astype(np.int32),
            ubar.shape[1], slices)  # fmt: skip


def _channel_linear(x: Float[Array, "n c m"], w: Float[Array, "c d"]) -> Float[Array, "n d m"]:
    return jnp.einsum("ncm,cd->ndm", x, w)


def _edge_products(
    x: Float[Array, "e c d1"], y: Float[Array, "e d_sh"], blk: np.ndarray, sparse: tuple
) -> Float[Array, "e c D1"]:
    """`out[e, c, k] = Σ_{q, m} blk[q, m, k] x[e, c, m] y[e, q]`: an input irrep's paths with the spherical
    harmonics, per edge. Two formulations of this function, chosen by the platform the program is compiled
    for (`lax.platform_dependent`): `_edge_dots` on CPU, `_edge_sparse` (with `sparse` = the block's
    `_conv_sparse_plan` entry) on GPUs."""
    return jax.lax.platform_dependent(x, y, cpu=lambda x, y: _edge_dots(x, y, blk),
                                      default=lambda x, y: _edge_sparse(x, y, sparse))  # fmt: skip


def _edge_dots(x, y, blk):
    """`Y · blk` per edge, then a batched dot per edge (batch = edges): measured 5x faster in the backward pass
    on CPU than an unrolled broadcast-multiply-add over m."""
    with jax.named_scope("mace_edge_dots"):
        yb = jnp.einsum("eq,qmk->emk", y, jnp.asarray(blk, x.dtype))  # (E, d1, D1)
        return jnp.einsum("ecm,emk->eck", x, yb)


def _edge_sparse(x, y, sparse):
    """The same over the block's nonzeros (`sparse.bilinear`, Y broadcast over channels): no `(E, d1, D1)`
    block per edge, no batched GEMMs with a batch of E, and derivatives of any order without scatters. The
    H200 compile of a 128-replica step moves 5.6 GB instead of 7.0 and of a training step 20.3 GB instead of
    23.4 (`benchmarks/bench_hlo.py --target h200`)."""
    spec, values = sparse
    with jax.named_scope("mace_sparse_tp"):
        return bilinear(x, y[:, None, :], jnp.asarray(values, x.dtype)[None], spec)


def _by_species(onehot: Float[Array, "n s"], w: Float[Array, "s ..."]) -> Float[Array, "n ..."]:
    """Per-bead rows `w[species]` as a one-hot matmul (a matmul, not a scatter, in the backward)."""
    return (onehot @ w.reshape(w.shape[0], -1)).reshape((onehot.shape[0],) + w.shape[1:])


def _normal(key: PRNGKeyArray, shape: tuple[int, ...], fan_in: int) -> Array:
    return jax.random.normal(key, shape) / np.sqrt(max(fan_in, 1))


# ----------------------------------------------------------------------------------------------
# one interaction + product + readout layer


class _Layer(eqx.Module):
    linear_up: tuple[Array, ...]  # per input irrep (C, C)
    radial: MLP  # n_radial_basis -> ... -> C * n_paths (no biases)
    linear_a: tuple[Array, ...]  # per sh irrep (C, P_l, C)
    sym_weights: tuple[Array, ...]  # per output irrep (n_species, K_L, C)
    linear_out: tuple[Array, ...]  # per output irrep (C, C)
    skip: tuple[Array | None, ...] | None  # per output irrep (n_species, C, C), or None (first layer)
    readout: Dense | MLP
    in_irs: tuple[Ir, ...] = eqx.field(static=True)
    out_irs: tuple[Ir, ...] = eqx.field(static=True)
    sh_irs: tuple[Ir, ...] = eqx.field(static=True)
    correlation: int = eqx.field(static=True)
    channels: int = eqx.field(static=True)

    def __init__(self, n_species, channels, in_irs, out_irs, sh_irs, correlation, n_radial_basis,
                 radial_hidden, readout_hidden, residual, last, *, key):  # fmt: skip
        c = channels
        self.in_irs, self.out_irs, self.sh_irs = in_irs, out_irs, sh_irs
        self.correlation, self.channels = correlation, c
        _, path_irs = _conv_plan(in_irs, sh_irs)
        n_paths = [path_irs.count(ir) for ir in sh_irs]
        _, _, slices = _symmetric_plan(sh_irs, out_irs, correlation)
        keys = iter(jax.random.split(key, 64))
        self.linear_up = tuple(_normal(next(keys), (c, c), c) for _ in in_irs)
        self.radial = MLP((n_radial_basis, *radial_hidden, c * len(path_irs)), key=next(keys),
                          bias=False)  # fmt: skip
        self.linear_a = tuple(
            _normal(next(keys), (c, k, c), c * max(k, 1)) for k in n_paths
        )
        self.sym_weights = tuple(
            _normal(next(keys), (n_species, k, c), k) for _, k in slices
        )
        self.linear_out = tuple(_normal(next(keys), (c, c), c) for _ in out_irs)
        if residual:
            self.skip = tuple(
                _normal(next(keys), (n_species, c, c), c) if ir in in_irs else None
                for ir in out_irs
            )
        else:
            self.skip = None
        if last:
            self.readout = MLP((c, readout_hidden, 1), key=next(keys))
        else:
            self.readout = Dense(c, 1, key=next(keys), bias=False)

    def messages(self, h, y, radial_in, geo, senders, receivers, n_node, inv_avg):
        """Steps 1-2 of the layer: the A-basis `(d_sh + 1, n, C)` from the node features `h` (per input
        irrep), the spherical harmonics `y` of the edges and the radial input per pair."""
        dtype = h[0].dtype
        c = self.channels
        blocks, path_irs = _conv_plan(self.in_irs, self.sh_irs)
        sparse = _conv_sparse_plan(self.in_irs, self.sh_irs)
        # 1. linear_up on nodes, then per-edge channel-wise tensor products with Y(r̂), one per input irrep
        # for all its paths (`_edge_products`: batched dots on CPU, the block's nonzeros on GPUs), the
        # radial weight per path, one segment sum. On a GPU the slices, scaling and concatenation fuse
        # into the segment sum's kernel: grouping the paths by target irrep instead (825189e, faster on
        # CPU) made the H200 compile of a simulation step move 1.7x the bytes and of a training step 1.5x
        # (benchmarks/bench_hlo.py --target h200). Each path is sliced from its own irrep's products, not
        # from all paths concatenated: the backward of a slice is then a pad to that irrep's width only.
        # That made the chain's E+F and training step 1.6-2.0x faster on CPU, and on the H200 compile
        # of a 1,024-replica step removed three kernels that each re-read every path (64.8 -> 50.8 GB).
        with jax.named_scope("mace_messages"):
            r = geo.spread(self.radial(radial_in)).reshape(-1, c, len(path_irs))  # (E, C, P); zero on padding
            offsets = np.concatenate([[0], np.cumsum([_dim(i) for i in path_irs])])
            msgs = []
            per_block = zip(h, self.linear_up, blocks, sparse, _block_paths(self.in_irs, self.sh_irs))
            for x, w, blk, sp, paths in per_block:
                if not paths:
                    continue
                x = _channel_linear(x, w)[senders]  # (E, C, d1)
                out, start = _edge_products(x, y, blk, sp), offsets[paths.start]  # (E, C, D1): its paths
                for p in paths:
                    msgs.append(out[..., offsets[p] - start : offsets[p + 1] - start] * r[..., p, None])
            m = jnp.concatenate(msgs, axis=-1)  # (E, C, D)
            m = jax.ops.segment_sum(m, receivers, num_segments=n_node) * inv_avg  # (n, C, D)
            # 2. the A-basis: mix paths x channels per target irrep; layout (d_sh, n, C) for step 3
            a = []
            for ir, w in zip(self.sh_irs, self.linear_a):
                parts = [m[..., offsets[p] : offsets[p + 1]] for p, q in enumerate(path_irs) if q == ir]
                if not parts:
                    a.append(jnp.zeros((_dim(ir), n_node, c), dtype))
                else:
                    a.append(jnp.einsum("ncpm,cpd->mnd", jnp.stack(parts, axis=2), w))
            a = jnp.concatenate(a + [jnp.ones((1, n_node, c), dtype)], axis=0)  # (d_sh + 1, n, C)
        return a

    def __call__(self, h, species, y, radial_in, geo, senders, receivers, n_node, inv_avg):
        """One layer: features per input irrep -> (features per output irrep, per-bead energy).
        `radial_in` is per pair of `geo` (`EdgeGeometry.pair_view`): the radial MLP runs once per pair."""
        dtype = h[0].dtype
        c = self.channels
        a = self.messages(h, y, radial_in, geo, senders, receivers, n_node, inv_avg)
        # 3. the B-basis: sparse symmetric contraction (row gathers of A, products, sorted segment
        # sum into basis functions), then species-dependent weights
        with jax.named_scope("mace_symmetric_contraction"):
            idx, vals, cols, n_cols, slices = _sparse_symmetric_plan(
                self.sh_irs, self.out_irs, self.correlation
            )
            prod = a[idx[:, 0]]
            for j in range(1, idx.shape[1]):
                prod = prod * a[idx[:, j]]
            prod = prod * jnp.asarray(vals, dtype)[:, None, None]
            basis = jax.ops.segment_sum(prod, cols, num_segments=n_cols, indices_are_sorted=True)
        with jax.named_scope("mace_update"):
            onehot = jax.nn.one_hot(species, self.sym_weights[0].shape[0], dtype=dtype)
            # 4. update with the species-dependent residual
            out = []
            for i, (ir, (c0, k)) in enumerate(zip(self.out_irs, slices)):
                d = _dim(ir)
                b = basis[c0 : c0 + k * d].reshape(k, d, n_node, c)
                wz = _by_species(onehot, self.sym_weights[i])  # (n, K, C)
                b = jnp.sum(b * jnp.swapaxes(wz, 0, 1)[:, None], axis=0)  # (d, n, C)
                b = jnp.transpose(b, (1, 2, 0))  # (n, C, d)
                new = _channel_linear(b, self.linear_out[i])
                if self.skip is not None and self.skip[i] is not None:
                    old = h[self.in_irs.index(ir)]
                    wz = _by_species(onehot, self.skip[i])  # (n, C, C)
                    new = new + jnp.sum(old[:, :, None, :] * wz[..., None], axis=1)
                out.append(new)
        # 5. readout of the scalars
        scalars = out[self.out_irs.index((0, 1))][..., 0]  # (n, C)
        return tuple(out), self.readout(scalars)[:, 0]


# ----------------------------------------------------------------------------------------------
# the model


class MACE(AbstractBackbone):
    """MACE energy model: per-bead energies (kcal/mol) from higher-order equivariant features.

    **Arguments (constructor):**

    - `n_species`: number of bead species.
    - `cutoff`: radial cutoff in Å (the radius graph of the batch must use the same cutoff).
    - `key`: PRNG key for the initial parameters.
    - `hidden_irreps`: node features, one multiplicity for all irreps; must contain 0e.
    - `l_max`: spherical harmonics (and A-basis irreps) up to this l.
    - `correlation`: body order of the B-basis minus one (ν).
    - `n_layers`: interaction layers.
    - `n_radial_basis`: Bessel radial basis functions.
    - `envelope_p`: exponent of the polynomial cutoff envelope.
    - `radial_hidden`: hidden widths of the radial MLP.
    - `readout_hidden`: hidden width of the last layer's readout MLP.
    - `avg_num_neighbors`: A-basis sums are divided by this (CA beads at 10 Å: ~15-30).

    Size presets are in `PRESETS`; `modules.backbones.make_backbone` resolves them.
    """

    embedding: SpeciesEmbedding
    layers: tuple[_Layer, ...]
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    n_species: int = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    hidden_irreps: str = eqx.field(static=True)
    l_max: int = eqx.field(static=True)
    correlation: int = eqx.field(static=True)
    n_layers: int = eqx.field(static=True)
    n_radial_basis: int = eqx.field(static=True)
    envelope_p: int = eqx.field(static=True)
    radial_hidden: tuple[int, ...] = eqx.field(static=True)
    readout_hidden: int = eqx.field(static=True)
    avg_num_neighbors: float = eqx.field(static=True)

    def __init__(
        self,
        n_species: int,
        cutoff: float = 10.0,
        *,
        key: PRNGKeyArray,
        hidden_irreps: str = "32x0e + 32x1o",
        l_max: int = 3,
        correlation: int = 3,
        n_layers: int = 2,
        n_radial_basis: int = 8,
        envelope_p: int = 5,
        radial_hidden: tuple[int, ...] = (64, 64, 64),
        readout_hidden: int = 16,
        avg_num_neighbors: float = 20.0,
    ):
        for name, value in (("l_max", l_max), ("correlation", correlation), ("n_layers", n_layers),
                            ("n_radial_basis", n_radial_basis), ("readout_hidden", readout_hidden)):  # fmt: skip
            if int(value) < 1 and not (name == "l_max" and int(value) == 0):
                raise ValueError(f"MACE: {name} must be >= 1, got {value!r}")
        if n_species < 1 or cutoff <= 0:
            raise ValueError(f"MACE: need n_species >= 1 and cutoff > 0, got {n_species}, {cutoff}")
        if float(avg_num_neighbors) <= 0:
            raise ValueError(f"MACE: avg_num_neighbors must be > 0, got {avg_num_neighbors!r}")
        channels, hidden = _parse_hidden(str(hidden_irreps))
        self.n_species = int(n_species)
        self.cutoff = float(cutoff)
        self.hidden_irreps = str(e3nn.Irreps(str(hidden_irreps)))
        self.l_max = int(l_max)
        self.correlation = int(correlation)
        self.n_layers = int(n_layers)
        self.n_radial_basis = int(n_radial_basis)
        self.envelope_p = int(envelope_p)
        self.radial_hidden = tuple(int(w) for w in radial_hidden)
        self.readout_hidden = int(readout_hidden)
        self.avg_num_neighbors = float(avg_num_neighbors)
        sh = _sh_irs(self.l_max)
        ke, *kl = jax.random.split(key, self.n_layers + 1)
        self.embedding = SpeciesEmbedding(n_species, channels, key=ke)
        layers = []
        in_irs: tuple[Ir, ...] = ((0, 1),)
        for t in range(self.n_layers):
            last = t == self.n_layers - 1
            out_irs = ((0, 1),) if last else hidden
            layers.append(
                _Layer(n_species, channels, in_irs, out_irs, sh, self.correlation,
                       self.n_radial_basis, self.radial_hidden, self.readout_hidden,
                       residual=t > 0, last=last, key=kl[t])  # fmt: skip
            )
            in_irs = out_irs
        self.layers = tuple(layers)

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
        dtype = batch.positions.dtype
        geo = edge_geometry(batch)
        sh = e3nn.Irreps(_irreps_str(_sh_irs(self.l_max)))
        # spherical harmonics and the radial basis once per pair (on a paired batch; else per edge)
        y = geo.per_pair(
            lambda g: e3nn.spherical_harmonics(sh, g.unit, normalize=False, normalization="component").array,
            flip=sh_flip(self.l_max),
        )
        pg = geo.pair_view()
        radial_in = bessel_basis(pg.distances, self.cutoff, self.n_radial_basis)
        env = polynomial_envelope(pg.distances, self.cutoff, self.envelope_p)
        radial_in = radial_in * jnp.where(pg.mask, env, 0.0)[:, None]
        species: Int[Array, " n_node"] = batch.species
        h = (self.embedding(species).astype(dtype)[:, :, None],)
        energy = jnp.zeros((n,), dtype)
        for layer in self.layers:
            h, e = layer(h, species, y, radial_in, geo, batch.senders, batch.receivers, n,
                         1.0 / self.avg_num_neighbors)  # fmt: skip
            energy = energy + e
        return jnp.where(batch.node_mask, energy, 0.0)
