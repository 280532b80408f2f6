"""The packed batch: the one data structure every stage passes around.

Frames of different proteins are packed into one graph of fixed capacity. Real entries come first,
padding sits only at the end of every array, and every array has a mask. Two conventions make padding
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
