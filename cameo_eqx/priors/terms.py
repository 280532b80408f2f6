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
(coincident beads, collinear triplets) stays finite: norms, angles and dihedrals use the safe forms of
`cameo_eqx.geometry` (`safe_norm`, `safe_atan2`) with finite (sub)gradients.
"""

# No `from __future__ import annotations`: equinox orders the fields of the terms correctly only when the
# `AbstractVar` annotations of `AbstractPriorTerm` are real types, not strings.
import abc
import functools
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ..energy import AbstractEnergyModel
from ..graph import Batch

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


def _row(table: Float[Array, "n_types ..."], t: Int[Array, " m"]) -> Float[Array, "..."]:
    """Each tuple's parameter row: `table[t]`, or the single row of a global table (broadcast, no gather)."""
    return table[:1] if table.shape[0] == 1 else jnp.take(table, t, axis=0, mode="clip")


def _dot(a: Float[Array, "m 3"], b: Float[Array, "m 3"]) -> Float[Array, " m"]:
    # written out rather than jnp.sum(a * b, -1): XLA CPU turns that reduction into a separate
    # (non-fusible) kernel with a materialised input, this one fuses with its producers and consumers
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _harmonics(c1: Float[Array, " m"], s1: Float[Array, " m"], order: int):
    """cos(nx), sin(nx) for n = 1..order from cos x, sin x (angle addition; no trigonometric calls)."""
    cs, ss = [c1], [s1]
    for _ in range(order - 1):
        c, s = cs[-1], ss[-1]
        cs.append(c * c1 - s * s1)
        ss.append(s * c1 + c * s1)
    return jnp.stack(cs, axis=-1), jnp.stack(ss, axis=-1)


def _unit_atan2(y: Float[Array, " m"], x: Float[Array, " m"]):
    """cos and sin of `safe_atan2(y, x)` (1, 0 at the origin, like `safe_atan2`'s 0)."""
    rho2 = x * x + y * y
    ok = rho2 > 1e-30
    inv = jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, rho2, 1.0)), 0.0)
    return jnp.where(ok, x * inv, 1.0), y * inv, ok


def _safe_sqrt(sq: Float[Array, " m"]) -> tuple[Float[Array, " m"], Bool[Array, " m"]]:
    """sqrt as in `safe_norm` (0 below 1e-12) and where it is nonzero."""
    ok = sq > 1e-12
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0), ok


def _safe_div(a, b, ok):
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


# ------------------------------------------------------------------------------------------- terms


