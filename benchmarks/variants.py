"""Experimental backbone variants for A/B runs on a GPU (issue 15): `bench_gpu.py --variant NAME` and
`bench_hlo.py --variant NAME` swap one block of a backbone for another formulation of the same function,
in this process only. They exist because some choices can only be decided by a GPU: a CPU compile and an
H200 compile (`bench_hlo.py --target h200`) can rank two formulations in opposite orders. Not used by the
library; `tests/test_variants.py` checks that each one gives the default's energies, forces and training
gradients.

- `mace-grouped-messages`: MACE's messages grouped by target irrep (825189e), one block, one radial
  weighting and one segment sum per l3. Faster on CPU (chain E+F 23 against 31 ms); the H200 compile moves
  1.7x the bytes of the default in a simulation step and 1.5x in a training step.
- `allegro-sparse-tp`: Allegro's tensor product over the 83 nonzeros of the summed Clebsch-Gordan tensor,
  per edge with the node's environment Γ, instead of per-node (C, 9, 9) matrices gathered per edge; a
  custom VJP whose backward is the same gather-multiply-reduce. The H200 compile of a 128-replica step moves
  7.3 GB instead of 10.9 and scatters 191 M elements instead of 493; training moves 27.3 GB instead of 33.4
  but scatters 2,420 M instead of 1,221 (its weight gradient is plain autodiff). CPU E+F is 4.5x slower.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

NAMES = ("mace-grouped-messages", "allegro-sparse-tp")


def apply(name: str | None) -> None:
    """Swaps in variant `name` (one of `NAMES`; None: nothing) for the rest of this process."""
    if name is not None:
        cls, attr, fn = _variant(name)
        setattr(cls, attr, fn)


@contextlib.contextmanager
def applied(name: str):
    """Variant `name` swapped in for the `with` block, the default restored after it."""
    cls, attr, fn = _variant(name)
    old = getattr(cls, attr)
    setattr(cls, attr, fn)
    try:
        yield
    finally:
        setattr(cls, attr, old)


def _variant(name: str):
    """`(class, method name, replacement)` of variant `name`."""
    if name not in NAMES:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(NAMES)}")
    return {"mace-grouped-messages": _mace_grouped_messages, "allegro-sparse-tp": _allegro_sparse_tp}[name]()


# ------------------------------------------------------------------------------- MACE, grouped by l3


@functools.lru_cache(maxsize=None)
def _grouped_plan(in_irs, sh_irs):
    """The default plan regrouped by target irrep: per l3, `(blocks, paths)` with `blocks` the
    `(i, (d_sh, d1, k d3))` columns of input irrep i's block for its k paths into l3, `paths` their indices."""
    from cameo_eqx.modules import mace

    blocks, path_irs = mace._conv_plan(in_irs, sh_irs)
    starts, p = [], 0  # per path: (input irrep, first column in its block, width)
    for i, blk in enumerate(blocks):
        off = 0
        while off < blk.shape[-1]:
            starts.append((i, off, mace._dim(path_irs[p])))
            off, p = off + starts[-1][2], p + 1
    groups = []
    for ir in sh_irs:
        paths = tuple(q for q, t in enumerate(path_irs) if t == ir)
        cols: dict[int, list[np.ndarray]] = {}
        for q in paths:
            i, off, d = starts[q]
            cols.setdefault(i, []).append(blocks[i][..., off : off + d])
        groups.append((tuple((i, np.concatenate(c, axis=-1)) for i, c in sorted(cols.items())), paths))
    return tuple(groups), path_irs


