"""The packed batch: the one data structure every stage passes around.

Frames of different proteins are packed into one graph of fixed capacity. Real entries come first,
padding sits only at the end of every array (the edges of a paired batch: at the end of each of their
two halves, see `Batch`), and every array has a mask. Two conventions make padding
safe twice over:

- masks: consumers multiply or `where` by `node_mask`, `edge_mask`, ... so padded entries contribute
  exactly zero energy and zero gradient;
- out-of-range padding indices: padded node indices (in `senders`, `receivers`, `bonds`, `angles`,
  `dihedrals`, `pairs`) equal `n_node`, and padded `graph_index` entries equal `n_graph`. JAX gathers
  clamp such indices (finite values) and scatters/`segment_sum` drop them, so a forgotten mask cannot
  leak padding into a real frame.

A batch made for data parallelism has one more leading axis (the device axis) on every array.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .neighbors import radius_pairs
from .topology import SEPARATION_NONBONDED  # noqa: F401  (`pair_sep` of pairs across segments)


class Capacity(NamedTuple):
    """Static sizes of a packed batch; one compiled step per distinct `Capacity` (a bucket)."""

    n_node: int
    n_edge: int
    n_graph: int
    n_bond: int
    n_angle: int
    n_dih: int
    n_pair: int


class Batch(eqx.Module):
    """A packed batch of frames (see the module docstring for the padding conventions).

    Arrays may be NumPy (host, while packing) or JAX (device). Units: Å and kcal/mol/Å.

    **Edge convention:** the radius-graph edge `e` runs from `senders[e]` (the neighbour j) to
    `receivers[e]` (the centre i): the edge's message, and in Allegro its edge energy, belongs to
    `receivers[e]`. Every backbone follows it. Both directions of every pair are in the edge list, so
    the total energy would not depend on the choice.

    **Paired edges:** when `edges_paired` is True (a static field), the edge list is laid out as
    `E = 2h` edges with edge `e + h` the reverse of edge `e` for every `e < h` (senders and receivers
    swapped, the same mask; padding mirrored too, so the first half ends with padding as well). The
    backbones then compute everything that depends only on the pair (distance, radial basis, filters,
    spherical harmonics up to parity) once per pair instead of once per direction. Every batch the
    stages build is paired (`frame_graph` + `pack`, the Simulator, the LAMMPS connector); a batch
    built by hand is not unless it says so (`check_paired` verifies the layout on the host).
    """

    positions: Float[Array, "n_node 3"]
    species: Int[Array, " n_node"]
    node_mask: Bool[Array, " n_node"]
    graph_index: Int[Array, " n_node"]
    senders: Int[Array, " n_edge"]
    receivers: Int[Array, " n_edge"]
    edge_mask: Bool[Array, " n_edge"]
    bonds: Int[Array, "n_bond 2"]
    bond_mask: Bool[Array, " n_bond"]
    angles: Int[Array, "n_angle 3"]
    angle_mask: Bool[Array, " n_angle"]
    dihedrals: Int[Array, "n_dih 4"]
    dihedral_mask: Bool[Array, " n_dih"]
    pairs: Int[Array, "n_pair 2"]
    pair_sep: Int[Array, " n_pair"]
    pair_mask: Bool[Array, " n_pair"]
    forces: Float[Array, "n_node 3"]
    graph_mask: Bool[Array, " n_graph"]
    energy: Float[Array, " n_graph"]
    temperature: Float[Array, " n_graph"]
    protein_index: Int[Array, " n_graph"]
    frame_index: Int[Array, " n_graph"]
    edges_paired: bool = eqx.field(static=True, default=False)

    @property
    def capacity(self) -> Capacity:
        """The static sizes of this batch (ignores a leading device axis)."""
        return Capacity(
            n_node=self.node_mask.shape[-1],
            n_edge=self.edge_mask.shape[-1],
            n_graph=self.graph_mask.shape[-1],
            n_bond=self.bond_mask.shape[-1],
            n_angle=self.angle_mask.shape[-1],
            n_dih=self.dihedral_mask.shape[-1],
            n_pair=self.pair_mask.shape[-1],
        )

    @property
    def n_node(self) -> int:
        return self.node_mask.shape[-1]

    @property
    def n_graph(self) -> int:
        return self.graph_mask.shape[-1]

    def with_positions(self, positions: Float[Array, "n_node 3"]) -> "Batch":
        """Returns the same batch with new positions (used to differentiate energies)."""
        return dataclasses.replace(self, positions=positions)

    def to_device(self) -> "Batch":
        """Host NumPy arrays to JAX arrays."""
        return jax.tree.map(jnp.asarray, self)


def make_batch(
    positions: Float[Array, "n_node 3"],
    species: Int[Array, " n_node"],
    *,
    senders: Int[Array, " n_edge"],
    receivers: Int[Array, " n_edge"],
    bonds: Int[Array, "n_bond 2"],
    angles: Int[Array, "n_angle 3"],
    dihedrals: Int[Array, "n_dih 4"],
    pairs: Int[Array, "n_pair 2"],
    pair_sep: Int[Array, " n_pair"],
    node_mask: Bool[Array, " n_node"] | None = None,
    edge_mask: Bool[Array, " n_edge"] | None = None,
    bond_mask: Bool[Array, " n_bond"] | None = None,
    angle_mask: Bool[Array, " n_angle"] | None = None,
    dihedral_mask: Bool[Array, " n_dih"] | None = None,
    pair_mask: Bool[Array, " n_pair"] | None = None,
    graph_index: Int[Array, " n_node"] | None = None,
    graph_mask: Bool[Array, " n_graph"] | None = None,
    forces: Float[Array, "n_node 3"] | None = None,
    energy: Float[Array, " n_graph"] | None = None,
    temperature: Float[Array, " n_graph"] | None = None,
    protein_index: Int[Array, " n_graph"] | None = None,
    frame_index: Int[Array, " n_graph"] | None = None,
    edges_paired: bool = False,
) -> Batch:
    """The one `Batch` factory: the host packer, the Simulator and the LAMMPS connector all build
    batches here, so every field has one meaning and one default.

    Works on NumPy (host) and JAX (also traced) arrays alike.

    **Arguments:** the geometry (`positions`, `species`) and index arrays (padding index `n_node`);
    optional masks (default: an entry is real when its first index is < `n_node`; `node_mask` all
    real); `graph_mask` (default one frame) and `graph_index` (default: real beads in frame 0, padded
    beads `n_graph`); labels (default: `forces`, `energy`, `temperature` NaN, so that any use of a
    missing label as a target is loud; `protein_index`, `frame_index` 0); `edges_paired`: the edges
    are in the paired layout (see `Batch`; the caller guarantees it, `check_paired` verifies it).

    **Returns:** the `Batch`.
    """
    xp = np if isinstance(positions, np.ndarray) else jnp
    n = positions.shape[0]

    def real(idx, mask):
        if mask is not None:
            return mask
        return (idx if idx.ndim == 1 else idx[:, 0]) < n

    node_mask = xp.ones((n,), bool) if node_mask is None else node_mask
    graph_mask = xp.ones((1,), bool) if graph_mask is None else graph_mask
    n_graph = graph_mask.shape[0]
    if graph_index is None:
        graph_index = xp.where(node_mask, 0, n_graph).astype(xp.int32)

    def label(value, fill, dtype, shape):
        return xp.full(shape, fill, dtype) if value is None else value

    return Batch(
        positions=positions, species=species, node_mask=node_mask, graph_index=graph_index,
        senders=senders, receivers=receivers, edge_mask=real(senders, edge_mask),
        bonds=bonds, bond_mask=real(bonds, bond_mask), angles=angles, angle_mask=real(angles, angle_mask),
        dihedrals=dihedrals, dihedral_mask=real(dihedrals, dihedral_mask),
        pairs=pairs, pair_sep=pair_sep, pair_mask=real(pairs, pair_mask),
        forces=label(forces, np.nan, positions.dtype, (n, 3)), graph_mask=graph_mask,
        energy=label(energy, np.nan, positions.dtype, (n_graph,)),
        temperature=label(temperature, np.nan, positions.dtype, (n_graph,)),
        protein_index=label(protein_index, 0, xp.int32, (n_graph,)),
        frame_index=label(frame_index, 0, xp.int32, (n_graph,)),
        edges_paired=bool(edges_paired),
    )  # fmt: skip


def paired_edges(
    senders: Int[np.ndarray, " e"], receivers: Int[np.ndarray, " e"]
) -> tuple[Int[np.ndarray, " e"], Int[np.ndarray, " e"]] | None:
    """The paired layout (see `Batch`) of a host edge list that holds both directions of every pair:
    the pairs (i, j) with `senders < receivers`, sorted, then the same pairs reversed.

    **Arguments:**

    - `senders`, `receivers`: directed edges (no self edges).

    **Returns:** `(senders, receivers)` in the paired layout, or None when the list is not symmetric
    (some edge lacks its reverse, or repeats).
    """
    s = np.asarray(senders, np.int64)
    r = np.asarray(receivers, np.int64)
    if len(s) % 2 or np.any(s == r):
        return None
    up = s < r
    a, b = s[up], r[up]
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    first, second = r[~up], s[~up]  # the reversed edges as (i < j) pairs
    order = np.lexsort((second, first))
    if not (np.array_equal(a, first[order]) and np.array_equal(b, second[order])):
        return None
    if len(a) > 1 and np.any((a[1:] == a[:-1]) & (b[1:] == b[:-1])):
        return None
    return (np.concatenate([a, b]).astype(np.int32), np.concatenate([b, a]).astype(np.int32))


def check_paired(batch: Batch) -> None:
    """Raises ValueError unless `batch` (host or device arrays, no device axis) has the paired edge
    layout it claims (`edges_paired`); a batch that does not claim it passes."""
    if not batch.edges_paired:
        return
    s, r, m = (np.asarray(a) for a in (batch.senders, batch.receivers, batch.edge_mask))
    e = s.shape[-1]
    h = e // 2
    if e % 2:
        raise ValueError(f"paired batch with an odd number of edge slots ({e})")
    if not (np.array_equal(s[:h], r[h:]) and np.array_equal(r[:h], s[h:]) and np.array_equal(m[:h], m[h:])):
        bad = np.flatnonzero((s[:h] != r[h:]) | (r[:h] != s[h:]) | (m[:h] != m[h:]))
        raise ValueError(f"batch claims paired edges but edge {int(bad[0])} and edge {int(bad[0]) + h} "
                         f"are not each other's reverse ({len(bad)} such slots)")  # fmt: skip


def graph_sum(
    values: Float[Array, " n_node"] | Float[Array, "n_node d"], batch: Batch
) -> Float[Array, " n_graph"] | Float[Array, "n_graph d"]:
    """Sums per-node values into per-frame values (padding nodes are dropped).

    **Arguments:**

    - `values`: per-node values; padded nodes should already be zero.
    - `batch`: the packed batch that gives `graph_index`.

    **Returns:** per-frame sums, zero for padded frames.
    """
    masked = jnp.where(
        batch.node_mask.reshape(batch.node_mask.shape + (1,) * (values.ndim - 1)), values, 0
    )
    return jax.ops.segment_sum(masked, batch.graph_index, num_segments=batch.n_graph)


def stack_batches(batches: list[Batch]) -> Batch:
    """Stacks same-capacity host batches along a new leading (device) axis."""
    caps = {b.capacity for b in batches}
    if len(caps) != 1:
        raise ValueError(f"cannot stack batches of different capacities: {sorted(caps)}")
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)


class FrameGraph(NamedTuple):
    """One frame's host-side graph before packing (indices local to the frame, NumPy arrays)."""

    positions: np.ndarray  # (n, 3) float32
    species: np.ndarray  # (n,) int32
    senders: np.ndarray  # (e,) int32
    receivers: np.ndarray  # (e,) int32
    bonds: np.ndarray  # (b, 2) int32
    angles: np.ndarray  # (a, 3) int32
    dihedrals: np.ndarray  # (d, 4) int32
    pairs: np.ndarray  # (p, 2) int32
    pair_sep: np.ndarray  # (p,) int32
    forces: np.ndarray | None  # (n, 3) float32
    energy: float = float("nan")
    temperature: float = float("nan")
    protein_index: int = -1
    frame_index: int = -1

    @property
    def sizes(self) -> Capacity:
        """This frame's own sizes (n_graph = 1)."""
        return Capacity(len(self.positions), len(self.senders), 1, len(self.bonds),
                        len(self.angles), len(self.dihedrals), len(self.pairs))  # fmt: skip


