"""Analysis of a simulated ensemble against the reference frames of a prepared dataset.

Observables per frame: RMSD to a reference structure after optimal superposition (Kabsch), radius of
gyration, fraction of native contacts Q (Best, Hummer & Eaton 2013 form on C-alpha beads:
Q = mean over native pairs of 1 / (1 + exp(β (r - λ r₀))), native pairs = sequence separation ≥
`contact_min_sep` and r₀ < `contact_cutoff` in the reference). Distributions of CA-CA bond lengths,
angles and dihedrals, contact maps, 1-D and 2-D free-energy surfaces F = -kT ln p, and Jensen-Shannon
divergences (base 2, in [0, 1]) between simulated and reference histograms on shared bins.

All NumPy (float64); `analyze(cfg)` writes `summary.json` and PNG plots (matplotlib Agg). Its
"stationarity" section (`stationarity.py`) gives per replica the potential-energy drift over the second half,
the kinetic and configurational temperatures, block-averaged observables with error bars, and a verdict
`stationary: true/false` with the reasons.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import h5py
import jax
import numpy as np
from jaxtyping import Float, Int

from .. import geometry
from ..data.store import PreparedDataset
from ..fileio import write_atomic
from ..topology import CGTopology
from ..units import KB_KCAL_PER_MOL_K
from .config import AnalyzeConfig
from .langevin import load_model
from .stationarity import configurational_temperature, configurational_terms, replica_stationarity

# ------------------------------------------------------------------------------------- geometry


def kabsch_rmsd(x: Float[np.ndarray, "... n 3"], ref: Float[np.ndarray, "n 3"]) -> Float[np.ndarray, "..."]:
    """RMSD (Å) of every structure to `ref` after optimal translation and rotation (proper rotations
    only, Kabsch with the reflection correction)."""
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)
    xc = x - x.mean(axis=-2, keepdims=True)
    rc = ref - ref.mean(axis=-2, keepdims=True)
    h = np.einsum("...ni,nj->...ij", xc, rc)
    u, s, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    s = s.copy()
    s[..., -1] *= d
    e = np.sum(xc**2, axis=(-2, -1)) + np.sum(rc**2) - 2.0 * np.sum(s, axis=-1)
    return np.sqrt(np.maximum(e, 0.0) / x.shape[-2])


def radius_of_gyration(x: Float[np.ndarray, "... n 3"], masses: Float[np.ndarray, " n"] | None = None) -> Float[np.ndarray, "..."]:
    """Radius of gyration (Å), mass-weighted when `masses` are given."""
    x = np.asarray(x, np.float64)
    w = np.ones(x.shape[-2]) if masses is None else np.asarray(masses, np.float64)
    w = w / w.sum()
    c = np.einsum("n,...ni->...i", w, x)
    return np.sqrt(np.einsum("n,...n->...", w, np.sum((x - c[..., None, :]) ** 2, axis=-1)))


def native_contacts(
    ref: Float[np.ndarray, "n 3"], cutoff: float = 8.0, min_sep: int = 3, segment: Int[np.ndarray, " n"] | None = None
) -> tuple[Int[np.ndarray, "c 2"], Float[np.ndarray, " c"]]:
    """Native contacts of a reference: pairs i < j with |i - j| ≥ `min_sep` (or in different chain
    segments) closer than `cutoff`. **Returns:** `(pairs, r0)`."""
    ref = np.asarray(ref, np.float64)
    n = len(ref)
    i, j = np.triu_indices(n, 1)
    sep_ok = (j - i) >= min_sep
    if segment is not None:
        sep_ok |= np.asarray(segment)[i] != np.asarray(segment)[j]
    d = np.linalg.norm(ref[i] - ref[j], axis=-1)
    keep = sep_ok & (d < cutoff)
    return np.stack([i[keep], j[keep]], axis=-1), d[keep]


def fraction_native_contacts(
    x: Float[np.ndarray, "... n 3"], pairs: Int[np.ndarray, "c 2"], r0: Float[np.ndarray, " c"],
    beta: float = 5.0, lam: float = 1.2,
) -> Float[np.ndarray, "..."]:  # fmt: skip
    """Q = mean_c 1 / (1 + exp(β (r_c - λ r0_c))) (1 for the reference itself up to the switch's tail)."""
    if len(pairs) == 0:
        return np.ones(np.shape(x)[:-2])
    x = np.asarray(x, np.float64)
    r = np.linalg.norm(x[..., pairs[:, 0], :] - x[..., pairs[:, 1], :], axis=-1)
    z = np.clip(beta * (r - lam * r0), -50, 50)
    return np.mean(1.0 / (1.0 + np.exp(z)), axis=-1)


def bond_lengths(x: Float[np.ndarray, "... n 3"], bonds: Int[np.ndarray, "m 2"]) -> Float[np.ndarray, "... m"]:
    """Bond length (Å) of bead pairs, float64 (`geometry.bond_lengths`)."""
    return geometry.bond_lengths(*geometry.tuple_positions(np.asarray(x, np.float64), bonds))


def bond_angles(x: Float[np.ndarray, "... n 3"], angles: Int[np.ndarray, "m 3"]) -> Float[np.ndarray, "... m"]:
    """Angle (rad, [0, π]) at the middle bead, float64 (`geometry.bond_angles`, the prior's definition)."""
    return geometry.bond_angles(*geometry.tuple_positions(np.asarray(x, np.float64), angles))


def dihedral_angles(x: Float[np.ndarray, "... n 3"], dih: Int[np.ndarray, "m 4"]) -> Float[np.ndarray, "... m"]:
    """Dihedral (rad, (-π, π]) of bead quadruplets, IUPAC sign convention, float64
    (`geometry.dihedral_angles`, the prior's definition)."""
    return geometry.dihedral_angles(*geometry.tuple_positions(np.asarray(x, np.float64), dih))


def contact_map(x: Float[np.ndarray, "... n 3"], cutoff: float = 8.0) -> Float[np.ndarray, "n n"]:
    """Fraction of frames in which each bead pair is closer than `cutoff`."""
    x = np.asarray(x, np.float64).reshape(-1, *np.shape(x)[-2:])
    out = np.zeros((x.shape[1], x.shape[1]))
    for k in range(0, len(x), 256):  # bounded memory
        blk = x[k : k + 256]
        out += np.sum(np.linalg.norm(blk[:, :, None] - blk[:, None], axis=-1) < cutoff, axis=0)
    return out / max(len(x), 1)


# ----------------------------------------------------------------------------- distributions


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Normalised counts (sum 1) on fixed edges; values outside are dropped."""
    h, _ = np.histogram(np.ravel(values), bins=edges)
    s = h.sum()
    return h / s if s else h.astype(float)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, 0 = identical, 1 = disjoint) of two histograms on the same bins."""
    p = np.asarray(p, np.float64).ravel()
    q = np.asarray(q, np.float64).ravel()
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def free_energy_1d(values: np.ndarray, edges: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """F(x) = -kT ln p(x) (kcal/mol, minimum 0, NaN on empty bins). **Returns:** `(centres, F)`."""
    p = histogram(values, edges)
    with np.errstate(divide="ignore"):
        f = -KB_KCAL_PER_MOL_K * temperature * np.log(p)
    f[~np.isfinite(f)] = np.nan
    if np.any(np.isfinite(f)):
        f -= np.nanmin(f)
    return 0.5 * (edges[1:] + edges[:-1]), f


def free_energy_2d(
    x: np.ndarray, y: np.ndarray, x_edges: np.ndarray, y_edges: np.ndarray, temperature: float
) -> np.ndarray:
    """F(x, y) = -kT ln p(x, y) on the edges' grid, shape (len(x_edges) - 1, len(y_edges) - 1)."""
    h, _, _ = np.histogram2d(np.ravel(x), np.ravel(y), bins=(x_edges, y_edges))
    p = h / max(h.sum(), 1)
    with np.errstate(divide="ignore"):
        f = -KB_KCAL_PER_MOL_K * temperature * np.log(p)
    f[~np.isfinite(f)] = np.nan
    if np.any(np.isfinite(f)):
        f -= np.nanmin(f)
    return f


def observables(
    x: Float[np.ndarray, "... n 3"], ref: Float[np.ndarray, "n 3"], contacts: tuple[np.ndarray, np.ndarray],
    beta: float = 5.0, lam: float = 1.2, masses: np.ndarray | None = None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """RMSD (Å), radius of gyration (Å) and Q of every structure."""
    return {
        "rmsd": kabsch_rmsd(x, ref),
        "rg": radius_of_gyration(x, masses),
        "q": fraction_native_contacts(x, contacts[0], contacts[1], beta, lam),
    }


# ----------------------------------------------------------------------------------- the command


def _read_trajectory(path: Path) -> dict[str, Any]:
    p = path / "trajectory.h5" if path.is_dir() else path
    if not p.exists():
        raise FileNotFoundError(f"no trajectory at {path}: expected {p} (run `cli.py simulate` first)")
    with h5py.File(p, "r") as h:
        if h.attrs.get("format") != "cameo_eqx.trajectory/1":
            raise ValueError(f"{p} is not a cameo_eqx trajectory (format {h.attrs.get('format')!r})")
        if h["positions"].shape[0] < 2:
            raise ValueError(f"{p} holds {h['positions'].shape[0]} frame(s); nothing to analyse")
        return {
            "path": p, "positions": h["positions"][()], "potential": h["potential_energy"][()],
            "temperature_inst": h["temperature"][()], "time_ps": h["time_ps"][()],
            "attrs": dict(h.attrs), "bonds_resname": [s.decode() for s in h["topology/resname"][()]],
            "segment": h["topology/segment"][()], "masses": h["topology/masses"][()],
            "start": h["start_positions"][()],
        }  # fmt: skip


def analyze(cfg: AnalyzeConfig) -> Path:
    """The `analyze` command: observables, distributions, free-energy surfaces and JS divergences of the
    simulation against the reference dataset frames; writes `<output>/summary.json` and PNG plots.

    **Returns:** the path of `summary.json`.
    """
    tr = _read_trajectory(Path(cfg.trajectory))
    attrs = tr["attrs"]
    out = Path(cfg.output) if cfg.output is not None else tr["path"].parent / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    dataset = cfg.dataset if cfg.dataset is not None else Path(str(attrs["dataset"]))
    temp = float(attrs["temperature"])
    ref = _load_reference(cfg, tr, dataset, str(attrs["protein"]), temp)

    x = tr["positions"].astype(np.float64)  # (T, R, n, 3)
    start = int(round(cfg.discard * x.shape[0]))
    sim = x[start:]
    sim_flat = sim.reshape(-1, *sim.shape[2:])
    contacts = native_contacts(ref.structure, cfg.contact_cutoff, cfg.contact_min_sep, ref.topology.segment)
    obs_sim = observables(sim_flat, ref.structure, contacts, cfg.q_beta, cfg.q_lambda)
    obs_ref = observables(ref.frames, ref.structure, contacts, cfg.q_beta, cfg.q_lambda)
    obs_all = observables(x, ref.structure, contacts, cfg.q_beta, cfg.q_lambda)  # (T, R) time series

    dists = _distributions(cfg, ref.topology, sim_flat, ref.frames, obs_sim, obs_ref)
    jsd = {k: js_divergence(histogram(d["sim"], d["edges"]), histogram(d["ref"], d["edges"])) for k, d in dists.items()}
    cm_sim, cm_ref = contact_map(sim_flat, cfg.contact_cutoff), contact_map(ref.frames, cfg.contact_cutoff)
    fes_sim, fes_ref, q_edges, r_edges = _free_energies(cfg, obs_sim, obs_ref, temp, ref.temperature)
    jsd["q_rmsd_2d"] = js_divergence(np.nan_to_num(np.exp(-fes_sim / (KB_KCAL_PER_MOL_K * temp)), nan=0.0),
                                     np.nan_to_num(np.exp(-fes_ref / (KB_KCAL_PER_MOL_K * ref.temperature)),
                                                   nan=0.0))  # fmt: skip

    summary = {
        "trajectory": str(tr["path"]), "reference_dataset": str(dataset), "protein": ref.protein,
        "simulation": {"temperature": temp, "n_frames": int(x.shape[0]), "n_replicas": int(x.shape[1]),
                       "frames_used": int(sim.shape[0]), "time_ps": float(tr["time_ps"][-1]),
                       "status": str(attrs.get("status", "")), "mean_temperature": float(tr["temperature_inst"][start:].mean())},
        "reference": {"temperature": ref.temperature, "n_frames": int(len(ref.frames)),
                      "reference_frame": ref.frame, "n_native_contacts": int(len(contacts[0]))},
        "observables": {k: {"sim": _stats(obs_sim[k]), "ref": _stats(obs_ref[k])} for k in obs_sim},
        "js_divergence": jsd,
        "contact_map_mae": float(np.mean(np.abs(cm_sim - cm_ref))),
        "settings": {"discard": cfg.discard, "contact_cutoff": cfg.contact_cutoff, "contact_min_sep": cfg.contact_min_sep,
                     "q_beta": cfg.q_beta, "q_lambda": cfg.q_lambda, "bins": cfg.bins},
    }  # fmt: skip
    summary["stationarity"] = _stationarity(cfg, tr, ref.topology, obs_all, start, temp)
    if cfg.plots:
        summary["plots"] = [str(p) for p in _plots(out, tr, obs_all, dists, cm_sim, cm_ref, fes_sim, fes_ref,
                                                   q_edges, r_edges, temp, ref.temperature, jsd)]  # fmt: skip
    path = write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    if cfg.verbose:
        print("\n".join(verdict_lines(summary)).lstrip("\n"), flush=True)
    return path


@dataclasses.dataclass(frozen=True)
class _Reference:
    """The reference side of `analyze`: the protein, its topology, frames and temperature, and the structure."""

    protein: str
    topology: CGTopology
    frames: np.ndarray  # (F, n, 3) float64, the frames at `temperature`
    temperature: float
    frame: int
    structure: np.ndarray  # (n, 3) float64, the reference structure (frame `frame`)


def _load_reference(cfg: AnalyzeConfig, tr: dict[str, Any], dataset, protein: str, temp: float) -> _Reference:
    """The reference dataset's frames of the protein nearest the configured (or simulated) temperature."""
    with PreparedDataset(dataset) as ds:
        if protein not in ds.names:
            raise KeyError(f"protein {protein!r} of {tr['path']} is not in reference dataset {ds.path}")
        rec = ds.record(protein)
        topo = rec.topology
        n_sim = tr["positions"].shape[2]
        if topo.n_beads != n_sim:
            raise ValueError(f"{ds.path}: protein {protein!r} has {topo.n_beads} beads, the trajectory {n_sim}")
        temps = np.unique(rec.temperature)
        t_ref = float(temps[np.argmin(np.abs(temps - (cfg.reference_temperature or temp)))])
        if cfg.reference_temperature is not None and abs(t_ref - cfg.reference_temperature) > 1e-3:
            raise ValueError(f"{ds.path}: protein {protein!r} has no frames at {cfg.reference_temperature} K "
                             f"(has {temps.tolist()})")  # fmt: skip
        ref_idx = np.flatnonzero(rec.temperature == t_ref)
        ref_frames = rec.frames(ref_idx)[0].astype(np.float64)
        rf = int(tr["attrs"]["frame"]) if cfg.reference_frame is None else cfg.reference_frame
        if not 0 <= rf < rec.n_frames:
            raise IndexError(f"{ds.path}: reference_frame {rf} out of range for {protein!r} ({rec.n_frames} frames)")
        ref = rec.frames(np.asarray([rf]))[0][0].astype(np.float64)
    return _Reference(protein, topo, ref_frames, t_ref, rf, ref)


def _distributions(cfg: AnalyzeConfig, topo: CGTopology, sim_flat, ref_frames, obs_sim, obs_ref) -> dict[str, Any]:
    """Simulated and reference values with common histogram edges: bonded geometry, RMSD, Rg and Q."""
    geo = {
        "bond": (bond_lengths, topo.bonds, "CA-CA bond length (Å)"),
        "angle": (bond_angles, topo.angles, "CA angle (rad)"),
        "dihedral": (dihedral_angles, topo.dihedrals, "CA dihedral (rad)"),
    }
    dists: dict[str, dict[str, Any]] = {}
    for name, (fn, idx, label) in geo.items():
        if len(idx) == 0:
            continue
        a, b = fn(sim_flat, idx), fn(ref_frames, idx)
        if name == "dihedral":
            edges = np.linspace(-np.pi, np.pi, cfg.bins + 1)
        elif name == "angle":
            edges = np.linspace(0, np.pi, cfg.bins + 1)
        else:
            lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
            edges = np.linspace(lo - 1e-6, hi + 1e-6, cfg.bins + 1)
        dists[name] = {"sim": a, "ref": b, "edges": edges, "label": label}
    for name, label in (("rmsd", "RMSD (Å)"), ("rg", "radius of gyration (Å)"), ("q", "Q")):
        a, b = obs_sim[name], obs_ref[name]
        lo, hi = (0.0, 1.0) if name == "q" else (min(a.min(), b.min()), max(a.max(), b.max()))
        dists[name] = {"sim": a, "ref": b, "edges": np.linspace(lo - 1e-6, hi + 1e-6, cfg.bins + 1), "label": label}
    return dists


def _free_energies(cfg: AnalyzeConfig, obs_sim, obs_ref, temp: float, t_ref: float):
    """The (Q, RMSD) free-energy surfaces of simulation and reference on common edges: (sim, ref, q, rmsd edges)."""
    q_edges = np.linspace(0, 1, cfg.bins + 1)
    r_hi = max(obs_sim["rmsd"].max(), obs_ref["rmsd"].max()) + 1e-6
    r_edges = np.linspace(0, r_hi, cfg.bins + 1)
    fes_sim = free_energy_2d(obs_sim["q"], obs_sim["rmsd"], q_edges, r_edges, temp)
    fes_ref = free_energy_2d(obs_ref["q"], obs_ref["rmsd"], q_edges, r_edges, t_ref)
    return fes_sim, fes_ref, q_edges, r_edges


def _stats(v) -> dict[str, float]:
    """Mean, standard deviation, minimum and maximum of `v`."""
    v = np.asarray(v)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def verdict_lines(s: dict[str, Any]) -> list[str]:
    """What `analyze` (and the demo) prints: how native the simulated protein stayed (mean Q, RMSD, Rg
    against the reference frames) and whether the run was stationary, with the reasons.

    **Arguments:** the summary dict that `analyze` writes to `summary.json`.

    **Returns:** printable lines.
    """
    o, sim = s["observables"], s["simulation"]
    lines = [f"\n=== {s['protein']} simulated at {sim['temperature']:g} K for {sim['time_ps']:g} ps "
             f"({sim['n_replicas']} replicas) against the reference at {s['reference']['temperature']:g} K"]  # fmt: skip
    for k, label, unit in (("q", "Q (native contacts)", ""), ("rmsd", "RMSD to the start", " Å"),
                           ("rg", "radius of gyration", " Å")):  # fmt: skip
        a, b = o[k]["sim"], o[k]["ref"]
        lines.append(f"  {label:<22} simulation {a['mean']:.2f} ± {a['std']:.2f}{unit}   "
                     f"reference {b['mean']:.2f} ± {b['std']:.2f}{unit}   (JS divergence {s['js_divergence'][k]:.2f})")  # fmt: skip
    st = s.get("stationarity")
    if st is not None:
        tc = st["configurational_temperature"]
        t_kin = [r["kinetic_temperature"]["mean"] for r in st["replicas"]]
        t_conf = [r["configurational_temperature"]["mean"] for r in st["replicas"] if "configurational_temperature" in r]
        temps = f"T_kin {', '.join(f'{t:.0f}' for t in t_kin)} K"
        temps += f"; T_conf {', '.join(f'{t:.0f}' for t in t_conf)} K" if t_conf else f"; T_conf n/a ({tc['reason']})"
        lines.append(f"  stationary: {'yes' if st['stationary'] else 'no'}  ({temps} per replica)")
        lines += [f"    - {r}" for r in st["reasons"]]
        lines += [f"    note: {r}" for r in st.get("notes", [])]
    return lines


def _configurational_temperatures(cfg: AnalyzeConfig, tr: dict[str, Any], topo, start: int) -> tuple[list | None, str]:
    """Per-replica (T_conf, sem) from the trajectory's model, or (None, reason) when it cannot be had."""
    if not cfg.configurational_temperature:
        return None, "disabled (configurational_temperature = false)"
    attrs = tr["attrs"]
    name = str(attrs.get("model", ""))
    if not name:
        return None, f"{tr['path']} names no model"
    path = Path(name)
    if not path.is_absolute() and not path.exists() and (tr["path"].parent / path).exists():
        path = tr["path"].parent / path
    try:
        model = load_model(path)
    except Exception as e:  # a missing or unreadable model only costs T_conf
        return None, f"model {name} could not be loaded ({type(e).__name__}: {e})"
    x = tr["positions"]
    idx = np.unique(np.linspace(start, x.shape[0] - 1, cfg.tconf_frames).round().astype(int))
    n_rep = x.shape[1]
    frames = np.transpose(x[idx], (1, 0, 2, 3)).reshape(-1, *x.shape[2:])  # replica-major
    cutoff = float(attrs.get("cutoff", 10.0))
    pair_min_sep = int(attrs.get("pair_min_sep", 2))
    try:
        g2, lap = configurational_terms(model, topo, frames, cutoff=cutoff, pair_min_sep=pair_min_sep,
                                        key=jax.random.PRNGKey(cfg.seed), n_probes=cfg.tconf_probes)  # fmt: skip
    except Exception as e:  # e.g. a model that reverse-over-reverse autodiff cannot differentiate
        return None, f"model {name} could not be evaluated ({type(e).__name__}: {e})"
    g2, lap = g2.reshape(n_rep, -1), lap.reshape(n_rep, -1)
    return [configurational_temperature(g2[r], lap[r]) for r in range(n_rep)], ""


def _stationarity(cfg: AnalyzeConfig, tr: dict[str, Any], topo, obs_all: dict[str, np.ndarray], start: int,
                  temp: float) -> dict[str, Any]:  # fmt: skip
    """The summary's "stationarity" section (see `stationarity.replica_stationarity` for the checks)."""
    tconf, why = _configurational_temperatures(cfg, tr, topo, start)
    replicas, reasons, notes = [], [], []
    status = str(tr["attrs"].get("status", ""))
    if status != "done":
        reasons.append(f"the simulation's status is {status!r}, not 'done'")
    n_rep = tr["positions"].shape[1]
    for r in range(n_rep):
        nums, why_not = replica_stationarity(
            tr["time_ps"], tr["potential"][:, r], tr["temperature_inst"][:, r],
            {k: v[:, r] for k, v in obs_all.items()}, start, temp, cfg, None if tconf is None else tconf[r],
        )  # fmt: skip
        replicas.append({"replica": r, **nums, "reasons": why_not})
        reasons += [f"replica {r}: {w}" for w in why_not]
        notes += [f"replica {r}: {w}" for w in nums["notes"]]
    return {
        "stationary": not reasons, "reasons": reasons, "notes": notes,
        "configurational_temperature": {"available": tconf is not None, "reason": why or None,
                                        "frames_per_replica": cfg.tconf_frames, "probes": cfg.tconf_probes},
        "replicas": replicas,
        "thresholds": {"sigmas": cfg.stationarity_sigmas, "drift_tolerance": cfg.drift_tolerance,
                       "kinetic_temperature_tolerance": cfg.kinetic_temperature_tolerance,
                       "configurational_temperature_tolerance": cfg.configurational_temperature_tolerance,
                       "half_difference_tolerance": cfg.half_difference_tolerance,
                       "half_compare": list(cfg.half_compare)},
    }  # fmt: skip


def _plots(out, tr, obs_all, dists, cm_sim, cm_ref, fes_sim, fes_ref, q_edges, r_edges, temp, t_ref, jsd):
    import matplotlib  # lazy: only for the plots (matplotlib.pyplot imports in ~1 s)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    t = tr["time_ps"]
    fig, axes = plt.subplots(5, 1, figsize=(7, 10), sharex=True)
    series = {**obs_all, "potential": tr["potential"], "temperature": tr["temperature_inst"]}
    for ax, (k, lab) in zip(axes, (("rmsd", "RMSD (Å)"), ("q", "Q"), ("rg", "Rg (Å)"),
                                   ("potential", "U (kcal/mol)"), ("temperature", "T_kin (K)"))):  # fmt: skip
        ax.plot(t, series[k], lw=0.8)
        ax.set_ylabel(lab)
    axes[-1].axhline(temp, color="k", ls="--", lw=0.8)
    axes[-1].set_xlabel("time (ps)")
    axes[0].set_title(f"{tr['attrs']['protein']} at {temp:g} K ({obs_all['rmsd'].shape[1]} replicas)")
    fig.tight_layout()
    paths.append(out / "timeseries.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    names = list(dists)
    fig, axes = plt.subplots(2, (len(names) + 1) // 2, figsize=(4 * ((len(names) + 1) // 2), 6.5))
    for ax, k in zip(np.ravel(axes), names):
        d = dists[k]
        c = 0.5 * (d["edges"][1:] + d["edges"][:-1])
        ax.plot(c, histogram(d["sim"], d["edges"]), label="simulation")
        ax.plot(c, histogram(d["ref"], d["edges"]), label=f"reference {t_ref:g} K", ls="--")
        ax.set_xlabel(d["label"])
        ax.set_title(f"JSD {jsd[k]:.3f}")
    np.ravel(axes)[0].legend(fontsize=8)
    for ax in np.ravel(axes)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    paths.append(out / "distributions.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, cm, title in ((axes[0], cm_sim, "simulation"), (axes[1], cm_ref, "reference")):
        im = ax.imshow(cm, vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set_title(f"contact map: {title}")
    fig.colorbar(im, ax=axes, shrink=0.8)
    paths.append(out / "contact_maps.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, f, title in ((axes[0], fes_sim, "simulation"), (axes[1], fes_ref, "reference")):
        im = ax.pcolormesh(q_edges, r_edges, f.T, cmap="viridis", shading="flat")
        ax.set_xlabel("Q")
        ax.set_ylabel("RMSD (Å)")
        ax.set_title(f"F(Q, RMSD) {title} (kcal/mol)")
        fig.colorbar(im, ax=ax)
    for k, ls in (("sim", "-"), ("ref", "--")):
        c, f = free_energy_1d(dists["q"][k], dists["q"]["edges"], temp if k == "sim" else t_ref)
        axes[2].plot(c, f, ls=ls, label="simulation" if k == "sim" else "reference")
    axes[2].set_xlabel("Q")
    axes[2].set_ylabel("F (kcal/mol)")
    axes[2].legend()
    fig.tight_layout()
    paths.append(out / "free_energy.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
