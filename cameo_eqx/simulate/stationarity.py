"""Is a simulation stationary? Block averages, energy drift and the kinetic and configurational temperatures.

- `block_average`: the mean of a correlated time series and its standard error by Flyvbjerg-Petersen
  blocking (pairwise averaging until the error estimate stops growing).
- `linear_drift`: the least-squares slope of a series with a standard error that accounts for
  autocorrelation (the statistical inefficiency of the residuals, measured by blocking).
- `hutchinson_laplacian` and `configurational_terms`: |∇U|² and ∇²U of a model per frame, the Laplacian
  by Hutchinson's estimator vᵀ(∇²U)v with Rademacher probes v (a reverse-over-reverse Hessian-vector
  product). T_conf = <|∇U|²> / (k_B <∇²U>) (Rugh 1997; Butler et al. 1998) equals the bath temperature for
  configurations sampled from exp(-U/kT), whatever the masses and the integrator's velocities do.
- `verdict`: per-replica numbers and a stationary yes/no with human-readable reasons (thresholds in
  `AnalyzeConfig`).

NumPy float64 except the model evaluations (JAX, the model's dtype).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ..graph import graph_sum
from ..units import KB_KCAL_PER_MOL_K
from . import neighborlist as nbl
from .langevin import System, system_batch

# ------------------------------------------------------------------------------------ time series


@dataclasses.dataclass(frozen=True)
class BlockEstimate:
    """Mean of a time series with its standard error.

    **Fields:** `mean`; `sem` (standard error of the mean); `inefficiency` (statistical inefficiency
    g = n·sem²/var ≥ 1: about 1 + 2τ for integrated autocorrelation time τ in frames); `block_size` (frames
    per block at the chosen blocking level); `converged` (False when the error estimate still grew at the
    last level with enough blocks: the series is shorter than a few correlation times and `sem` is a lower
    bound).
    """

    mean: float
    sem: float
    inefficiency: float
    block_size: int
    converged: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def block_average(x: Float[np.ndarray, " t"], min_blocks: int = 8) -> BlockEstimate:
    """Flyvbjerg-Petersen blocking (J. Chem. Phys. 91, 461, 1989).

    The series is averaged in pairs repeatedly; at every level the naive standard error of the block means
    is computed with its own uncertainty sem/√(2(m-1)) (m blocks). The chosen level is the first whose
    successor does not exceed it by more than that uncertainty (the plateau); levels with fewer than
    `min_blocks` blocks are not used.

    **Arguments:** `x`, a 1-D series (at least 2 values); `min_blocks`.

    **Returns:** a `BlockEstimate`.
    """
    x = np.asarray(x, np.float64).ravel()
    n = len(x)
    if n < 2:
        raise ValueError(f"block_average needs at least 2 values, got {n}")
    var = float(np.var(x, ddof=1))
    mean = float(np.mean(x))
    if var == 0.0:
        return BlockEstimate(mean, 0.0, 1.0, 1, True)
    sems, errs, sizes = [], [], []
    y, size = x, 1
    while len(y) >= max(2, min_blocks) or not sems:
        m = len(y)
        s = float(np.sqrt(np.var(y, ddof=1) / m))
        sems.append(s)
        errs.append(s / np.sqrt(2.0 * (m - 1)))
        sizes.append(size)
        h = m // 2
        if h < 2:
            break
        y = 0.5 * (y[0 : 2 * h : 2] + y[1 : 2 * h : 2])
        size *= 2
    pick, converged = len(sems) - 1, False
    for k in range(len(sems) - 1):
        if sems[k + 1] <= sems[k] + errs[k]:
            pick, converged = k, True
            break
    sem = max(sems[pick], sems[0])
    return BlockEstimate(mean, sem, max(1.0, n * sem**2 / var), sizes[pick], converged)


@dataclasses.dataclass(frozen=True)
class Drift:
    """A least-squares linear trend y ≈ a + slope·t.

    **Fields:** `slope` (units of y per unit of t); `sem` (its standard error, autocorrelation included);
    `inefficiency` (statistical inefficiency of the residuals); `change` (slope × the time span: the
    trend's total change); `residual_std` (standard deviation of the residuals: the fluctuation the change
    is compared with).
    """

    slope: float
    sem: float
    inefficiency: float
    change: float
    residual_std: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def linear_drift(t: Float[np.ndarray, " n"], y: Float[np.ndarray, " n"], min_blocks: int = 8) -> Drift:
    """Least-squares slope of `y` against `t` with an autocorrelation-aware standard error.

    For independent residuals Var(slope) = σ²/Σ(t - t̄)². Correlated residuals carry fewer independent
    samples: the variance is multiplied by their statistical inefficiency g, measured by `block_average` of
    the residuals (g = n·sem²/var). So sem = √(g σ² / Σ(t - t̄)²).

    **Arguments:** times `t` and values `y` (at least 3, `t` not all equal); `min_blocks` for the blocking.

    **Returns:** a `Drift`.
    """
    t = np.asarray(t, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if t.shape != y.shape or len(t) < 3:
        raise ValueError(f"linear_drift needs matching t and y with at least 3 values, got {t.shape}, {y.shape}")
    tc = t - t.mean()
    sxx = float(np.sum(tc**2))
    if sxx == 0.0:
        raise ValueError("linear_drift: all times are equal")
    slope = float(np.sum(tc * (y - y.mean())) / sxx)
    resid = y - y.mean() - slope * tc
    sigma2 = float(np.sum(resid**2) / (len(t) - 2))
    g = block_average(resid, min_blocks).inefficiency if sigma2 > 0 else 1.0
    return Drift(slope, float(np.sqrt(g * sigma2 / sxx)), g, slope * float(t.max() - t.min()), float(np.sqrt(sigma2)))


# ------------------------------------------------------------------------- configurational temperature


def rademacher(key: PRNGKeyArray, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """Random ±1 entries."""
    return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)


def hutchinson_laplacian(
    grad_fn: Callable[[Array], Array], x: Float[Array, "..."], key: PRNGKeyArray, n_probes: int = 8
) -> Float[Array, ""]:
    """Hutchinson's estimate of the Laplacian tr(∇∇U) at `x`: the mean of vᵀ H v over Rademacher probes v,
    each H v the gradient of v·∇U (reverse over reverse: models with custom VJPs, such as Allegro's GPU
    tensor product, have no forward mode). Unbiased; its variance is 2 Σ_{i≠j} H_ij² / n_probes (exact
    for a diagonal Hessian).

    **Arguments:** `grad_fn` (x → ∇U(x), same shape as x, differentiable in reverse mode); `x`; a PRNG
    `key`; `n_probes`.

    **Returns:** a scalar.
    """
    v = rademacher(key, (n_probes, *x.shape), x.dtype)
    hv = jax.vmap(lambda p: jax.grad(lambda y: jnp.vdot(grad_fn(y), p))(x))(v)
    return jnp.mean(jnp.sum((v * hv).reshape(n_probes, -1), axis=-1))


def configurational_temperature(grad_sq: Float[np.ndarray, " f"], laplacian: Float[np.ndarray, " f"]) -> tuple[float, float]:
    """T_conf = <|∇U|²> / (k_B <∇²U>) (K) over frames, with a delete-one jackknife standard error (frames
    are taken as independent: subsample them far enough apart).

    **Arguments:** per-frame |∇U|² ((kcal/mol/Å)²) and ∇²U (kcal/mol/Å²).

    **Returns:** `(T_conf, sem)`; sem is NaN for fewer than 2 frames; T_conf is NaN when <∇²U> ≤ 0.
    """
    g = np.asarray(grad_sq, np.float64).ravel()
    lap = np.asarray(laplacian, np.float64).ravel()
    if len(g) == 0 or g.shape != lap.shape:
        raise ValueError(f"configurational_temperature needs matching non-empty arrays, got {g.shape}, {lap.shape}")

    def ratio(a, b):
        return a / (KB_KCAL_PER_MOL_K * b) if b > 0 else np.nan

    t = ratio(g.mean(), lap.mean())
    f = len(g)
    if f < 2:
        return float(t), float("nan")
    loo = np.array([ratio((g.sum() - g[i]) / (f - 1), (lap.sum() - lap[i]) / (f - 1)) for i in range(f)])
    sem = np.sqrt((f - 1) / f * np.sum((loo - loo.mean()) ** 2))
    return float(t), float(sem)


def configurational_terms(
    model: Any, topology: Any, positions: Float[np.ndarray, "f n 3"], *, cutoff: float, pair_min_sep: int,
    key: PRNGKeyArray, n_probes: int = 8,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """|∇U|² and a Hutchinson estimate of ∇²U of a model at every given frame.

    Frames see the simulation's batch layout (`langevin.system_batch`: radius graph at `cutoff`, bonded
    terms, non-bonded pairs from `pair_min_sep`), with a neighbour list built at each frame that has room
    for every pair. Second derivatives go through `graph_sum(model.node_energies(batch))`, in reverse mode
    twice, so custom VJPs (Allegro's tensor product on a GPU) are differentiated by their own rules.

    **Arguments:** `model` (an `AbstractEnergyModel`); the protein's `topology` (`CGTopology`); `positions`
    (Å); `cutoff` (Å), `pair_min_sep`: as in the simulation; a PRNG `key`; `n_probes` per frame.

    **Returns:** `(grad_sq (f,), laplacian (f,))` in (kcal/mol/Å)² and kcal/mol/Å².
    """
    x = np.asarray(positions, np.float32)
    if x.ndim != 3 or x.shape[1:] != (topology.n_beads, 3):
        raise ValueError(f"positions must have shape (frames, {topology.n_beads}, 3), got {x.shape}")
    n = x.shape[1]
    system = System.from_topology(topology, cutoff=cutoff, pair_min_sep=pair_min_sep, masses="uniform")
    d = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1)
    count = int(np.max(np.sum((d < cutoff + 0.5) & ~np.eye(n, dtype=bool)[None], axis=(1, 2)), initial=0))
    capacity = nbl.grow_capacity(count)

    def energy(p, nl):
        b = system_batch(system, p, nl)
        return graph_sum(model.node_energies(b), b)[0]

    @jax.jit
    def one(p, k):
        nl = nbl.build(jax.lax.stop_gradient(p), cutoff, 0.5, capacity)
        grad_fn = jax.grad(lambda q: energy(q, nl))
        g = grad_fn(p)
        return jnp.sum(g * g), hutchinson_laplacian(grad_fn, p, k, n_probes), nl.overflow

    gs, laps = np.empty(len(x)), np.empty(len(x))
    for i, k in enumerate(jax.random.split(key, len(x))):
        g2, lap, overflow = one(jnp.asarray(x[i]), k)
        if bool(overflow):  # cannot happen: the capacity holds every pair within cutoff + skin
            raise RuntimeError(f"neighbour list overflow at frame {i} (capacity {capacity})")
        gs[i], laps[i] = float(g2), float(lap)
    return gs, laps


# ------------------------------------------------------------------------------------------ verdict


def replica_stationarity(
    time_ps: Float[np.ndarray, " t"], potential: Float[np.ndarray, " t"], temperature: Float[np.ndarray, " t"],
    observables: dict[str, Float[np.ndarray, " t"]], start: int, target_temperature: float, cfg: Any,
    tconf: tuple[float, float] | None = None,
) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """Stationarity numbers and reasons against it for one replica.

    **Arguments:** the replica's `time_ps`, `potential` (kcal/mol), instantaneous `temperature` (K) and
    `observables` (name → series, e.g. rmsd, rg, q); `start`, the first analysed frame (after discard);
    the bath `target_temperature`; `cfg`, an `AnalyzeConfig` (its stationarity thresholds); `tconf`, the
    replica's (T_conf, sem) or None.

    **Returns:** `(numbers, reasons)`: a JSON-friendly dict (with `notes`, e.g. error bars that are only lower
    bounds) and the list of failed checks (empty when every check passes).
    """
    reasons: list[str] = []
    nsig = cfg.stationarity_sigmas
    kt = KB_KCAL_PER_MOL_K * target_temperature
    t_all = np.asarray(time_ps, np.float64)
    u_all = np.asarray(potential, np.float64)
    half = len(t_all) // 2
    out: dict[str, Any] = {}
    if len(t_all) - half >= 3:
        dr = linear_drift(t_all[half:], u_all[half:], cfg.min_blocks)
        out["energy_drift"] = {**dr.as_dict(), "units": "kcal/mol/ps", "slope_kt_per_ps": dr.slope / kt,
                               "window_ps": [float(t_all[half]), float(t_all[-1])]}  # fmt: skip
        if abs(dr.slope) > nsig * dr.sem and abs(dr.change) > cfg.drift_tolerance * dr.residual_std:
            reasons.append(f"potential energy drifts by {dr.slope:+.3g} ± {dr.sem:.2g} kcal/mol/ps "
                           f"({dr.slope / kt:+.3g} kT/ps) over the second half: a change of {dr.change:+.3g} "
                           f"kcal/mol against fluctuations of {dr.residual_std:.3g}")  # fmt: skip
    else:
        out["energy_drift"] = None
    tk = block_average(np.asarray(temperature, np.float64)[start:], cfg.min_blocks)
    dev = tk.mean - target_temperature
    out["kinetic_temperature"] = {**tk.as_dict(), "target": target_temperature}
    if abs(dev) > nsig * tk.sem and abs(dev) > cfg.kinetic_temperature_tolerance * target_temperature:
        reasons.append(f"kinetic temperature {tk.mean:.1f} ± {tk.sem:.1f} K is off the {target_temperature:g} K "
                       f"target by {100 * dev / target_temperature:+.1f}%")  # fmt: skip
    if tconf is not None:
        tc, tc_sem = tconf
        out["configurational_temperature"] = {"mean": tc, "sem": tc_sem, "target": target_temperature}
        if not np.isfinite(tc):
            reasons.append("configurational temperature is undefined (mean Laplacian of U ≤ 0: not near a minimum)")
        else:
            dev = tc - target_temperature
            sig = not np.isfinite(tc_sem) or abs(dev) > nsig * tc_sem
            if sig and abs(dev) > cfg.configurational_temperature_tolerance * target_temperature:
                reasons.append(f"configurational temperature {tc:.1f} ± {tc_sem:.1f} K is off the "
                               f"{target_temperature:g} K target by {100 * dev / target_temperature:+.1f}%")  # fmt: skip
    blocks: dict[str, Any] = {}
    series = {"potential_energy": u_all, **{k: np.asarray(v, np.float64) for k, v in observables.items()}}
    for name, v in series.items():
        v = v[start:]
        blocks[name] = block_average(v, cfg.min_blocks).as_dict()
        h = len(v) // 2
        if h < 2:
            continue
        a, b = block_average(v[:h], cfg.min_blocks), block_average(v[h:], cfg.min_blocks)
        diff, se = b.mean - a.mean, float(np.hypot(a.sem, b.sem))
        blocks[name].update(first_half=a.mean, second_half=b.mean, half_difference_sem=se)
        if name in cfg.half_compare and abs(diff) > nsig * se and abs(diff) > cfg.half_difference_tolerance * np.std(v):
            reasons.append(f"{name} moves from {a.mean:.3g} ± {a.sem:.2g} (first half) to {b.mean:.3g} ± "
                           f"{b.sem:.2g} (second half)")  # fmt: skip
    out["block_averages"] = blocks
    short = [k for k, b in (("kinetic_temperature", tk.as_dict()), *blocks.items()) if not b["converged"]]
    out["notes"] = ([f"error bars of {', '.join(short)} did not reach a blocking plateau: the run is shorter than "
                     "a few correlation times and those error bars are lower bounds"] if short else [])  # fmt: skip
    return out, reasons
