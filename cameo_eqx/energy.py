"""The energy-model contracts every stage relies on (core layer: imports only `graph` and JAX).

Three abstract classes, checked when a model is instantiated (the equinox abstract/final pattern):

- `AbstractEnergyModel`: per-bead energies on a packed `Batch`, plus the two facts every consumer of a
  model needs: the graph `cutoff` it reads and its receptive field in graph hops
  (`n_message_passing_layers`). The simulator builds its neighbour list at the cutoff; the LAMMPS
  exporter sizes the ghost region from both.
- `AbstractBackbone`: a learnable ML energy model, rebuilt from `n_species`, `cutoff` and its
  `hyperparameters()` when a model file is loaded.
- `AbstractPrior`: a physics prior made of named terms, whose forces it reports term by term (the
  per-term force diagnostics of training and evaluation).

Forces are always minus the gradient of `energy` (`energy_and_forces`), never a separate formula.
"""

# No `from __future__ import annotations` here: equinox orders the fields of subclasses correctly only
# when the `AbstractVar` annotations below are real types, not strings.
import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .graph import Batch, graph_sum


class AbstractEnergyModel(eqx.Module):
    """Anything that gives per-bead energies (kcal/mol) on a packed batch.

    Padded beads must get exactly zero energy, and the result must not depend on padding. Total
    energies are `energy(batch)` (by default `graph_sum(node_energies(batch), batch)`); forces are
    minus their gradient w.r.t. `batch.positions` (`energy_and_forces`). Training, simulation,
    refinement and evaluation all differentiate `energy`, so a model with a faster per-frame path
    (the `Prior`'s analytic-force VJP) overrides it and every stage gets the speed.

    **Abstract attributes** (a field, a property or a class variable of the concrete class):

    - `cutoff`: radius (Å) of the graph the model reads (radius-graph edges and non-bonded pairs), or
      `None` for a model that reads no radius graph (bonded terms only).
    - `n_message_passing_layers`: how many graph hops a bead's energy depends on; its receptive field
      is this many cutoffs. 1 for strictly local models (priors, Allegro).
    - `pair_min_sep`: the smallest sequence separation of the non-bonded pairs (`batch.pairs`) the model
      was made for; graphs built for it (simulation, export) select pairs with it. 2 unless a model
      says otherwise.
    """

    cutoff: eqx.AbstractVar[float | None]
    n_message_passing_layers: eqx.AbstractVar[int]
    pair_min_sep: eqx.AbstractVar[int]

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


class AbstractBackbone(AbstractEnergyModel):
    """A learnable ML energy model (Allegro, MACE, PaiNN).

    **Abstract attributes:** `n_species` (embedding size: species indices must be smaller), `cutoff` (Å,
    a number), `n_message_passing_layers`; and `hyperparameters()`, the constructor keywords that rebuild
    the skeleton with `make_backbone(name, n_species, cutoff, **hyperparameters())`. Backbones read
    radius-graph edges only, so `pair_min_sep` is 2 for all of them.
    """

    pair_min_sep: ClassVar[int] = 2

    n_species: eqx.AbstractVar[int]
    cutoff: eqx.AbstractVar[float]

    @abc.abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """The constructor keywords (JSON-friendly) that rebuild this model's skeleton."""


class AbstractPrior(AbstractEnergyModel):
    """A physics prior: a sum of named terms whose forces are reported separately."""

    @abc.abstractmethod
    def term_forces(self, batch: Batch) -> dict[str, Float[Array, "n_node 3"]]:
        """Forces of each term (including its weight), summing to the prior's forces.

        **Arguments:**

        - `batch`: a packed batch.

        **Returns:** a dict term name → `(n_node, 3)` forces in kcal/mol/Å, zero on padded beads.
        """


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


def graph_cutoff(model: AbstractEnergyModel, default: float = 10.0) -> float:
    """The radius (Å) at which to build graphs for `model`: its `cutoff`, or `default` for a model that
    reads no radius graph."""
    return default if model.cutoff is None else float(model.cutoff)

