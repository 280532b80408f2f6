"""Bilinear maps over the nonzeros of a constant coupling tensor (Clebsch-Gordan products), per edge and
channel, with derivatives to any order made of gathers, products and reductions.

`bilinear(x, y, w, spec)` is `out[e, c, o] = Σ_z w[c, z] x[e, c, i_z] y[e, c, j_z]` over the nonzeros z of a
tensor `T[i, j, o]` (`sparse_spec` lists them). Plain autodiff of the constant-index gathers would write
their transposes as scatter-adds, which a GPU runs as atomics; here every VJP is again a `bilinear` (with
the spec's roles permuted) or a `weight_grad`, and theirs are too, so training (which differentiates the
forces once more) never scatters along the irreps axis. `x`, `y` and `w` may have size 1 on the channel
axis (broadcast): cotangents are summed back to each input's shape.

Two layouts: channels-first `(e, c, d)` (the default, MACE), or irreps-first `(d, e, c)` (`irreps_first=True`,
Allegro), where every nonzero reads whole contiguous `(e, c)` planes and a per-irrep channel mix after it is a
batched matmul with its batch axis major, which cuBLAS takes without the transposes that `(e, c, d)` needs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

Spec = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int, int, int]
"""`(o, i, j, d_out, d_x, d_y)`: per nonzero its output, first- and second-factor index; then the sizes."""


def sparse_spec(t: Float[np.ndarray, "*k d_x d_y d_out"], tol: float = 1e-12) -> tuple[Spec, np.ndarray]:
    """The nonzeros of `t` (summed over its leading axes) as a `Spec`, and the values of every leading slice
    on them, `(*k, n_nonzero)`.

    **Arguments:** `t`, a NumPy array `(..., d_x, d_y, d_out)`; `tol`, the magnitude below which an entry is
    zero.

    **Returns:** `(spec, values)`.
    """
    t = np.asarray(t)
    d_x, d_y, d_out = t.shape[-3:]
    lead = tuple(range(t.ndim - 3))
    nz = np.argwhere(np.abs(t).sum(lead) > tol)
    spec = (tuple(nz[:, 2].tolist()), tuple(nz[:, 0].tolist()), tuple(nz[:, 1].tolist()), d_out, d_x, d_y)
    return spec, t[..., nz[:, 0], nz[:, 1], nz[:, 2]]


def _grouped(keys: tuple[int, ...], n: int) -> np.ndarray:
    """Indices of the nonzeros grouped by `keys` (values 0..n-1), each group padded with -1 to one length."""
    keys_a = np.asarray(keys)
    groups = [np.flatnonzero(keys_a == k) for k in range(n)]
    out = np.full((n, max(1, max(len(g) for g in groups))), -1, np.int64)
    for k, g in enumerate(groups):
        out[k, : len(g)] = g
    return out


def _swap(spec: Spec, first: str) -> Spec:
    """The spec of a gradient: the same nonzeros, output and factors permuted (`first` the new output)."""
    o, xi, yi, n_o, n_x, n_y = spec
    return (xi, o, yi, n_x, n_o, n_y) if first == "x" else (yi, o, xi, n_y, n_o, n_x)


def _sum_to(a: Array, shape: tuple[int, ...]) -> Array:
    """`a` summed over the axes where `shape` has size 1 (the cotangent of a broadcast input)."""
    axes = tuple(k for k, (m, n) in enumerate(zip(a.shape, shape)) if n == 1 and m != 1)
    return jnp.sum(a, axis=axes, keepdims=True) if axes else a


def _take(a: Array, index: np.ndarray, first: bool) -> Array:
    """`a`'s irreps components at `index` (any shape), on the irreps axis of the layout."""
    return a[index] if first else a[..., index]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bilinear(x: Array, y: Array, w: Array, spec: Spec, first: bool) -> Array:
    o, xi, yi, n_o, _, _ = spec
    groups = _grouped(o, n_o)
    z = np.where(groups < 0, 0, groups)
    wg = w[:, z] * jnp.asarray(groups >= 0, w.dtype)  # (c, O, G); padding weighs 0
    if first:
        wg = jnp.moveaxis(wg, 0, -1)[:, :, None, :]  # (O, G, 1, c)
    prod = _take(x, np.asarray(xi)[z], first) * _take(y, np.asarray(yi)[z], first) * wg
    return jnp.sum(prod, axis=1 if first else -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _weight_grad(d: Array, x: Array, y: Array, spec: Spec, first: bool) -> Array:
    o, xi, yi = (np.asarray(a) for a in spec[:3])
    a, b, c = _take(d, o, first), _take(x, xi, first), _take(y, yi, first)
    shape = jnp.broadcast_shapes(a.shape, b.shape, c.shape)
    return jnp.einsum("zec,zec,zec->cz" if first else "ecz,ecz,ecz->cz",
                      *(jnp.broadcast_to(v, shape) for v in (a, b, c)))  # fmt: skip


def _bilinear_bwd(spec, first, res, dout):
    x, y, w = res
    return (_sum_to(_bilinear(dout, y, w, _swap(spec, "x"), first), x.shape),
            _sum_to(_bilinear(dout, x, w, _swap(spec, "y"), first), y.shape),
            _sum_to(_weight_grad(dout, x, y, spec, first), w.shape))  # fmt: skip


def _weight_grad_bwd(spec, first, res, t):
    d, x, y = res
    return (_sum_to(_bilinear(x, y, t, spec, first), d.shape),
            _sum_to(_bilinear(d, y, t, _swap(spec, "x"), first), x.shape),
            _sum_to(_bilinear(d, x, t, _swap(spec, "y"), first), y.shape))  # fmt: skip


_bilinear.defvjp(lambda x, y, w, spec, first: (_bilinear(x, y, w, spec, first), (x, y, w)), _bilinear_bwd)
_weight_grad.defvjp(lambda d, x, y, spec, first: (_weight_grad(d, x, y, spec, first), (d, x, y)), _weight_grad_bwd)


def bilinear(
    x: Float[Array, "..."], y: Float[Array, "..."], w: Float[Array, "cw n_nonzero"], spec: Spec,
    *, irreps_first: bool = False,
) -> Float[Array, "..."]:  # fmt: skip
    """`out[e, c, o] = Σ_z w[c, z] x[e, c, i_z] y[e, c, j_z]` over the nonzeros z of `spec` with output o.

    **Arguments:** `x`, `y` per edge and channel, `(e, c, d_x)` and `(e, c, d_y)`, or with `irreps_first`
    `(d_x, e, c)` and `(d_y, e, c)`; `w` per channel and nonzero (channel axes of size 1 broadcast); `spec`
    from `sparse_spec`.

    **Returns:** `(e, c, d_out)`, or `(d_out, e, c)` with `irreps_first`.
    """
    return _bilinear(x, y, w, spec, bool(irreps_first))


def weight_grad(
    d: Float[Array, "..."], x: Float[Array, "..."], y: Float[Array, "..."], spec: Spec, *, irreps_first: bool = False
) -> Float[Array, "c n_nonzero"]:
    """`Σ_e d[e, c, o_z] x[e, c, i_z] y[e, c, j_z]` per channel and nonzero: the gradient of `bilinear` with
    respect to its weights (channel axes of size 1 broadcast; layouts as in `bilinear`)."""
    return _weight_grad(d, x, y, spec, bool(irreps_first))
