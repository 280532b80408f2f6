"""Force matching of prior parameters with `optimistix.LBFGS` (the trainer's optional first stage).

`lbfgs_force_match` works for any `AbstractEnergyModel` pytree and a filter spec saying which leaves
train (everything else, e.g. a network, stays frozen); `refine_prior` applies it to a `Prior`'s
parameters. The loss is the mean squared force error per Cartesian component over the real beads of
all given batches (a small host-built subsample, see `make_batches`), so the whole subsample is one
deterministic objective, as LBFGS needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import PyTree

from ..data.store import ProteinRecord
from ..graph import Batch, Capacity, frame_graph, graph_sum, pack
from ..modules.base import AbstractEnergyModel
from .prior import Prior


def _sq_error(model: AbstractEnergyModel, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(Σ squared force error over real beads, number of real force components)."""

    def energy(pos):
        return jnp.sum(graph_sum(model.node_energies(batch.with_positions(pos)), batch))

    f = -jax.grad(energy)(batch.positions)
    m = batch.node_mask[:, None]
    err = jnp.where(m, f - jnp.where(m, batch.forces, 0.0), 0.0)
    return jnp.sum(err * err), 3.0 * jnp.sum(batch.node_mask)


def _mse(model: AbstractEnergyModel, batches: Sequence[Batch]) -> jax.Array:
    sq, n = 0.0, 0.0
    for b in batches:
        s, k = _sq_error(model, b)
        sq, n = sq + s, n + k
    return sq / n


@eqx.filter_jit
def _mse_jit(model, batches):
    return _mse(model, batches)


def force_rmse(model: AbstractEnergyModel, batches: Sequence[Batch]) -> float:
    """Force RMSE (kcal/mol/Å, per Cartesian component) of a model over the real beads of `batches`."""
    return float(jnp.sqrt(_mse_jit(model, list(batches))))


def lbfgs_force_match(
    model: PyTree, filter_spec: PyTree, batches: Sequence[Batch], *, max_steps: int = 200,
    rtol: float = 1e-6, atol: float = 1e-6, history_length: int = 10,
) -> tuple[PyTree, dict[str, Any]]:  # fmt: skip
    """Minimises the force MSE over the leaves selected by `filter_spec` with `optimistix.LBFGS`.

    **Arguments:**

    - `model`: an `AbstractEnergyModel` (any pytree with `node_energies`).
    - `filter_spec`: a pytree of bools (as for `eqx.partition`): True leaves are optimised.
    - `batches`: packed batches with target forces (device or host arrays).
    - `max_steps`, `rtol`, `atol`, `history_length`: LBFGS settings.

    **Returns:** `(model, info)`; info has the force RMSE before/after, steps and the solver result.
    Running out of steps is not an error (the best point so far is returned and reported).
    """
    batches = [b.to_device() if not isinstance(b.positions, jax.Array) else b for b in batches]
    for i, b in enumerate(batches):
        if bool(jnp.any(jnp.isnan(jnp.where(b.node_mask[:, None], b.forces, 0.0)))):
            raise ValueError(f"batch {i} has no target forces (NaN on real beads); force matching needs forces")
    params, static = eqx.partition(model, filter_spec)

    def loss(p, _):
        return _mse(eqx.combine(p, static), batches)

    before = float(jnp.sqrt(jax.jit(loss)(params, None)))
    sol = optx.minimise(loss, optx.LBFGS(rtol=rtol, atol=atol, history_length=history_length), params,
                        max_steps=max_steps, throw=False)  # fmt: skip
    new = eqx.combine(sol.value, static)
    after = float(jnp.sqrt(jax.jit(loss)(sol.value, None)))
    if not np.isfinite(after) or after > before:
        new, after = model, before  # never hand back something worse than the start
    info = {"rmse_before": before, "rmse_after": after, "steps": int(sol.stats["num_steps"]),
            "result": str(sol.result), "n_batches": len(batches),
            "n_beads": int(sum(int(jnp.sum(b.node_mask)) for b in batches))}  # fmt: skip
    return new, info