class AbstractPriorTerm(AbstractEnergyModel):
    """A prior term acting on one kind of index tuple of the packed batch.

    Subclasses give the tuples (`indices`), their mask (`mask`) and `local`: every tuple's energy with
    its analytic derivatives, the one place where the term's energy is written. `energies` and
    `node_energies` (its equal shares to the tuple's beads) take `local`'s energy and are differentiated
    by autodiff; `prior_frame_energies` uses `local`'s analytic derivatives in a custom VJP instead (the
    tests check the two against each other).
    """

    name: eqx.AbstractClassVar[str]
    type_kind: eqx.AbstractClassVar[str]
    param_names: eqx.AbstractClassVar[tuple[str, ...]]
    per_species: eqx.AbstractVar[bool]
    n_species: eqx.AbstractVar[int]
    n_message_passing_layers: ClassVar[int] = 1
    pair_min_sep: ClassVar[int] = 2

    @abc.abstractmethod
    def indices(self, batch: Batch) -> Int[Array, "m k"]:
        """The bead index tuples this term acts on."""

    @abc.abstractmethod
    def mask(self, batch: Batch) -> Bool[Array, " m"]:
        """Which tuples are real (and selected)."""

    @abc.abstractmethod
    def local(
        self,
        params: tuple[Array, ...],
        positions: list[Float[Array, "m 3"]],
        t: Int[Array, " m"],
        mask: Bool[Array, " m"],
    ) -> tuple[Float[Array, " m"], tuple[Float[Array, "m 3"], ...], tuple[Array, ...]]:
        """Per-tuple energy and its analytic derivatives (used by `prior_frame_energies`).

        Uses only the static fields of `self`; the parameter tables come in `params` (in the order of
        `param_names`) so that they can be traced separately.

        **Arguments:**

        - `params`: the parameter tables.
        - `positions`: one `(m, 3)` array per bead of the tuple (masked rows: the canonical geometry).
        - `t`: parameter-table row of every tuple; `mask`: which tuples are real.

        **Returns:** `(u, grads, dparams)`: energies `(m,)` and `dU/dp_c` `(m, 3)` for every bead c, both
        exactly zero on masked tuples, and `dU/dθ` per tuple for every table θ (shape `(m,) + row
        shape`; any finite value on masked tuples). Two-body terms give `grads = (None, dU/dp_1)`:
        dU/dp_0 = -dU/dp_1 by translation invariance, and is accumulated without a second array.
        """

    def energies(self, batch: Batch) -> Float[Array, " m"]:
        """Per-tuple energies, exactly zero on masked tuples.

        **Arguments:**

        - `batch`: a packed batch.

        **Returns:** an `(m,)` array (m = the capacity of this term's index array).
        """
        mask = self.mask(batch)
        positions = _gather(batch.positions, self.indices(batch), mask)
        return self.local(self.parameter_tables(), positions, self.type_index(batch), mask)[0]

    def parameter_tables(self) -> tuple[Array, ...]:
        """The parameter tables in the order of `param_names` (what `local` takes)."""
        return tuple(getattr(self, name) for name in self.param_names)

    def node_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        """Per-bead energies (equal shares of every tuple's energy), zero on padded beads."""
        e = _scatter_share(batch.n_node, self.indices(batch), self.energies(batch))
        return jnp.where(batch.node_mask, e, 0.0)

    def type_index(self, batch: Batch) -> Int[Array, " m"]:
        """Row of the parameter table used by every tuple (0 for global parameters)."""
        idx = self.indices(batch)
        if not self.per_species:
            return jnp.zeros(idx.shape[0], jnp.int32)
        s = [_species(batch, idx[:, c]) for c in range(idx.shape[-1])]
        n = self.n_species
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
    cutoff: ClassVar[None] = None  # bonded: reads no radius graph
    type_kind: ClassVar[str] = "pair"
    param_names: ClassVar[tuple[str, ...]] = ("r0", "k")

    @classmethod
    def init(cls, r0: float = 3.84, k: float = 154.5, *, per_species: bool = False,
             n_species: int = 20) -> "HarmonicBond":  # fmt: skip
        """Every type starts at the same parameters (default: `priors.config.OLD_BOND_R0`, `OLD_BOND_K`)."""
        n = n_types("pair", n_species) if per_species else 1
        return cls(_table(r0, n), _table(k, n), per_species, n_species)

    def indices(self, batch: Batch) -> Int[Array, "m 2"]:
        return batch.bonds

    def mask(self, batch: Batch) -> Bool[Array, " m"]:
        return batch.bond_mask

    def local(self, params, positions, t, mask):
        r0_tab, k_tab = params
        p0, p1 = positions
        d = p1 - p0
        r, ok = _safe_sqrt(_dot(d, d))
        r0, k = _row(r0_tab, t), _row(k_tab, t)
        dr = r - r0
        u = jnp.where(mask, 0.5 * k * dr * dr, 0.0)
        g1 = _safe_div(k * dr, r, ok & mask)[:, None] * d
        return u, (None, g1), (-k * dr, 0.5 * dr * dr)


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
    cutoff: ClassVar[None] = None  # bonded: reads no radius graph
    type_kind: ClassVar[str] = "triplet"
    param_names: ClassVar[tuple[str, ...]] = ("a", "b")

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

    def local(self, params, positions, t, mask):
        a_tab, b_tab = params
        p0, p1, p2 = positions
        u_, v_ = p0 - p1, p2 - p1
        w = jnp.cross(u_, v_)
        y, y_ok = _safe_sqrt(_dot(w, w))  # |u x v| as in bond_angles (safe_norm)
        c1, s1, _ = _unit_atan2(y, _dot(u_, v_))
        cn, sn = _harmonics(c1, s1, a_tab.shape[-1])
        a, b = _row(a_tab, t), _row(b_tab, t)
        n = jnp.arange(1, a_tab.shape[-1] + 1, dtype=c1.dtype)
        e = jnp.where(mask, jnp.sum(a * cn + b * sn, axis=-1), 0.0)
        du = jnp.sum(n * (b * cn - a * sn), axis=-1)  # dU/dθ
        # dθ/dp0 = (u x w) / (|u|² |w|), dθ/dp2 = -(v x w) / (|v|² |w|); zero where |w| = 0 (as autodiff)
        ok = y_ok & mask
        coef = _safe_div(du, y, ok)
        g0 = _safe_div(coef, _dot(u_, u_), ok)[:, None] * jnp.cross(u_, w)
        g2 = -_safe_div(coef, _dot(v_, v_), ok)[:, None] * jnp.cross(v_, w)
        return e, (g0, -(g0 + g2), g2), (cn, sn)


