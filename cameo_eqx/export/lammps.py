"""LAMMPS files for an exported model: the data file of one protein and an input script to run it.

The data file uses `atom_style atomic` (atom types = species + 1, one mass per type) and a
non-periodic box; the input script sets everything a baked-topology artifact needs to be valid:
`units` equal to the artifact's, `atom_modify sort 0 0.0` (row order = atom order), `boundary s s s`
and `processors 1 1 1` (one MPI rank, no ghost atoms), `comm_modify cutoff` >= nbr_order * cutoff +
skin, the `pair_style chemtrain_deploy` / `pair_coeff` lines, a Langevin or Nosé-Hoover thermostat,
thermo output and a trajectory dump.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np
from jaxtyping import Float, Int

from ..topology import RESIDUE_MASSES, SPECIES_MAPS
from ..units import KB_KCAL_PER_MOL_K  # noqa: F401  (units documented: real = Å, kcal/mol, fs)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What the generated input script runs.

    - `temperature`: K. `timestep`: fs. `n_steps`: MD steps. `thermostat`: "langevin" (`fix nve` +
      `fix langevin`) or "nose-hoover" (`fix nvt`). `damping`: thermostat time constant in fs.
    - `seed`: velocity/Langevin seed. `thermo_every`, `dump_every`: output intervals (steps).
    - `skin`: neighbour skin (Å). `backend`: "cuda12" or "cpu" (`export` sets it from `--platform`).
      `memory_fraction`: GPU memory share.
    - `atom_multiplier`, `edge_multiplier`: the connector's buffer growth factors (`pair_coeff`):
      when a buffer overflows it is regrown to this factor times what is needed and the model is
      recompiled. The edge factor is also the model's edge padding after a growth (the artifact
      evaluates ceil(M / 2) pair slots), so 1.2 trades 20% padding against a recompile whenever
      the pair count grows by 20% (a stationary run fluctuates by a few %). The atom factor costs
      nothing with a baked topology (the model runs on the protein's beads only).
    """

    temperature: float = 300.0
    timestep: float = 1.0
    n_steps: int = 10000
    thermostat: Literal["langevin", "nose-hoover"] = "langevin"
    damping: float = 100.0
    seed: int = 12345
    thermo_every: int = 100
    dump_every: int = 100
    skin: float = 2.0
    backend: Literal["cuda12", "cpu"] = "cuda12"
    memory_fraction: float = 0.9
    atom_multiplier: float = 1.2
    edge_multiplier: float = 1.2


def type_masses(
    species: Int[np.ndarray, " n"],
    masses: Float[np.ndarray, " n"],
    n_types: int,
    resname: Sequence[str] | None = None,
) -> Float[np.ndarray, " n_types"]:
    """One mass per atom type (atom_style atomic has per-type masses only).

    A species present in the protein gets the mean mass of its beads (exact under a map with one residue
    per species). A species absent from it gets the mean residue mass (`RESIDUE_MASSES`) of the residues
    the species map assigns to it, the map being the one of `SPECIES_MAPS` that has `n_types` species and
    agrees with `resname` -> `species` on every bead; without `resname`, or when no map agrees, the mean
    bead mass of the protein.
    """
    species = np.asarray(species)
    masses = np.asarray(masses, np.float64)
    out = np.full(n_types, masses.mean() if len(masses) else 100.0)
    if resname is not None and len(resname) == len(species):
        for smap in SPECIES_MAPS.values():
            if max(smap.values()) + 1 != n_types or any(smap.get(r) != int(s) for r, s in zip(resname, species)):
                continue
            for t in range(n_types):
                members = [RESIDUE_MASSES[r] for r, k in smap.items() if k == t and r in RESIDUE_MASSES]
                if members:
                    out[t] = float(np.mean(members))
            break
    for t in range(n_types):
        sel = species == t
        if sel.any():
            out[t] = masses[sel].mean()
    return out