def frame_graph(
    positions: Float[np.ndarray, "n 3"],
    topology,  # topology.CGTopology
    cutoff: float,
    *,
    pair_min_sep: int = 2,
    forces: Float[np.ndarray, "n 3"] | None = None,
    **meta,
) -> FrameGraph:
    """Builds one frame's graph: radius-graph edges (in the paired layout of `Batch`), the protein's
    bonded terms, non-bonded pairs.

    Non-bonded pairs are the undirected radius-graph pairs (i < j) whose sequence separation is at
    least `pair_min_sep` (pairs in different chain segments always count). `pair_sep` keeps the
    separation so a prior can apply a stricter minimum.

    **Arguments:**

    - `positions`: bead positions (Å) of one frame.
    - `topology`: the protein's `CGTopology`.
    - `cutoff`: radius-graph cutoff in Å.
    - `pair_min_sep`: minimum sequence separation of a non-bonded pair.
    - `forces`: target forces, if any; `meta`: `energy`, `temperature`, `protein_index`, `frame_index`.

    **Returns:** a `FrameGraph`.
    """
    pi, pj = radius_pairs(positions, cutoff)  # the paired layout: these pairs, then the same reversed
    sep = topology.sequence_separation(pi, pj)
    keep = sep >= pair_min_sep
    return FrameGraph(
        positions=np.asarray(positions, np.float32),
        species=np.asarray(topology.species, np.int32),
        senders=np.concatenate([pi, pj]),
        receivers=np.concatenate([pj, pi]),
        bonds=topology.bonds,
        angles=topology.angles,
        dihedrals=topology.dihedrals,
        pairs=np.stack([pi[keep], pj[keep]], axis=-1).astype(np.int32),
        pair_sep=sep[keep],
        forces=None if forces is None else np.asarray(forces, np.float32),
        **meta,
    )


