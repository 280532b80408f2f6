"""Export an energy model as a chemtrain-deploy artifact (`.ptb`) for LAMMPS `pair_style chemtrain_deploy`.

The artifact is the protobuf `chemsim.Model` (see `ptb.py`) holding the StableHLO text of one
shape-polymorphic function of the connector's 8 arguments and 4 outputs (the contract is in
`specs/chemtrain_deploy_contract.md` of the project notes, summarised here):

| # | argument | | # | output |
|---|---|---|---|---|
| 0 | `f32[N,3]` positions (local, ghost, zero padding) | | 0 | `f32[N,3]` forces = -dE/dx |
| 1 | `i32[N]` species, already 0-based | | 1 | `f32[]` energy summed over local atoms |
| 2 | `i32[]` n_local; 3 `i32[]` n_ghost; 4 `bool[]` newton | | 2 | `i32[]` valid pruned edges (> M: rerun) |
| 5 | `i32[B]` senders; 6 `i32[B]` receivers (padding N) | | 3 | `i32[]` input edges within the cutoff |
| 7 | `bool[M]` capacity buffer (only its length counts) | | | |

Inside, the function drops padding, self and over-cutoff edges, reduces the (half or full)
neighbour list to each undirected pair once (without sorting: see `mirror_mask`, `undirected_mask`),
keeps the pairs within `nbr_order` hops of local atoms, compacts them to ceil(M / 2) slots (a prefix
sum and a binary search, gathers only: see `prefix_sum`, `compaction_sources`) and evaluates the
model's per-bead energies on a packed one-frame `Batch` whose directed edges are both orientations
of each slot (so each directed edge occurs once) and whose non-bonded pairs are the slots themselves.

**Limits of a baked topology** (prior bonded terms index rows): valid only on one MPI rank, with no
ghost atoms (`boundary s s s` or f, no periodic images) and `atom_modify sort 0 0.0` (row order =
atom order). The function guards this and returns NaN energy and forces when `n_ghost != 0`, when
`n_local` differs from the exported protein's size, when the species sequence differs from the
exported one (a wrong, shifted or out-of-range species, or atoms in another order), when a baked bond
is longer than `MAX_BAKED_BOND_LENGTH` (a permutation that keeps the species sequence, or a blow-up),
and when the neighbour list is not exactly every pair within the cutoff once (a half list) or once in
each orientation (a full list): one duplicated or missing entry is flagged, not miscounted (see
`list_consistent`). What it cannot see: two beads of the same species swapped while every bond stays
short (the connector passes no atom ids). Use `atom_style atomic` (a molecular style's
`special_bonds 0 0 0` would silently remove 1-2/1-3/1-4 pairs) and
`comm_modify cutoff >= nbr_order * cutoff + skin`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export
from jaxtyping import Array, Bool, Int

from ..config import check
from ..data.store import PreparedDataset
from ..energy import AbstractEnergyModel
from ..fileio import write_atomic
from ..graph import make_batch
from ..modules import load
from ..precision import DEFAULT_PRECISION, MatmulPrecision
from ..precision import matmul_precision as precision_context
from ..topology import SEPARATION_NONBONDED, CGTopology
from ..units import KCAL_PER_MOL_TO_EV
from . import lammps, ptb
from .lammps import RunSettings

UNIT_STYLES: dict[str, float] = {"real": 1.0, "metal": KCAL_PER_MOL_TO_EV}
"""LAMMPS unit styles the exporter supports and their energy factor from kcal/mol (lengths are Å)."""

PLATFORMS: tuple[str, ...] = ("cuda", "cpu")

MAX_BAKED_BOND_LENGTH: float = 8.0
"""Å; a baked bond longer than this makes the function return NaN (CA-CA bonds are about 3.8 Å; the same
bound as the simulation's blow-up guard)."""

SYMBOLIC_SHAPES = "n_atoms, max_buffers, max_edges"
SHAPE_CONSTRAINTS = ("max_edges <= 2*max_buffers",)


# ------------------------------------------------------------------------------------------------
# The connector function
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BakedTopology:
    """The exported protein's bonded terms and chain segments, as NumPy constants."""

    n_beads: int
    bonds: np.ndarray  # (n_bond, 2) int32
    angles: np.ndarray  # (n_angle, 3) int32
    dihedrals: np.ndarray  # (n_dih, 4) int32
    segment: np.ndarray  # (n,) int32
    species: np.ndarray  # (n,) int32

    @classmethod
    def from_topology(cls, topology: CGTopology | None) -> "BakedTopology | None":
        if topology is None:
            return None
        return cls(
            n_beads=topology.n_beads,
            bonds=np.asarray(topology.bonds, np.int32).reshape(-1, 2),
            angles=np.asarray(topology.angles, np.int32).reshape(-1, 3),
            dihedrals=np.asarray(topology.dihedrals, np.int32).reshape(-1, 4),
            segment=np.asarray(topology.segment, np.int32),
            species=np.asarray(topology.species, np.int32),
        )


def receptive_field(model, nbr_order: tuple[int, int] | None = None) -> tuple[int, int]:
    """`nbr_order = [K, 2K]` for a model whose bead energies reach K hops (its
    `n_message_passing_layers`; a `ForceField` takes the larger of its backbone's and prior's).

    A strictly local model (Allegro, priors) has K = 1, so `[1, 2]`. An explicit `nbr_order` wins; an
    object that is not an `AbstractEnergyModel` does not state its receptive field and requires one.
    """
    if nbr_order is not None:
        order = tuple(int(v) for v in nbr_order)
        if len(order) != 2 or min(order) < 1:
            raise ValueError(f"nbr_order must be two positive ints [newton_on, newton_off], got {nbr_order}")
        return order  # type: ignore[return-value]
    if not isinstance(model, AbstractEnergyModel):
        raise ValueError(
            f"{type(model).__name__} is not an AbstractEnergyModel and states no `n_message_passing_layers`: "
            "pass nbr_order=(K, 2K) for a model whose per-bead energy depends on neighbours up to K hops away"
        )
    k = int(model.n_message_passing_layers)
    if k < 1:
        raise ValueError(f"{type(model).__name__}.n_message_passing_layers must be >= 1, got {k}")
    return (k, 2 * k)


PREFIX_BLOCK: int = 64
"""Block length of `prefix_sum` (scanned within a block by one small matrix product)."""

PREFIX_MAX_LOG2_BLOCKS: int = 26
"""`prefix_sum` handles up to 2**26 blocks (4e9 elements, beyond int32) with static shifts."""


def _shift_add(x: Array, shift: int, axis: int) -> Array:
    """x + (x shifted by `shift` towards higher indices along `axis`, zeros shifted in): a pad and a
    slice with static amounts, valid for any (symbolic) length, also when shift >= length."""
    cfg = [(0, 0, 0)] * x.ndim
    cfg[axis] = (shift, 0, 0)
    y = jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)
    return x + jax.lax.slice_in_dim(y, 0, x.shape[axis], axis=axis)


