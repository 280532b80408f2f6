"""Force matching of prior parameters by a quasi-Newton method (the trainer's optional first stage):
dense `optimistix.BFGS` for up to `max_dense` (2,000) parameters, which covers every global prior,
`optimistix.LBFGS` above; the report says which ran.

`quasi_newton_force_match` works for any `AbstractEnergyModel` pytree and a filter spec saying which
leaves train (everything else, e.g. a network, stays frozen); `refine_prior` applies it to a `Prior`'s
parameters. The loss is the mean squared force error per Cartesian component over the real beads of
all given batches (a small host-built subsample, see `make_batches`), so the whole subsample is one
deterministic objective, as BFGS and LBFGS need.
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
from ..energy import AbstractEnergyModel
from ..graph import Batch, Capacity, frame_graph, pack
from .prior import Prior


def _sq_error(model: AbstractEnergyModel, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(Σ squared force error over real beads, number of real force components)."""

    def energy(pos):
        return jnp.sum(model.energy(batch.with_positions(pos)))

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


def _cast(tree: PyTree, dtype) -> PyTree:
    """Every inexact array leaf (device or host) as `dtype` on the device; other leaves unchanged."""
    return jax.tree.map(
        lambda x: jnp.asarray(x, dtype) if eqx.is_inexact_array(x) or (
            isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating)) else x, tree)  # fmt: skip


def gauss_newton_scales(
    params: PyTree, static: PyTree, batches: Sequence[Batch], *, n_probes: int = 16, seed: int = 0
) -> PyTree:
    """Typical scales of the trainable parameters: 1/sqrt of the diagonal of the Gauss-Newton matrix
    2 JᵀJ / N of the force MSE (J = ∂F/∂θ, N force components), estimated with `n_probes` Rademacher
    probes (E[(Jᵀv)²] = diag JᵀJ), so the loss has curvature ~ 1 along every rescaled parameter. A unit step in θ/scale changes the forces by about one unit in every
    direction, which is what makes LBFGS well conditioned when a bond k ~ 200 kcal/mol/Å² sits next to
    Fourier coefficients ~ 1. Parameters with no effect on the forces get scale 1.

    **Returns:** a pytree like `params` (same dtypes), entries > 0.
    """
    key = jax.random.PRNGKey(seed)

    def forces(p, b):
        m = eqx.combine(p, static)

        def energy(pos):
            return jnp.sum(m.energy(b.with_positions(pos)))

        return jnp.where(b.node_mask[:, None], -jax.grad(energy)(b.positions), 0.0)

    @eqx.filter_jit
    def probe(p, b, k):
        f, vjp = jax.vjp(lambda q: forces(q, b), p)
        v = jax.random.rademacher(k, f.shape, f.dtype)
        (g,) = vjp(v)
        return jax.tree.map(lambda x: x * x, g)

    acc = jax.tree.map(jnp.zeros_like, params)
    n = 3.0 * sum(float(jnp.sum(b.node_mask)) for b in batches)
    for bi, b in enumerate(batches):
        for i in range(n_probes):
            sq = probe(params, b, jax.random.fold_in(key, bi * n_probes + i))
            acc = jax.tree.map(jnp.add, acc, sq)

    def scale(d):
        d = 2.0 * d / (n_probes * n)
        pos = d > 0
        ref = jnp.max(jnp.where(pos, d, 0.0))
        ok = pos & (d > 1e-20 * ref)
        return jnp.where(ok, 1.0 / jnp.sqrt(jnp.where(ok, d, 1.0)), 1.0)

    return jax.tree.map(scale, acc)


def _checked_batches(batches: Sequence[Batch]) -> list[Batch]:
    """The batches on the device; a `ValueError` names one without target forces on its real beads."""
    batches = [b.to_device() if not isinstance(b.positions, jax.Array) else b for b in batches]
    for i, b in enumerate(batches):
        if bool(jnp.any(jnp.isnan(jnp.where(b.node_mask[:, None], b.forces, 0.0)))):
            raise ValueError(f"batch {i} has no target forces (NaN on real beads); force matching needs forces")
    return batches