def _pad_idx(parts: list[np.ndarray], offsets: np.ndarray, cap: int, fill: int, width: int):
    """Concatenates per-frame index arrays shifted by node offsets, padded with `fill` to `cap`."""
    k = sum(len(p) for p in parts)
    if k > cap:
        raise ValueError(f"capacity overflow: {k} entries for capacity {cap}")
    shape = (cap,) if width == 0 else (cap, width)
    out = np.full(shape, fill, dtype=np.int32)
    if k:
        shifted = [p + o for p, o in zip(parts, offsets)]
        out[:k] = np.concatenate(shifted, axis=0)
    mask = np.zeros(cap, dtype=bool)
    mask[:k] = True
    return out, mask


def pack(frames: list[FrameGraph], capacity: Capacity) -> Batch:
    """Packs frame graphs into one fixed-capacity `Batch` (host NumPy arrays).

    **Arguments:**

    - `frames`: the frames to pack; their summed sizes must fit `capacity`.
    - `capacity`: the bucket's static sizes.

    **Returns:** a `Batch` with real entries first, padding at the end (see the module docstring).
    """
    c = capacity
    if len(frames) > c.n_graph:
        raise ValueError(f"capacity overflow: {len(frames)} frames for n_graph {c.n_graph}")
    n_nodes = np.asarray([len(f.positions) for f in frames], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_nodes)[:-1]]).astype(np.int32)
    n = int(n_nodes.sum())
    if n > c.n_node:
        raise ValueError(f"capacity overflow: {n} beads for n_node {c.n_node}")
    pos = np.zeros((c.n_node, 3), np.float32)
    frc = np.zeros((c.n_node, 3), np.float32)
    spc = np.zeros(c.n_node, np.int32)
    gidx = np.full(c.n_node, c.n_graph, np.int32)
    node_mask = np.zeros(c.n_node, bool)
    if frames:
        pos[:n] = np.concatenate([f.positions for f in frames])
        spc[:n] = np.concatenate([f.species for f in frames])
        if all(f.forces is not None for f in frames):
            frc[:n] = np.concatenate([f.forces for f in frames])
        else:
            frc[:n] = np.nan  # no targets: any use as a target is loud
        gidx[:n] = np.repeat(np.arange(len(frames), dtype=np.int32), n_nodes)
        node_mask[:n] = True
    fill = c.n_node
    snd, rcv, edge_mask, paired = _pack_edges(frames, offsets, c.n_edge, fill)
    bonds, bond_mask = _pad_idx([f.bonds for f in frames], offsets, c.n_bond, fill, 2)
    angles, angle_mask = _pad_idx([f.angles for f in frames], offsets, c.n_angle, fill, 3)
    dih, dih_mask = _pad_idx([f.dihedrals for f in frames], offsets, c.n_dih, fill, 4)
    pairs, pair_mask = _pad_idx([f.pairs for f in frames], offsets, c.n_pair, fill, 2)
    sep = np.zeros(c.n_pair, np.int32)
    k = int(pair_mask.sum())
    if k:
        sep[:k] = np.concatenate([f.pair_sep for f in frames])

    def per_graph(values, fill_value, dtype):
        out = np.full(c.n_graph, fill_value, dtype)
        out[: len(frames)] = values
        return out

    graph_mask = np.zeros(c.n_graph, bool)
    graph_mask[: len(frames)] = True
    return make_batch(
        pos, spc, node_mask=node_mask, graph_index=gidx,
        senders=snd, receivers=rcv, edge_mask=edge_mask,
        bonds=bonds, bond_mask=bond_mask, angles=angles, angle_mask=angle_mask,
        dihedrals=dih, dihedral_mask=dih_mask, pairs=pairs, pair_sep=sep, pair_mask=pair_mask,
        forces=frc, graph_mask=graph_mask,
        energy=per_graph([f.energy for f in frames], np.nan, np.float32),
        temperature=per_graph([f.temperature for f in frames], np.nan, np.float32),
        protein_index=per_graph([f.protein_index for f in frames], -1, np.int32),
        frame_index=per_graph([f.frame_index for f in frames], -1, np.int32),
        edges_paired=paired,
    )  # fmt: skip