def _mace_grouped_messages():
    import jax
    import jax.numpy as jnp

    from cameo_eqx.modules import mace

    def messages(self, h, y, radial_in, geo, senders, receivers, n_node, inv_avg):
        dtype, c = h[0].dtype, self.channels
        groups, path_irs = _grouped_plan(self.in_irs, self.sh_irs)
        with jax.named_scope("mace_messages"):
            x = [mace._channel_linear(xi, w)[senders] for xi, w in zip(h, self.linear_up)]  # (E, C, d1) each
            r = geo.spread(self.radial(radial_in)).reshape(-1, c, len(path_irs))  # (E, C, P)
            a = []
            for (blocks, paths), ir, w in zip(groups, self.sh_irs, self.linear_a):
                if not paths:
                    a.append(jnp.zeros((mace._dim(ir), n_node, c), dtype))
                    continue
                mg = jnp.concatenate(
                    [jnp.einsum("ecm,emk->eck", x[i], jnp.einsum("eq,qmk->emk", y, jnp.asarray(blk, dtype)))
                     for i, blk in blocks], axis=-1,
                ).reshape(-1, c, len(paths), mace._dim(ir))  # (E, C, P_l3, d_l3)  # fmt: skip
                pick = np.zeros((len(path_irs), len(paths)), np.float32)
                pick[list(paths), np.arange(len(paths))] = 1.0
                mg = mg * (r @ jnp.asarray(pick, dtype))[..., None]
                mg = jax.ops.segment_sum(mg, receivers, num_segments=n_node) * inv_avg
                a.append(jnp.einsum("ncpm,cpd->mnd", mg, w))
            return jnp.concatenate(a + [jnp.ones((1, n_node, c), dtype)], axis=0)

    return mace._Layer, "messages", messages


# ------------------------------------------------------------------------- Allegro, sparse per edge


def _grouped(keys: np.ndarray, n: int) -> np.ndarray:
    """Indices of the nonzeros grouped by `keys` (values 0..n-1), each group padded with -1 to one length."""
    groups = [np.flatnonzero(keys == k) for k in range(n)]
    out = np.full((n, max(1, max(len(g) for g in groups))), -1, np.int64)
    for k, g in enumerate(groups):
        out[k, : len(g)] = g
    return out


@functools.lru_cache(maxsize=None)
def _sparse_plan(irs_in, irs_sh, irs_out):
    """The nonzeros (i, j, k) of the summed path tensor, its per-path values on them, and the nonzeros
    grouped by k (forward), by i (gradient of the edge features) and by j (gradient of Γ)."""
    from cameo_eqx.modules import allegro

    t = allegro._path_tensors(irs_in, irs_sh, irs_out)
    nz = np.argwhere(np.abs(t).sum(0) > 1e-12)
    d_in, d_sh, d_out = t.shape[1:]
    groups = (_grouped(nz[:, 2], d_out), _grouped(nz[:, 0], d_in), _grouped(nz[:, 1], d_sh))
    return nz, t[:, nz[:, 0], nz[:, 1], nz[:, 2]], groups


def _contract(x, y, wz, groups, xi, yi):
    """`out[e, c, o] = sum_z wz[c, z] x[e, c, xi[z]] y[e, c, yi[z]]` over the nonzeros z of group o."""
    import jax.numpy as jnp

    z = np.where(groups < 0, 0, groups)
    w = wz[:, z] * jnp.asarray(groups >= 0, wz.dtype)  # (c, O, G); padding weighs 0
    return jnp.sum(x[:, :, xi[z]] * y[:, :, yi[z]] * w, axis=-1)


def _allegro_sparse_tp():
    import jax
    import jax.numpy as jnp

    from cameo_eqx.modules import allegro

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def sparse_tp(v, g, wz, irs):
        nz, _, (by_k, _, _) = _sparse_plan(*irs)
        return _contract(v, g, wz, by_k, nz[:, 0], nz[:, 1])

    def fwd(v, g, wz, irs):
        return sparse_tp(v, g, wz, irs), (v, g, wz)

    def bwd(irs, res, dout):
        v, g, wz = res
        nz, _, (_, by_i, by_j) = _sparse_plan(*irs)
        dv = _contract(dout, g, wz, by_i, nz[:, 2], nz[:, 1])
        dg = _contract(dout, v, wz, by_j, nz[:, 2], nz[:, 0])
        dwz = jnp.einsum("ecz,ecz,ecz->cz", dout[:, :, nz[:, 2]], v[:, :, nz[:, 0]], g[:, :, nz[:, 1]])
        return dv, dg, dwz

    sparse_tp.defvjp(fwd, bwd)

    def tensor_product(self, v, gamma, center):
        irs = (self.irs_in, self.irs_sh, self.irs_out)
        _, values, _ = _sparse_plan(*irs)
        wz = self.path_weights.astype(v.dtype) @ jnp.asarray(values, v.dtype)  # (c, n_nz)
        out = sparse_tp(v, gamma[center], wz, irs)
        return jnp.einsum("ecd,dcf->efd", out, self.mix[allegro._irrep_index(self.irs_out)])

    return allegro._AllegroLayer, "tensor_product", tensor_product
