"""Frozen configs of the `simulate` and `analyze` commands (each field's docstring is its `--help`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from ..config import check
from ..precision import DEFAULT_PRECISION, MatmulPrecision


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    """Langevin dynamics (BAOAB) of a trained force field (or a prior) from a prepared-dataset structure."""

    model: Path = Path("run/model.eqx")
    """The energy model: a saved force field (`cameo_eqx.modules.save`, e.g. model.eqx) or a prior file
    (.yaml/.yml/.json written by fit-priors) for a prior-only simulation."""
    dataset: Path = Path("prepared")
    """Prepared dataset directory (or its dataset.h5) that holds the starting structure."""
    protein: str | None = None
    """Protein (domain) to simulate; None takes the dataset's first protein."""
    frame: int = 0
    """Index of the starting frame of that protein in the prepared dataset."""
    output: Path = Path("simulation")
    """Output directory: trajectory.h5, checkpoint.npz, simulate_config.json."""
    n_replicas: int = 1
    """Independent replicas run at once (vmapped), each with its own random stream."""
    temperature: float = 300.0
    """K, bath temperature."""
    timestep_fs: float = 2.0
    """fs, integration time step."""
    friction_per_ps: float = 1.0
    """1/ps, Langevin friction γ (0 gives plain velocity Verlet: energy conserving)."""
    n_steps: int = 10_000
    """Total number of steps (a multiple of save_every)."""
    save_every: int = 100
    """Steps between saved frames (frame 0 is the starting structure)."""
    chunk_frames: int = 20
    """Saved frames per compiled `lax.scan` chunk (progress, checkpoint and guard checks happen between chunks)."""
    masses: Literal["residue", "uniform"] = "residue"
    """Bead masses: residue masses (g/mol) from the topology, or `uniform_mass` for every bead."""
    uniform_mass: float = 110.0
    """g/mol, the mass of every bead when masses = 'uniform'."""
    seed: int = 0
    """Seed of initial velocities and noise."""
    skin: float = 2.0
    """Å, neighbour-list skin (the list is rebuilt when a bead moved more than skin/2)."""
    neighbor_capacity: int | None = None
    """Candidate-pair slots per replica; None sizes it from the start structure (grown on overflow)."""
    pair_min_sep: int | None = None
    """Minimum sequence separation of non-bonded pairs; None takes the model's (ForceField.pair_min_sep, else 2)."""
    max_bond_length: float = 8.0
    """Å; the blow-up guard stops when a bonded (consecutive) bead distance exceeds this (or on NaN)."""
    resume: bool = True
    """Continue from output/checkpoint.npz if it exists (with the same config); False starts over."""
    progress: bool = True
    """Show a progress bar."""
    matmul_precision: MatmulPrecision = DEFAULT_PRECISION
    """Precision of the model's float32 matrix products: 'float32' (true float32, default) or
    'tensorfloat32' (TF32 tensor cores on Ampere+ GPUs; refused when it moves the start structure's forces
    by more than 1e-3 relative)."""

    def __post_init__(self) -> None:
        """Range checks (an invalid config cannot be constructed); a `ConfigError` names `simulate.key`."""
        check("simulate", [
            ("n_replicas", self.n_replicas >= 1, ">= 1", self.n_replicas),
            ("temperature", self.temperature > 0, "> 0 K", self.temperature),
            ("timestep_fs", self.timestep_fs > 0, "> 0", self.timestep_fs),
            ("friction_per_ps", self.friction_per_ps >= 0, ">= 0", self.friction_per_ps),
            ("n_steps", self.n_steps >= 1, ">= 1", self.n_steps),
            ("save_every", self.save_every >= 1, ">= 1", self.save_every),
            ("n_steps", self.save_every < 1 or self.n_steps % self.save_every == 0, f"a multiple of save_every ({self.save_every})",
             self.n_steps),
            ("chunk_frames", self.chunk_frames >= 1, ">= 1", self.chunk_frames),
            ("uniform_mass", self.uniform_mass > 0, "> 0 g/mol", self.uniform_mass),
            ("skin", self.skin > 0, "> 0 Å", self.skin),
            ("max_bond_length", self.max_bond_length > 0, "> 0 Å", self.max_bond_length),
            ("neighbor_capacity", self.neighbor_capacity is None or self.neighbor_capacity >= 1, ">= 1 or null",
             self.neighbor_capacity),
        ])  # fmt: skip


