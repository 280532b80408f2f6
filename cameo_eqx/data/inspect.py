"""The `inspect` command: a summary of a raw mdCATH file or of a prepared dataset."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import forcemap as fm, mdcath
from .config import InspectConfig, PrepareConfig
from .prepare import build_force_map
from .store import FORMAT, PreparedDataset, dataset_file


def _kind(path: Path) -> str:
    p = dataset_file(path)
    if not p.exists():
        raise FileNotFoundError(f"inspect: {path} does not exist")
    try:
        with h5py.File(p, "r") as h:
            return "prepared" if h.attrs.get("format") == FORMAT else "raw"
    except OSError as e:
        raise mdcath.MDCATHError(f"inspect: cannot open {p} as HDF5: {e}") from e


def summarise_raw(path: Path, noise: bool = True, max_frames: int = 2000) -> dict[str, Any]:
    """Summary of one mdCATH file: atoms, beads, trajectories, force RMS, mapped-force noise."""
    with mdcath.MDCATHFile(path) as f:
        beads = f.beads()
        out: dict[str, Any] = {
            "file": str(path),
            "domain": f.domain,
            "atoms": f.n_atoms,
            "beads": beads.n_beads,
            "trajectories": [tuple(t) for t in f.trajectories],
            "has_forces": f.all_have_forces,
        }
        first = f.read(f.trajectories[0].temperature, f.trajectories[0].replica, slice(0, 1),
                       forces=False)[0][0]  # fmt: skip
        topo = mdcath.cg_topology(beads, first[beads.ca_index])
        out["segments"] = int(topo.segment.max()) + 1 if topo.n_beads else 0
        frames = Counter()
        for t in f.trajectories:
            frames[t.temperature] += t.n_frames
        out["frames_per_temperature"] = dict(sorted(frames.items()))
        if f.all_have_forces:
            coords, forces = f.sample_frames(max_frames, forces=True)
            out["atom_force_rms"] = float(np.sqrt(np.mean(forces.astype(np.float64) ** 2)))
            if noise:
                pairs = fm.hydrogen_bond_pairs(f.atoms.element, first)
                groups = fm.constraint_groups(f.n_atoms, pairs)
                cfg = PrepareConfig(force_map="basic", noise_estimate=True)
                _, est = build_force_map(cfg, beads.ca_index, f.n_atoms, groups, forces, f.domain)
                out["mapped_force_noise"] = est
    return out


def summarise_prepared(path: Path) -> dict[str, Any]:
    """Summary of a prepared dataset: proteins, beads, frames per temperature, force statistics."""
    with PreparedDataset(path) as ds:
        rows = []
        for name in ds.names:
            rec = ds.record(name)
            temps = Counter(float(t) for t in rec.temperature)
            stats = json.loads(rec.attrs.get("stats", "{}"))
            rows.append({
                "protein": name,
                "beads": rec.n_beads,
                "segments": int(rec.topology.segment.max()) + 1,
                "frames": rec.n_frames,
                "frames_per_temperature": {int(k): v for k, v in sorted(temps.items())},
                "force_map": rec.attrs.get("force_map_kind", "?"),
                "has_forces": rec.forces is not None,
                **{k: stats[k] for k in ("force_rms", "noise_floor", "msq_optimal") if k in stats},
            })  # fmt: skip
        return {
            "dataset": str(ds.path),
            "species_map": ds.species_map_name,
            "proteins": rows,
            "total_frames": sum(r["frames"] for r in rows),
            "config": ds.config,
        }


def _print_raw(s: dict[str, Any]) -> None:
    print(f"mdCATH file {s['file']}")
    print(f"  domain {s['domain']}: {s['atoms']} atoms, {s['beads']} beads (residues with a CA), "
          f"{s['segments']} chain segment(s), forces: {'yes' if s['has_forces'] else 'NO'}")  # fmt: skip
    print("  temperature (K)  frames")
    for t, n in s["frames_per_temperature"].items():
        print(f"  {t:>15}  {n:>6}")
    print(f"  trajectories (T, replica, frames): {s['trajectories']}")
    if "atom_force_rms" in s:
        print(f"  all-atom force RMS per component: {s['atom_force_rms']:.2f} kcal/mol/Å")
    if "mapped_force_noise" in s:
        e = s["mapped_force_noise"]
        print(f"  mean squared mapped force on held-out frames: basic {e['msq_basic']:.1f}, "
              f"optimal {e['msq_optimal']:.1f} (kcal/mol/Å)² (λ = {e['optimal_lambda']:g})")  # fmt: skip
        print(f"  noise floor of the basic map (force MSE no CG model can beat): ≥ {e['noise_floor']:.1f}"
              f" (kcal/mol/Å)², RMSE ≥ {np.sqrt(e['noise_floor']):.1f} kcal/mol/Å")  # fmt: skip


def _print_prepared(s: dict[str, Any]) -> None:
    print(f"prepared dataset {s['dataset']} (species map {s['species_map']}, "
          f"{len(s['proteins'])} proteins, {s['total_frames']} frames)")  # fmt: skip
    print(f"  {'protein':<14}{'beads':>6}{'segs':>5}{'frames':>8}  {'map':<8}{'F rms':>7}"
          f"{'floor':>8}  frames per T (K)")  # fmt: skip
    for r in s["proteins"]:
        frms = f"{r['force_rms']:.1f}" if "force_rms" in r else "-"
        floor = f"{r['noise_floor']:.0f}" if "noise_floor" in r else "-"
        temps = ", ".join(f"{t}: {n}" for t, n in r["frames_per_temperature"].items())
        print(f"  {r['protein']:<14}{r['beads']:>6}{r['segments']:>5}{r['frames']:>8}  "
              f"{r['force_map']:<8}{frms:>7}{floor:>8}  {temps}")  # fmt: skip
    print("  (F rms: mapped force RMS per component, kcal/mol/Å; floor: held-out noise floor of the "
          "mapped forces, (kcal/mol/Å)²)")


def inspect(cfg: InspectConfig) -> dict[str, Any]:
    """Prints a summary of a raw mdCATH file or a prepared dataset; returns it as a dict."""
    path = Path(cfg.path)
    if _kind(path) == "prepared":
        s = summarise_prepared(path)
        _print_prepared(s)
    else:
        s = summarise_raw(path, noise=cfg.noise, max_frames=cfg.max_frames)
        _print_raw(s)
    return s
