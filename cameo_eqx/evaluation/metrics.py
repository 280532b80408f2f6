"""Force metrics of a trained model: predictions on packed batches, errors grouped by protein,
temperature and term, and the noise-floor context.

Conventions (as in training): MSE and RMSE are per Cartesian component over real beads, in
(kcal/mol/Å)² and kcal/mol/Å; MAE is the mean absolute component error.

The noise floor (the force MSE no CG model can beat: the variance of the mapped force around its
conditional mean given the CG configuration, Var_basic for the basic map) is reported as a bracket:

- `noise_floor_lower`: `prepare` stores per protein (group attr `stats`, JSON) `msq_basic` (or
  `msq_<map>`) and `msq_optimal`, the held-out mean squared mapped force of the chosen map and of an
  optimal map; their difference is Var_basic − Var_optimal, a lower bound of the floor (the optimal map's
  own noise is not counted). For synthetic data `stats["noise_floor"]` is the exact σ².
- `noise_floor_upper` (`nearest_neighbour_floor`): pairs of frames at the same temperature whose CG
  configurations nearly coincide (small RMSD after optimal superposition, from different trajectories or
  far apart in one) have independent noise and nearly equal mean forces, so half the mean squared
  difference of their (rotated) mapped forces estimates the noise variance, biased upward by the
  mean-force difference (which grows with the pair's RMSD): an upper estimate, not a strict bound.
- `noise_floor_true` = mean |F − F_true|² per component, when the dataset stores the noise-free forces
  `F_true` (synthetic data); then `mse_vs_true` is the model's MSE against F_true.

The gain over a baseline (the prior-only model when the model has a prior and an ML term, else the
zero-force model) is reported as a fraction of what is learnable above each floor:
`gain_vs_lower_floor = (MSE_base − MSE) / (MSE_base − floor_lower)`, which is pessimistic (the lower floor
understates the unlearnable part), `gain_vs_upper_floor` with the upper estimate (optimistic), and
`gain_vs_true_floor` when F_true is known.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ..graph import Batch
from ..training.task import force_mask, predict, term_forces


@dataclasses.dataclass
class Predictions:
    """Per-bead predictions over the evaluated frames (real beads with targets only; host arrays)."""

    ref: np.ndarray  # (n, 3)
    pred: np.ndarray  # (n, 3)
    terms: dict[str, np.ndarray]  # name → (n, 3)
    protein: np.ndarray  # (n,) protein index
    temperature: np.ndarray  # (n,) K
    frame: np.ndarray  # (n,) frame index inside its protein
    names: tuple[str, ...]
    bead: np.ndarray | None = None  # (n,) bead index inside its frame

    @property
    def n_frames(self) -> int:
        return len(set(zip(self.protein.tolist(), self.frame.tolist())))


@eqx.filter_jit
def _batch_forces(model, batch: Batch):
    _, f = predict(model, batch)
    return f, term_forces(model, batch), force_mask(batch)


def collect(model: Any, batches: Iterable[Batch], names: tuple[str, ...]) -> Predictions:
    """Runs `model` on batches (no device axis) and keeps the real beads with target forces.

    **Arguments:**

    - `model`: the energy model (a `ForceField`).
    - `batches`: packed host or device batches.
    - `names`: protein names indexed by `batch.protein_index`.

    **Returns:** `Predictions`.
    """
    parts: dict[str, list] = {"ref": [], "pred": [], "protein": [], "temperature": [], "frame": [], "bead": []}
    terms: dict[str, list] = {}
    for b in batches:
        f, tf, m = _batch_forces(model, b.to_device())
        m = np.asarray(m)
        gi = np.asarray(b.graph_index)
        g = gi[m]
        first = np.searchsorted(gi, np.arange(int(b.graph_mask.shape[0])))  # frames' beads are contiguous
        parts["bead"].append((np.arange(len(gi)) - first[np.minimum(gi, len(first) - 1)])[m])
        parts["ref"].append(np.asarray(b.forces)[m])
        parts["pred"].append(np.asarray(f)[m])
        parts["protein"].append(np.asarray(b.protein_index)[g])
        parts["temperature"].append(np.asarray(b.temperature)[g])
        parts["frame"].append(np.asarray(b.frame_index)[g])
        for k, v in tf.items():
            terms.setdefault(k, []).append(np.asarray(v)[m])
    if not parts["ref"]:
        raise ValueError("no frames to evaluate")
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Predictions(terms={k: np.concatenate(v) for k, v in terms.items()}, names=tuple(names), **cat)


def errors(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """MSE, RMSE, MAE (per component) and the number of beads."""
    d = np.asarray(pred, np.float64) - np.asarray(ref, np.float64)
    mse = float(np.mean(d * d)) if d.size else math.nan
    return {"mse": mse, "rmse": math.sqrt(mse) if d.size else math.nan,
            "mae": float(np.mean(np.abs(d))) if d.size else math.nan, "n_beads": int(len(d))}  # fmt: skip


def grouped_errors(p: Predictions) -> dict[str, Any]:
    """Errors overall, per protein, per temperature and per term.

    Per term t: `rms` of its force, `rmse_alone`/`mae_alone` of the term alone against the target;
    `prior` is the sum of the prior terms (the prior-only model) when the model has an ML term; then every
    protein also gets `mse_prior`, the prior-only model's MSE.
    """
    out: dict[str, Any] = {"overall": errors(p.pred, p.ref)}
    out["overall"]["msq_target"] = float(np.mean(np.asarray(p.ref, np.float64) ** 2))
    out["per_protein"] = {}
    for k in np.unique(p.protein):
        m = p.protein == k
        e = errors(p.pred[m], p.ref[m])
        e["msq_target"] = float(np.mean(np.asarray(p.ref[m], np.float64) ** 2))
        out["per_protein"][p.names[int(k)]] = e
    out["per_temperature"] = {}
    for t in np.unique(np.round(p.temperature, 1)):
        m = np.round(p.temperature, 1) == t
        out["per_temperature"][f"{t:g}"] = errors(p.pred[m], p.ref[m])
    per_term = {}
    prior = None
    for name, f in p.terms.items():
        e = errors(f, p.ref)
        per_term[name] = {"rms": float(np.sqrt(np.mean(np.asarray(f, np.float64) ** 2))),
                          "rmse_alone": e["rmse"], "mae_alone": e["mae"]}  # fmt: skip
        if name not in ("ml", "total"):
            prior = f if prior is None else prior + f
    if prior is not None and "ml" in p.terms:
        e = errors(prior, p.ref)
        per_term["prior"] = {"rms": float(np.sqrt(np.mean(prior.astype(np.float64) ** 2))),
                             "rmse_alone": e["rmse"], "mae_alone": e["mae"]}  # fmt: skip
        for k in np.unique(p.protein):
            m = p.protein == k
            out["per_protein"][p.names[int(k)]]["mse_prior"] = errors(prior[m], p.ref[m])["mse"]
    out["per_term"] = per_term
    return out


def _stats(rec: Any) -> dict[str, Any]:
    raw = rec.attrs.get("stats") if hasattr(rec, "attrs") else None
    try:
        return json.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw or {})
    except (json.JSONDecodeError, TypeError):
        return {}


def noise_floor(records: Iterable[Any], weights: dict[str, float] | None = None,
                upper: dict[str, dict[str, Any]] | None = None,
                true: dict[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """The noise-floor bracket per protein and weighted over proteins (see the module docstring).

    **Arguments:**

    - `records`: `ProteinRecord`s (their `attrs["stats"]` JSON from `prepare` gives the lower bound).
    - `weights`: protein name → weight (e.g. evaluated bead count); default equal.
    - `upper`: protein name → `nearest_neighbour_floor` result, optional.
    - `true`: protein name → mean |F − F_true|² per component, optional.

    **Returns:** `{"noise_floor_lower", "noise_floor_upper", "noise_floor_true"` (weighted means over the
    proteins that have them, or None)`, "per_protein": {name: stats}, "missing": [names without a lower
    bound]}`.
    """
    per: dict[str, dict[str, Any]] = {}
    missing = []
    sums = {k: [0.0, 0.0] for k in ("noise_floor_lower", "noise_floor_upper", "noise_floor_true")}
    for rec in records:
        st = _stats(rec)
        e: dict[str, Any] = {k: float(v) for k, v in st.items() if k.startswith("msq_")}
        if "noise_floor" in st:
            e["noise_floor_lower"] = float(st["noise_floor"])
        else:
            missing.append(rec.name)
        if upper and rec.name in upper:
            e.update(upper[rec.name])
        if true and rec.name in true:
            e["noise_floor_true"] = float(true[rec.name])
        per[rec.name] = e
        w = 1.0 if weights is None else float(weights.get(rec.name, 0.0))
        for k, acc in sums.items():
            if e.get(k) is not None:
                acc[0] += w * e[k]
                acc[1] += w
    out: dict[str, Any] = {k: (a / b if b > 0 else None) for k, (a, b) in sums.items()}
    return {**out, "per_protein": per, "missing": missing}


def gain_fraction(mse_base: float | None, mse_model: float, floor: float | None) -> float | None:
    """(MSE_base − MSE_model) / (MSE_base − floor): the model's gain over a baseline as a fraction of what
    the baseline leaves learnable above `floor`; None without a floor or baseline, or when
    MSE_base ≤ floor."""
    if floor is None or mse_base is None or not mse_base > floor:
        return None
    return (mse_base - mse_model) / (mse_base - floor)


def _kabsch(x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Proper rotations Q (k, 3, 3) with (x - x̄) Qᵀ closest to (ref - ref̄), and the RMSDs (k,)."""
    xc = x - x.mean(axis=-2, keepdims=True)
    rc = ref - ref.mean(axis=-2, keepdims=True)
    u, _, vt = np.linalg.svd(np.einsum("kni,knj->kij", xc, rc))
    d = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    u[..., :, -1] *= d[..., None]
    q = np.einsum("kij,kjl->kil", u, vt).transpose(0, 2, 1)  # (x Qᵀ) = x u vt
    rmsd = np.sqrt(np.mean(np.sum((np.einsum("kni,kji->knj", xc, q) - rc) ** 2, axis=-1), axis=-1))
    return q, rmsd


