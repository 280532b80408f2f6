"""Physics prior terms as equinox modules: harmonic bond, Fourier angle, periodic dihedral, soft-sphere
repulsion.

Every term is a final `eqx.Module` subclassing `AbstractPriorTerm` (itself an `AbstractEnergyModel`).
Learnable parameters are array fields (a table with one row per parameter *type*); hyperparameters
(orders, exponent, cutoffs, per-species flag) are static.

**Parameter types.** With `per_species=False` every table has one row (type 0). With
`per_species=True` the row is chosen from the species of the beads involved, with symmetric indexing:

- pairs (bonds, repulsion): unordered species pair, (a, b) == (b, a): `S(S+1)/2` types
  (`pair_type`);
- triplets (angles): centre species x unordered end pair, (a, b, c) == (c, b, a): `S·S(S+1)/2` types
  (`triplet_type`);
- quadruplets (dihedrals): (a, b, c, d) == (d, c, b, a), indexed in base S after putting the tuple in
  canonical (lexicographically smaller) order: an `S^4` table of which the non-canonical rows are
  unused (`quadruplet_type`). A reversed quadruplet has the same dihedral angle, so the energy is
  consistent with the symmetry.

**Per-bead energies.** `node_energies` gives each bead an equal share of every term it takes part in
(bond 1/2, angle 1/3, dihedral 1/4, pair 1/2), so per-bead energies sum to the total.

**Padding.** Entries with a false mask (and the padding index `n_node`) contribute exactly zero energy
and exactly zero gradient: their geometry is replaced by a fixed non-degenerate one before any
arithmetic, so no NaN or inf can appear, and their energy is masked out. Real degenerate geometry
(coincident beads, collinear triplets) stays finite: norms, angles and dihedrals use safe forms
(`safe_norm`, `safe_atan2`) with finite (sub)gradients.
"""

from __future__ import annotations

import abc
import functools
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ..graph import Batch
from ..modules.base import AbstractEnergyModel
from ..modules.radial import safe_norm

# --------------------------------------------------------------------------------------- type indices


def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


def n_pair_types(n_species: int) -> int:
    """Number of unordered species pairs, S(S+1)/2."""
    return n_species * (n_species + 1) // 2


def pair_type(a: Int[Array, "..."], b: Int[Array, "..."], n_species: int) -> Int[Array, "..."]:
    """Index of the unordered species pair {a, b} in [0, S(S+1)/2) (NumPy or JAX arrays)."""
    xp = _xp(a)
    lo, hi = xp.minimum(a, b), xp.maximum(a, b)
    return lo * n_species - (lo * (lo - 1)) // 2 + (hi - lo)


def triplet_type(a, b, c, n_species: int):
    """Index of the triplet type (centre b, unordered ends {a, c}) in [0, S·S(S+1)/2)."""
    return b * n_pair_types(n_species) + pair_type(a, c, n_species)


def quadruplet_type(a, b, c, d, n_species: int):
    """Index of the quadruplet type in [0, S^4): base-S number of the canonical order of (a, b, c, d)
    and its reverse (d, c, b, a), whichever is lexicographically smaller."""
    xp = _xp(a)
    rev = (a > d) | ((a == d) & (b > c))
    w, x, y, z = (xp.where(rev, d, a), xp.where(rev, c, b), xp.where(rev, b, c), xp.where(rev, a, d))
    s = n_species
    return ((w * s + x) * s + y) * s + z


def n_types(kind: Literal["pair", "triplet", "quadruplet"], n_species: int) -> int:
    """Size of a per-species parameter table."""
    if kind == "pair":
        return n_pair_types(n_species)
    if kind == "triplet":
        return n_species * n_pair_types(n_species)
    return n_species**4


# ------------------------------------------------------------------------------------- safe geometry


def safe_atan2(y: Float[Array, "..."], x: Float[Array, "..."]) -> Float[Array, "..."]:
    """atan2(y, x), 0 with zero gradient at (0, 0) (where atan2's gradient is NaN)."""
    ok = (x * x + y * y) > 1e-30
    return jnp.where(ok, jnp.arctan2(jnp.where(ok, y, 0.0), jnp.where(ok, x, 1.0)), 0.0)


