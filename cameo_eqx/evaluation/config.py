"""Frozen config of the `evaluate` command (each field's docstring is its `--help`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Evaluate a trained run: force errors per protein, temperature and term; plots; noise floor."""

    run: Path = Path("runs/run")
    """Run directory written by `train` (its model.eqx and config.json are used)."""
    dataset: Path | None = None
    """Prepared dataset; None: the run's training dataset."""
    split: Literal["val", "train", "all"] = "val"
    """Frames to evaluate: the run's validation split, its training split, or every frame."""
    output: Path | None = None
    """Report directory; None: <run>/evaluation."""
    max_frames: int | None = 2000
    """Cap on evaluated frames (evenly subsampled per protein); None: all."""
    target_nodes: int = 1024
    """Beads per evaluation batch."""
    plots: bool = True
    """Write parity plots, force-component histograms and loss curves (PNG)."""
    model_file: str = "model.eqx"
    """Model file inside the run directory (e.g. best.eqx)."""
    noise_upper_frames: int = 400
    """Frames per evaluated protein (evenly subsampled) for the nearest-neighbour upper estimate of the
    noise floor; 0 skips the estimate."""
    noise_upper_max_rmsd: float = 1.0
    """Å; frame pairs whose CG configurations are closer than this (after superposition) enter the upper
    estimate of the noise floor (its upward bias grows with the pairs' RMSD)."""