def prefix_sum(x: Int[Array, " L"]) -> Int[Array, " L"]:
    """Inclusive prefix sum of a 1-D array of 0/1 (or small non-negative) ints of any (symbolic)
    length, without sorting and without custom calls.

    `jnp.cumsum` lowers to a `reduce_window` that becomes a custom call under shape polymorphism and
    `lax.associative_scan` refuses symbolic lengths. Here the array is padded to blocks of
    `PREFIX_BLOCK`, each block is scanned by one float32 product with a triangular matrix of ones
    (exact while a block sums to < 2**24), and the block totals are scanned in log depth
    (Hillis-Steele with static shifts: pads, slices, adds) and added back. Scanning the blocks with
    shifts too was slower on XLA:CPU (fusion recomputes the chain of shifts).

    **Arguments:**

    - `x`: the values (int32, 0/1 in the exporter).

    **Returns:** `y[i] = sum(x[: i + 1])` (int32).
    """
    t = PREFIX_BLOCK
    length = x.shape[0]
    q = (length + t - 1) // t
    blocks = jax.lax.pad(x.astype(jnp.float32), jnp.float32(0), [(0, q * t - length, 0)]).reshape(q, t)
    upper = jnp.triu(jnp.ones((t, t), jnp.float32))  # column j sums rows i <= j
    within = jnp.dot(blocks, upper, precision=jax.lax.Precision.HIGHEST).astype(jnp.int32)
    last = within[:, t - 1]
    totals = last
    for k in range(PREFIX_MAX_LOG2_BLOCKS):
        totals = _shift_add(totals, 2**k, 0)
    return (within + (totals - last)[:, None]).reshape(q * t)[:length]


def _edge_hash(a: Int[Array, " B"], b: Int[Array, " B"], c1: int, c2: int) -> Array:
    """A 32-bit mix of the ordered pair (a, b) (uint32 arithmetic wraps, sums are exact mod 2**32)."""
    x = a.astype(jnp.uint32) * jnp.uint32(c1) + b.astype(jnp.uint32) * jnp.uint32(c2)
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def mirror_mask(
    ok: Bool[Array, " B"], snd: Int[Array, " B"], rcv: Int[Array, " B"], n_local: Int[Array, ""]
) -> Bool[Array, " B"]:
    """Which listed edges must also be added reversed so that each directed edge occurs once.

    What LAMMPS hands the connector (checked on dumps of real LAMMPS neighbour lists, see
    tests/test_export_lammps.py): rows for the local atoms, and for every ghost too when a ghost list
    was requested, and either

    - a half list (newton off; also a single-rank newton-on half list): each pair once, oriented
      acyclically (LAMMPS stores a pair in the row of the lower index, or by bin/coordinate order);
      every edge is mirrored;
    - a full list (the connector requests one with newton on): each pair in the row of every end
      that has a row; an edge is mirrored only when its receiver has no row (a local -> ghost edge
      without a ghost list), the others already occur in both directions.

    Which atoms have rows: the local ones, and all when some sender is a ghost (a ghost list). Which
    kind of list, decided from the data with reductions only (scatters are slow in the connector's
    XLA): restricted to edges between atoms with rows, a full list is symmetric, so the sums of a
    hash of (s, r) and of (r, s) over its edges agree exactly; for a half list they agree only by a
    hash collision (two independent 32-bit hashes: about 2**-64). When no edge joins two atoms with
    rows the two kinds coincide.

    **Arguments:**

    - `ok`: listed edges that are valid (in range, both atoms valid, not self, within the cutoff).
    - `snd`, `rcv`: their atoms (clipped to the padded range). `n_local`: the local atom count.

    **Returns:** the mask of edges to add reversed (a subset of `ok`).
    """
    ghost_rows = jnp.any(ok & (snd >= n_local))
    rcv_has_row = (rcv < n_local) | ghost_rows
    both = ok & rcv_has_row
    zero = jnp.uint32(0)
    full = jnp.bool_(True)
    for c1, c2 in ((0x9E3779B1, 0x85EBCA77), (0xC2B2AE3D, 0x27D4EB2F)):
        forward = jnp.sum(jnp.where(both, _edge_hash(snd, rcv, c1, c2), zero), dtype=jnp.uint32)
        backward = jnp.sum(jnp.where(both, _edge_hash(rcv, snd, c1, c2), zero), dtype=jnp.uint32)
        full = full & (forward == backward)
    return ok & ~(full & rcv_has_row)


def undirected_mask(
    ok: Bool[Array, " B"], snd: Int[Array, " B"], rcv: Int[Array, " B"], n_local: Int[Array, ""]
) -> Bool[Array, " B"]:
    """The listed edges that represent each undirected pair exactly once.

    Every edge `mirror_mask` would mirror stands for its pair alone (all of a half list; in a full
    list, the edges into atoms without a row); the other edges of a full list occur in both
    orientations, and the one with `snd < rcv` is kept. The model's directed edges are then each kept
    pair in both orientations.

    **Arguments:** as `mirror_mask`.

    **Returns:** the mask of representative edges (a subset of `ok`).
    """
    return ok & (mirror_mask(ok, snd, rcv, n_local) | (snd < rcv))