@dataclasses.dataclass(frozen=True)
class AnalyzeConfig:
    """Compare a simulated trajectory with the reference frames of a prepared dataset."""

    trajectory: Path = Path("simulation")
    """Simulation output directory (or its trajectory.h5)."""
    dataset: Path | None = None
    """Reference prepared dataset; None takes the one the simulation started from."""
    output: Path | None = None
    """Output directory for summary.json and PNG plots; None writes <trajectory dir>/analysis."""
    reference_frame: int | None = None
    """Dataset frame of the reference structure (RMSD, native contacts); None takes the starting frame."""
    reference_temperature: float | None = None
    """K; reference-ensemble frames at this temperature; None takes the dataset temperature nearest the
    simulation's."""
    discard: float = 0.1
    """Fraction of the simulated frames dropped at the start (equilibration)."""
    contact_cutoff: float = 8.0
    """Å; beads closer than this are in contact (contact maps, native contacts of the reference)."""
    contact_min_sep: int = 3
    """Minimum sequence separation of a native contact."""
    q_beta: float = 5.0
    """1/Å; steepness of the smooth native-contact switch 1 / (1 + exp(β (r - λ r0)))."""
    q_lambda: float = 1.2
    """Tolerance factor λ of the native-contact switch."""
    bins: int = 40
    """Histogram bins of each distribution (shared by simulation and reference)."""
    plots: bool = True
    """Write PNG plots."""
    stationarity_sigmas: float = 3.0
    """A stationarity check fails only when its deviation exceeds this many standard errors (block
    averaging) and also its tolerance below: significant and large enough to matter."""
    drift_tolerance: float = 0.5
    """Potential-energy drift (least-squares slope over the second half of the run) fails when the trend's
    change over that half exceeds this fraction of the energy's fluctuation (residual standard deviation)."""
    kinetic_temperature_tolerance: float = 0.05
    """Fraction of the bath temperature by which the mean kinetic temperature may differ (BAOAB's kinetic
    temperature carries a small time-step error)."""
    configurational_temperature_tolerance: float = 0.10
    """Fraction of the bath temperature by which the configurational temperature <|∇U|²>/(k_B <∇²U>) may
    differ (wider: it is estimated from a subsample of frames with random probes)."""
    half_difference_tolerance: float = 0.5
    """An observable in half_compare fails when its first- and second-half means differ by more than this
    fraction of its standard deviation over the analysed frames."""
    half_compare: tuple[str, ...] = ("rg", "q")
    """Observables whose first- and second-half means are compared (rg, q, rmsd, potential_energy)."""
    min_blocks: int = 8
    """Fewest blocks a blocking level may have (Flyvbjerg-Petersen error bars)."""
    configurational_temperature: bool = True
    """Estimate T_conf with the simulation's model (loaded from the trajectory's `model` attribute; reported
    as null with the reason when it cannot be loaded)."""
    tconf_frames: int = 40
    """Frames per replica (evenly spaced over the analysed frames) at which T_conf is estimated."""
    tconf_probes: int = 8
    """Rademacher probes per frame of the Hutchinson estimate of the Laplacian ∇²U."""
    seed: int = 0
    """Seed of the Hutchinson probes."""
    verbose: bool = True
    """Print the native-state numbers and the stationarity verdict."""

    def __post_init__(self) -> None:
        """Range checks (an invalid config cannot be constructed); a `ConfigError` names `analyze.key`."""
        check("analyze", [
            ("stationarity_sigmas", self.stationarity_sigmas > 0, "> 0", self.stationarity_sigmas),
            ("drift_tolerance", self.drift_tolerance >= 0, ">= 0", self.drift_tolerance),
            ("kinetic_temperature_tolerance", self.kinetic_temperature_tolerance >= 0, ">= 0",
             self.kinetic_temperature_tolerance),
            ("configurational_temperature_tolerance", self.configurational_temperature_tolerance >= 0, ">= 0",
             self.configurational_temperature_tolerance),
            ("half_difference_tolerance", self.half_difference_tolerance >= 0, ">= 0",
             self.half_difference_tolerance),
            ("half_compare", set(self.half_compare) <= {"rg", "q", "rmsd", "potential_energy"},
             "names among rg, q, rmsd and potential_energy", list(self.half_compare)),
            ("min_blocks", self.min_blocks >= 2, ">= 2", self.min_blocks),
            ("tconf_frames", self.tconf_frames >= 2, ">= 2", self.tconf_frames),
            ("tconf_probes", self.tconf_probes >= 1, ">= 1", self.tconf_probes),
            ("discard", 0.0 <= self.discard < 1.0, "in [0, 1)", self.discard),
            ("bins", self.bins >= 2, ">= 2", self.bins),
            ("contact_cutoff", self.contact_cutoff > 0, "> 0 Å", self.contact_cutoff),
        ])  # fmt: skip