def bond_lengths(p0: Float[Array, "n 3"], p1: Float[Array, "n 3"]) -> Float[Array, " n"]:
    """|p1 - p0| (safe at coincident points)."""
    return safe_norm(p1 - p0)


def bond_angles(
    p0: Float[Array, "n 3"], p1: Float[Array, "n 3"], p2: Float[Array, "n 3"]
) -> Float[Array, " n"]:
    """Angle at p1 in [0, π], as atan2(|u x v|, u·v) (accurate near 0 and π; finite when collinear)."""
    u, v = p0 - p1, p2 - p1
    return safe_atan2(safe_norm(jnp.cross(u, v)), jnp.sum(u * v, axis=-1))


def dihedral_angles(
    p0: Float[Array, "n 3"], p1: Float[Array, "n 3"], p2: Float[Array, "n 3"], p3: Float[Array, "n 3"]
) -> Float[Array, " n"]:
    """IUPAC dihedral in (-π, π] (trans = π): atan2(|b2| b1·(b2 x b3), (b1 x b2)·(b2 x b3))."""
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = jnp.cross(b1, b2), jnp.cross(b2, b3)
    y = safe_norm(b2) * jnp.sum(b1 * n2, axis=-1)
    x = jnp.sum(n1 * n2, axis=-1)
    return safe_atan2(y, x)


