"""Boltzmann inversion of the physics prior from a prepared dataset, with PNG diagnostics.

For each term a histogram of its coordinate x is accumulated over all frames (streamed in chunks),
separately for every temperature T and (for per-species terms) every parameter type. The inverted
potential of one temperature is

    u_T(x) = -kT ln( n_T(x) / J(x) ),     J = r² (bonds), sin θ (angles), 1 (dihedrals),

defined up to a constant. One parameter set is fitted to all temperatures at once by weighted least
squares with a free offset per temperature; the weight of a bin is its inverse variance
n_T(x) / (kT)² (Poisson counts: var ln n = 1/n). Each frame is thus inverted at its own temperature.
(The potential of mean force of a coordinate depends on T; pooling gives the inverse-variance-weighted
compromise; restrict `temperatures` to fit one.)

- bonds: U = 0.5 k (r - r0)² is linear in (r², r): k = 2 c_2, r0 = -c_1 / k;
- angles: Σ_n a_n cos nθ + b_n sin nθ; dihedrals: Σ_n A_n cos nφ + B_n sin nφ, written as
  Σ_n k_n (1 + cos(nφ - γ_n)) with k_n = |(A_n, B_n)|, γ_n = atan2(B_n, A_n) (the constant is dropped).
  CA angles are sampled over ~1.4-2.6 rad only, where the Fourier basis is nearly collinear: plain least
  squares gives ~1e6 kcal/mol cancelling coefficients (float32 rounding noise of ~1 kcal/mol, a wild
  potential outside the data). So the Fourier fits are ridge-regularised (a Gaussian prior of std τ/n on
  the n-th coefficients, negligible where the data fix them) and constrained to extrapolate repulsively:
  outside the sampled bins U ≥ U(nearest sampled bin), and beyond the sampled range of an angle U is
  monotone, rising away from it (see `fit_fourier`). The order is the one with the smallest information
  criterion (AIC = χ² + 2p, BIC = χ² + p ln n_bins, p = effective dof of the ridge fit);
- repulsion: σ = a low percentile of the distances of non-bonded pairs (sequence separation ≥ min_sep
  or different segments) within the cutoff; ε stays at its configured value (only ε σ^p matters).

Nonsense is refused with `FitError` showing the histogram: k ≤ 0 (a bond potential unbounded below),
non-finite coefficients, no samples, too many bond lengths outside the histogram range.
Fitted parameters are the inverted potentials themselves; the prior's weights multiply them (see
`prior.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int

from .. import geometry
from ..data.store import PreparedDataset, ProteinRecord
from ..fileio import write_atomic
from ..units import KB_KCAL_PER_MOL_K
from .config import FitPriorsConfig
from .prior import Prior
from .refine import make_batches, refine_prior
from .terms import (
    FourierAngle,
    HarmonicBond,
    PeriodicDihedral,
    SoftSphereRepulsion,
    n_types,
    pair_type,
    quadruplet_type,
    triplet_type,
)

log = logging.getLogger(__name__)

MAX_TEMPERATURES = 64
REPULSION_BIN = 0.01  # Å, resolution of the non-bonded distance histogram


class FitError(ValueError):
    """A fit that would give a nonsensical potential; the message shows the histogram behind it."""


# ------------------------------------------------------------------------------- NumPy geometry


def np_bond_lengths(R: Float[np.ndarray, "k N 3"], idx: Int[np.ndarray, "m 2"]) -> Float[np.ndarray, "k m"]:
    """Bond lengths (Å) of every frame, in R's precision (`geometry.bond_lengths`)."""
    return geometry.bond_lengths(*geometry.tuple_positions(R, idx))


def np_angles(R: Float[np.ndarray, "k N 3"], idx: Int[np.ndarray, "m 3"]) -> Float[np.ndarray, "k m"]:
    """Angles (rad, [0, π]) at the middle bead of every frame (`geometry.bond_angles`, as the prior)."""
    return geometry.bond_angles(*geometry.tuple_positions(R, idx))


def np_dihedrals(R: Float[np.ndarray, "k N 3"], idx: Int[np.ndarray, "m 4"]) -> Float[np.ndarray, "k m"]:
    """IUPAC dihedrals (rad, (-π, π]) of every frame (`geometry.dihedral_angles`, as the prior)."""
    return geometry.dihedral_angles(*geometry.tuple_positions(R, idx))


# ------------------------------------------------------------------------------ sparse histograms


class SparseCounts:
    """Counts of int64 keys (type, temperature, bin), merged chunk by chunk (memory ∝ occupied bins)."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)

    def add(self, keys: Int[np.ndarray, " k"], weights: Int[np.ndarray, " k"] | None = None) -> None:
        if weights is None:
            k, c = np.unique(keys, return_counts=True)
        else:
            k, inv = np.unique(keys, return_inverse=True)
            c = np.bincount(inv.ravel(), weights=weights).astype(np.int64)
        allk = np.concatenate([self.keys, k])
        allc = np.concatenate([self.counts, c])
        self.keys, inv = np.unique(allk, return_inverse=True)
        self.counts = np.bincount(inv.ravel(), weights=allc, minlength=len(self.keys)).astype(np.int64)

    def dense(self, n_bins: int, n_temps: int) -> dict[int, np.ndarray]:
        """type → (n_temps, n_bins) counts."""
        b = self.keys % n_bins
        t = (self.keys // n_bins) % MAX_TEMPERATURES
        ty = self.keys // (n_bins * MAX_TEMPERATURES)
        out: dict[int, np.ndarray] = {}
        for u in np.unique(ty):
            sel = ty == u
            h = np.zeros((n_temps, n_bins), np.int64)
            np.add.at(h, (t[sel], b[sel]), self.counts[sel])
            out[int(u)] = h
        return out


@dataclasses.dataclass
class TermHistogram:
    """Histograms of one term's coordinate: per type, per temperature."""

    name: str
    edges: Float[np.ndarray, " nb1"]
    per_type: dict[int, np.ndarray]  # type → (n_temps, n_bins)

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def total(self) -> np.ndarray:
        """(n_temps, n_bins) summed over types."""
        return sum(self.per_type.values()) if self.per_type else np.zeros((0, len(self.edges) - 1))


