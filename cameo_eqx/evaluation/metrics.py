"""Force metrics of a trained model: predictions on packed batches, errors grouped by protein,
temperature and term, and the noise-floor context.

Conventions (as in training): MSE and RMSE are per Cartesian component over real beads, in
(kcal/mol/Å)² and kcal/mol/Å; MAE is the mean absolute component error.

The noise floor. `prepare` stores per protein (group attr `stats`, JSON) `msq_basic` (or
`msq_<map>`) and `msq_optimal`, the held-out mean squared mapped force of the chosen map and of an
optimal map, and `noise_floor` = their difference: a lower bound on the force MSE that no CG model can
beat with the chosen map's forces. With `MSE_0` = mean squared target force (the zero-force model),
the learnable part is `MSE_0 - noise_floor` and the model captures
`(MSE_0 - MSE_model) / (MSE_0 - noise_floor)` of it.
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
    parts: dict[str, list] = {"ref": [], "pred": [], "protein": [], "temperature": [], "frame": []}
    terms: dict[str, list] = {}
    for b in batches:
        f, tf, m = _batch_forces(model, b.to_device())
        m = np.asarray(m)
        g = np.asarray(b.graph_index)[m]
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
    `prior` is the sum of the prior terms (the prior-only model) when the model has an ML term.
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
    out["per_term"] = per_term
    return out


def noise_floor(records: Iterable[Any], weights: dict[str, float] | None = None) -> dict[str, Any]:
    """Noise-floor statistics from the proteins' `stats` attributes, weighted by evaluated beads.

    **Arguments:**

    - `records`: `ProteinRecord`s (their `attrs["stats"]` JSON from `prepare`).
    - `weights`: protein name → weight (e.g. evaluated bead count); default equal.

    **Returns:** `{"noise_floor": weighted mean or None, "per_protein": {name: stats}, "missing": [...]}`.
    """
    per, missing, num, den = {}, [], 0.0, 0.0
    for rec in records:
        raw = rec.attrs.get("stats") if hasattr(rec, "attrs") else None
        try:
            st = json.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw or {})
        except (json.JSONDecodeError, TypeError):
            st = {}
        if "noise_floor" not in st:
            missing.append(rec.name)
            continue
        keep = {k: float(v) for k, v in st.items() if k.startswith("msq_") or k == "noise_floor"}
        per[rec.name] = keep
        w = 1.0 if weights is None else float(weights.get(rec.name, 0.0))
        num += w * keep["noise_floor"]
        den += w
    return {"noise_floor": num / den if den > 0 else None, "per_protein": per, "missing": missing}


def captured_fraction(msq_target: float, mse_model: float, floor: float | None) -> float | None:
    """Fraction of the learnable part captured: (MSE_0 - MSE_model) / (MSE_0 - floor)."""
    if floor is None or not msq_target > floor:
        return None
    return (msq_target - mse_model) / (msq_target - floor)


def device_count_note() -> str:
    return f"{jax.device_count()} device(s), backend {jax.default_backend()}"
