"""Evaluation: force RMSE/MAE per protein, temperature and term, noise-floor context, plots.

Entry point for the CLI: `evaluate(cfg: EvaluateConfig) -> Path` (the report directory).
"""

from .config import EvaluateConfig
from .report import evaluate

__all__ = ["EvaluateConfig", "evaluate"]
