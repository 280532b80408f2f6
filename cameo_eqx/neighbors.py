"""Radius graphs. Host side (matscipy) for training data; the device-side fixed-capacity neighbour list
for simulation and export lives with those stages."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int
from matscipy.neighbours import neighbour_list


def radius_graph(
    positions: Float[np.ndarray, "n 3"], cutoff: float
) -> tuple[Int[np.ndarray, " e"], Int[np.ndarray, " e"]]:
    """All directed pairs (i, j), i != j, with |r_i - r_j| < cutoff (non-periodic), via matscipy.

    **Arguments:**

    - `positions`: bead positions in Å.
    - `cutoff`: radius in Å.

    **Returns:** `(senders, receivers)` int32 arrays, sorted by sender; both directions of every pair.
    """
    pos = np.asarray(positions, dtype=np.float64)
    n = len(pos)
    if n < 2:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    lo = pos.min(axis=0)
    span = pos.max(axis=0) - lo
    # matscipy bins inside the cell; a non-periodic box that encloses everything with a margin
    cell = np.diag(span + 2.0 * cutoff + 1.0)
    i, j = neighbour_list("ij", positions=pos - lo + cutoff, cutoff=float(cutoff), cell=cell,
                          pbc=[False, False, False])  # fmt: skip
    return i.astype(np.int32), j.astype(np.int32)