def data_file_text(
    positions: Float[np.ndarray, "n 3"],
    species: Int[np.ndarray, " n"],
    masses: Float[np.ndarray, " n"],
    *,
    n_types: int,
    title: str = "cameo_eqx export",
    margin: float = 50.0,
    resname: Sequence[str] | None = None,
) -> str:
    """The text of a LAMMPS data file (`atom_style atomic`) for one protein.

    **Arguments:**

    - `positions`: bead positions (Å), in atom order (atom id = row + 1).
    - `species`: 0-based species; atom type = species + 1.
    - `masses`: bead masses (g/mol); averaged per type (see `type_masses`).
    - `n_types`: number of atom types (the model's species count, so `pair_coeff * *` covers all).
    - `title`: first line. `margin`: Å of empty space around the protein in the (shrink-wrapped) box.
    - `resname`: the beads' residue names; species absent from the protein then get residue masses
      (see `type_masses`).

    **Returns:** the file text.
    """
    pos = np.asarray(positions, np.float64)
    species = np.asarray(species, np.int64)
    if pos.ndim != 2 or pos.shape[1] != 3 or len(pos) != len(species):
        raise ValueError(f"data file: positions {pos.shape} and species {species.shape} do not match")
    if len(species) and (species.min() < 0 or species.max() >= n_types):
        raise ValueError(f"data file: species must lie in [0, {n_types}), got {species.min()}..{species.max()}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("data file: positions contain NaN or inf")
    lo, hi = pos.min(axis=0) - margin, pos.max(axis=0) + margin
    tm = type_masses(species, masses, n_types, resname)
    lines = [f"# {title}", "", f"{len(pos)} atoms", f"{n_types} atom types", ""]
    for ax, a, b in zip("xyz", lo, hi):
        lines.append(f"{a:.6f} {b:.6f} {ax}lo {ax}hi")
    lines += ["", "Masses", ""]
    lines += [f"{t + 1} {m:.4f}" for t, m in enumerate(tm)]
    lines += ["", "Atoms # atomic", ""]
    lines += [f"{i + 1} {int(s) + 1} {x:.6f} {y:.6f} {z:.6f}" for i, (s, (x, y, z)) in enumerate(zip(species, pos))]
    return "\n".join(lines) + "\n"


def input_script_text(
    *,
    data_file: str,
    model_file: str,
    cutoff: float,
    nbr_order: tuple[int, int],
    unit_style: str = "real",
    run: RunSettings = RunSettings(),
    trajectory: str = "traj.lammpstrj",
) -> str:
    """The text of a LAMMPS input script that runs an exported model as is.

    **Arguments:**

    - `data_file`, `model_file`: paths as the script should name them (relative to where it runs).
    - `cutoff`, `nbr_order`: of the artifact (for `comm_modify cutoff`).
    - `unit_style`: the artifact's units ("real": fs time steps; "metal": ps, converted here).
    - `run`: the run settings. `trajectory`: dump file name.

    **Returns:** the script text.
    """
    comm = max(nbr_order) * float(cutoff) + run.skin
    dt = run.timestep if unit_style == "real" else run.timestep * 1e-3
    damp = run.damping if unit_style == "real" else run.damping * 1e-3
    if run.thermostat == "langevin":
        thermo = [
            "fix integrate all nve",
            f"fix thermostat all langevin {run.temperature} {run.temperature} {damp} {run.seed} zero yes",
        ]
    elif run.thermostat == "nose-hoover":
        thermo = [f"fix integrate all nvt temp {run.temperature} {run.temperature} {damp}"]
    else:
        raise ValueError(f"thermostat must be 'langevin' or 'nose-hoover', got {run.thermostat!r}")
    lines = [
        "# LAMMPS input written by cameo_eqx export (pair_style chemtrain_deploy).",
        "# Limits of the artifact (bonded prior topology baked in by row): run on ONE MPI rank",
        "# (processors 1 1 1), without periodic images (boundary s s s) and without atom sorting;",
        "# otherwise the model returns NaN energy and forces on purpose.",
        f"units {unit_style}",
        "atom_style atomic",
        "boundary s s s",
        "processors 1 1 1",
        "atom_modify sort 0 0.0",
        f"read_data {data_file}",
        "",
        f"pair_style chemtrain_deploy {run.backend} {run.memory_fraction}",
        f"pair_coeff * * {model_file} {run.atom_multiplier} {run.edge_multiplier}",
        f"neighbor {run.skin} bin",
        "neigh_modify every 1 delay 0 check yes",
        f"comm_modify cutoff {comm:.4f}",
        "",
        f"velocity all create {run.temperature} {run.seed} mom yes rot yes dist gaussian",
        *thermo,
        f"timestep {dt}",
        f"thermo {run.thermo_every}",
        "thermo_style custom step temp pe ke etotal",
        f"dump traj all custom {run.dump_every} {trajectory} id type x y z fx fy fz",
        "dump_modify traj sort id",
        f"run {run.n_steps}",
        "",
    ]
    return "\n".join(lines)