def list_consistent(
    listed: Bool[Array, " B"], snd: Int[Array, " B"], rcv: Int[Array, " B"], positions: Array, cutoff2: float
) -> Bool[Array, ""]:
    """Whether a neighbour list of a baked protein (no ghosts) holds every pair within the cutoff exactly
    once (a half list) or exactly once in each orientation (a full list).

    The pairs within the cutoff come from all pairs of the `n` rows of `positions` (an n x n loop that
    XLA fuses; nothing n x n is stored). Whether a listed edge counts is read from the same distances,
    so a pair at the cutoff is judged the same way on both sides. The list and the pairs are compared
    by their counts (one duplicated or missing entry changes it) and by the sum of a 32-bit hash of
    (i < j) (a duplicate and a missing entry together: caught up to a 2**-32 collision), and a full list
    must also be symmetric (the `mirror_mask` test). The all-or-nothing half/full detection alone took a
    full list with one bad entry for a half list and counted every pair twice.

    **Arguments:**

    - `listed`: edges that are in range, between valid atoms and not self (no cutoff applied yet).
    - `snd`, `rcv`: their atoms, clipped to the padded range. `positions`: the protein's `n` rows.
    - `cutoff2`: the squared cutoff.
    """
    n = positions.shape[0]
    ii = jnp.arange(n, dtype=jnp.int32)
    x, y, z = (positions[:, k] for k in range(3))  # per coordinate: vectorises ~7x better on CPU
    d2 = (x[:, None] - x[None, :]) ** 2 + (y[:, None] - y[None, :]) ** 2 + (z[:, None] - z[None, :]) ** 2
    within = (ii[:, None] < ii[None, :]) & (d2 < cutoff2)
    lo = jnp.clip(jnp.minimum(snd, rcv), 0, n - 1)
    hi = jnp.clip(jnp.maximum(snd, rcv), 0, n - 1)
    edge = listed & (snd < n) & (rcv < n) & within[lo, hi]
    n_pairs = jnp.sum(within, dtype=jnp.int32)
    n_edges = jnp.sum(edge, dtype=jnp.int32)
    zero = jnp.uint32(0)
    c1, c2 = 0x9E3779B1, 0x85EBCA77  # one hash over the n x n pairs (the costly part; the counts
    want = jnp.sum(jnp.where(within, _edge_hash(ii[:, None], ii[None, :], c1, c2), zero), dtype=jnp.uint32)
    got = jnp.sum(jnp.where(edge, _edge_hash(lo, hi, c1, c2), zero), dtype=jnp.uint32)  # catch +-1 alone)
    half = (n_edges == n_pairs) & (got == want)
    full = (n_edges == 2 * n_pairs) & (got == want * jnp.uint32(2))
    for c1, c2 in ((0x9E3779B1, 0x85EBCA77), (0xC2B2AE3D, 0x27D4EB2F)):
        forward = jnp.sum(jnp.where(edge, _edge_hash(snd, rcv, c1, c2), zero), dtype=jnp.uint32)
        backward = jnp.sum(jnp.where(edge, _edge_hash(rcv, snd, c1, c2), zero), dtype=jnp.uint32)
        full = full & (forward == backward)
    return half | full


def compaction_sources(inclusive: Int[Array, " L"], size: int) -> Int[Array, " size"]:
    """Where the `j`-th selected element sits, for `j < size`: the smallest `i` with
    `inclusive[i] >= j + 1`, given the inclusive prefix sum of a 0/1 selection (`len` when fewer
    than `j + 1` are selected).

    A branch-free binary search (one gather per step, `ceil(log2(len + 1))` steps in a `while_loop`,
    so any symbolic length works); it replaces a scatter to the slots, which the connector's XLA
    runs element by element.

    **Arguments:**

    - `inclusive`: non-decreasing int32 counts (`prefix_sum` of the selection).
    - `size`: how many slots to fill (static or symbolic).

    **Returns:** int32 source indices, one per slot.
    """
    length = inclusive.shape[0]
    n = jnp.zeros((), jnp.int32) + length
    target = jnp.arange(size, dtype=jnp.int32) + 1
    step0 = jnp.left_shift(jnp.int32(1), jnp.int32(31) - jax.lax.clz(jnp.maximum(n, 1)))  # top bit of n

    def body(carry):
        pos, step = carry
        cand = pos + step
        below = (cand < n) & (inclusive[jnp.clip(cand, 0, length - 1)] < target)
        return jnp.where(below, cand, pos), jnp.right_shift(step, 1)

    pos, _ = jax.lax.while_loop(lambda c: c[1] > 0, body, (jnp.full((size,), -1, jnp.int32), step0))
    return pos + 1


def _rows(x: Array, size) -> Array:
    """The first `size` rows of `x`, zero-padded when `x` has fewer (a concatenation and a slice,
    valid for static and symbolic sizes alike)."""
    pad = jnp.zeros((size,) + x.shape[1:], x.dtype)
    return jax.lax.slice_in_dim(jnp.concatenate([x, pad]), 0, size)


def _reach(local: Bool[Array, " N"], snd, rcv, valid_edge, hops: int) -> Bool[Array, " N"]:
    """Atoms within `hops` hops of a local atom along valid (symmetric) edges."""
    n = local.shape[0]
    reach = local
    for _ in range(hops):
        src = jnp.where(valid_edge, reach[jnp.minimum(snd, n - 1)], False)
        hit = jnp.zeros(n, jnp.int32).at[rcv].max(src.astype(jnp.int32), mode="drop")
        reach = reach | (hit > 0)
    return reach


CAPACITY_FRACTIONS: tuple[float, ...] = (1.0,)
"""Fractions of the edge capacity M the model can be evaluated on; the default evaluates all
ceil(M / 2) pair slots with one copy of the model.

Several fractions, e.g. `(0.72, 0.85, 1.0)`, compile one copy of the model per fraction and pick the
smallest that holds every pair with a `lax.switch`. That saves edge work (the connector grows M to
`edge_multiplier` times the count, so the count sits near M / edge_multiplier), but the connector's
XLA (jaxlib 0.4.35) runs a `switch` branch as a nested computation, single-threaded on CPU:
measured on 2 cores with PaiNN-small + prior (`benchmarks/bench_export.py`), the model in a
branch is ~1.3x slower, which cancels the saving (300 beads: 8.6 ms with three fractions and
`edge_multiplier` 1.5, 7.2 ms with one fraction and 1.2). So the default is one fraction, and the
generated LAMMPS input keeps the padding small with `edge_multiplier` 1.2 (`lammps.RunSettings`).
On a GPU the branch penalty is not measured here; fractions there save compute but each one adds
a compile of the model whenever the connector grows a buffer."""


def _capacity_rationals(fractions) -> list[tuple[int, int]]:
    """Validated, sorted fractions in (0, 1] ending with 1, as (numerator, denominator) over 1000."""
    vals = sorted({float(v) for v in fractions})
    if not vals or vals[0] <= 0 or vals[-1] > 1:
        raise ValueError(f"capacity_fractions must lie in (0, 1], got {tuple(fractions)}")
    if vals[-1] != 1.0:
        vals.append(1.0)
    return [(max(1, round(1000 * v)), 1000) for v in vals]


