"""The energy-model interface shared by backbones, priors and the force field."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..graph import Batch, graph_sum


class AbstractEnergyModel(eqx.Module):
    """Anything that gives per-bead energies (kcal/mol) on a packed batch.

    Padded beads must get exactly zero energy, and the result must not depend on padding. Total
    energies are `energy(batch)` (by default `graph_sum(node_energies(batch), batch)`); forces are
    minus their gradient w.r.t. `batch.positions` (`energy_and_forces`). Training, simulation,
    refinement and evaluation all differentiate `energy`, so a model with a faster per-frame path
    (the `Prior`'s analytic-force VJP) overrides it and every stage gets the speed.
    """

    @abc.abstractmethod
    def node_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        """Per-bead energies in kcal/mol, zero on padded beads.

        **Arguments:**

        - `batch`: a packed batch (no leading device axis).

        **Returns:** an `(n_node,)` array.
        """

    def energy(self, batch: Batch) -> Float[Array, " n_graph"]:
        """Total energy of every frame (kcal/mol), zero for padded frames.

        **Arguments:**

        - `batch`: a packed batch (no leading device axis).

        **Returns:** an `(n_graph,)` array, equal to `graph_sum(node_energies(batch), batch)`.
        """
        return graph_sum(self.node_energies(batch), batch)


def energy_and_forces(
    model: AbstractEnergyModel, batch: Batch
) -> tuple[Float[Array, " n_graph"], Float[Array, "n_node 3"]]:
    """Energies per frame and forces -∂E/∂R from one reverse pass through `model.energy`.

    **Arguments:**

    - `model`: any `AbstractEnergyModel` (a `ForceField`, a backbone or a prior).
    - `batch`: a packed batch (no leading device axis).

    **Returns:** `(energy (n_graph,), forces (n_node, 3))` in kcal/mol and kcal/mol/Å; forces are zero
    on padded beads.
    """

    def total(pos):
        e = model.energy(batch.with_positions(pos))
        return jnp.sum(e), e

    g, e = jax.grad(total, has_aux=True)(batch.positions)
    return e, jnp.where(batch.node_mask[:, None], -g, 0.0)


def hyperparameter_dict(model: eqx.Module, names: Iterable[str]) -> dict[str, Any]:
    """The named constructor keywords of a model as a JSON-friendly dict (tuples become lists);
    `forcefield.save` stores it to rebuild the model's skeleton."""
    return {n: (list(v) if isinstance(v, tuple) else v) for n in names for v in [getattr(model, n)]}