class PeriodicDihedral(AbstractPriorTerm):
    """Dihedral term Σ_{n=1..order} k_n (1 + cos(nφ - γ_n)) on `batch.dihedrals` (IUPAC φ, trans = π).

    **Fields:** `k` (kcal/mol) and `gamma` (rad), shape `(n_types, order)`.
    """

    k: Float[Array, "n_types order"]
    gamma: Float[Array, "n_types order"]
    per_species: bool = eqx.field(static=True, default=False)
    n_species: int = eqx.field(static=True, default=1)

    name: ClassVar[str] = "dihedral"
    cutoff: ClassVar[None] = None  # bonded: reads no radius graph
    type_kind: ClassVar[str] = "quadruplet"
    param_names: ClassVar[tuple[str, ...]] = ("k", "gamma")

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

    def local(self, params, positions, t, mask):
        k_tab, g_tab = params
        p0, p1, p2, p3 = positions
        b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
        m, nv = jnp.cross(b1, b2), jnp.cross(b2, b3)
        lb2, lb_ok = _safe_sqrt(_dot(b2, b2))
        c1, s1, ok = _unit_atan2(lb2 * _dot(b1, nv), _dot(m, nv))  # as dihedral_angles
        order = k_tab.shape[-1]
        cn, sn = _harmonics(c1, s1, order)
        k = _row(k_tab, t)
        cg, sg = _row(jnp.cos(g_tab), t), _row(jnp.sin(g_tab), t)
        cos_a, sin_a = cn * cg + sn * sg, sn * cg - cn * sg  # cos, sin of nφ - γ
        n = jnp.arange(1, order + 1, dtype=c1.dtype)
        e = jnp.where(mask, jnp.sum(k * (1.0 + cos_a), axis=-1), 0.0)
        du = -jnp.sum(n * k * sin_a, axis=-1)  # dU/dφ
        # Blondel & Karplus (1996): dφ/dp0 = -|b2|/|m|² m, dφ/dp3 = |b2|/|n|² n, the middle beads
        # from translation invariance and the b1·b2, b3·b2 projections; zero where φ is undefined
        m2, n2 = _dot(m, m), _dot(nv, nv)
        good = ok & lb_ok & (m2 > 0) & (n2 > 0) & mask
        al = _safe_div(du * lb2, m2, good)
        be = _safe_div(du * lb2, n2, good)
        ga = _safe_div(du * _dot(b1, b2), m2 * lb2, good)
        gb = _safe_div(du * _dot(b3, b2), n2 * lb2, good)
        g0, g3 = -al[:, None] * m, be[:, None] * nv
        f = ga[:, None] * m + gb[:, None] * nv
        return e, (g0, f - g0, -f - g3, g3), (1.0 + cos_a, k * sin_a)