@dataclasses.dataclass(frozen=True, eq=False)
class _ConnectorSpec:
    """What `make_connector_function` fixes before tracing: the model, the baked protein and constants."""

    model: object
    baked: BakedTopology | None
    energy_factor: float
    cutoff2: float
    k_on: int
    k_off: int
    pair_min_sep: int
    fractions: list[tuple[int, int]]


@dataclasses.dataclass(frozen=True, eq=False)
class _InputEdges:
    """The listed edges: raw and clipped atoms, the in-range and valid-within-cutoff masks, their count."""

    s: Array
    r: Array
    in_range: Array
    sc: Array
    rc: Array
    ok: Array
    n_in_cutoff: Array


@dataclasses.dataclass(frozen=True, eq=False)
class _ModelFrame:
    """The beads the model sees (positions, species, node and local masks) and the baked bonded terms."""

    n_model: int
    positions: Array
    species: Array
    node_mask: Array
    local_mask: Array
    bonds: Array
    bond_mask: Array
    angles: Array
    angle_mask: Array
    dihedrals: Array
    dihedral_mask: Array


def _input_edges(positions, valid, senders, receivers, cutoff2: float) -> _InputEdges:
    """Drops padding, invalid atoms, self and over-cutoff edges and counts the edges left."""
    n = positions.shape[0]
    s = senders.astype(jnp.int32)
    r = receivers.astype(jnp.int32)
    in_range = (s >= 0) & (s < n) & (r >= 0) & (r < n)
    sc = jnp.clip(s, 0, n - 1)
    rc = jnp.clip(r, 0, n - 1)
    d2 = jnp.sum((positions[sc] - positions[rc]) ** 2, axis=-1)
    ok = in_range & valid[sc] & valid[rc] & (s != r) & (d2 < cutoff2)
    n_in_cutoff = jnp.sum(ok, dtype=jnp.int32)
    return _InputEdges(s, r, in_range, sc, rc, ok, n_in_cutoff)


def _kept_pairs(spec: _ConnectorSpec, und, edges: _InputEdges, valid, local, n_ghost, newton) -> Array:
    """The undirected pairs within `nbr_order` hops of local atoms (all of them without ghosts)."""
    # a pair can change a local energy (newton on: E = sum over local atoms) if one end is
    # within K-1 hops of a local atom; with newton off every valid atom's energy enters the
    # gradient and ghost energies reach K more hops, hence 2K. Without ghosts every valid atom
    # is local and nothing is pruned (the usual single-rank case skips the hops at run time).
    n = valid.shape[0]
    sc, rc = edges.sc, edges.rc

    def hops(k: int):
        def run():
            cs = jnp.concatenate([jnp.where(und, sc, n), jnp.where(und, rc, n)])
            cr = jnp.concatenate([jnp.where(und, rc, n), jnp.where(und, sc, n)])
            return _reach(local, cs, cr, jnp.concatenate([und, und]), k - 1)

        return run

    branch = jnp.where(n_ghost == 0, 0, jnp.where(newton, 1, 2)).astype(jnp.int32)
    reach = jax.lax.switch(branch, [lambda: valid, hops(spec.k_on), hops(spec.k_off)])
    return und & (reach[sc] | reach[rc])


def _baked_bonded(arr: np.ndarray | None, width: int) -> tuple[Array, Array]:
    """Baked bonded index rows and their all-true mask as constants (empty without a baked protein)."""
    if arr is None:
        return jnp.zeros((0, width), jnp.int32), jnp.zeros((0,), bool)
    return jnp.asarray(arr, jnp.int32), jnp.ones((arr.shape[0],), bool)


def _model_frame(baked: BakedTopology | None, positions, species_v, n_local, valid, local) -> _ModelFrame:
    """The model's beads: the baked protein's n0 rows (a static size), else the N buffer rows, masked."""
    # with a baked topology the guard makes any other call NaN, so the model does no work on the
    # connector's padding rows (its atom buffer is ~1.2x the atom count)
    if baked is not None:
        n_model = baked.n_beads
        pos_model = _rows(positions, n_model)
        species_model = _rows(species_v, n_model)
        node_mask = jnp.arange(n_model, dtype=jnp.int32) < n_local
        local_model = node_mask
    else:
        n_model, pos_model, species_model, node_mask, local_model = (
            positions.shape[0], positions, species_v, valid, local
        )  # fmt: skip
    # bonded terms baked from the exported protein (constants, the same for every slot count)
    bonds, bond_mask = _baked_bonded(None if baked is None else baked.bonds, 2)
    angles, angle_mask = _baked_bonded(None if baked is None else baked.angles, 3)
    dihedrals, dihedral_mask = _baked_bonded(None if baked is None else baked.dihedrals, 4)
    return _ModelFrame(n_model, pos_model, species_model, node_mask, local_model,
                       bonds, bond_mask, angles, angle_mask, dihedrals, dihedral_mask)  # fmt: skip


def _slot_batch(spec: _ConnectorSpec, frame: _ModelFrame, edges: _InputEdges, keep, inclusive, n_pairs, slots):
    """The packed one-frame `Batch` of the first `slots` compacted pairs (both orientations as edges)."""
    n_model, baked = frame.n_model, spec.baked
    src = jnp.minimum(compaction_sources(inclusive, slots), keep.shape[0] - 1)
    slot_ok = jnp.arange(slots, dtype=jnp.int32) < n_pairs
    a = jnp.where(slot_ok, edges.sc[src], n_model)
    b = jnp.where(slot_ok, edges.rc[src], n_model)

    # non-bonded pairs (i < j): the compacted pairs themselves
    lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
    if baked is not None:
        seg = jnp.asarray(baked.segment)
        last = baked.n_beads - 1
        same = seg[jnp.clip(lo, 0, last)] == seg[jnp.clip(hi, 0, last)]
        sep = jnp.where(same, hi - lo, SEPARATION_NONBONDED)
    else:
        sep = jnp.full((slots,), SEPARATION_NONBONDED, jnp.int32)
    pair_mask = slot_ok & (sep >= spec.pair_min_sep)
    pairs = jnp.where(pair_mask[:, None], jnp.stack([lo, hi], axis=-1), n_model)

    return make_batch(
        frame.positions, frame.species, node_mask=frame.node_mask,
        senders=jnp.concatenate([a, b]), receivers=jnp.concatenate([b, a]),
        edge_mask=jnp.concatenate([slot_ok, slot_ok]), edges_paired=True,
        bonds=frame.bonds, bond_mask=frame.bond_mask, angles=frame.angles, angle_mask=frame.angle_mask,
        dihedrals=frame.dihedrals, dihedral_mask=frame.dihedral_mask,
        pairs=pairs.astype(jnp.int32), pair_mask=pair_mask,
        pair_sep=jnp.where(pair_mask, sep, 0).astype(jnp.int32),
    )  # fmt: skip


