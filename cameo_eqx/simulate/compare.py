"""Ensemble comparison of two sets of structures of one protein (a model against a reference).

Used by the ground-truth benchmark (`benchmarks/bench_consistency.py`) and available to any analysis:
Jensen-Shannon divergences of the radius of gyration, the end-to-end distance, the contact map and the
bonded distributions, and the free-energy profile along Rg with its largest deviation in kT over the
bins the reference populates. All NumPy (float64).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Float, Int

from .analysis import (
    bond_angles,
    bond_lengths,
    contact_map,
    dihedral_angles,
    histogram,
    js_divergence,
    radius_of_gyration,
)


def end_to_end(x: Float[np.ndarray, "... n 3"]) -> Float[np.ndarray, "..."]:
    """Distance (Å) between the first and the last bead."""
    x = np.asarray(x, np.float64)
    return np.linalg.norm(x[..., -1, :] - x[..., 0, :], axis=-1)


def contact_frequencies(
    x: Float[np.ndarray, "k n 3"], cutoff: float = 8.0, min_sep: int = 3
) -> Float[np.ndarray, " m"]:
    """Fraction of structures in which each pair i < j, j - i ≥ `min_sep`, is closer than `cutoff`
    (the upper triangle of `analysis.contact_map`)."""
    return contact_map(x, cutoff)[np.triu_indices(np.shape(x)[-2], min_sep)]


def free_energy_deviation(
    values: np.ndarray, reference: np.ndarray, edges: np.ndarray, min_population: float = 0.01
) -> dict[str, Any]:
    """Largest |ΔF| (in kT) between two free-energy profiles F = -ln p on shared bins.

    Only bins holding at least `min_population` of the reference count. The profiles are aligned by the
    reference-weighted mean of their difference over those bins (F is defined up to a constant), so a
    model that gets the shape right scores 0 whatever its normalisation. A bin the reference populates but
    the model never visits is scored with half a count (a lower bound on its deviation) and flagged.

    **Returns:** `{"max_abs_dF_kT", "rms_dF_kT" (reference-weighted RMS of the aligned difference, less
    noisy than the maximum), "bins_used", "empty_model_bins", "centres", "F_model", "F_reference"}`.
    """
    hs, _ = np.histogram(np.ravel(values), bins=edges)
    hr, _ = np.histogram(np.ravel(reference), bins=edges)
    if hs.sum() == 0 or hr.sum() == 0:
        return {"max_abs_dF_kT": float("nan"), "rms_dF_kT": float("nan"), "bins_used": 0, "empty_model_bins": 0}
    pr = hr / hr.sum()
    use = pr >= min_population
    empty = use & (hs == 0)
    ps = np.where(hs > 0, hs, 0.5) / hs.sum()
    fs, fr = -np.log(ps), -np.log(np.where(pr > 0, pr, np.nan))
    d = fs[use] - fr[use]
    w = pr[use] / pr[use].sum()
    d = d - np.sum(w * d)
    return {"max_abs_dF_kT": float(np.max(np.abs(d))), "rms_dF_kT": float(np.sqrt(np.sum(w * d * d))),
            "bins_used": int(use.sum()),
            "empty_model_bins": int(empty.sum()), "centres": (0.5 * (edges[1:] + edges[:-1])).tolist(),
            "F_model": np.where(hs > 0, fs - np.nanmin(fs), np.nan).tolist(),
            "F_reference": np.where(hr > 0, fr - np.nanmin(fr), np.nan).tolist()}  # fmt: skip


def compare_ensembles(
    x: Float[np.ndarray, "k n 3"], ref: Float[np.ndarray, "m n 3"], *, bonds: Int[np.ndarray, "b 2"],
    angles: Int[np.ndarray, "a 3"], dihedrals: Int[np.ndarray, "d 4"], bins: int = 40,
    contact_cutoff: float = 8.0, min_population: float = 0.01,
) -> dict[str, Any]:  # fmt: skip
    """Every comparison of a model's structures `x` with reference structures `ref` of one protein.

    **Returns:** `{"js": {rg, end_to_end, contact_map, bond, angle, dihedral}, "rg_profile": ...
    (see `free_energy_deviation`), "rg": {"model", "reference"} means, "contact_map_mae"}`. Histogram
    edges span both sets (Rg, end-to-end, bonds) or the full range (angles, dihedrals).
    """
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)

    def shared(a, b):
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        return np.linspace(lo - 1e-6, hi + 1e-6, bins + 1)

    js: dict[str, float] = {}
    rg_x, rg_r = radius_of_gyration(x), radius_of_gyration(ref)
    rg_edges = shared(rg_x, rg_r)
    js["rg"] = js_divergence(histogram(rg_x, rg_edges), histogram(rg_r, rg_edges))
    ee_x, ee_r = end_to_end(x), end_to_end(ref)
    ee_edges = shared(ee_x, ee_r)
    js["end_to_end"] = js_divergence(histogram(ee_x, ee_edges), histogram(ee_r, ee_edges))
    cx, cr = contact_frequencies(x, contact_cutoff), contact_frequencies(ref, contact_cutoff)
    js["contact_map"] = js_divergence(cx, cr) if cx.sum() > 0 and cr.sum() > 0 else float("nan")
    for name, fn, idx, edges in (
        ("bond", bond_lengths, bonds, None),
        ("angle", bond_angles, angles, np.linspace(0, np.pi, bins + 1)),
        ("dihedral", dihedral_angles, dihedrals, np.linspace(-np.pi, np.pi, bins + 1)),
    ):
        if len(idx) == 0:
            continue
        a, b = fn(x, idx), fn(ref, idx)
        e = shared(a, b) if edges is None else edges
        js[name] = js_divergence(histogram(a, e), histogram(b, e))
    return {
        "js": js, "rg_profile": free_energy_deviation(rg_x, rg_r, rg_edges, min_population),
        "rg": {"model": float(rg_x.mean()), "reference": float(rg_r.mean())},
        "contact_map_mae": float(np.mean(np.abs(cx - cr))) if len(cx) else 0.0,
    }  # fmt: skip