def smooth_switch(r: Float[Array, " m"], r_on: float, r_off: float) -> Float[Array, " m"]:
    """C² switch: 1 for r ≤ r_on, 0 for r ≥ r_off, 1 - 10x³ + 15x⁴ - 6x⁵ in between
    (x = (r - r_on) / (r_off - r_on))."""
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
    - `"none"`: plain truncation: U jumps by ε(σ/rc)^p (0.0081 kcal/mol at the defaults).

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
    param_names: ClassVar[tuple[str, ...]] = ("epsilon", "sigma")

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
        """U(r) of pairs of types t at distances r, including the cutoff treatment (`local`'s energy)."""
        zero = jnp.zeros_like(r)
        p1 = jnp.stack([r, zero, zero], axis=-1)
        return self.local(self.parameter_tables(), [jnp.zeros_like(p1), p1], t, jnp.ones(r.shape, bool))[0]

    def local(self, params, positions, t, mask):
        eps_tab, sig_tab = params
        p0, p1 = positions
        p, cutoff = self.exponent, self.cutoff
        d = p1 - p0
        r, _ = _safe_sqrt(jnp.sum(d * d, axis=-1))
        eps, sig = _row(eps_tab, t), _row(sig_tab, t)
        rf = jnp.maximum(r, self.r_floor)
        v = (sig / rf) ** p  # U / ε before the cutoff treatment
        dv = jnp.where(r > self.r_floor, -p * v / rf, 0.0)
        if self.switch == "smooth":
            width = cutoff - self.switch_on
            x = jnp.clip((r - self.switch_on) / width, 0.0, 1.0)
            sw = smooth_switch(r, self.switch_on, cutoff)
            dsw = -30.0 * x * x * (1.0 - x) ** 2 / width
            v, dv = v * sw, dv * sw + v * dsw
        elif self.switch == "shift":
            v = v - (sig / cutoff) ** p
        keep = mask & (r < cutoff)
        u1 = jnp.where(keep, v, 0.0)  # dU/dε
        u = eps * u1
        du_sig = p * u / jnp.where(keep, sig, 1.0)  # dU/dσ = p·U/σ for every cutoff treatment
        g = jnp.where(keep, eps * dv / rf, 0.0)[:, None] * d  # dU/dp1
        return u, (None, g), (u1, du_sig)


# ------------------------------------------------------------------------------ fused energies


def prior_frame_energies(
    terms: tuple[AbstractPriorTerm, ...] | list[AbstractPriorTerm],
    weights: tuple[float, ...] | list[float],
    batch: Batch,
) -> Float[Array, " n_graph"]:
    """Σ weight · energy of the terms per frame (kcal/mol), differentiable with analytic forces.

    Equal to `graph_sum(Σ w·node_energies)` up to rounding, but much faster to differentiate: a custom
    VJP takes every tuple's analytic `dU/dp` from `AbstractPriorTerm.local` in the forward pass and
    accumulates the per-bead derivatives of all terms, together with the energies, by scatter-adds of
    4-wide rows (XLA's CPU scatter is ~3x faster on 4-wide rows than on 3-wide ones, so the energy
    column comes for free; two-body terms scatter one row array to both beads). The backward pass is
    then a per-frame scaling of those derivatives (every tuple lies within one frame), and the
    parameter gradients are sums of the per-tuple `dU/dθ` (segment sums over types for per-species
    tables). The rules are plain JAX, so the forces stay differentiable w.r.t. the parameters (force
    matching: grad of grad). Masked tuples and padding indices contribute exactly zero.

    **Arguments:**

    - `terms`, `weights`: the prior terms and their weights.
    - `batch`: a packed batch.

    **Returns:** an `(n_graph,)` array, zero for padded frames.
    """
    skeletons = tuple((eqx.partition(t, eqx.is_array)[1], float(w)) for t, w in zip(terms, weights))
    params = tuple(t.parameter_tables() for t in terms)
    aux = tuple((t.indices(batch), t.type_index(batch), t.mask(batch)) for t in terms)
    return _fused_energies((skeletons, batch.n_graph), batch.positions, params, (aux, batch.graph_index))


def _fused_terms(static, pos, params, aux):
    """Per term: (weight, tuple indices, types, mask, local(...) outputs)."""
    skeletons, _ = static
    out = []
    for (term, w), prm, (idx, t, mask) in zip(skeletons, params, aux[0]):
        u, g, dp = term.local(prm, _gather(pos, idx, mask), t, mask)
        out.append((w, idx, t, mask, u, g, dp))
    return out


