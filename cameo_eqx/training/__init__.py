"""Training: the force-matching `Task`, the `DataModule`, the staged `Trainer` (quasi-Newton prior refinement,
optimiser stages, EMA, early stopping), data parallelism over a device mesh, checkpoints, callbacks.

Entry point for the CLI: `train(cfg: TrainConfig) -> Path` (the run directory).
"""

from .config import DEFAULT_STAGES, OPTIMIZERS, DataConfig, DistributedConfig, ModelConfig, StageConfig, TrainConfig
from .task import LossSums, Task, metrics_from_sums, predict

__all__ = [
    "DEFAULT_STAGES", "OPTIMIZERS", "DataConfig", "DistributedConfig", "LossSums",
    "ModelConfig", "StageConfig", "Task", "TrainConfig", "Trainer", "metrics_from_sums", "predict", "train",
]  # fmt: skip


def __getattr__(name):  # lazy: the trainer imports the models
    if name in ("Trainer", "train", "train_ensemble"):
        from . import trainer  # lazy: the trainer imports optax and the models

        return getattr(trainer, name)
    raise AttributeError(name)