@dataclasses.dataclass
class PriorHistograms:
    """Everything the inversion needs, accumulated over the data in one streaming pass."""

    temperatures: list[float]
    bond: TermHistogram
    angle: TermHistogram
    dihedral: TermHistogram
    pair: TermHistogram  # non-bonded distances (0..cutoff), per pair type
    bond_outside: int
    n_frames: int
    proteins: list[str]
    n_species: int


def _temperature_index(temps: list[float], t: float, where: str) -> int:
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"{where}: frame temperature {t} K is not a positive number")
    for i, u in enumerate(temps):
        if abs(u - t) < 1e-3:
            return i
    if len(temps) >= MAX_TEMPERATURES:
        raise ValueError(f"{where}: more than {MAX_TEMPERATURES} distinct temperatures")
    temps.append(float(t))
    return len(temps) - 1


def _binned(values: np.ndarray, lo: float, hi: float, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index of every value and whether it lies in [lo, hi)."""
    b = np.floor((values - lo) / (hi - lo) * n_bins).astype(np.int64)
    ok = (b >= 0) & (b < n_bins)
    return np.clip(b, 0, n_bins - 1), ok


def _selected_frames(rec: ProteinRecord, cfg: FitPriorsConfig, select_t) -> tuple[np.ndarray, np.ndarray]:
    """The protein's frames the fit uses (every `frame_stride`-th, at the selected temperatures) and their temperatures."""
    frames = np.arange(0, rec.n_frames, cfg.frame_stride)
    temp = np.asarray(rec.temperature, np.float64)[frames]
    if select_t is not None:
        frames = frames[np.any(np.abs(temp[:, None] - select_t[None]) < 1e-3, axis=1)]
        temp = np.asarray(rec.temperature, np.float64)[frames]
    return frames, temp


@dataclasses.dataclass(frozen=True)
class _ProteinTerms:
    """One protein's bonded index rows, its non-bonded pairs (`pi` < `pj`) and the type of every term."""

    bonds: np.ndarray
    angles: np.ndarray
    dihedrals: np.ndarray
    pi: np.ndarray
    pj: np.ndarray
    types: dict[str, np.ndarray]


def _protein_terms(topo, sp: np.ndarray, pc) -> _ProteinTerms:
    """The protein's terms and their types (per species combination, or all one type)."""
    s = pc.n_species
    bonds, angles, dih = topo.bonds, topo.angles, topo.dihedrals
    ty = {
        "bond": pair_type(sp[bonds[:, 0]], sp[bonds[:, 1]], s) if pc.bond_per_species else np.zeros(len(bonds), np.int64),
        "angle": triplet_type(*(sp[angles[:, c]] for c in range(3)), s) if pc.angle_per_species else np.zeros(len(angles), np.int64),
        "dihedral": quadruplet_type(*(sp[dih[:, c]] for c in range(4)), s) if pc.dihedral_per_species else np.zeros(len(dih), np.int64),
    }  # fmt: skip
    n = topo.n_beads
    pi, pj = np.triu_indices(n, k=1)
    sep = topo.sequence_separation(pi, pj)
    keep = sep >= pc.min_sep
    pi, pj = pi[keep], pj[keep]
    ty["pair"] = pair_type(sp[pi], sp[pj], s) if pc.repulsion_per_species else np.zeros(len(pi), np.int64)
    return _ProteinTerms(bonds, angles, dih, pi, pj, ty)


def _count_chunk(counts: dict[str, SparseCounts], R: np.ndarray, ti: np.ndarray, terms: _ProteinTerms,
                 cfg: FitPriorsConfig, n_pair_bins: int) -> int:  # fmt: skip
    """Adds a chunk of frames `R` (temperature indices `ti`) to the counts; returns the bonds outside the range."""
    pc = cfg.prior
    lo_b, hi_b = cfg.bond_range
    bonds, angles, dih, pi, pj, ty = terms.bonds, terms.angles, terms.dihedrals, terms.pi, terms.pj, terms.types
    bond_outside = 0

    def add(name, values, lo, hi, nb, types):
        b, ok = _binned(values, lo, hi, nb)
        key = ((types[None, :] * MAX_TEMPERATURES + ti) * nb + b)[ok]
        counts[name].add(key.ravel())
        return int((~ok).sum())

    if len(bonds):
        bond_outside += add("bond", np_bond_lengths(R, bonds), lo_b, hi_b, cfg.bond_bins, ty["bond"])
    if len(angles):
        # θ = π falls in the last bin
        th = np.minimum(np_angles(R, angles), np.pi * (1 - 1e-12))
        add("angle", th, 0.0, np.pi, cfg.angle_bins, ty["angle"])
    if len(dih):
        ph = np.where(np_dihedrals(R, dih) >= np.pi, -np.pi, np_dihedrals(R, dih))
        add("dihedral", ph, -np.pi, np.pi, cfg.dihedral_bins, ty["dihedral"])
    if len(pi):
        step = max(1, (1 << 22) // max(1, len(pi)))  # bound memory for large proteins
        for a in range(0, len(R), step):
            Rs = R[a : a + step]
            d = np.linalg.norm(Rs[:, pj] - Rs[:, pi], axis=-1)
            b, ok = _binned(d, 0.0, pc.repulsion_cutoff, n_pair_bins)
            key = ((ty["pair"][None, :] * MAX_TEMPERATURES + ti[a : a + step]) * n_pair_bins + b)[ok]
            counts["pair"].add(key.ravel())
    return bond_outside


def collect_histograms(records: Iterable[ProteinRecord], cfg: FitPriorsConfig) -> PriorHistograms:
    """One streaming pass over the selected frames (chunks of `cfg.chunk_frames`).

    **Arguments:**

    - `records`: the proteins (lazy `ProteinRecord`s are read chunk by chunk).
    - `cfg`: the fit config (temperatures, stride, bins, per-species choices, min_sep, cutoff).

    **Returns:** `PriorHistograms`.
    """
    pc = cfg.prior
    s = pc.n_species
    temps: list[float] = []
    counts = {k: SparseCounts() for k in ("bond", "angle", "dihedral", "pair")}
    n_pair_bins = int(round(pc.repulsion_cutoff / REPULSION_BIN))
    bond_outside = n_frames = 0
    names = []
    select_t = None if cfg.temperatures is None else np.asarray(cfg.temperatures, np.float64)
    for rec in records:
        if cfg.proteins is not None and rec.name not in cfg.proteins:
            continue
        topo = rec.topology
        sp = np.asarray(topo.species, np.int64)
        if len(sp) and (sp.min() < 0 or sp.max() >= s):
            raise ValueError(f"protein {rec.name}: species {sp.max()} outside [0, {s}) "
                             f"(PriorConfig.n_species = {s}; set it to the dataset's species count)")  # fmt: skip
        frames, temp = _selected_frames(rec, cfg, select_t)
        if len(frames) == 0:
            continue
        names.append(rec.name)
        terms = _protein_terms(topo, sp, pc)
        tidx = np.asarray([_temperature_index(temps, t, f"protein {rec.name}") for t in temp], np.int64)
        for c0 in range(0, len(frames), cfg.chunk_frames):
            fr = frames[c0 : c0 + cfg.chunk_frames]
            R, _ = rec.frames(fr)
            R = R.astype(np.float64)
            if not np.all(np.isfinite(R)):
                bad = np.argwhere(~np.isfinite(R))[0]
                raise ValueError(f"protein {rec.name}: NaN/inf position at frame {fr[bad[0]]}, bead {bad[1]}")
            ti = tidx[c0 : c0 + len(fr)][:, None]
            bond_outside += _count_chunk(counts, R, ti, terms, cfg, n_pair_bins)
            n_frames += len(fr)
    if n_frames == 0:
        raise FitError(f"no frames selected (temperatures={cfg.temperatures}, proteins={cfg.proteins})")
    nt = len(temps)
    lo_b, hi_b = cfg.bond_range

    def th(name, lo, hi, nb):
        return TermHistogram(name, np.linspace(lo, hi, nb + 1), counts[name].dense(nb, nt))

    return PriorHistograms(
        temperatures=temps,
        bond=th("bond", lo_b, hi_b, cfg.bond_bins),
        angle=th("angle", 0.0, np.pi, cfg.angle_bins),
        dihedral=th("dihedral", -np.pi, np.pi, cfg.dihedral_bins),
        pair=th("pair", 0.0, pc.repulsion_cutoff, n_pair_bins),
        bond_outside=bond_outside,
        n_frames=n_frames,
        proteins=names,
        n_species=s,
    )


# ----------------------------------------------------------------------------------- the fits


def histogram_text(centers: np.ndarray, counts: np.ndarray, temps: Sequence[float], unit: str = "") -> str:
    """The histogram as a compact text table (bins with counts), for error messages."""
    lines = [f"  {'x' + unit:>10} " + " ".join(f"{f'n@{t:g}K':>9}" for t in temps)]
    for i in np.flatnonzero(counts.sum(0)):
        lines.append(f"  {centers[i]:10.4f} " + " ".join(f"{int(c):9d}" for c in counts[:, i]))
    return "\n".join(lines)


def _inverted(centers, counts, temps, jac):
    """Rows (bin, temperature) with counts: x, u = -kT ln(n / J), weight n / kT², temperature index."""
    xs, us, ws, ts = [], [], [], []
    for t, (T, c) in enumerate(zip(temps, counts)):
        kT = KB_KCAL_PER_MOL_K * T
        ok = (c > 0) & (jac > 0)
        xs.append(centers[ok])
        us.append(-kT * np.log(c[ok] / jac[ok]))
        ws.append(c[ok] / kT**2)
        ts.append(np.full(ok.sum(), t))
    return np.concatenate(xs), np.concatenate(us), np.concatenate(ws), np.concatenate(ts)


def _wlsq(X, y, w):
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)
    r = y - X @ coef
    return coef, float(np.sum(w * r * r)), r


def _offsets(t_index, n_temps):
    return (t_index[:, None] == np.arange(n_temps)[None, :]).astype(np.float64)


def fit_harmonic(
    centers: Float[np.ndarray, " nb"], counts: Int[np.ndarray, "nT nb"], temps: Sequence[float],
    what: str = "bond",
) -> tuple[float, float, dict[str, Any]]:  # fmt: skip
    """Fits 0.5 k (r - r0)² to the r²-corrected inverted bond histogram(s).

    **Arguments:**

    - `centers`: bin centres (Å); `counts`: (n_temperatures, n_bins) counts; `temps`: K.
    - `what`: name for the error message.

    **Returns:** `(r0, k, info)` with the χ²/dof and the weighted RMS residual (kcal/mol).

    **Raises:** `FitError` with the histogram if there are fewer than 3 occupied bins or k ≤ 0.
    """
    counts = np.asarray(counts)
    x, u, w, t = _inverted(centers, counts, temps, centers**2)
    if len(np.unique(x)) < 3:
        raise FitError(f"{what}: fewer than 3 occupied histogram bins; cannot fit a harmonic bond\n"
                       + histogram_text(centers, counts, temps, " Å"))  # fmt: skip
    X = np.concatenate([(x**2)[:, None], x[:, None], _offsets(t, len(temps))], axis=1)
    coef, chi2, r = _wlsq(X, u, w)
    k = 2.0 * coef[0]
    if not np.isfinite(k) or k <= 0:
        raise FitError(
            f"{what}: fitted force constant k = {k:.4g} kcal/mol/Å² ≤ 0 (the potential would be "
            "unbounded below); the histogram is not single-peaked:\n" + histogram_text(centers, counts, temps, " Å")
        )
    r0 = -coef[1] / k
    dof = max(1, len(u) - X.shape[1])
    info = {"n_samples": [int(c) for c in counts.sum(1)], "chi2_per_dof": chi2 / dof,
            "rms_residual_kcal": float(np.sqrt(np.average(r * r, weights=w)))}  # fmt: skip
    return float(r0), float(k), info


def _fourier_design(x, order):
    n = np.arange(1, order + 1)
    return np.concatenate([np.cos(x[:, None] * n), np.sin(x[:, None] * n)], axis=1)


def _fourier_slope_design(x, order):
    """d/dx of `_fourier_design` columns."""
    n = np.arange(1, order + 1)
    return np.concatenate([-n * np.sin(x[:, None] * n), n * np.cos(x[:, None] * n)], axis=1)


def fourier_energy(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_n a_n cos(n x) + b_n sin(n x) (NumPy)."""
    n = np.arange(1, len(a) + 1)
    return np.cos(np.multiply.outer(x, n)) @ a + np.sin(np.multiply.outer(x, n)) @ b


def sampled_support(
    centers: Float[np.ndarray, " nb"], occupied_bins: np.ndarray, domain: tuple[float, float], n_grid: int = 1441
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points of the domain grid outside the sampled bins, the nearest occupied bin centre of each, and
    the side they lie on (-1: below the lowest occupied bin of a non-periodic domain, +1: above the
    highest one, 0: in a gap between occupied bins, or anywhere unsampled of a periodic domain).

    A domain spanning 2π is periodic (dihedrals); otherwise (angles) the ends are open and the grid
    includes the first and last occupied centres (as points of sides -1 and +1).
    """
    lo, hi = domain
    periodic = abs((hi - lo) - 2 * np.pi) < 1e-9
    grid = np.linspace(lo, hi, n_grid, endpoint=not periodic)
    occ = np.asarray(centers)[occupied_bins]
    if not periodic:
        grid = np.unique(np.concatenate([grid, [occ.min(), occ.max()]]))
    width = centers[1] - centers[0]
    d = grid[:, None] - occ[None, :]
    if periodic:
        d = (d + np.pi) % (2 * np.pi) - np.pi
    inside = (np.abs(d) <= 0.5 * width + 1e-12).any(axis=1)
    if not periodic:  # the sampled range spans the occupied bins: [first centre, last centre]
        inside &= (grid >= occ.min()) & (grid <= occ.max())
    nearest = occ[np.argmin(np.abs(d), axis=1)]
    side = np.zeros(len(grid), np.int64)
    if not periodic:
        side[grid <= occ.min()] = -1
        side[grid >= occ.max()] = 1
        inside[(grid == occ.min()) | (grid == occ.max())] = False  # slope constraints at the edges too
    out = ~inside
    return grid[out], nearest[out], side[out]


def _lsq_inequality(A, y, G):
    """min ||A c - y||² subject to G c ≥ 0 (A full column rank), by reduction to a least-distance
    problem solved with non-negative least squares (Lawson & Hanson, ch. 23). Returns (c, n_active)."""
    from scipy.optimize import nnls  # lazy: scipy.optimize (~0.4 s) only for this fit

    Q, R = np.linalg.qr(A)
    f = Q.T @ y
    c0 = np.linalg.solve(R, f)
    if len(G) == 0 or np.all(G @ c0 >= 0):
        return c0, 0
    E = np.linalg.solve(R.T, G.T).T  # G R⁻¹
    h = -E @ f
    s = np.linalg.norm(E, axis=1)
    keep = s > 0
    E, h = E[keep] / s[keep, None], h[keep] / s[keep]
    M = np.concatenate([E.T, h[None, :]], axis=0)
    e = np.zeros(len(M))
    e[-1] = 1.0
    u, _ = nnls(M, e, maxiter=50 * M.shape[1])
    r = M @ u - e
    if abs(r[-1]) < 1e-12:  # infeasible (cannot happen: c = 0 satisfies G c ≥ 0)
        return c0, -1
    z = -r[:-1] / r[-1]
    c = np.linalg.solve(R, z + f)
    return c, int(np.sum(u > 0))


@dataclasses.dataclass(frozen=True)
class _OrderFit:
    """One Fourier order's constrained ridge fit: coefficients, residuals, χ², effective dof, active constraints."""

    a: np.ndarray
    b: np.ndarray
    r: np.ndarray
    chi2: float
    dof_eff: float
    n_active: int


def _fit_fourier_order(x, u, w, off, support, m: int, tau: float) -> _OrderFit | None:
    """The ridge fit of order `m` under the repulsive-extrapolation constraints (None when not finite)."""
    gx, ge, side = support
    nT = off.shape[1]
    sw = np.sqrt(w)
    X = np.concatenate([_fourier_design(x, m), off], axis=1)
    nn = np.arange(1, m + 1, dtype=np.float64)
    pen = np.concatenate([nn, nn, np.zeros(nT)]) / tau  # sqrt of the ridge diagonal
    A = np.concatenate([X * sw[:, None], np.diag(pen)], axis=0)
    yy = np.concatenate([u * sw, np.zeros(len(pen))])
    rows = [_fourier_design(gx, m) - _fourier_design(ge, m)]  # U(x) - U(edge) ≥ 0
    if (side != 0).any():
        rows.append(side[side != 0, None] * _fourier_slope_design(gx[side != 0], m))
    G = np.concatenate([np.concatenate(rows, axis=0), np.zeros((sum(len(r) for r in rows), nT))], axis=1)
    coef, n_active = _lsq_inequality(A, yy, G)
    if not np.all(np.isfinite(coef)):
        return None
    r = u - X @ coef
    chi2 = float(np.sum(w * r * r))
    XtWX = (X * w[:, None]).T @ X
    dof_eff = float(np.trace(np.linalg.solve(XtWX + np.diag(pen**2), XtWX)))
    return _OrderFit(coef[:m], coef[m : 2 * m], r, chi2, dof_eff, n_active)


def fit_fourier(
    centers: Float[np.ndarray, " nb"], counts: Int[np.ndarray, "nT nb"], temps: Sequence[float], *,
    jacobian: Float[np.ndarray, " nb"], domain: tuple[float, float], max_order: int,
    criterion: str = "bic", what: str = "angle", tau: float = 10.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:  # fmt: skip
    """Fits Σ_n a_n cos nx + b_n sin nx to the Jacobian-corrected inverted histogram(s).

    **Well-posedness.** A coordinate sampled over part of its domain (CA angles over ~1.4-2.6 rad) makes
    the Fourier basis nearly collinear there: plain least squares returns huge cancelling coefficients
    (~1e6 kcal/mol), float32 evaluation then has kcal/mol rounding noise, and the series is wild where
    there are no data. So the fit is

    - *ridge-regularised*: it minimises χ² + Σ_n n² (a_n² + b_n²) / τ² (a Gaussian prior on the
      coefficients, std τ/n; the penalty is ∫U'² over the period / (π τ²)). With τ = 10 kcal/mol the
      penalty's curvature (≤ 1e-2) is negligible next to the data's in every direction the histogram
      determines (Σ w ≈ n_samples / kT² ≈ 1e5), so a well-sampled fit is unbiased; only directions the
      data do not fix are pulled to zero;
    - *constrained to extrapolate repulsively* outside the sampled bins (on a 1441-point grid): at
      every unsampled point U ≥ U(nearest sampled bin centre), and, for a non-periodic domain (angles),
      U is monotone beyond the sampled range (dU/dx ≤ 0 below it, ≥ 0 above it), so the force there
      always points back into it. The constrained problem is solved exactly (least squares with linear
      inequalities, via NNLS).

    The order is the one with the smallest information criterion (AIC = χ² + 2 p, BIC = χ² + p ln
    n_bins) among 1..`max_order`, with p = the ridge fit's effective number of parameters
    (trace of its hat matrix, offsets included).

    **Returns:** `(a, b, info)` of length = the chosen order; info has the order, the criterion of every
    order, effective dof, active constraints, the sampled range, χ²/dof and the weighted RMS residual.

    **Raises:** `FitError` with the histogram if there are too few occupied bins or no order gives a
    potential bounded below by its sampled minimum (cannot happen with the constraints; a safety net).
    """
    counts = np.asarray(counts)
    x, u, w, t = _inverted(centers, counts, temps, jacobian)
    n_occ = len(np.unique(x))
    if n_occ < 3:
        raise FitError(f"{what}: fewer than 3 occupied histogram bins; cannot fit\n"
                       + histogram_text(centers, counts, temps))  # fmt: skip
    occupied_bins = (counts.sum(0) > 0) & (np.asarray(jacobian) > 0)
    gx, ge, side = sampled_support(np.asarray(centers, np.float64), occupied_bins, domain)
    occ = np.asarray(centers)[occupied_bins]
    best, scores, rejected, active_by_order = None, {}, {}, {}
    off = _offsets(t, len(temps))
    nT = len(temps)
    for m in range(1, max_order + 1):
        if 2 * m + nT >= len(u):
            break
        fit = _fit_fourier_order(x, u, w, off, (gx, ge, side), m, tau)
        if fit is None:
            continue
        ug_out = fourier_energy(gx, fit.a, fit.b)
        u_in_min = fourier_energy(occ, fit.a, fit.b).min()
        if len(gx) and ug_out.min() < u_in_min - 1e-6:
            rejected[m] = float(u_in_min - ug_out.min())
            continue
        ic = fit.chi2 + (2 * fit.dof_eff if criterion == "aic" else fit.dof_eff * math.log(len(u)))
        scores[m] = ic
        active_by_order[m] = fit.n_active
        if best is None or ic < best[0]:
            best = (ic, m, fit.a, fit.b, fit.chi2, fit.r, fit.dof_eff)
    if best is None:
        raise FitError(
            f"{what}: no Fourier order 1..{max_order} gives a potential bounded below by its sampled "
            f"minimum (orders rejected, with how far they dip below it in kcal/mol: {rejected})\n"
            + histogram_text(centers, counts, temps)
        )
    _, m, a, b, chi2, r, p = best
    info = {"order": m, "criterion": criterion, "scores": scores, "rejected_orders": rejected,
            "effective_dof": p, "ridge_tau_kcal": tau, "active_constraints": active_by_order[m],
            "sampled_range": [float(occ.min()), float(occ.max())],
            "n_samples": [int(c) for c in counts.sum(1)], "chi2_per_dof": chi2 / max(1.0, len(u) - p),
            "rms_residual_kcal": float(np.sqrt(np.average(r * r, weights=w)))}  # fmt: skip
    return a, b, info


def fourier_to_periodic(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A_n cos nφ + B_n sin nφ = k_n (1 + cos(nφ - γ_n)) - k_n, k_n = |(A_n, B_n)|, γ_n = atan2(B_n, A_n)."""
    return np.hypot(a, b), np.arctan2(b, a)


def repulsion_sigma(counts: Int[np.ndarray, "nT nb"], edges: np.ndarray, percentile: float) -> float:
    """The `percentile` (%) of the pooled distance histogram (linear within a bin)."""
    c = np.asarray(counts).sum(0).astype(np.float64)
    cum = np.cumsum(c)
    if cum[-1] <= 0:
        raise FitError("repulsion: no non-bonded pairs within the cutoff to set σ from")
    target = percentile / 100.0 * cum[-1]
    i = int(np.searchsorted(cum, target))
    prev = cum[i - 1] if i else 0.0
    frac = (target - prev) / c[i] if c[i] else 0.0
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))


# ------------------------------------------------------------------------------------- assemble


def _pad(v: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros(width)
    out[: len(v)] = v
    return out


def _per_type_fits(hist: TermHistogram, fit_one, per_species: bool, min_count: int):
    """Global fit plus per-type fits (types under min_count fall back to the global one)."""
    g = fit_one(hist.total, f"{hist.name} (global)")
    if not per_species:
        return g, {}, []
    fits, fallback = {}, []
    for ty, c in sorted(hist.per_type.items()):
        if c.sum() < min_count:
            fallback.append(ty)
            continue
        fits[ty] = fit_one(c, f"{hist.name} type {ty}")
    return g, fits, fallback


def _fit_bond_term(h: PriorHistograms, cfg: FitPriorsConfig):
    """The harmonic bond term from the bond-length histograms: (term, weight, provenance)."""
    pc, temps, s = cfg.prior, h.temperatures, cfg.prior.n_species
    hb = h.bond
    n_in = int(hb.total.sum())
    if n_in == 0:
        raise FitError("bond: no bond lengths inside bond_range "
                       f"{cfg.bond_range} Å ({h.bond_outside} outside)")  # fmt: skip
    if h.bond_outside > 0.01 * (n_in + h.bond_outside):
        raise FitError(f"bond: {h.bond_outside} of {n_in + h.bond_outside} bond lengths lie outside "
                       f"bond_range {cfg.bond_range} Å (> 1 %); widen it\n"
                       + histogram_text(hb.centers, hb.total, temps, " Å"))  # fmt: skip
    g, fits, fb = _per_type_fits(hb, lambda c, w: fit_harmonic(hb.centers, c, temps, w), pc.bond_per_species,
                                 cfg.min_count)  # fmt: skip
    nt = n_types("pair", s) if pc.bond_per_species else 1
    r0 = np.full(nt, g[0])
    k = np.full(nt, g[1])
    for ty, (a, b, _) in fits.items():
        r0[ty], k[ty] = a, b
    term = HarmonicBond(np.asarray(r0, np.float32), np.asarray(k, np.float32), pc.bond_per_species, s)
    info = {"global": {"r0": g[0], "k": g[1], **g[2]}, "bins": cfg.bond_bins,
            "range": list(cfg.bond_range), "n_outside_range": h.bond_outside,
            "per_type": {str(t): {"r0": v[0], "k": v[1], **v[2]} for t, v in fits.items()},
            "fallback_types": fb}  # fmt: skip
    return term, pc.weight_bond, info


def _fit_fourier_term(name: str, h: PriorHistograms, cfg: FitPriorsConfig):
    """The Fourier angle or periodic dihedral term from its histograms: (term, weight, provenance)."""
    pc, temps, s = cfg.prior, h.temperatures, cfg.prior.n_species
    if name == "angle":
        hist, per, dom, jac = h.angle, pc.angle_per_species, (0.0, np.pi), np.sin(h.angle.centers)
    else:
        hist, per, dom, jac = h.dihedral, pc.dihedral_per_species, (-np.pi, np.pi), np.ones_like(h.dihedral.centers)
    if hist.total.sum() == 0:
        raise FitError(f"{name}: no samples (are all proteins shorter than {3 if name == 'angle' else 4} beads?)")

    def one(c, w):
        return fit_fourier(hist.centers, c, temps, jacobian=jac, domain=dom,
                           max_order=cfg.max_fourier_order, criterion=cfg.criterion, what=w,
                           tau=cfg.fourier_tau)  # fmt: skip

    g, fits, fb = _per_type_fits(hist, one, per, cfg.min_count)
    order = max([len(g[0])] + [len(v[0]) for v in fits.values()])
    kind = "triplet" if name == "angle" else "quadruplet"
    nt = n_types(kind, s) if per else 1
    A = np.tile(_pad(g[0], order), (nt, 1))
    B = np.tile(_pad(g[1], order), (nt, 1))
    for ty, (a, b, _) in fits.items():
        A[ty], B[ty] = _pad(a, order), _pad(b, order)
    if name == "angle":
        term, weight = FourierAngle(np.asarray(A, np.float32), np.asarray(B, np.float32), per, s), pc.weight_angle
    else:
        kk, gg = fourier_to_periodic(A, B)
        term = PeriodicDihedral(np.asarray(kk, np.float32), np.asarray(gg, np.float32), per, s)
        weight = pc.weight_dihedral
    info = {"global": {"a": list(g[0]), "b": list(g[1]), **g[2]}, "bins": len(hist.centers),
            "per_type": {str(t): v[2] for t, v in fits.items()}, "fallback_types": fb}  # fmt: skip
    return term, weight, info


def _fit_repulsion_term(h: PriorHistograms, cfg: FitPriorsConfig):
    """The soft-sphere repulsion with σ from a percentile of the pair-distance histograms: (term, weight, provenance)."""
    pc, s = cfg.prior, cfg.prior.n_species
    hp = h.pair
    if hp.total.sum() == 0:
        raise FitError(f"repulsion: no non-bonded pairs (separation ≥ {pc.min_sep}) within "
                       f"{pc.repulsion_cutoff} Å in the data")  # fmt: skip
    sig_g = repulsion_sigma(hp.total, hp.edges, cfg.repulsion_percentile)
    nt = n_types("pair", s) if pc.repulsion_per_species else 1
    sig = np.full(nt, sig_g)
    fb = []
    if pc.repulsion_per_species:
        for ty, c in hp.per_type.items():
            if c.sum() < cfg.min_count:
                fb.append(ty)
            else:
                sig[ty] = repulsion_sigma(c, hp.edges, cfg.repulsion_percentile)
    if not np.all(sig > 0):
        raise FitError(f"repulsion: σ ≤ 0 from the {cfg.repulsion_percentile} % percentile")
    term = SoftSphereRepulsion(
        np.full(nt, pc.repulsion_epsilon, np.float32), np.asarray(sig, np.float32), pc.repulsion_exponent,
        pc.min_sep, pc.repulsion_cutoff, pc.repulsion_switch, pc.switch_on, 0.1, pc.repulsion_per_species, s)  # fmt: skip
    info = {"sigma_global": sig_g, "percentile": cfg.repulsion_percentile,
            "min_sep": pc.min_sep, "n_pairs": [int(c) for c in hp.total.sum(1)],
            "epsilon": pc.repulsion_epsilon, "fallback_types": sorted(fb)}  # fmt: skip
    return term, pc.weight_repulsion, info


def fit_from_histograms(h: PriorHistograms, cfg: FitPriorsConfig, dataset: str = "") -> Prior:
    """The Boltzmann-inverted `Prior` from collected histograms (see the module docstring).

    Per-species types with fewer than `cfg.min_count` samples get the global fit (listed in the
    provenance as `fallback_types`).
    """
    pc = cfg.prior
    temps = h.temperatures
    prov: dict[str, Any] = {
        "method": "boltzmann_inversion", "dataset": dataset, "proteins": h.proteins,
        "n_frames": h.n_frames, "temperatures": temps, "criterion": cfg.criterion,
        "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)), "terms": {},
    }  # fmt: skip
    terms, weights = [], []
    fitted = []
    if pc.bond:
        fitted.append(("bond", *_fit_bond_term(h, cfg)))
    for name in ("angle", "dihedral"):
        if getattr(pc, name):
            fitted.append((name, *_fit_fourier_term(name, h, cfg)))
    if pc.repulsion:
        fitted.append(("repulsion", *_fit_repulsion_term(h, cfg)))
    for name, term, weight, info in fitted:
        terms.append(term)
        weights.append(weight)
        prov["terms"][name] = info
    terms = [jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x, t) for t in terms]
    return Prior(terms, weights, prov)


def fit_prior(
    records: PreparedDataset | Iterable[ProteinRecord], cfg: FitPriorsConfig,
    plots_dir: str | os.PathLike | None = None,
) -> tuple[Prior, PriorHistograms]:  # fmt: skip
    """Boltzmann inversion from a prepared dataset or a list of records.

    **Arguments:**

    - `records`: a `PreparedDataset` or `ProteinRecord`s.
    - `cfg`: the fit config; `plots_dir`: where to write PNG diagnostics (None: none).

    **Returns:** `(prior, histograms)`.
    """
    dataset = str(records.path) if isinstance(records, PreparedDataset) else ""
    h = collect_histograms(records, cfg)
    prior = fit_from_histograms(h, cfg, dataset)
    if plots_dir is not None:
        plot_diagnostics(prior, h, plots_dir, max_panels=cfg.max_panels)
    return prior, h


# ---------------------------------------------------------------------------------------- plots


def _term_potential(prior: Prior, name: str, x: np.ndarray, ty: int) -> np.ndarray:
    t = prior.term(name)
    if name == "bond":
        return 0.5 * float(t.k[ty]) * (x - float(t.r0[ty])) ** 2
    if name == "angle":
        return fourier_energy(x, np.asarray(t.a[ty]), np.asarray(t.b[ty]))
    k, g = np.asarray(t.k[ty]), np.asarray(t.gamma[ty])
    n = np.arange(1, len(k) + 1)
    return (k * (1 + np.cos(np.multiply.outer(x, n) - g))).sum(-1)


def plot_diagnostics(prior: Prior, h: PriorHistograms, out_dir: str | os.PathLike, max_panels: int = 24) -> list[Path]:
    """PNGs of the histogram vs the fitted Boltzmann density J(x) exp(-U(x)/kT) (normalised like the
    histogram), one line pair per temperature; per-species terms show the `max_panels` most populated
    types. The unweighted fitted potential U is plotted (weights are not part of the inversion).

    **Returns:** the written files.
    """
    import matplotlib  # lazy: only for the plots (matplotlib.pyplot imports in ~1 s)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    specs = [("bond", h.bond, lambda x: x**2, "r (Å)"), ("angle", h.angle, np.sin, "θ (rad)"),
             ("dihedral", h.dihedral, np.ones_like, "φ (rad)")]  # fmt: skip
    for name, hist, jac, xlabel in specs:
        if name not in prior.names:
            continue
        t = prior.term(name)
        types = sorted(hist.per_type, key=lambda k: -hist.per_type[k].sum())[:max_panels] if t.per_species else [0]
        n = len(types)
        cols = min(4, n)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        x = hist.centers
        width = x[1] - x[0]
        for ax, ty in zip(axes.ravel(), types):
            counts = hist.per_type[ty] if t.per_species else hist.total
            u = _term_potential(prior, name, x, ty)
            for i, T in enumerate(h.temperatures):
                c = counts[i]
                if c.sum() == 0:
                    continue
                dens = c / (c.sum() * width)
                kT = KB_KCAL_PER_MOL_K * T
                p = jac(x) * np.exp(-(u - u.min()) / kT)
                p = p / (p.sum() * width)
                ax.step(x, dens, where="mid", label=f"data {T:g} K", alpha=0.7)
                ax.plot(x, p, "--", label=f"fit {T:g} K")
            ax.set_title(f"{name} type {ty}" if t.per_species else name)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("density")
        for ax in axes.ravel()[n:]:
            ax.axis("off")
        axes.ravel()[0].legend(fontsize=7)
        fig.tight_layout()
        path = out / f"prior_{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    if "repulsion" in prior.names:
        rep = prior.term("repulsion")
        fig, ax = plt.subplots(figsize=(5, 3.5))
        hp = h.pair
        c = hp.total.sum(0)
        ax.step(hp.centers, c / max(1, c.sum()) / (hp.edges[1] - hp.edges[0]), where="mid", label="non-bonded pairs")
        sig = float(rep.sigma[0])
        ax.axvline(sig, color="k", ls="--", label=f"σ (global) = {sig:.2f} Å")
        ax.set_xlabel("r (Å)")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "prior_repulsion.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------ command


def summary_text(prior: Prior) -> str:
    """A short human-readable summary of a fitted prior (from its parameters and provenance): per term
    its parameters or Fourier order, sample counts per temperature and the weight; σ of the repulsion;
    the refinement result if any."""
    prov = prior.provenance
    temps = prov.get("temperatures", [])
    tt = ", ".join(f"{t:g}" for t in temps)
    lines = [f"Boltzmann inversion: {prov.get('n_frames', '?')} frames of {len(prov.get('proteins', []))} "
             f"protein(s) at T = [{tt}] K (each frame at its own T), order by {prov.get('criterion', '?')}"]  # fmt: skip
    terms = prov.get("terms", {})

    def counts(d):
        n = d.get("n_samples")
        return "" if n is None else " samples " + "/".join(str(c) for c in n)

    for w, t in zip(prior.weights, prior.terms):
        d = terms.get(t.name, {})
        g = d.get("global", {})
        per = f", per species ({len(d.get('per_type', {}))} types fitted, {len(d.get('fallback_types', []))} "
        per = per + "global fallback)" if t.per_species else ""
        if t.name == "bond":
            what = f"r0 = {float(t.r0[0]):.4f} Å, k = {float(t.k[0]):.2f} kcal/mol/Å²"
        elif t.name in ("angle", "dihedral"):
            lo, hi = g.get("sampled_range", [float("nan")] * 2)
            what = (f"Fourier order {t.order}, sampled [{lo:.2f}, {hi:.2f}] rad, "
                    f"rms residual {g.get('rms_residual_kcal', float('nan')):.3f} kcal/mol")  # fmt: skip
            g = dict(g)
        else:
            n = d.get("n_pairs")
            g = {"n_samples": n} if n is not None else {}
            what = (f"σ = {float(t.sigma[0]):.3f} Å ({d.get('percentile', '?')} % of non-bonded distances), "
                    f"ε = {float(t.epsilon[0]):g} kcal/mol, p = {t.exponent}, min_sep = {t.min_sep}")  # fmt: skip
        lines.append(f"  {t.name:<9} weight {w:g}: {what}{per};{counts(g)}")
    if "refine" in prov:
        r = prov["refine"]
        lines.append(f"  refined by force matching: RMSE {r['rmse_before']:.4f} -> {r['rmse_after']:.4f} "
                     f"kcal/mol/Å ({r['steps']} {r.get('solver', 'lbfgs').upper()} steps, {r['result']})")  # fmt: skip
    return "\n".join(lines)


def fit_priors(cfg: FitPriorsConfig) -> Path:
    """The `fit-priors` command: Boltzmann inversion (and optional quasi-Newton force-matching refinement) on a prepared
    dataset; writes `<output>/prior.yaml`, `<output>/fit_priors_config.json` and `<output>/plots/*.png`.

    **Returns:** the path of `prior.yaml`.
    """
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    with PreparedDataset(cfg.dataset) as ds:
        if ds.n_species > cfg.prior.n_species:
            raise ValueError(
                f"{ds.path}: species map {ds.species_map_name!r} has {ds.n_species} species but "
                f"PriorConfig.n_species = {cfg.prior.n_species}; set --prior.n-species {ds.n_species}"
            )
        prior, h = fit_prior(ds, cfg, out / "plots" if cfg.plots else None)
        prov = prior.provenance
        prov["species_map"] = ds.species_map_name
        if cfg.refine.enabled:
            records = [ds.record(n) for n in h.proteins]
            rc = cfg.refine
            batches = make_batches(records, n_frames=rc.n_frames, frames_per_batch=rc.frames_per_batch,
                                   cutoff=cfg.prior.repulsion_cutoff, min_sep=cfg.prior.min_sep,
                                   temperatures=cfg.temperatures, seed=rc.seed)  # fmt: skip
            refined, report = refine_prior(prior, batches, max_steps=rc.max_steps, rtol=rc.rtol, atol=rc.atol,
                                           refine_sigma=rc.refine_sigma)  # fmt: skip
            prov["refine"] = report
            prior = refined
            log.info("refined prior: force RMSE %.4f → %.4f kcal/mol/Å", report["rmse_before"], report["rmse_after"])
        prior = prior.with_provenance(prov)
    path = prior.save(out / "prior.yaml")
    write_atomic(out / "fit_priors_config.json", json.dumps(dataclasses.asdict(cfg), indent=1, default=str))
    print(summary_text(prior))
    print(f"wrote {path}")
    print(f"wrote {out / 'fit_priors_config.json'}")
    if cfg.plots:
        plots = sorted((out / "plots").glob("prior_*.png"))
        print(f"wrote {len(plots)} diagnostic plot(s): " + ", ".join(str(p) for p in plots), flush=True)
    return path
