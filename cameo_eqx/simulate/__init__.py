"""Langevin dynamics of trained force fields in JAX, and analysis of the simulated ensemble against
the reference data (see `langevin.py`, `neighborlist.py`, `analysis.py`)."""

from .analysis import analyze
from .config import AnalyzeConfig, SimulateConfig
from .langevin import (
    ACCELERATION,
    BAOAB,
    BlowUpError,
    Frames,
    LangevinState,
    RunResult,
    Simulator,
    System,
    energy_and_forces,
    load_model,
    simulate,
    system_batch,
)

__all__ = [
    "ACCELERATION", "AnalyzeConfig", "BAOAB", "BlowUpError", "Frames", "LangevinState", "RunResult",
    "SimulateConfig", "Simulator", "System", "analyze", "energy_and_forces", "load_model",
    "simulate", "system_batch",
]  # fmt: skip