def _slot_energies(spec: _ConnectorSpec, frame: _ModelFrame, batch, newton, pos):
    """(the energy to differentiate, the local energy) of `batch` at positions `pos`, in the unit style."""
    if spec.baked is not None:
        # a baked topology runs without ghosts (else NaN, in `_guard_baked`): every valid atom is
        # local and the energy is the frame's total, `model.energy`, which takes the
        # model's faster per-frame path (the prior's analytic-force VJP)
        e = spec.model.energy(batch.with_positions(pos))[0].astype(jnp.float32) * spec.energy_factor
        return e, e
    e = spec.model.node_energies(batch.with_positions(pos))
    e = jnp.where(frame.node_mask, e, 0.0).astype(jnp.float32) * spec.energy_factor
    e_local = jnp.sum(jnp.where(frame.local_mask, e, 0.0))
    # newton on: ghost forces are returned and summed back by LAMMPS
    e_grad = jnp.where(newton, e_local, jnp.sum(e))
    return e_grad, e_local


def _slot_evaluator(spec: _ConnectorSpec, frame: _ModelFrame, edges: _InputEdges, keep, inclusive, n_pairs,
                    newton, n, slots):  # fmt: skip
    """A thunk (one `switch` branch): the forces on the N rows and the local energy on `slots` pair slots."""

    def run():
        batch = _slot_batch(spec, frame, edges, keep, inclusive, n_pairs, slots)

        def energies(pos):
            return _slot_energies(spec, frame, batch, newton, pos)

        grad, e_local = jax.grad(energies, has_aux=True)(frame.positions)
        return _rows(-grad, n), e_local

    return run