def _scaled_objective(params: PyTree, static: PyTree, scales: PyTree, bs: Sequence[Batch], proximal: float):
    """(unscale, mse, loss) of the rescaled variables z (θ = θ₀ + s ⊙ z): loss = MSE + (proximal/2)·|z|²."""

    def unscale(z):
        return jax.tree.map(lambda p, s, zz: p + s * zz, params, scales, z)

    def mse(z):
        return _mse(eqx.combine(unscale(z), static), bs)

    def loss(z, _):
        return mse(z) + 0.5 * proximal * sum(jnp.sum(x * x) for x in jax.tree.leaves(z))

    return unscale, mse, loss


def _make_solver(solver: str, n_par: int, *, max_dense: int, rtol: float, atol: float, history_length: int):
    """The solver that runs ("bfgs" or "lbfgs"; "auto": BFGS up to `max_dense` parameters) and its instance."""
    if solver not in ("auto", "bfgs", "lbfgs"):
        raise ValueError(f"quasi_newton_force_match: solver must be auto|bfgs|lbfgs, got {solver!r}")
    use = solver if solver != "auto" else ("bfgs" if n_par <= max_dense else "lbfgs")
    opt = (optx.BFGS(rtol=rtol, atol=atol) if use == "bfgs"
           else optx.LBFGS(rtol=rtol, atol=atol, history_length=history_length))  # fmt: skip
    return use, opt


