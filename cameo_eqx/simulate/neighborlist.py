"""Device-side neighbour list (JAX) with a fixed capacity, a skin and an overflow flag.

The list holds every ordered pair (i, j), i != j, closer than `cutoff + skin` at the last build, in
row-major order (i, then j), padded at the end with the out-of-range index `n` (the `Batch`
convention). It stays valid until some bead has moved more than `skin / 2` since the build; `update`
then rebuilds it. The pairs within the cutoff at the current positions are compacted from it every step
(`edges`), so a model sees exactly the radius graph it was trained on (same pairs, same order as the host
builder), whatever the skin.

A build that finds more pairs than the capacity keeps the first `capacity` pairs, sets the sticky
`overflow` flag and records the true count in `max_count`: results computed after an overflow are wrong,
and the caller must rebuild with `grow_capacity(...)` and redo the work (`langevin` does so; no pair is
ever dropped silently).

The radius graph a model sees has its own, smaller number of slots, `edge_capacity` (ordered pairs
within the cutoff; 0: the candidate capacity). The candidates must cover the cutoff plus the skin, but a
model's cost grows with its edge slots, and a 2 Å skin on a 10 Å cutoff makes the candidates about 1.7x
the edges: sizing the model's graph by the candidates computed that many padded edges every step.
`update` counts the pairs within the cutoff at every step (`max_edges`) and sets the same `overflow`
flag when they exceed `edge_capacity`.

Brute force O(n²) per build: right for one protein of up to a few hundred beads (a 300-bead build is
90,000 distances, done only every few dozen steps).
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int


class NeighborList(eqx.Module):
    """Candidate pairs of one protein (possibly with a leading replica axis on every array).

    **Fields:**

    - `senders`, `receivers`: `(capacity,)` candidate pairs, padding index `n` at the end.
    - `count`: pairs found at the last build (may exceed `capacity`: then `overflow` is set).
    - `max_count`: the largest count seen since the list was made (to size a rebuild).
    - `reference`: `(n, 3)` positions at the last build.
    - `overflow`: sticky flag; once set, every result since is invalid.
    - `n_builds`: number of builds so far (diagnostics).
    - `max_edges`: the largest number of ordered pairs within the cutoff seen (to size `edge_capacity`).
    - `edge_capacity`: static number of radius-graph slots (`edges`' default size); 0: `capacity`.
    """

    senders: Int[Array, " capacity"]
    receivers: Int[Array, " capacity"]
    count: Int[Array, ""]
    max_count: Int[Array, ""]
    reference: Float[Array, "n 3"]
    overflow: Bool[Array, ""]
    n_builds: Int[Array, ""]
    max_edges: Int[Array, ""]
    cutoff: float = eqx.field(static=True)
    skin: float = eqx.field(static=True)
    edge_capacity: int = eqx.field(static=True, default=0)

    @property
    def capacity(self) -> int:
        return self.senders.shape[-1]

    @property
    def edge_slots(self) -> int:
        """Slots of the radius graph (ordered pairs within the cutoff): `edge_capacity`, else `capacity`."""
        return self.edge_capacity or self.capacity


def _candidates(positions: Float[Array, "n 3"], radius: float, capacity: int):
    n = positions.shape[0]
    d2 = jnp.sum((positions[:, None, :] - positions[None, :, :]) ** 2, axis=-1)
    cand = (d2 < radius * radius) & ~jnp.eye(n, dtype=bool)
    count = jnp.sum(cand, dtype=jnp.int32)
    (flat,) = jnp.nonzero(cand.reshape(-1), size=capacity, fill_value=n * n)
    valid = jnp.arange(capacity) < count
    s = jnp.where(valid, flat // n, n).astype(jnp.int32)
    r = jnp.where(valid, flat % n, n).astype(jnp.int32)
    return s, r, count


def build(
    positions: Float[Array, "n 3"], cutoff: float, skin: float, capacity: int, edge_capacity: int = 0
) -> NeighborList:
    """A fresh neighbour list of one protein.

    **Arguments:**

    - `positions`: bead positions (Å).
    - `cutoff`: the model's radius-graph cutoff (Å).
    - `skin`: extra radius (Å); the list stays valid while no bead moves more than `skin / 2`.
    - `capacity`: static number of candidate slots.
    - `edge_capacity`: static number of radius-graph slots (0: `capacity`).

    **Returns:** a `NeighborList`; check `overflow` before trusting anything computed with it.
    """
    s, r, count = _candidates(positions, cutoff + skin, capacity)
    nl = NeighborList(
        senders=s, receivers=r, count=count, max_count=count, reference=positions,
        overflow=count > capacity, n_builds=jnp.asarray(1, jnp.int32), max_edges=jnp.asarray(0, jnp.int32),
        cutoff=float(cutoff), skin=float(skin), edge_capacity=int(edge_capacity),
    )  # fmt: skip
    return track_edges(nl, positions)


def rebuild(nl: NeighborList, positions: Float[Array, "n 3"]) -> NeighborList:
    """Rebuilds at `positions` with the same capacities, keeping the sticky flags."""
    s, r, count = _candidates(positions, nl.cutoff + nl.skin, nl.capacity)
    nl = dataclasses.replace(
        nl, senders=s, receivers=r, count=count, max_count=jnp.maximum(nl.max_count, count),
        reference=positions, overflow=nl.overflow | (count > nl.capacity), n_builds=nl.n_builds + 1,
    )  # fmt: skip
    return track_edges(nl, positions)


def _within_cutoff(nl: NeighborList, positions: Float[Array, "n 3"], half: bool):
    """Which candidates are within the cutoff at `positions` (only `senders < receivers` if `half`),
    and their squared distances."""
    n = positions.shape[0]
    valid = (nl.senders < nl.receivers) if half else (nl.senders < n)  # padding has senders = n
    pi = positions[jnp.minimum(nl.senders, n - 1)]
    pj = positions[jnp.minimum(nl.receivers, n - 1)]
    d2 = jnp.sum((pi - pj) ** 2, axis=-1)
    return valid & (d2 < nl.cutoff * nl.cutoff), d2


def track_edges(nl: NeighborList, positions: Float[Array, "n 3"]) -> NeighborList:
    """Counts the ordered pairs within the cutoff at `positions`: `max_edges` keeps the largest count,
    and `overflow` is set when it exceeds `edge_slots` (then `edges` would drop pairs)."""
    n_edges = jnp.sum(_within_cutoff(nl, positions, half=False)[0], dtype=jnp.int32)
    return dataclasses.replace(
        nl, max_edges=jnp.maximum(nl.max_edges, n_edges), overflow=nl.overflow | (n_edges > nl.edge_slots)
    )


def needs_rebuild(nl: NeighborList, positions: Float[Array, "... n 3"]) -> Bool[Array, ""]:
    """True when some bead (of any replica) moved more than `skin / 2` since the last build (or a
    position is not finite)."""
    d2 = jnp.sum((positions - nl.reference) ** 2, axis=-1)
    limit = (0.5 * nl.skin) ** 2
    return ~jnp.all(d2 <= limit)


def update(nl: NeighborList, positions: Float[Array, "R n 3"]) -> NeighborList:
    """Rebuilds the lists of all replicas (leading axis) if any replica needs it; one `lax.cond`, so
    the O(n²) build runs only on the steps that need it. The pairs within the cutoff are counted at
    every step (`track_edges`, which a rebuild does too)."""
    return jax.lax.cond(
        needs_rebuild(nl, positions),
        lambda: jax.vmap(rebuild)(nl, positions),
        lambda: jax.vmap(track_edges)(nl, positions),
    )


def edges(
    nl: NeighborList, positions: Float[Array, "n 3"], capacity: int | None = None, *, half: bool = False
) -> tuple[Int[Array, " e"], Int[Array, " e"], Bool[Array, " e"], Float[Array, " e"]]:
    """The radius graph at `nl.cutoff` for the current positions, compacted from the candidates.

    **Arguments:**

    - `nl`: a neighbour list of one protein (no replica axis).
    - `positions`: current positions.
    - `capacity`: output size (default the list's `edge_slots`).
    - `half`: keep only the pairs with `senders < receivers` (one direction per pair).

    **Returns:** `(senders, receivers, mask, distances)`: real edges first in row-major order, padding
    (index `n`, distance 0) at the end.
    """
    n = positions.shape[0]
    cap = nl.edge_slots if capacity is None else capacity
    keep, d2 = _within_cutoff(nl, positions, half)
    s, r, d, mask = compact(keep, (nl.senders, nl.receivers, jnp.sqrt(jnp.where(keep, d2, 0.0))), cap, (n, n, 0.0))
    return s, r, mask, d


def compact(keep: Bool[Array, " m"], arrays, size: int, fills):
    """Moves the kept entries of each array to the front (order preserved), pads with `fills`.

    **Returns:** the compacted arrays followed by the `(size,)` mask.
    """
    pos = jnp.cumsum(keep) - 1
    slot = jnp.where(keep, pos, size)  # out of range: dropped
    out = []
    for a, f in zip(arrays, fills):
        buf = jnp.full((size,), f, a.dtype)
        out.append(buf.at[slot].set(a, mode="drop"))
    mask = jnp.arange(size) < jnp.sum(keep)
    return (*out, mask)


def grow_capacity(count: int, factor: float = 1.5, minimum: int = 16) -> int:
    """Capacity for `count` pairs with headroom (rounded up to a multiple of 16)."""
    c = max(minimum, int(math.ceil(count * factor)))
    return int(16 * math.ceil(c / 16))


def brute_force_pairs(positions: Float[np.ndarray, "n 3"], cutoff: float) -> set[tuple[int, int]]:
    """Host reference: the set of ordered pairs closer than `cutoff` (float64)."""
    x = np.asarray(positions, np.float64)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    i, j = np.nonzero((d < cutoff) & ~np.eye(len(x), dtype=bool))
    return set(zip(i.tolist(), j.tolist()))