def _evaluate_model(spec: _ConnectorSpec, frame: _ModelFrame, edges: _InputEdges, keep, inclusive, n_pairs,
                    newton, n, m):  # fmt: skip
    """The forces and local energy on at most ceil(M / 2) slots, or the smallest capacity fraction that fits."""
    # Pairs beyond ceil(M / 2) are dropped and the count (> M) makes the connector rerun (ceil keeps
    # one slot at the first call's M = 1: zero-size arrays crash the connector's XLA). With several
    # `capacity_fractions` the model runs on the smallest fraction of those slots that holds every
    # kept pair (one `switch` branch per fraction; see `CAPACITY_FRACTIONS` for why the default is one).
    h = (m + 1) // 2

    def evaluate(slots):
        return _slot_evaluator(spec, frame, edges, keep, inclusive, n_pairs, newton, n, slots)

    if len(spec.fractions) == 1:
        return evaluate(h)()
    sizes = [(h * num + den - 1) // den for num, den in spec.fractions[:-1]] + [h]  # ceil: >= 1 slot
    level = sum((n_pairs > size).astype(jnp.int32) for size in sizes[:-1])
    return jax.lax.switch(level, [evaluate(z) for z in sizes])


def _guard_baked(spec: _ConnectorSpec, frame: _ModelFrame, edges: _InputEdges, valid, species, n_local, n_ghost,
                 forces, e_local):  # fmt: skip
    """NaN forces and energy unless the call is the exported protein as exported (see the module docstring)."""
    baked = spec.baked
    bad = (n_ghost != 0) | (n_local != baked.n_beads)
    bad = bad | jnp.any(_rows(species, frame.n_model) != jnp.asarray(baked.species))
    if len(baked.bonds):
        bonds, pos_model = frame.bonds, frame.positions
        bl2 = jnp.sum((pos_model[bonds[:, 0]] - pos_model[bonds[:, 1]]) ** 2, axis=-1)
        bad = bad | ~jnp.all(bl2 < MAX_BAKED_BOND_LENGTH**2)
    sc, rc = edges.sc, edges.rc
    listed = edges.in_range & valid[sc] & valid[rc] & (edges.s != edges.r)
    bad = bad | ~list_consistent(listed, sc, rc, frame.positions, spec.cutoff2)
    return jnp.where(bad, jnp.nan, forces), jnp.where(bad, jnp.nan, e_local)


def make_connector_function(
    model,
    *,
    cutoff: float,
    nbr_order: tuple[int, int],
    topology: CGTopology | None = None,
    unit_style: str = "real",
    pair_min_sep: int = 2,
    capacity_fractions: tuple[float, ...] = CAPACITY_FRACTIONS,
):
    """The connector-facing function of the 8 arguments and 4 outputs (see the module docstring).

    **Arguments:**

    - `model`: an `AbstractEnergyModel` (per-bead energies in kcal/mol on a packed `Batch`).
    - `cutoff`: neighbour cutoff in Å (edges at distance >= cutoff are dropped).
    - `nbr_order`: `(newton_on, newton_off)` hop counts of edges kept around local atoms.
    - `topology`: the protein whose bonded terms and sequence separations are baked in (guarded:
      NaN output unless `n_ghost == 0` and `n_local == topology.n_beads`); None bakes none.
    - `unit_style`: "real" (Å, kcal/mol) or "metal" (Å, eV; converted inside).
    - `pair_min_sep`: minimum sequence separation of a non-bonded pair (as `graph.frame_graph`).
    - `capacity_fractions`: the fractions of the ceil(M / 2) pair slots the model may be evaluated
      on (the smallest that holds the kept pairs is used; see `CAPACITY_FRACTIONS`). `(1.0,)`, the
      default, evaluates all slots and compiles the model once.

    **Returns:** a function `f(positions, species, n_local, n_ghost, newton, senders, receivers,
    capacity) -> (forces, energy, n_valid_edges, n_edges_in_cutoff)`.
    """
    if unit_style not in UNIT_STYLES:
        raise ValueError(f"unit_style must be one of {sorted(UNIT_STYLES)}, got {unit_style!r}")
    k_on, k_off = (int(v) for v in nbr_order)
    spec = _ConnectorSpec(
        model=model, baked=BakedTopology.from_topology(topology), energy_factor=UNIT_STYLES[unit_style],
        cutoff2=float(cutoff) ** 2, k_on=k_on, k_off=k_off, pair_min_sep=pair_min_sep,
        fractions=_capacity_rationals(capacity_fractions),
    )  # fmt: skip

    def f(positions, species, n_local, n_ghost, newton, senders, receivers, capacity):
        n = positions.shape[0]
        m = capacity.shape[0]
        positions = positions.astype(jnp.float32)
        species = species.astype(jnp.int32)
        idx = jnp.arange(n, dtype=jnp.int32)
        valid = idx < n_local + n_ghost
        local = idx < n_local
        edges = _input_edges(positions, valid, senders, receivers, spec.cutoff2)
        # each undirected pair once, without sorting (see `undirected_mask`): a half list as listed, a
        # full list by its (s < r) half plus the edges into atoms without a row (ghosts without a ghost
        # list); the model's directed edges are then both orientations of each pair, by construction
        und = undirected_mask(edges.ok, edges.sc, edges.rc, n_local)
        keep = _kept_pairs(spec, und, edges, valid, local, n_ghost, newton)
        n_pairs = jnp.sum(keep, dtype=jnp.int32)
        n_valid = 2 * n_pairs  # directed edges the model sees
        # compaction: the kept pairs fill the first n_pairs slots, found by a binary search in their
        # prefix sum (gathers only; the scatter it replaces cost ~50 ns per listed edge in the connector's XLA)
        inclusive = prefix_sum(keep.astype(jnp.int32))
        species_v = jnp.where(valid, species, 0)
        frame = _model_frame(spec.baked, positions, species_v, n_local, valid, local)
        forces, e_local = _evaluate_model(spec, frame, edges, keep, inclusive, n_pairs, newton, n, m)
        if spec.baked is not None:
            forces, e_local = _guard_baked(spec, frame, edges, valid, species, n_local, n_ghost, forces, e_local)
        return (
            forces.astype(jnp.float32),
            e_local.astype(jnp.float32),
            n_valid.astype(jnp.int32),
            edges.n_in_cutoff.astype(jnp.int32),
        )

    return f


# ------------------------------------------------------------------------------------------------
# StableHLO for the connector's older XLA
# ------------------------------------------------------------------------------------------------


def _walk(op, visit) -> None:
    visit(op)
    for region in op.regions:
        for block in region.blocks:
            for child in block.operations:
                _walk(child.operation, visit)


def _inline_calls(module, ir) -> None:
    """Inlines every `func.call` into its caller and erases the private functions left unused.

    Done by hand: the inliner pass of jax's bundled MLIR does not inline `func.call` (the func
    dialect's inliner extension is not registered there). jax functions have one block; values a
    cloned op's regions capture from the callee are remapped like its operands.
    """
    top = [op.operation for op in module.body.operations]
    funcs = {ir.StringAttr(op.attributes["sym_name"]).value: op for op in top if op.name == "func.func"}
    while True:
        calls: list = []
        _walk(module.operation, lambda o: calls.append(o) if o.name == "func.call" else None)
        if not calls:
            break
        for call in calls:
            callee = funcs[ir.FlatSymbolRefAttr(call.attributes["callee"]).value]
            body = callee.regions[0].blocks[0]
            mapping = {arg: val for arg, val in zip(body.arguments, call.operands)}
            ip = ir.InsertionPoint(call)
            results = None
            for op in body.operations:
                op = op.operation
                if op.name == "func.return":
                    results = [mapping.get(v, v) for v in op.operands]
                    break
                new = op.clone(ip=ip)

                def remap(o, mapping=mapping):
                    for i, v in enumerate(o.operands):
                        if v in mapping:
                            o.operands[i] = mapping[v]

                _walk(new, remap)
                for old_res, new_res in zip(op.results, new.results):
                    mapping[old_res] = new_res
            if results is None:
                raise RuntimeError("a called function has no func.return")
            for old, res in zip(call.results, results):
                old.replace_all_uses_with(res)
            call.erase()
    for name, op in funcs.items():
        if name != "main":
            op.erase()


def legacy_stablehlo_text(module_text: str) -> str:
    """Makes jax's exported StableHLO loadable by the connector's StableHLO (1.7.x).

    Replaces every `stablehlo.composite` by a `func.call` of its decomposition, inlines all calls
    (so only `main` is left), and prints without debug locations. Module attributes (in particular
    `jax.uses_shape_polymorphism = true`) are kept.

    **Arguments:**

    - `module_text`: the text of `Exported.mlir_module()`.

    **Returns:** the rewritten module text.
    """
    # lazy: private JAX internals (jax._src, no stable API), kept to the one function that edits the MLIR
    from jax._src.interpreters import mlir as jax_mlir
    from jax._src.lib.mlir import ir
    from jax._src.lib.mlir.dialects import func as func_dialect

    with jax_mlir.make_ir_context(), ir.Location.unknown():
        module = ir.Module.parse(module_text)
        composites = []
        _walk(module.operation, lambda o: composites.append(o) if o.name == "stablehlo.composite" else None)
        for op in composites:
            callee = ir.FlatSymbolRefAttr(op.attributes["decomposition"])
            call = func_dialect.CallOp(
                [res.type for res in op.results],
                ir.FlatSymbolRefAttr.get(callee.value),
                list(op.operands),
                ip=ir.InsertionPoint(op),
            )
            for old, new in zip(op.results, call.results):
                old.replace_all_uses_with(new)
            op.erase()
        _inline_calls(module, ir)
        if not module.operation.verify():
            raise RuntimeError("the rewritten StableHLO module does not verify")
        return module.operation.get_asm(enable_debug_info=False)


# ------------------------------------------------------------------------------------------------
# Public export API
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Artifact:
    """An exported model: the protobuf bytes and what went into them."""

    ptb: bytes
    mlir_module: str
    cutoff: float
    nbr_order: tuple[int, int]
    unit_style: str
    platform: str
    n_beads: int | None  # size of the baked protein, None without topology

    def write(self, path: str | os.PathLike) -> Path:
        """Writes the `.ptb` atomically (temporary file, then rename)."""
        return write_atomic(path, self.ptb)


def connector_arg_specs() -> tuple[jax.ShapeDtypeStruct, ...]:
    """The 8 connector arguments as shape-polymorphic specs (n_atoms, max_buffers, max_edges), in
    the contract's order and dtypes."""
    n, b, m = jax_export.symbolic_shape(SYMBOLIC_SHAPES, constraints=SHAPE_CONSTRAINTS)
    sds = jax.ShapeDtypeStruct
    return (
        sds((n, 3), jnp.float32), sds((n,), jnp.int32), sds((), jnp.int32), sds((), jnp.int32),
        sds((), jnp.bool_), sds((b,), jnp.int32), sds((b,), jnp.int32), sds((m,), jnp.bool_),
    )  # fmt: skip


def export_model(
    model,
    *,
    topology: CGTopology | None = None,
    cutoff: float | None = None,
    nbr_order: tuple[int, int] | None = None,
    unit_style: Literal["real", "metal"] = "real",
    platform: Literal["cuda", "cpu"] = "cuda",
    pair_min_sep: int = 2,
    capacity_fractions: tuple[float, ...] = CAPACITY_FRACTIONS,
    matmul_precision: MatmulPrecision = DEFAULT_PRECISION,
) -> Artifact:
    """Exports an energy model as a chemtrain-deploy artifact.

    **Arguments:**

    - `model`: any `AbstractEnergyModel` (e.g. a `ForceField`).
    - `topology`: the protein to bake in (needed by bonded prior terms and sequence separations).
    - `cutoff`: neighbour cutoff in Å; defaults to `model.cutoff`.
    - `nbr_order`: `(newton_on, newton_off)`; defaults to `(K, 2K)` from `model.n_message_passing_layers`.
    - `unit_style`: LAMMPS units of the artifact ("real", or "metal" with eV converted inside).
    - `platform`: the one platform to lower for ("cuda" for GPUs, "cpu").
    - `pair_min_sep`: minimum sequence separation of non-bonded pairs handed to the model.
    - `capacity_fractions`: see `make_connector_function` and `CAPACITY_FRACTIONS`.
    - `matmul_precision`: precision written into the artifact's float32 dot products (see
      `cameo_eqx.precision`): 'float32' (HIGHEST: LAMMPS on a GPU computes true float32 products) or
      'tensorfloat32'.

    **Returns:** an `Artifact`; `.write(path)` saves the `.ptb`.
    """
    if not isinstance(model, AbstractEnergyModel):
        raise TypeError(f"{type(model).__name__} is not an energy model (an AbstractEnergyModel)")
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS} (exactly one), got {platform!r}")
    if cutoff is None:
        cutoff = model.cutoff
        if cutoff is None:
            raise ValueError(f"{type(model).__name__} reads no radius graph (its `cutoff` is None): pass cutoff= (Å)")
    cutoff = float(cutoff)
    order = receptive_field(model, nbr_order)
    f = make_connector_function(model, cutoff=cutoff, nbr_order=order, topology=topology,
                                unit_style=unit_style, pair_min_sep=pair_min_sep,
                                capacity_fractions=capacity_fractions)  # fmt: skip
    args = connector_arg_specs()
    with jax.enable_x64(False), precision_context(matmul_precision):
        exported = jax_export.export(jax.jit(f), platforms=[platform])(*args)
    text = legacy_stablehlo_text(exported.mlir_module())
    data = ptb.encode_model(text, cutoff=cutoff, nbr_order=order, nl_type=ptb.SIMPLE_SPARSE,
                            half_list=True, unit_style=unit_style)  # fmt: skip
    return Artifact(ptb=data, mlir_module=text, cutoff=cutoff, nbr_order=order,
                    unit_style=unit_style, platform=platform,
                    n_beads=None if topology is None else topology.n_beads)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The `export` command
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """`cli.py export`: a saved model + one protein of a prepared dataset -> LAMMPS-ready files.

    - `model`: the saved force field (`cameo_eqx.modules.save`, e.g. `runs/x/model.eqx`).
    - `dataset`: the prepared dataset directory; `protein`: its name there; `frame`: which frame's
      positions start the LAMMPS run.
    - `output`: directory for `model.ptb`, `protein.data`, `in.lammps`, `export_config.json`.
    - `platform`: "cuda" (GPU, the default), "cpu", or several (`--platform cuda cpu`): an artifact is
      lowered for exactly one platform, so with several each gets a complete set of files in
      `<output>/<platform>/`. `unit_style`: "real" or "metal".
    - `nbr_order`: `(newton_on, newton_off)`; default `(K, 2K)` from the model's receptive field.
    - `cutoff`: Å; default the model's. `bake_topology`: bake the protein's bonds/angles/dihedrals and
      sequence separations in (needed by a prior; single-protein, single-rank runs).
    - `pair_min_sep`: minimum sequence separation of non-bonded pairs (as in training); default the
      model's `pair_min_sep` when it has one, else 2.
    - `capacity_fractions`: the model is compiled for these fractions of the connector's edge
      capacity and runs on the smallest that holds every pair; the default `(1.0,)` keeps one copy
      of the model (faster on CPU and to compile; see `CAPACITY_FRACTIONS`).
    - `run`: the generated LAMMPS run (`lammps.RunSettings`; its `backend` follows `platform`).
    - `matmul_precision`: precision of the artifact's float32 dot products: 'float32' (default, true
      float32 on GPUs too) or 'tensorfloat32' (TF32 tensor cores on Ampere+ GPUs; an explicit option:
      check its forces against a float32 artifact on the GPU before production runs).
    """

    model: str = "runs/demo/model.eqx"
    dataset: str = "data/prepared"
    protein: str = ""
    frame: int = 0
    output: str = "export"
    platform: tuple[Literal["cuda", "cpu"], ...] = ("cuda",)
    unit_style: Literal["real", "metal"] = "real"
    nbr_order: tuple[int, int] | None = None
    cutoff: float | None = None
    bake_topology: bool = True
    pair_min_sep: int | None = None
    capacity_fractions: tuple[float, ...] = CAPACITY_FRACTIONS
    run: RunSettings = RunSettings()
    matmul_precision: MatmulPrecision = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        """Range checks (an invalid config cannot be constructed); a `ConfigError` names `export.key`. The
        protein is checked by `export` (its default, "", lets `cli.py export --help` build the config)."""
        platforms = (self.platform,) if isinstance(self.platform, str) else tuple(self.platform)
        check("export", [
            ("platform", bool(platforms) and all(p in PLATFORMS for p in platforms), f"one or more of {PLATFORMS}",
             self.platform),
            ("nbr_order", self.nbr_order is None or (len(self.nbr_order) == 2 and min(self.nbr_order) >= 1),
             "two positive ints [newton_on, newton_off] or null", self.nbr_order),
            ("capacity_fractions", bool(self.capacity_fractions) and all(0 < f <= 1 for f in self.capacity_fractions),
             "one or more values in (0, 1]", self.capacity_fractions),
        ])  # fmt: skip