# A fixed non-degenerate geometry that replaces masked entries (bond 1.0, angle 90°, dihedral -90°).
_CANON = np.asarray([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def _gather(
    positions: Float[Array, "n_node 3"], idx: Int[Array, "m k"], mask: Bool[Array, " m"]
) -> list[Float[Array, "m 3"]]:
    """Positions of each column of `idx`; masked rows get the canonical geometry (zero gradient)."""
    out = []
    for c in range(idx.shape[-1]):
        p = jnp.take(positions, idx[:, c], axis=0, mode="clip")
        canon = jnp.asarray(_CANON[c], dtype=positions.dtype)
        out.append(jnp.where(mask[:, None], p, canon))
    return out


def _species(batch: Batch, idx: Int[Array, " m"]) -> Int[Array, " m"]:
    return jnp.take(batch.species, idx, mode="clip")


def _scatter_share(
    n_node: int, idx: Int[Array, "m k"], energies: Float[Array, " m"]
) -> Float[Array, " n_node"]:
    """Gives each of the k beads of every entry energy/k (padding indices n_node are dropped)."""
    k = idx.shape[-1]
    share = jnp.repeat(energies[:, None] / k, k, axis=1)
    return jnp.zeros(n_node, energies.dtype).at[idx.reshape(-1)].add(share.reshape(-1), mode="drop")


def _table(value, n_rows: int, width: int | None = None) -> Float[Array, "..."]:
    """A parameter table of n_rows rows, every row equal to `value` (float32)."""
    v = np.asarray(value, dtype=np.float32)
    if width is not None:
        v = np.broadcast_to(v, (width,)) if v.ndim == 0 else v
        if v.shape != (width,):
            raise ValueError(f"expected {width} values per row, got shape {v.shape}")
    return jnp.asarray(np.broadcast_to(v, (n_rows,) + v.shape).copy())


# ------------------------------------------------------------------------------------------- terms


class AbstractPriorTerm(AbstractEnergyModel):
    """A prior term acting on one kind of index tuple of the packed batch.

    Subclasses give the tuples (`indices`), their mask (`mask`) and the per-entry energies
    (`entry_energies`, whose masked entries may hold anything finite). `node_energies` distributes the
    masked entry energies equally to the entry's beads.
    """

    name: eqx.AbstractClassVar[str]
    type_kind: eqx.AbstractClassVar[str]

    @abc.abstractmethod
    def indices(self, batch: Batch) -> Int[Array, "m k"]:
        """The bead index tuples this term acts on."""

    @abc.abstractmethod
    def mask(self, batch: Batch) -> Bool[Array, " m"]:
        """Which tuples are real (and selected)."""

    @abc.abstractmethod
    def entry_energies(self, batch: Batch, mask: Bool[Array, " m"]) -> Float[Array, " m"]:
        """Energy of every tuple in kcal/mol (masked entries: any finite value, gradient-safe)."""

    def energies(self, batch: Batch) -> Float[Array, " m"]:
        """Per-tuple energies, exactly zero on masked tuples.

        **Arguments:**

        - `batch`: a packed batch.

        **Returns:** an `(m,)` array (m = the capacity of this term's index array).
        """
        m = self.mask(batch)
        return jnp.where(m, self.entry_energies(batch, m), 0.0)

    def node_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        """Per-bead energies (equal shares of every tuple's energy), zero on padded beads."""
        e = _scatter_share(batch.n_node, self.indices(batch), self.energies(batch))
        return jnp.where(batch.node_mask, e, 0.0)

    def type_index(self, batch: Batch) -> Int[Array, " m"]:
        """Row of the parameter table used by every tuple (0 for global parameters)."""
        idx = self.indices(batch)
        if not self.per_species:  # type: ignore[attr-defined]
            return jnp.zeros(idx.shape[0], jnp.int32)
        s = [_species(batch, idx[:, c]) for c in range(idx.shape[-1])]
        n = self.n_species  # type: ignore[attr-defined]
        if self.type_kind == "pair":
            return pair_type(s[0], s[1], n)
        if self.type_kind == "triplet":
            return triplet_type(s[0], s[1], s[2], n)
        return quadruplet_type(s[0], s[1], s[2], s[3], n)


class HarmonicBond(AbstractPriorTerm):
    """Harmonic bond 0.5·k·(r - r0)² on `batch.bonds` (consecutive beads of a chain segment).

    **Fields:** `r0` (Å) and `k` (kcal/mol/Å²), shape `(n_types,)`.
    """

    r0: Float[Array, " n_types"]
    k: Float[Array, " n_types"]
    per_species: bool = eqx.field(static=True, default=False)
    n_species: int = eqx.field(static=True, default=1)

    name: ClassVar[str] = "bond"
    type_kind: ClassVar[str] = "pair"

    @classmethod
    def init(cls, r0: float = 3.84, k: float = 154.5, *, per_species: bool = False,
             n_species: int = 20) -> "HarmonicBond":  # fmt: skip
        """Every type starts at the same (default: the old code's) parameters."""
        n = n_types("pair", n_species) if per_species else 1
        return cls(_table(r0, n), _table(k, n), per_species, n_species)

    def indices(self, batch: Batch) -> Int[Array, "m 2"]:
        return batch.bonds

    def mask(self, batch: Batch) -> Bool[Array, " m"]:
        return batch.bond_mask

    def entry_energies(self, batch: Batch, mask: Bool[Array, " m"]) -> Float[Array, " m"]:
        p0, p1 = _gather(batch.positions, batch.bonds, mask)
        t = self.type_index(batch)
        r = bond_lengths(p0, p1)
        return 0.5 * self.k[t] * (r - self.r0[t]) ** 2


def _fourier(x: Float[Array, " m"], order: int) -> tuple[Float[Array, "m order"], Float[Array, "m order"]]:
    n = jnp.arange(1, order + 1, dtype=x.dtype)
    nx = x[:, None] * n[None, :]
    return jnp.cos(nx), jnp.sin(nx)


class FourierAngle(AbstractPriorTerm):
    """Angle term Σ_{n=1..order} a_n cos(nθ) + b_n sin(nθ) on `batch.angles` (θ at the middle bead).

    The constant (n = 0) term is left out: it changes no force. **Fields:** `a`, `b` (kcal/mol), shape
    `(n_types, order)`.
    """

    a: Float[Array, "n_types order"]
    b: Float[Array, "n_types order"]
    per_species: bool = eqx.field(static=True, default=False)
    n_species: int = eqx.field(static=True, default=1)

    name: ClassVar[str] = "angle"
    type_kind: ClassVar[str] = "triplet"

    @classmethod
    def init(cls, order: int = 3, a=0.0, b=0.0, *, per_species: bool = False,
             n_species: int = 20) -> "FourierAngle":  # fmt: skip
        """All-zero coefficients by default (no angle prior until fitted)."""
        n = n_types("triplet", n_species) if per_species else 1
        return cls(_table(a, n, order), _table(b, n, order), per_species, n_species)

    @property
    def order(self) -> int:
        return self.a.shape[-1]

    def indices(self, batch: Batch) -> Int[Array, "m 3"]:
        return batch.angles

    def mask(self, batch: Batch) -> Bool[Array, " m"]:
        return batch.angle_mask

    def entry_energies(self, batch: Batch, mask: Bool[Array, " m"]) -> Float[Array, " m"]:
        p = _gather(batch.positions, batch.angles, mask)
        t = self.type_index(batch)
        c, s = _fourier(bond_angles(*p), self.order)
        return jnp.sum(self.a[t] * c + self.b[t] * s, axis=-1)


class PeriodicDihedral(AbstractPriorTerm):
    """Dihedral term Σ_{n=1..order} k_n (1 + cos(nφ - γ_n)) on `batch.dihedrals` (IUPAC φ, trans = π).

    **Fields:** `k` (kcal/mol) and `gamma` (rad), shape `(n_types, order)`.
    """

    k: Float[Array, "n_types order"]
    gamma: Float[Array, "n_types order"]
    per_species: bool = eqx.field(static=True, default=False)
    n_species: int = eqx.field(static=True, default=1)

    name: ClassVar[str] = "dihedral"
    type_kind: ClassVar[str] = "quadruplet"

    @classmethod
    def init(cls, order: int = 3, k=0.0, gamma=0.0, *, per_species: bool = False,
             n_species: int = 20) -> "PeriodicDihedral":  # fmt: skip
        """All-zero amplitudes by default (no dihedral prior until fitted)."""
        n = n_types("quadruplet", n_species) if per_species else 1
        return cls(_table(k, n, order), _table(gamma, n, order), per_species, n_species)

    @property
    def order(self) -> int:
        return self.k.shape[-1]

    def indices(self, batch: Batch) -> Int[Array, "m 4"]:
        return batch.dihedrals

    def mask(self, batch: Batch) -> Bool[Array, " m"]:
        return batch.dihedral_mask

    def entry_energies(self, batch: Batch, mask: Bool[Array, " m"]) -> Float[Array, " m"]:
        p = _gather(batch.positions, batch.dihedrals, mask)
        t = self.type_index(batch)
        phi = dihedral_angles(*p)
        n = jnp.arange(1, self.order + 1, dtype=phi.dtype)
        return jnp.sum(self.k[t] * (1.0 + jnp.cos(phi[:, None] * n - self.gamma[t])), axis=-1)


def smooth_switch(r: Float[Array, " m"], r_on: float, r_off: float) -> Float[Array, " m"]:
    """C² switch: 1 for r ≤ r_on, 0 for r ≥ r_off, 1 - 10x³ + 15x⁴ - 6x⁵ in between (x = (r-r_on)/(r_off-r_on))."""
    x = jnp.clip((r - r_on) / (r_off - r_on), 0.0, 1.0)
    return 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x * x)


class SoftSphereRepulsion(AbstractPriorTerm):
    """Soft-sphere repulsion ε (σ/r)^p on non-bonded pairs (`batch.pairs`) with sequence separation
    ≥ `min_sep` (pairs in different chain segments or chains always count).

    The pairs come from the radius graph, so the energy is truncated at `cutoff` (and is zero beyond it
    for any pair list). `switch` says how it reaches zero there:

    - `"smooth"` (default): multiplied by `smooth_switch(r, switch_on, cutoff)`; energy and force are
      continuous, so NVE dynamics conserve energy and no force spike appears when a pair enters the
      list. With σ = 3 Å and switch_on = 8 Å it changes U by < 0.02 kcal/mol per pair.
    - `"shift"`: U(r) - U(cutoff); continuous energy, force jumps by p·U(rc)/rc at the cutoff.
    - `"none"`: plain truncation (the old code): U jumps by ε(σ/rc)^p (0.0081 kcal/mol at the defaults).

    r is floored at `r_floor` (Å) so coincident beads give a large finite energy instead of inf.
    **Fields:** `epsilon` (kcal/mol), `sigma` (Å), shape `(n_types,)`.
    """

    epsilon: Float[Array, " n_types"]
    sigma: Float[Array, " n_types"]
    exponent: int = eqx.field(static=True, default=4)
    min_sep: int = eqx.field(static=True, default=2)
    cutoff: float = eqx.field(static=True, default=10.0)
    switch: str = eqx.field(static=True, default="smooth")
    switch_on: float = eqx.field(static=True, default=8.0)
    r_floor: float = eqx.field(static=True, default=0.1)
    per_species: bool = eqx.field(static=True, default=False)
    n_species: int = eqx.field(static=True, default=1)

    name: ClassVar[str] = "repulsion"
    type_kind: ClassVar[str] = "pair"

    def __check_init__(self):
        if self.switch not in ("smooth", "shift", "none"):
            raise ValueError(f"SoftSphereRepulsion.switch must be smooth|shift|none, got {self.switch!r}")
        if self.switch == "smooth" and not 0.0 < self.switch_on < self.cutoff:
            raise ValueError(f"SoftSphereRepulsion.switch_on must lie in (0, cutoff={self.cutoff}), "
                             f"got {self.switch_on}")  # fmt: skip
        if self.min_sep < 2:
            raise ValueError(f"SoftSphereRepulsion.min_sep must be >= 2 (1 is a bond), got {self.min_sep}")

    @classmethod
    def init(cls, epsilon: float = 1.0, sigma: float = 3.0, *, exponent: int = 4, min_sep: int = 2,
             cutoff: float = 10.0, switch: str = "smooth", switch_on: float = 8.0,
             per_species: bool = False, n_species: int = 20) -> "SoftSphereRepulsion":  # fmt: skip
        n = n_types("pair", n_species) if per_species else 1
        return cls(_table(epsilon, n), _table(sigma, n), exponent, min_sep, cutoff, switch, switch_on,
                   0.1, per_species, n_species)  # fmt: skip

    def indices(self, batch: Batch) -> Int[Array, "m 2"]:
        return batch.pairs

    def mask(self, batch: Batch) -> Bool[Array, " m"]:
        return batch.pair_mask & (batch.pair_sep >= self.min_sep)

    def pair_energy(self, r: Float[Array, " m"], t: Int[Array, " m"]) -> Float[Array, " m"]:
        """U(r) of pairs of types t, including the cutoff treatment."""
        p = self.exponent
        u = self.epsilon[t] * (self.sigma[t] / jnp.maximum(r, self.r_floor)) ** p
        if self.switch == "smooth":
            u = u * smooth_switch(r, self.switch_on, self.cutoff)
        elif self.switch == "shift":
            u = u - self.epsilon[t] * (self.sigma[t] / self.cutoff) ** p
        return jnp.where(r < self.cutoff, u, 0.0)

    def entry_energies(self, batch: Batch, mask: Bool[Array, " m"]) -> Float[Array, " m"]:
        p0, p1 = _gather(batch.positions, batch.pairs, mask)
        return self.pair_energy(bond_lengths(p0, p1), self.type_index(batch))

    def frame_energies(self, batch: Batch) -> Float[Array, " n_graph"]:
        """Per-frame energies (kcal/mol, unweighted); equal to `graph_sum(node_energies)` up to rounding.

        Faster to differentiate than `node_energies`: a custom VJP forms each pair's force (dU/dr)·d/r
        analytically in the forward pass, so the backward pass is one scatter-add per bead end instead
        of reverse-mode's transposed gathers (and the ε, σ gradients are segment sums over types). The
        forward and backward rules are plain JAX, so forces stay differentiable w.r.t. the parameters
        (force matching: grad of grad). Masked pairs and padding indices contribute exactly zero.
        """
        static = (self.exponent, self.cutoff, self.switch, self.switch_on, self.r_floor,
                  batch.n_node, batch.n_graph)  # fmt: skip
        mask = self.mask(batch)
        i, j = batch.pairs[:, 0], batch.pairs[:, 1]
        frame = jnp.take(batch.graph_index, i, mode="clip")
        return _repulsion_frame_energies(static, batch.positions, self.epsilon, self.sigma, i, j,
                                         self.type_index(batch), mask, frame)  # fmt: skip


def _repulsion_pairs(static, pos, eps_tab, sig_tab, i, j, t, mask):
    """Per pair: U, dU/dε, dU/dσ and g = dU/d p_j (all exactly zero on masked pairs)."""
    p, cutoff, switch, switch_on, r_floor = static[:5]
    d = jnp.take(pos, j, axis=0, mode="clip") - jnp.take(pos, i, axis=0, mode="clip")
    d = jnp.where(mask[:, None], d, jnp.asarray([1.0, 0.0, 0.0], pos.dtype))
    r = safe_norm(d)
    eps, sig = eps_tab[t], sig_tab[t]
    rf = jnp.maximum(r, r_floor)
    v = (sig / rf) ** p  # U / ε before the cutoff treatment
    dv = jnp.where(r > r_floor, -p * v / rf, 0.0)
    if switch == "smooth":
        width = cutoff - switch_on
        x = jnp.clip((r - switch_on) / width, 0.0, 1.0)
        sw = 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x * x)
        dsw = -30.0 * x * x * (1.0 - x) ** 2 / width
        v, dv = v * sw, dv * sw + v * dsw
    elif switch == "shift":
        v = v - (sig / cutoff) ** p
    keep = mask & (r < cutoff)
    u1 = jnp.where(keep, v, 0.0)  # dU/dε
    u = eps * u1
    du_sig = p * u / jnp.where(keep, sig, 1.0)  # dU/dσ = p·U/σ for every cutoff treatment
    g = jnp.where(keep, eps * dv / rf, 0.0)[:, None] * d
    return u, u1, du_sig, g


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _repulsion_frame_energies(static, pos, eps_tab, sig_tab, i, j, t, mask, frame):
    u = _repulsion_pairs(static, pos, eps_tab, sig_tab, i, j, t, mask)[0]
    return jax.ops.segment_sum(u, frame, num_segments=static[6])


