"""Bead geometry: bond vectors and lengths, bond angles, dihedral angles. The one definition used by the
prior terms (`priors.terms`), the Boltzmann-inversion fit (`priors.fit`) and trajectory analysis
(`simulate.analysis`).

A core module: it imports only NumPy, JAX and jaxtyping, nothing from the rest of the package.

**Arrays.** Every function works on JAX arrays (including tracers under `jit`/`grad`) and on NumPy
arrays. JAX in gives JAX out, computed with `jax.numpy` so the priors can be differentiated; NumPy in
gives NumPy out in the input's precision (analysis and fitting pass float64), without a round trip
through JAX (whose default float32 would lose digits). Positions may carry any leading batch axes
(frames, replicas): the last axis is xyz and everything broadcasts.

**Safe forms.** Norms and angles stay finite, with finite (sub)gradients, on degenerate geometry
(coincident beads, collinear triplets, dihedrals with a zero-length axis): `safe_norm` is 0 with gradient
0 below |x|² = 1e-12, `safe_atan2` is 0 with gradient 0 at the origin. Angles are written with atan2
rather than arccos: atan2(|u x v|, u·v) is accurate near 0 and π, where arccos of a rounded cosine loses
half of the significant digits and has an infinite derivative.

**Conventions.** `bond_angles` is the angle at the middle bead, in [0, π]. `dihedral_angles` is the IUPAC
dihedral in (-π, π]: trans (anti) = ±π, cis = 0, and positive when, seen along the axis from p1 to
p2, the near bond p1→p0 turns clockwise by less than π onto the far bond p2→p3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

__all__ = [
    "bond_angles",
    "bond_lengths",
    "bond_vectors",
    "dihedral_angles",
    "safe_atan2",
    "safe_norm",
    "tuple_positions",
]

def _xp(*arrays):
    """`jax.numpy` if any argument is a JAX array (or tracer), else `numpy`."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def safe_norm(
    x: Float[Array, "... 3"], mask: Bool[Array, "..."] | None = None, eps: float = 1e-12
) -> Float[Array, "..."]:
    """|x| over the last axis, 0 with a finite (zero) gradient where |x|² ≤ `eps` and on masked entries."""
    xp = _xp(x)
    sq = xp.sum(x * x, axis=-1)
    ok = sq > eps if mask is None else (sq > eps) & mask
    return xp.where(ok, xp.sqrt(xp.where(ok, sq, 1.0)), 0.0)


def safe_atan2(y: Float[Array, "..."], x: Float[Array, "..."]) -> Float[Array, "..."]:
    """atan2(y, x), 0 with zero gradient at (0, 0) (where atan2's gradient is NaN)."""
    xp = _xp(y, x)
    ok = (x * x + y * y) > 1e-30
    return xp.where(ok, xp.arctan2(xp.where(ok, y, 0.0), xp.where(ok, x, 1.0)), 0.0)


def tuple_positions(
    x: Float[Array, "... n 3"], idx: Int[Array, "m k"] | Int[np.ndarray, "m k"]
) -> tuple[Float[Array, "... m 3"], ...]:
    """The positions of the beads of each index tuple, one array per column of `idx`:
    `(x[..., idx[:, 0], :], ..., x[..., idx[:, k-1], :])`, ready to unpack into `bond_lengths`,
    `bond_angles` or `dihedral_angles` (works on single frames and on stacks of frames)."""
    return tuple(x[..., idx[:, c], :] for c in range(idx.shape[-1]))


def bond_vectors(p0: Float[Array, "... 3"], p1: Float[Array, "... 3"]) -> Float[Array, "... 3"]:
    """p1 - p0: the vector from the first bead to the second."""
    return p1 - p0


def bond_lengths(p0: Float[Array, "... 3"], p1: Float[Array, "... 3"]) -> Float[Array, "..."]:
    """|p1 - p0| (safe at coincident points: 0 with a zero gradient)."""
    return safe_norm(bond_vectors(p0, p1))


def bond_angles(
    p0: Float[Array, "... 3"], p1: Float[Array, "... 3"], p2: Float[Array, "... 3"]
) -> Float[Array, "..."]:
    """Angle at p1 in [0, π], as atan2(|u x v|, u·v) with u = p0 - p1, v = p2 - p1 (accurate near 0 and
    π; finite, with finite gradients, when the beads are collinear or coincide)."""
    xp = _xp(p0, p1, p2)
    u, v = p0 - p1, p2 - p1
    return safe_atan2(safe_norm(xp.cross(u, v)), xp.sum(u * v, axis=-1))


def dihedral_angles(
    p0: Float[Array, "... 3"], p1: Float[Array, "... 3"], p2: Float[Array, "... 3"], p3: Float[Array, "... 3"]
) -> Float[Array, "..."]:
    """IUPAC dihedral in (-π, π] (trans = ±π, cis = 0) of the bond vectors b1 = p1 - p0, b2 = p2 - p1,
    b3 = p3 - p2: atan2(|b2| b1·(b2 x b3), (b1 x b2)·(b2 x b3)), which needs no normalisation and no
    arccos, and is 0 with a zero gradient when either plane is undefined (collinear beads)."""
    xp = _xp(p0, p1, p2, p3)
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = xp.cross(b1, b2), xp.cross(b2, b3)
    y = safe_norm(b2) * xp.sum(b1 * n2, axis=-1)
    x = xp.sum(n1 * n2, axis=-1)
    return safe_atan2(y, x)