def _frame_is_paired(f: FrameGraph) -> bool:
    h, rem = divmod(len(f.senders), 2)
    s, r = f.senders, f.receivers
    return rem == 0 and np.array_equal(s[:h], r[h:]) and np.array_equal(r[:h], s[h:])


def _pack_edges(frames: list[FrameGraph], offsets: np.ndarray, cap: int, fill: int):
    """The packed edge list: paired (all frames' first halves, padding, then their reverses) when every
    frame is paired and `cap` is even, else the frames' edges in order. Returns (senders, receivers,
    mask, paired)."""
    k = sum(len(f.senders) for f in frames)
    if k > cap:
        raise ValueError(f"capacity overflow: {k} entries for capacity {cap}")
    if cap % 2 == 0 and all(_frame_is_paired(f) for f in frames):
        halves = [len(f.senders) // 2 for f in frames]
        a, mask = _pad_idx([f.senders[:h] for f, h in zip(frames, halves)], offsets, cap // 2, fill, 0)
        b, _ = _pad_idx([f.receivers[:h] for f, h in zip(frames, halves)], offsets, cap // 2, fill, 0)
        return np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([mask, mask]), True
    snd, mask = _pad_idx([f.senders for f in frames], offsets, cap, fill, 0)
    rcv, _ = _pad_idx([f.receivers for f in frames], offsets, cap, fill, 0)
    return snd, rcv, mask, False


def single_frame_batch(
    positions: Float[np.ndarray, "n 3"],
    topology,
    cutoff: float,
    *,
    pair_min_sep: int = 2,
    forces: Float[np.ndarray, "n 3"] | None = None,
) -> Batch:
    """An unpadded batch of one protein frame (notebook use): capacity equals the frame's sizes."""
    fg = frame_graph(positions, topology, cutoff, pair_min_sep=pair_min_sep, forces=forces)
    return pack([fg], fg.sizes)
