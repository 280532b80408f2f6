"""The energy-model interface shared by backbones, priors and the force field."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any

import equinox as eqx
from jaxtyping import Array, Float

from ..graph import Batch


class AbstractEnergyModel(eqx.Module):
    """Anything that gives per-bead energies (kcal/mol) on a packed batch.

    Padded beads must get exactly zero energy, and the result must not depend on padding. Total
    energies are `graph_sum(node_energies(batch), batch)`; forces are minus their gradient w.r.t.
    `batch.positions`.
    """

    @abc.abstractmethod
    def node_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        """Per-bead energies in kcal/mol, zero on padded beads.

        **Arguments:**

        - `batch`: a packed batch (no leading device axis).

        **Returns:** an `(n_node,)` array.
        """


def hyperparameter_dict(model: eqx.Module, names: Iterable[str]) -> dict[str, Any]:
    """The named constructor keywords of a model as a JSON-friendly dict (tuples become lists);
    `forcefield.save` stores it to rebuild the model's skeleton."""
    return {n: (list(v) if isinstance(v, tuple) else v) for n in names for v in [getattr(model, n)]}