def nearest_neighbour_floor(
    rec: Any, *, max_rmsd: float = 1.0, max_frames: int = 1000, min_lag: int = 20, max_pairs_dims: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Upper estimate of a protein's noise floor from nearly coinciding CG configurations.

    Every frame is paired with its nearest frame (internal-distance RMS, then Kabsch RMSD) at the same
    temperature that lies in another (temperature, replica) trajectory or at least `min_lag` stored frames
    away in the same one (so their force noise is independent). Pairs closer than `max_rmsd` count:
    the estimate is the mean over pairs of ½ mean_components (F_i − Q F_j)², Q the rotation superposing
    frame j on frame i. It exceeds the floor by about ½ |mean-force difference|², which grows with the
    pairs' RMSD (reported as `upper_median_rmsd`).

    **Arguments:** `rec`, a `ProteinRecord`; `max_rmsd` (Å); `max_frames` (evenly subsampled); `min_lag`;
    `max_pairs_dims`, bead pairs used for the candidate search (random subset for big proteins); `seed`.

    **Returns:** `{"noise_floor_upper": value or None, "upper_pairs": count, "upper_median_rmsd": Å or
    None, "upper_max_rmsd": max_rmsd}` (plus `"upper_reason"` when there is no value).
    """
    out: dict[str, Any] = {"noise_floor_upper": None, "upper_pairs": 0, "upper_median_rmsd": None,
                           "upper_max_rmsd": float(max_rmsd)}  # fmt: skip
    n_frames = rec.n_frames
    idx = np.unique(np.linspace(0, n_frames - 1, min(n_frames, max_frames)).round().astype(np.int64))
    x, f = rec.frames(idx)
    if f is None:
        return {**out, "upper_reason": "coordinate-only data (no forces)"}
    x, f = x.astype(np.float64), f.astype(np.float64)
    temp = np.round(np.asarray(rec.temperature, np.float64)[idx], 1)
    rep = np.asarray(rec.replica, np.int64)[idx]
    pos = np.empty(len(idx), np.int64)  # position of each frame inside its trajectory (all frames)
    all_t, all_r = np.round(np.asarray(rec.temperature, np.float64), 1), np.asarray(rec.replica, np.int64)
    for tv, rv in set(zip(temp.tolist(), rep.tolist())):
        members = np.flatnonzero((all_t == tv) & (all_r == rv))
        m = (temp == tv) & (rep == rv)
        pos[m] = np.searchsorted(members, idx[m])
    n = x.shape[1]
    i, j = np.triu_indices(n, 1)
    if len(i) > max_pairs_dims:
        pick = np.random.default_rng(seed).choice(len(i), max_pairs_dims, replace=False)
        i, j = i[pick], j[pick]
    dist = np.linalg.norm(x[:, i] - x[:, j], axis=-1)  # (k, m) internal distances
    pairs = set()
    for tv in np.unique(temp):
        members = np.flatnonzero(temp == tv)
        if len(members) < 2:
            continue
        dm = dist[members]
        sq = np.sum(dm * dm, axis=1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * dm @ dm.T
        same = (rep[members][:, None] == rep[members][None, :]) & (
            np.abs(pos[members][:, None] - pos[members][None, :]) < min_lag)
        d2[same] = np.inf
        np.fill_diagonal(d2, np.inf)
        nearest = np.argmin(d2, axis=1)
        ok = np.isfinite(d2[np.arange(len(members)), nearest])
        for a, b in zip(members[ok].tolist(), members[nearest[ok]].tolist()):
            pairs.add((min(a, b), max(a, b)))
    if not pairs:
        return {**out, "upper_reason": "no pair of independent frames at the same temperature"}
    pa = np.array(sorted(pairs))
    q, rmsd = _kabsch(x[pa[:, 1]], x[pa[:, 0]])
    keep = rmsd < max_rmsd
    if not keep.any():
        return {**out, "upper_median_rmsd": float(np.median(rmsd)),
                "upper_reason": f"no nearest-neighbour pair within {max_rmsd:g} Å (median {np.median(rmsd):.2f} Å)"}  # fmt: skip
    fj = np.einsum("kni,kji->knj", f[pa[keep, 1]], q[keep])
    half = 0.5 * np.mean((f[pa[keep, 0]] - fj) ** 2, axis=(1, 2))
    return {**out, "noise_floor_upper": float(np.mean(half)), "upper_pairs": int(keep.sum()),
            "upper_median_rmsd": float(np.median(rmsd[keep]))}  # fmt: skip


def against_truth(p: Predictions, records: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per protein with noise-free forces F_true (synthetic data): the true noise floor
    mean |F − F_true|² and the model's MSE against F_true, per component, over the evaluated beads.

    **Arguments:** `p` from `collect`; `records`, protein name → `ProteinRecord`.

    **Returns:** name → `{"noise_floor_true", "mse_vs_true", "msq_true"}` for proteins with F_true.
    """
    out = {}
    for k in np.unique(p.protein):
        name = p.names[int(k)]
        m = p.protein == k
        uniq, inv = np.unique(p.frame[m], return_inverse=True)
        ft = _true_forces(records[name], uniq)
        if ft is None:
            continue
        ft = ft[inv.reshape(-1), p.bead[m]].astype(np.float64)
        out[name] = {"noise_floor_true": float(np.mean((p.ref[m] - ft) ** 2)),
                     "mse_vs_true": float(np.mean((p.pred[m] - ft) ** 2)),
                     "msq_true": float(np.mean(ft**2))}  # fmt: skip
    return out


def _true_forces(rec: Any, frames: np.ndarray) -> np.ndarray | None:
    """F_true (k, N, 3) of the given sorted unique frames, or None. Reads `ProteinRecord.true_forces` where
    the store has it, else the group's `F_true` dataset directly."""
    fn = getattr(rec, "true_forces", None)
    if fn is not None:
        return fn(np.asarray(frames))
    group = getattr(getattr(rec, "positions", None), "parent", None)
    if group is None or "F_true" not in group:
        return None
    return np.asarray(group["F_true"][np.asarray(frames)], np.float32)


def device_count_note() -> str:
    return f"{jax.device_count()} device(s), backend {jax.default_backend()}"