def _load_model(path: str):
    if not Path(path).exists():
        raise FileNotFoundError(f"export: no saved model at {path} (train one first)")
    return load(path)


def export_files(
    model,
    record,
    out_dir: str | os.PathLike,
    *,
    frame: int = 0,
    platform: Literal["cuda", "cpu"] = "cuda",
    unit_style: Literal["real", "metal"] = "real",
    nbr_order: tuple[int, int] | None = None,
    cutoff: float | None = None,
    bake_topology: bool = True,
    pair_min_sep: int | None = None,
    n_types: int | None = None,
    capacity_fractions: tuple[float, ...] = CAPACITY_FRACTIONS,
    run: RunSettings | None = None,
    extra_config: dict | None = None,
    matmul_precision: MatmulPrecision = DEFAULT_PRECISION,
) -> Path:
    """Exports a model for one protein: `model.ptb`, `protein.data`, `in.lammps`, `export_config.json`.

    **Arguments:**

    - `model`: the energy model. `record`: a `ProteinRecord` (topology + frames).
    - `out_dir`: output directory (created). `frame`: the frame whose positions start the run.
    - `n_types`: number of LAMMPS atom types (the model's species count; default the record's max + 1).
    - `run`: `lammps.RunSettings` for the input script (its `backend` is set from `platform`).
      Others as `export_model`.

    **Returns:** the output directory. Every file is written atomically.
    """
    out = Path(out_dir)
    n_frames = record.n_frames
    if not -n_frames <= frame < n_frames:
        raise IndexError(f"export: protein {record.name!r} has {n_frames} frames, frame {frame} requested")
    positions, _ = record.frames(np.asarray([frame % n_frames]))
    positions = positions[0]
    topology = record.topology
    if pair_min_sep is None:
        pair_min_sep = int(model.pair_min_sep)
    n_types = int(n_types if n_types is not None else int(np.max(topology.species)) + 1)
    if int(np.max(topology.species)) >= n_types:
        raise ValueError(
            f"export: protein {record.name!r} has species up to {int(np.max(topology.species))} but the "
            f"model knows {n_types} species"
        )
    art = export_model(model, topology=topology if bake_topology else None, cutoff=cutoff,
                       nbr_order=nbr_order, unit_style=unit_style, platform=platform,
                       pair_min_sep=pair_min_sep, capacity_fractions=capacity_fractions,
                       matmul_precision=matmul_precision)  # fmt: skip
    backend = "cuda12" if platform == "cuda" else "cpu"
    asked = (run or RunSettings()).backend
    if asked != backend:  # the artifact runs only where it was lowered: say so, do not switch silently
        print(f"export: the artifact is lowered for platform {platform!r}, so in.lammps uses backend "
              f"{backend!r}, not the {asked!r} asked for in run.backend (export with --platform "
              f"{'cuda' if asked == 'cuda12' else 'cpu'} for that)", flush=True)  # fmt: skip
    run = dataclasses.replace(run or RunSettings(), backend=backend)
    data = lammps.data_file_text(positions, topology.species, topology.masses, n_types=n_types,
                                 title=f"cameo_eqx export of {record.name} frame {frame}",
                                 resname=topology.resname)  # fmt: skip
    script = lammps.input_script_text(data_file="protein.data", model_file="model.ptb", cutoff=art.cutoff,
                                      nbr_order=art.nbr_order, unit_style=unit_style, run=run)  # fmt: skip
    resolved = {
        **(extra_config or {}),
        "protein": record.name, "frame": int(frame), "n_beads": topology.n_beads, "n_types": n_types,
        "platform": platform, "lowered_for": [platform], "backend": backend,
        **({"backend_asked": asked} if asked != backend else {}),
        "unit_style": unit_style, "cutoff": art.cutoff,
        "nbr_order": list(art.nbr_order), "bake_topology": bool(bake_topology),
        "pair_min_sep": int(pair_min_sep), "run": dataclasses.asdict(run),
        "matmul_precision": matmul_precision,
        "files": {"model": "model.ptb", "data": "protein.data", "input": "in.lammps"},
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "model.ptb", art.ptb)
    write_atomic(out / "protein.data", data)
    write_atomic(out / "in.lammps", script)
    write_atomic(out / "export_config.json", json.dumps(resolved, indent=2) + "\n")
    return out


