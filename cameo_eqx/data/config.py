"""Frozen configs of the data commands, `prepare` and `inspect` (each field's docstring is its `--help`).

No JAX here: data preparation never loads it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from ..config import check


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Read mdCATH-layout HDF5 files and write a coarse-grained (C-alpha) training dataset."""

    inputs: tuple[str, ...] = ()
    """mdCATH files: one or more files, directories (all mdcath_dataset_*.h5 inside) or globs."""
    output: Path = Path("prepared")
    """Output directory; the dataset is written to <output>/dataset.h5 (atomically)."""
    force_map: Literal["slice", "basic", "optimal"] = "basic"
    """Force map: 'basic' (constraint-aware uniform, default), 'optimal' (statistically optimal linear map,
    least noisy) or 'slice' (naive C-alpha forces; biased under X-H constraints, comparison only)."""
    optimal_lambda: float | None = None
    """Ridge λ of the optimal map in (kcal/mol/Å)²; None chooses it from `lambda_grid` by the held-out
    mean squared mapped force."""
    lambda_grid: tuple[float, ...] = (1e1, 1e2, 1e3, 1e4)
    """Candidate λ values when `optimal_lambda` is None."""
    optimal_max_frames: int = 4000
    """Frames (pooled over the domain's temperatures and replicas, evenly subsampled) used to fit the optimal map."""
    constraints: Literal["topology", "data"] = "topology"
    """Where constraint groups (bonds to hydrogen) come from: the topology (PSF bonds, or elements + distances)
    or the data (pairs whose distance std over frames is below `constraint_threshold`)."""
    constraint_threshold: float = 8e-3
    """Å; distance std below which a pair counts as constrained (XTC-rounded mdCATH: X-H ≈ 0.004, heavy-atom bonds ≥ 0.024)."""
    check_constraints: bool = True
    """Cross-check topology constraints against the data and warn on disagreement."""
    noise_estimate: bool = True
    """Estimate each domain's mapped-force noise floor on held-out frames (an optimal map fitted on the
    others; the difference of mean squared mapped forces bounds the loss no CG model can beat)."""
    temperatures: tuple[int, ...] | None = None
    """Temperatures (K) to read; None reads all present."""
    replicas: tuple[int, ...] | None = None
    """Replica indices to read; None reads all present."""
    stride: int = 1
    """Keep every stride-th frame."""
    max_frames: int | None = None
    """Cap on frames per trajectory (after stride); None keeps all."""
    species_map: Literal["aa20", "charge4"] = "aa20"
    """Bead species: 20 amino-acid types, or the 4 charge-based groups (apolar, polar, positive, negative)."""
    residue_map: tuple[str, ...] = ()
    """Extra residue-name mappings NAME=STANDARD for non-standard residues, e.g. SEP=SER."""
    max_ca_distance: float = 4.5
    """Å; a larger CA-CA distance between consecutive residues (first frame) starts a new chain segment."""
    require_forces: bool = True
    """Fail on coordinate-only files (forces are needed for force matching); False stores coordinates only."""
    on_error: Literal["raise", "skip"] = "raise"
    """On a bad domain: stop before writing anything ('raise'), or skip it and report it at the end ('skip')."""
    workers: int = 1
    """Domains prepared in parallel processes."""
    compression: Literal["none", "lzf", "gzip"] = "none"
    """HDF5 compression of R and F."""
    chunk_size: int = 512
    """Frames read per slice (bounds memory for large files)."""

    def __post_init__(self) -> None:
        """Range checks (an invalid config cannot be constructed); a `ConfigError` names `prepare.key`."""
        check("prepare", [
            ("stride", self.stride >= 1, ">= 1", self.stride),
            ("max_frames", self.max_frames is None or self.max_frames >= 1, ">= 1 or null", self.max_frames),
            ("workers", self.workers >= 1, ">= 1", self.workers),
            ("chunk_size", self.chunk_size >= 1, ">= 1", self.chunk_size),
            ("optimal_max_frames", self.optimal_max_frames >= 2, ">= 2", self.optimal_max_frames),
            ("optimal_lambda", self.optimal_lambda is None or self.optimal_lambda > 0, "> 0 or null",
             self.optimal_lambda),
            ("lambda_grid", all(x > 0 for x in self.lambda_grid) and len(self.lambda_grid) > 0,
             "one or more values > 0", self.lambda_grid),
            ("constraint_threshold", self.constraint_threshold > 0, "> 0", self.constraint_threshold),
            ("max_ca_distance", self.max_ca_distance > 0, "> 0", self.max_ca_distance),
            ("residue_map", all("=" in item for item in self.residue_map), "NAME=STANDARD entries",
             self.residue_map),
        ])  # fmt: skip


@dataclasses.dataclass(frozen=True)
class InspectConfig:
    """Print a summary of a raw mdCATH file or a prepared dataset."""

    path: Path = Path(".")
    """A raw mdCATH .h5 file, or a prepared dataset directory / dataset.h5."""
    noise: bool = True
    """Estimate the mapped-force noise (optimal-map held-out variance) for raw files with forces (slower)."""
    max_frames: int = 2000
    """Frames per domain used for the noise estimate."""

    def __post_init__(self) -> None:
        """Range checks (an invalid config cannot be constructed); a `ConfigError` names `inspect.key`."""
        check("inspect", [("max_frames", self.max_frames >= 1, ">= 1", self.max_frames)])