def prior_filter_spec(prior: Prior, refine_sigma: bool = False) -> PyTree:
    """Trainable leaves of a prior: every parameter table except the repulsion σ unless `refine_sigma`
    (ε and σ are degenerate: only ε σ^p matters)."""
    spec = jax.tree.map(eqx.is_inexact_array, prior)
    if "repulsion" in prior.names and not refine_sigma:
        i = prior.names.index("repulsion")
        spec = eqx.tree_at(lambda s: s.terms[i].sigma, spec, False)
    return spec


def refine_prior(
    prior: Prior, batches: Sequence[Batch], *, max_steps: int = 200, rtol: float = 1e-6,
    atol: float = 1e-6, refine_sigma: bool = False,
) -> tuple[Prior, dict[str, Any]]:  # fmt: skip
    """Force-matches a prior's parameters (network absent) on `batches`.

    **Returns:** `(refined prior, report)`; the report (force RMSE before/after, steps) is also added
    to the prior's provenance under `"refine"`.
    """
    new, info = lbfgs_force_match(prior, prior_filter_spec(prior, refine_sigma), batches,
                                  max_steps=max_steps, rtol=rtol, atol=atol)  # fmt: skip
    prov = prior.provenance
    prov["refine"] = info
    return new.with_provenance(prov), info


def make_batches(
    records: Sequence[ProteinRecord], *, n_frames: int, frames_per_batch: int, cutoff: float,
    min_sep: int = 2, temperatures: Sequence[float] | None = None, seed: int = 0,
) -> list[Batch]:  # fmt: skip
    """A random subsample of frames (over all proteins) packed into equal-capacity device batches.

    **Arguments:**

    - `records`: proteins with forces.
    - `n_frames`: frames drawn at most (without replacement); `frames_per_batch`: frames per batch.
    - `cutoff`: radius-graph cutoff (Å); `min_sep`: minimum sequence separation of non-bonded pairs.
    - `temperatures`: restrict to these temperatures (K); `seed`: of the draw.

    **Returns:** a list of `Batch` sharing one capacity (one compilation).
    """
    pool = []
    for ri, rec in enumerate(records):
        if rec.forces is None:
            raise ValueError(f"protein {rec.name} has no forces; force matching needs a dataset with forces")
        t = np.asarray(rec.temperature, np.float64)
        ok = np.ones(len(t), bool) if temperatures is None else np.any(
            np.abs(t[:, None] - np.asarray(temperatures, np.float64)[None]) < 1e-3, axis=1)  # fmt: skip
        pool += [(ri, int(f)) for f in np.flatnonzero(ok)]
    if not pool:
        raise ValueError("no frames to refine on (check the temperature selection)")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pool), size=min(n_frames, len(pool)), replace=False)
    chosen = sorted(pool[i] for i in pick)
    graphs = []
    for ri in sorted({r for r, _ in chosen}):
        rec = records[ri]
        fr = np.asarray([f for r, f in chosen if r == ri])
        R, F = rec.frames(fr)
        for k, f in enumerate(fr):
            graphs.append(frame_graph(R[k], rec.topology, cutoff, pair_min_sep=min_sep, forces=F[k],
                                      temperature=float(rec.temperature[f]), protein_index=ri,
                                      frame_index=int(f)))  # fmt: skip
    order = rng.permutation(len(graphs))
    groups = [[graphs[i] for i in order[a : a + frames_per_batch]] for a in range(0, len(graphs), frames_per_batch)]
    sizes = np.asarray([np.sum([np.asarray(g.sizes) for g in grp], axis=0) for grp in groups])
    cap = sizes.max(axis=0)
    cap[2] = frames_per_batch
    capacity = Capacity(*(int(max(1, c)) for c in cap))
    return [pack(grp, capacity).to_device() for grp in groups]