def export(cfg: ExportConfig) -> Path:
    """Runs `cli.py export`: loads the saved model and the protein, writes the artifact and LAMMPS files.

    **Arguments:**

    - `cfg`: the `ExportConfig`.

    **Returns:** the output directory.
    """
    if not cfg.protein:
        raise ValueError("export: name the protein to export (--protein NAME from the prepared dataset)")
    platforms = (cfg.platform,) if isinstance(cfg.platform, str) else tuple(dict.fromkeys(cfg.platform))
    with PreparedDataset(cfg.dataset) as ds:
        if cfg.protein not in ds.names:
            raise KeyError(f"export: protein {cfg.protein!r} not in {ds.path}; it has {ds.names[:10]}"
                           f"{' ...' if len(ds.names) > 10 else ''}")  # fmt: skip
        record = ds.record(cfg.protein).load()
        n_types = ds.n_species
    model = _load_model(cfg.model)
    for platform in platforms:  # one artifact per platform; several go to <output>/<platform>/
        out = Path(cfg.output) / platform if len(platforms) > 1 else Path(cfg.output)
        export_files(model, record, out, frame=cfg.frame, platform=platform,
                     unit_style=cfg.unit_style, nbr_order=cfg.nbr_order, cutoff=cfg.cutoff,
                     bake_topology=cfg.bake_topology, pair_min_sep=cfg.pair_min_sep, n_types=n_types,
                     capacity_fractions=cfg.capacity_fractions, run=cfg.run,
                     extra_config={"config": dataclasses.asdict(cfg)},
                     matmul_precision=cfg.matmul_precision)  # fmt: skip
        if len(platforms) > 1:
            print(f"export: {platform} artifact and LAMMPS files in {out}", flush=True)
    return Path(cfg.output)