def quasi_newton_force_match(
    model: PyTree, filter_spec: PyTree, batches: Sequence[Batch], *, max_steps: int = 200,
    rtol: float = 1e-6, atol: float = 1e-6, history_length: int = 10, float64: bool = True,
    precondition: bool = True, solver: str = "auto", max_dense: int = 2000, proximal: float = 1e-4,
) -> tuple[PyTree, dict[str, Any]]:  # fmt: skip
    """Minimises the force MSE over the leaves selected by `filter_spec` with dense `optimistix.BFGS`
    (at most `max_dense` parameters: every global prior) or `optimistix.LBFGS` (larger problems), see
    `solver`; `info["solver"]` says which ran.

    The optimisation is well conditioned by construction: it runs in float64 (`float64=True`; the
    model and batches are cast for this stage only and the result is cast back), and over rescaled
    variables z with θ = θ₀ + s ⊙ z, s from `gauss_newton_scales` (`precondition=True`), so a bond
    force constant ~ 200 and Fourier coefficients ~ 1 move alike. In float32 with raw parameters LBFGS
    stalled (villin: force RMSE 24.16 → 24.15 in 60 steps, k unchanged). The tolerances apply to the
    loss (kcal²/mol²/Å²) and to z. The gradient norm in z is reported before and after, as a check
    that the end point is a minimum (`grad_norm_after / grad_norm_before` ≪ 1).

    Even rescaled, a fitted prior's force-matching problem is hard for LBFGS: the angle coefficients
    have near-null directions (angles are sampled over part of [0, π]) and the dihedral (k, γ)
    parametrisation makes the Hessian indefinite at the start (villin: eigenvalues -8 … 12 with some
    ~1e-10 in the rescaled variables), so LBFGS with a short history crawls (villin, 300 steps: gradient
    norm 8.5 → 1.5). Dense BFGS (a full inverse-Hessian estimate, cheap for a few thousand
    parameters) converges: 8.5 → 5e-7 on the same problem. `solver="auto"` picks BFGS when at most
    `max_dense` parameters train and LBFGS otherwise (large per-species tables, networks).

    The objective is MSE + (`proximal`/2)·|z|²: a weak pull towards the starting (Boltzmann-inverted)
    values, negligible along every direction the forces determine (curvature ~ 1 after rescaling)
    but decisive along the near-null ones. Without it force matching drifts there: on villin the angle
    coefficients went from ~10 to 1.2e5 kcal/mol for a 1e-6 gain in RMSE, which is exactly the
    ill-conditioned, float32-noisy potential the Boltzmann fit avoids. RMSEs reported are of the
    forces alone; the gradient norms are of the objective.

    **Arguments:**

    - `model`: an `AbstractEnergyModel` (any pytree with a per-frame `energy(batch)`).
    - `filter_spec`: a pytree of bools (as for `eqx.partition`): True leaves are optimised.
    - `batches`: packed batches with target forces (device or host arrays).
    - `max_steps`, `rtol`, `atol`: solver settings; `history_length`: LBFGS only.
    - `float64`, `precondition`, `solver` ("auto" | "bfgs" | "lbfgs"), `max_dense`, `proximal`: see
      above.

    **Returns:** `(model, info)`; info has the force RMSE before/after, steps, the solver that ran
    (`"bfgs"` or `"lbfgs"`) and its result, and the gradient norms. Running out of steps is not an error
    (the point reached is returned and reported).
    """
    batches = _checked_batches(batches)
    params0, static0 = eqx.partition(model, filter_spec)
    dtypes = jax.tree.map(lambda x: x.dtype, params0)
    with jax.enable_x64(float64):
        dt = jnp.float64 if float64 else jnp.float32
        params, static = _cast(params0, dt), _cast(static0, dt)
        bs = [_cast(b, dt) for b in batches]
        scales = gauss_newton_scales(params, static, bs) if precondition else jax.tree.map(jnp.ones_like, params)

        unscale, mse, loss = _scaled_objective(params, static, scales, bs, proximal)
        z0 = jax.tree.map(jnp.zeros_like, params)
        grad = eqx.filter_jit(jax.grad(lambda z: loss(z, None)))
        mse_jit = eqx.filter_jit(mse)

        def gnorm(z):
            g = grad(z)
            return float(mse_jit(z)), float(jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(g))))

        l0, g0 = gnorm(z0)
        n_par = sum(x.size for x in jax.tree.leaves(z0))
        use, opt = _make_solver(solver, n_par, max_dense=max_dense, rtol=rtol, atol=atol,
                                history_length=history_length)  # fmt: skip
        sol = optx.minimise(loss, opt, z0, max_steps=max_steps, throw=False)
        l1, g1 = gnorm(sol.value)
        best = jax.tree.map(lambda x, d: jnp.asarray(x, d), unscale(sol.value), dtypes)
        steps, result = int(sol.stats["num_steps"]), str(sol.result)
    before, after = float(np.sqrt(l0)), float(np.sqrt(l1))
    new = eqx.combine(best, static0)
    if not np.isfinite(after) or after > before:
        new, after = model, before  # never hand back something worse than the start
    info = {"rmse_before": before, "rmse_after": after, "steps": steps, "result": result,
            "grad_norm_before": g0, "grad_norm_after": g1, "float64": float64, "preconditioned": precondition,
            "solver": use, "n_params": int(n_par), "proximal": proximal,
            "n_batches": len(batches), "n_beads": int(sum(int(jnp.sum(b.node_mask)) for b in batches))}  # fmt: skip
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
    atol: float = 1e-6, refine_sigma: bool = False, float64: bool = True, precondition: bool = True,
) -> tuple[Prior, dict[str, Any]]:  # fmt: skip
    """Force-matches a prior's parameters (network absent) on `batches`.

    **Returns:** `(refined prior, report)`; the report (force RMSE before/after, steps) is also added
    to the prior's provenance under `"refine"`.
    """
    new, info = quasi_newton_force_match(prior, prior_filter_spec(prior, refine_sigma), batches,
                                         max_steps=max_steps, rtol=rtol, atol=atol, float64=float64,
                                         precondition=precondition)  # fmt: skip
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
