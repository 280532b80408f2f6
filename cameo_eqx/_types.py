"""jaxtyping aliases shared across the package.

Arrays in a packed batch have fixed capacities: `n_node` beads, `n_edge` directed radius-graph edges,
`n_graph` frames, `n_bond`/`n_angle`/`n_dih` bonded terms and `n_pair` non-bonded pairs.
"""

from typing import TypeAlias

import numpy as np
from jaxtyping import Array, Bool, Float, Int

ArrayLike: TypeAlias = Array | np.ndarray

Positions: TypeAlias = Float[ArrayLike, "n_node 3"]
Forces: TypeAlias = Float[ArrayLike, "n_node 3"]
NodeEnergies: TypeAlias = Float[Array, " n_node"]
GraphEnergies: TypeAlias = Float[Array, " n_graph"]
Species: TypeAlias = Int[ArrayLike, " n_node"]
NodeMask: TypeAlias = Bool[ArrayLike, " n_node"]

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Float",
    "Forces",
    "GraphEnergies",
    "Int",
    "NodeEnergies",
    "NodeMask",
    "Positions",
    "Species",
]