def _repulsion_fwd(static, pos, eps_tab, sig_tab, i, j, t, mask, frame):
    u, u1, du_sig, g = _repulsion_pairs(static, pos, eps_tab, sig_tab, i, j, t, mask)
    e = jax.ops.segment_sum(u, frame, num_segments=static[6])
    return e, (u1, du_sig, g, i, j, t, mask, frame, eps_tab, sig_tab)


def _repulsion_bwd(static, res, ct):
    u1, du_sig, g, i, j, t, mask, frame, eps_tab, sig_tab = res
    c = jnp.take(ct, frame, mode="clip")
    gc = c[:, None] * g
    n_node = static[5]
    dpos = jnp.zeros((n_node, 3), g.dtype).at[j].add(gc, mode="drop").at[i].add(-gc, mode="drop")
    n_t = eps_tab.shape[0]
    deps = jax.ops.segment_sum(c * u1, t, num_segments=n_t).astype(eps_tab.dtype)
    dsig = jax.ops.segment_sum(c * du_sig, t, num_segments=n_t).astype(sig_tab.dtype)
    return dpos, deps, dsig, None, None, None, None, None


_repulsion_frame_energies.defvjp(_repulsion_fwd, _repulsion_bwd)


TERM_CLASSES: dict[str, type[AbstractPriorTerm]] = {
    "bond": HarmonicBond,
    "angle": FourierAngle,
    "dihedral": PeriodicDihedral,
    "repulsion": SoftSphereRepulsion,
}
"""Term name → class (the names used in configs, saved priors and `Prior.components`)."""