def _rows(static, pos, params, aux, with_grads: bool):
    """Scatter-add operands for two (n_node, 4) buffers, `plus` and `minus`: lists of (indices, rows).

    Row = [w·dU/dp_c, w·(energy share)] (or just the energy share without grads). A tuple's energy goes
    to its first bead; a two-body term (grads[0] is None) sends the same rows [w·dU/dp_1, w·u/2] to bead
    1 in `plus` and to bead 0 in `minus`: the gradient is plus - minus, the energy plus + minus.
    """
    plus, minus, res = [], [], []
    for w, idx, t, mask, u, g, dp in _fused_terms(static, pos, params, aux):
        res.append((idx[:, 0], t, mask, dp))
        if g[0] is None:
            assert len(g) == 2, "only two-body terms may leave dU/dp_0 implicit"
            e = (0.5 * w) * u
            rows = jnp.concatenate([w * g[1], e[:, None]], axis=1) if with_grads else e
            plus.append((idx[:, 1], rows))
            minus.append((idx[:, 0], rows))
            continue
        for c, gc in enumerate(g):
            e = w * u if c == 0 else jnp.zeros_like(u)
            if with_grads:
                plus.append((idx[:, c], jnp.concatenate([w * gc, e[:, None]], axis=1)))
            elif c == 0:
                plus.append((idx[:, c], e))
    return plus, minus, res


def _accumulate(n_node, dtype, operands, width):
    """Scatter-adds every (indices, rows) into one buffer, in order (padding indices n_node dropped).

    One scatter per operand into the same buffer: measured a little faster than one scatter of all
    rows concatenated, whose concatenation costs more than the scatters it saves.
    """
    acc = jnp.zeros((n_node,) if width is None else (n_node, width), dtype)
    for i, rows in operands:
        acc = acc.at[i].add(rows, mode="drop")
    return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_energies(static, pos, params, aux):
    # the same accumulation order as the forward pass, so energies are identical with and without grad
    plus, minus, _ = _rows(static, pos, params, aux, with_grads=False)
    e_node = _accumulate(pos.shape[0], pos.dtype, plus, None) + _accumulate(pos.shape[0], pos.dtype, minus, None)
    return jax.ops.segment_sum(e_node, aux[1], num_segments=static[1])


def _fused_fwd(static, pos, params, aux):
    n_graph, gi = static[1], aux[1]
    plus, minus, res = _rows(static, pos, params, aux, with_grads=True)
    acc_p = _accumulate(pos.shape[0], pos.dtype, plus, 4)
    acc_m = _accumulate(pos.shape[0], pos.dtype, minus, 4)
    e = jax.ops.segment_sum(acc_p[:, 3] + acc_m[:, 3], gi, num_segments=n_graph)  # padded beads dropped
    return e, (acc_p[:, :3] - acc_m[:, :3], gi, res, params)


def _fused_bwd(static, residuals, ct):
    grad_pos, gi, res, params = residuals
    c_node = jnp.take(ct, gi, mode="fill", fill_value=0)
    dpos = c_node[:, None] * grad_pos
    dparams = []
    for (_, w), (i0, t, mask, dp), prm in zip(static[0], res, params):
        c = w * jnp.where(mask, jnp.take(ct, jnp.take(gi, i0, mode="clip"), mode="clip"), 0.0)
        grads = []
        for tab, d in zip(prm, dp):
            cd = c.reshape(c.shape + (1,) * (d.ndim - 1)) * d
            if tab.shape[0] == 1:
                g = jnp.sum(cd, axis=0, keepdims=True)
            else:
                g = jax.ops.segment_sum(cd, t, num_segments=tab.shape[0])
            grads.append(g.astype(tab.dtype))
        dparams.append(tuple(grads))
    return dpos, tuple(dparams), None


_fused_energies.defvjp(_fused_fwd, _fused_bwd)


TERM_CLASSES: dict[str, type[AbstractPriorTerm]] = {
    "bond": HarmonicBond,
    "angle": FourierAngle,
    "dihedral": PeriodicDihedral,
    "repulsion": SoftSphereRepulsion,
}
"""Term name → class (the names used in configs, saved priors and `Prior.components`)."""
