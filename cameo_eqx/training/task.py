"""The force-matching task (the LightningModule analogue): predictions, loss and metrics.

loss = γ_F · MSE(F) + γ_U · MSE(E), where

- MSE(F) is the mean over real beads with finite target forces and over the 3 Cartesian components of
  (F_pred - F_ref)², in (kcal/mol/Å)²; RMSE(F) = sqrt(MSE(F)) in kcal/mol/Å (the same per-component
  convention as the dataset's noise-floor statistics);
- MSE(E) is the mean over real frames with a finite target energy of (E_pred - E_ref)², (kcal/mol)².

Padding beads and frames, and NaN targets (absent), never enter a sum. The task works with sums
(`LossSums`) so that data-parallel steps can add them across devices and normalise by the GLOBAL counts:
the sharded loss and gradient then equal the single-device ones on the same global batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..energy import AbstractEnergyModel, AbstractPrior, energy_and_forces
from ..graph import Batch
from ..modules.forcefield import ForceField


class LossSums(NamedTuple):
    """Sums over one batch: squared force errors, force components counted, squared energy errors,
    energies counted, squared target forces (for the relative error)."""

    sse_f: Float[Array, ""]
    n_f: Float[Array, ""]
    sse_e: Float[Array, ""]
    n_e: Float[Array, ""]
    ssq_ref: Float[Array, ""]

    def __add__(self, other: "LossSums") -> "LossSums":  # type: ignore[override]
        return LossSums(*(a + b for a, b in zip(self, other)))


def predict(model: AbstractEnergyModel, batch: Batch) -> tuple[Float[Array, " n_graph"], Float[Array, "n_node 3"]]:
    """Per-frame energies and per-bead forces -∂E/∂R of any energy model, zero on padding.

    **Arguments:**

    - `model`: an `AbstractEnergyModel` (a `ForceField`, a backbone or a prior).
    - `batch`: a packed batch (no device axis).

    **Returns:** `(energy (n_graph,), forces (n_node, 3))` in kcal/mol and kcal/mol/Å.
    """
    return energy_and_forces(model, batch)


def force_mask(batch: Batch) -> jax.Array:
    """Real beads with finite target forces, `(n_node,)` bool."""
    return batch.node_mask & jnp.all(jnp.isfinite(batch.forces), axis=-1)


def energy_mask(batch: Batch) -> jax.Array:
    """Real frames with a finite target energy, `(n_graph,)` bool."""
    return batch.graph_mask & jnp.isfinite(batch.energy)


def term_forces(model: AbstractEnergyModel, batch: Batch) -> dict[str, Float[Array, "n_node 3"]]:
    """Forces of each term ("ml" and each prior term) of a `ForceField` or an `AbstractPrior`; any other
    model is one term "total"."""
    if isinstance(model, (ForceField, AbstractPrior)):
        return dict(model.term_forces(batch))
    return {"total": predict(model, batch)[1]}


class Task(eqx.Module):
    """Force matching: loss γ_F·MSE(F) + γ_U·MSE(E) over real beads (frames) only.

    **Arguments:**

    - `gamma_f`: weight of the force MSE.
    - `gamma_u`: weight of the energy MSE (0 by default: CG energies are rarely known).
    """

    gamma_f: float = eqx.field(static=True, default=1.0)
    gamma_u: float = eqx.field(static=True, default=0.0)

    def sums(self, model: AbstractEnergyModel, batch: Batch) -> LossSums:
        """Squared-error sums and counts of one batch (no device axis)."""
        e, f = predict(model, batch)
        fm = force_mask(batch)
        ref = jnp.where(fm[:, None], batch.forces, 0.0)
        d = jnp.where(fm[:, None], f - ref, 0.0)
        em = energy_mask(batch)
        de = jnp.where(em, e - jnp.where(em, batch.energy, 0.0), 0.0)
        f32 = batch.positions.dtype
        return LossSums(
            sse_f=jnp.sum(d * d),
            n_f=3.0 * jnp.sum(fm).astype(f32),
            sse_e=jnp.sum(de * de),
            n_e=jnp.sum(em).astype(f32),
            ssq_ref=jnp.sum(ref * ref),
        )

    @staticmethod
    def counts(batch: Batch) -> tuple[jax.Array, jax.Array]:
        """Force components and energies counted in the loss (independent of the parameters)."""
        f32 = batch.positions.dtype
        return 3.0 * jnp.sum(force_mask(batch)).astype(f32), jnp.sum(energy_mask(batch)).astype(f32)

    def loss_from_sums(self, s: LossSums, n_f: jax.Array, n_e: jax.Array) -> jax.Array:
        """γ_F·sse_F/n_F + γ_U·sse_E/n_E with the given (global) counts; an absent part counts 0."""
        loss = self.gamma_f * s.sse_f / jnp.maximum(n_f, 1.0)
        if self.gamma_u:
            loss = loss + self.gamma_u * s.sse_e / jnp.maximum(n_e, 1.0)
        return loss

    def loss(self, model: AbstractEnergyModel, batch: Batch) -> jax.Array:
        """The loss of one batch (single device)."""
        s = self.sums(model, batch)
        return self.loss_from_sums(s, s.n_f, s.n_e)

    def term_sums(self, model: AbstractEnergyModel, batch: Batch) -> dict[str, jax.Array]:
        """Per-term sums for metrics: for every term t, Σ F_t² and Σ (F_t - F_ref)² over real beads,
        and the prior-only Σ (Σ_prior F_t - F_ref)² when the model has prior terms."""
        fm = force_mask(batch)[:, None]
        ref = jnp.where(fm, batch.forces, 0.0)
        terms = term_forces(model, batch)
        out = {}
        prior_total = None
        for name, ft in terms.items():
            ft = jnp.where(fm, ft, 0.0)
            out[f"ssq/{name}"] = jnp.sum(ft * ft)
            out[f"sse_alone/{name}"] = jnp.sum((ft - ref) ** 2 * fm)
            if name not in ("ml", "total"):
                prior_total = ft if prior_total is None else prior_total + ft
        if prior_total is not None and "ml" in terms:
            out["sse_alone/prior"] = jnp.sum((prior_total - ref) ** 2 * fm)
        return out


def metrics_from_sums(s: LossSums, task: Task, extra: dict[str, float] | None = None) -> dict[str, float]:
    """Host-side metrics from (global) sums: loss, force MSE/RMSE, energy MSE, relative force error,
    and per-term RMS / alone-RMSE from `Task.term_sums` values."""
    n_f = max(float(s.n_f), 1.0)
    out = {
        "loss": float(task.loss_from_sums(s, s.n_f, s.n_e)),
        "force_mse": float(s.sse_f) / n_f,
        "force_rmse": math.sqrt(max(float(s.sse_f), 0.0) / n_f),
        "force_rel": math.sqrt(float(s.sse_f) / max(float(s.ssq_ref), 1e-30)),
    }
    if float(s.n_e) > 0:
        out["energy_mse"] = float(s.sse_e) / float(s.n_e)
    for k, v in (extra or {}).items():
        kind, name = k.split("/", 1)
        if kind == "ssq":
            out[f"term_rms/{name}"] = math.sqrt(float(v) / n_f)
        elif kind == "sse_alone":
            out[f"term_rmse_alone/{name}"] = math.sqrt(float(v) / n_f)
    return out
