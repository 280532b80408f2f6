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
  per edge with the node's environment Γ, instead of per-node (C, 9, 9) matrices gathered per edge. Custom
  VJPs whose backward passes are again gather-multiply-reduce (to any order: training differentiates the
  forces). The H200 compile of a 128-replica step moves 7.3 GB instead of 10.9 and scatters 191 M elements
  instead of 493; a training step 24.8 GB instead of 33.4 and 483 M instead of 1,221 (floor 11,100 instead of
  8,400 frames/s). CPU E+F is 3.5-4.5x slower. Not a default: a custom VJP has no forward mode, which the
  configurational temperature (`simulate/stationarity.py`, `jax.jvp` of the gradient) uses.
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


def _grouped(keys: tuple[int, ...], n: int) -> np.ndarray:
    """Indices of the nonzeros grouped by `keys` (values 0..n-1), each group padded with -1 to one length."""
    keys_a = np.asarray(keys)
    groups = [np.flatnonzero(keys_a == k) for k in range(n)]
    out = np.full((n, max(1, max(len(g) for g in groups))), -1, np.int64)
    for k, g in enumerate(groups):
        out[k, : len(g)] = g
    return out


@functools.lru_cache(maxsize=None)
def _sparse_plan(irs_in, irs_sh, irs_out):
    """The nonzeros of the summed path tensor as a spec `(k, i, j, d_out, d_in, d_sh)` (out, first and
    second factor index per nonzero, and the three sizes), and the per-path values on them."""
    from cameo_eqx.modules import allegro

    t = allegro._path_tensors(irs_in, irs_sh, irs_out)
    nz = np.argwhere(np.abs(t).sum(0) > 1e-12)
    d_in, d_sh, d_out = t.shape[1:]
    spec = (tuple(nz[:, 2].tolist()), tuple(nz[:, 0].tolist()), tuple(nz[:, 1].tolist()), d_out, d_in, d_sh)
    return spec, t[:, nz[:, 0], nz[:, 1], nz[:, 2]]


def _swap(spec, first: str):
    """The spec of a gradient: the same nonzeros, output and factors permuted (`first` the new output)."""
    o, xi, yi, n_o, n_x, n_y = spec
    return (xi, o, yi, n_x, n_o, n_y) if first == "x" else (yi, o, xi, n_y, n_o, n_x)


def _sparse_ops():
    """`bilinear(x, y, w, spec)`: `out[e, c, o] = sum_z w[c, z] x[e, c, xi_z] y[e, c, yi_z]` over the
    nonzeros z with output o; `weight_grad(d, x, y, spec)`: `sum_e d[e, c, o_z] x[e, c, xi_z] y[e, c, yi_z]`.
    Each one's VJP is made of the two, so they differentiate to any order with gathers and reductions only
    (plain autodiff would turn the constant-index gathers into scatters)."""
    import jax
    import jax.numpy as jnp

    def gather(a, idx):
        return a[:, :, np.asarray(idx)]

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def bilinear(x, y, w, spec):
        o, xi, yi, n_o, _, _ = spec
        groups = _grouped(o, n_o)
        z = np.where(groups < 0, 0, groups)
        wg = w[:, z] * jnp.asarray(groups >= 0, w.dtype)  # (c, O, G); padding weighs 0
        return jnp.sum(x[:, :, np.asarray(xi)[z]] * y[:, :, np.asarray(yi)[z]] * wg, axis=-1)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def weight_grad(d, x, y, spec):
        o, xi, yi = spec[:3]
        return jnp.einsum("ecz,ecz,ecz->cz", gather(d, o), gather(x, xi), gather(y, yi))

    def bilinear_bwd(spec, res, dout):
        x, y, w = res
        return (bilinear(dout, y, w, _swap(spec, "x")), bilinear(dout, x, w, _swap(spec, "y")),
                weight_grad(dout, x, y, spec))  # fmt: skip

    def weight_grad_bwd(spec, res, t):
        d, x, y = res
        return (bilinear(x, y, t, spec), bilinear(d, y, t, _swap(spec, "x")), bilinear(d, x, t, _swap(spec, "y")))

    bilinear.defvjp(lambda x, y, w, spec: (bilinear(x, y, w, spec), (x, y, w)), bilinear_bwd)
    weight_grad.defvjp(lambda d, x, y, spec: (weight_grad(d, x, y, spec), (d, x, y)), weight_grad_bwd)
    return bilinear


def _allegro_sparse_tp():
    import jax.numpy as jnp

    from cameo_eqx.modules import allegro

    bilinear = _sparse_ops()

    def tensor_product(self, v, gamma, center):
        spec, values = _sparse_plan(self.irs_in, self.irs_sh, self.irs_out)
        wz = self.path_weights.astype(v.dtype) @ jnp.asarray(values, v.dtype)  # (c, n_nz)
        out = bilinear(v, gamma[center], wz, spec)
        return jnp.einsum("ecd,dcf->efd", out, self.mix[allegro._irrep_index(self.irs_out)])

    return allegro._AllegroLayer, "tensor_product", tensor_product
