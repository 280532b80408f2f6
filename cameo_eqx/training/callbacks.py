"""Trainer callbacks (Lightning-style hooks): tensorboardX scalars, a JSON-lines log, a progress bar with
ETA, and the NaN/inf guard. Checkpointing is driven by the trainer (it owns the state) through
`Checkpointer`'s schedule.

Hooks get the trainer and a dict of host floats; only process 0 logs. `on_step_end`'s dict always has the
position (`step`, `stage`, `epoch`, `step_in_epoch`, `batch_desc`); the device values (`loss`, `force_rmse`,
`grad_norm`, `finite`, `lr`, and over the steps since the previous log step `frames_per_s` and `data_wait`,
the fraction of that time the training loop waited for the batch loader) only on log
steps (`step % log_every == 0`): the trainer does not wait for the device on the others. A non-finite
step is caught on the device and reported through `NaNGuard` at the next log step, checkpoint or epoch end.

Simulation-based validation (`sim_validation.SimValidation`) is a callback too; the trainer calls its
`evaluate` on the due epochs and merges its `sim_*` metrics into the validation metrics these loggers write.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..fileio import reporting_no_space


class NonFiniteError(RuntimeError):
    """The loss or gradient became NaN/inf; training stopped without applying the bad update."""


class Callback:
    """Base class: override the hooks you need."""

    def on_fit_start(self, trainer: Any) -> None: ...
    def on_stage_start(self, trainer: Any, stage: Any, total_steps: int) -> None: ...
    def on_step_end(self, trainer: Any, info: dict[str, Any]) -> None: ...
    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None: ...
    def on_stage_end(self, trainer: Any, stage: Any) -> None: ...
    def on_fit_end(self, trainer: Any) -> None: ...


class NaNGuard(Callback):
    """Stops training on a non-finite loss or gradient norm, naming the step and the batch.

    The step function leaves the state unchanged when the update is non-finite, so the last good
    checkpoint (and the in-memory state) stay good.
    """

    def on_step_end(self, trainer: Any, info: dict[str, Any]) -> None:
        if not info.get("finite", True):
            raise NonFiniteError(
                f"non-finite loss ({info.get('loss')}) or gradient norm ({info.get('grad_norm')}) at global "
                f"step {info['step']} (stage {info['stage']!r}, epoch {info['epoch']}, step {info['step_in_epoch']} "
                f"of the epoch; batch: {info.get('batch_desc', '?')}). The update was not applied; the last good "
                f"checkpoint is in {trainer.ckpt_dir}. Lower the learning rate, enable clipping, or check the data."
            )


class TensorBoardLogger(Callback):
    """tensorboardX scalars: train/val loss, force RMSE (total and per term), learning rate, gradient
    norm, frames/s. Writes to `<run>/tb`."""

    def __init__(self, log_every: int = 10):
        self.log_every = max(1, int(log_every))
        self.writer = None

    def on_fit_start(self, trainer: Any) -> None:
        if trainer.is_main:
            from tensorboardX import SummaryWriter  # lazy: only the main process logs (protobuf import)

            self.writer = SummaryWriter(str(trainer.run_dir / "tb"))

    def on_step_end(self, trainer: Any, info: dict[str, Any]) -> None:
        if self.writer is None or info["step"] % self.log_every:
            return
        s = info["step"]
        for k in ("loss", "force_rmse", "lr", "grad_norm", "frames_per_s", "data_wait"):
            if k in info and info[k] is not None and math.isfinite(info[k]):
                self.writer.add_scalar(f"train/{k}", info[k], s)

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        for k, v in metrics.items():  # simulation validation: val/sim_score, val/sim_js_rg/<protein>, ...
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(f"val/{k}", v, trainer.global_step)
        self.writer.flush()

    def on_fit_end(self, trainer: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class JsonlLogger(Callback):
    """Appends every logged record to `<run>/metrics.jsonl` (the evaluation's loss curves read it)."""

    def __init__(self, log_every: int = 10):
        self.log_every = max(1, int(log_every))
        self.fh = None

    def on_fit_start(self, trainer: Any) -> None:
        if trainer.is_main:
            self.path = Path(trainer.run_dir) / "metrics.jsonl"
            self.fh = open(self.path, "a")

    def _write(self, rec: dict[str, Any]) -> None:
        if self.fh is not None:
            with reporting_no_space(self.path, "the checkpoints are kept; free some space and rerun with "
                                               "--resume auto"):  # fmt: skip
                self.fh.write(json.dumps(rec) + "\n")
                self.fh.flush()

    def on_step_end(self, trainer: Any, info: dict[str, Any]) -> None:
        if info["step"] % self.log_every == 0:
            keep = ("step", "stage", "epoch", "loss", "force_rmse", "lr", "grad_norm", "frames_per_s", "data_wait")
            self._write({"kind": "train", "time": time.time(), **{k: info[k] for k in keep if k in info}})

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        self._write({"kind": "val", "time": time.time(), "step": trainer.global_step,
                     "stage": trainer.stage_name, "epoch": trainer.epoch, **metrics})  # fmt: skip

    def on_fit_end(self, trainer: Any) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class ProgressBar(Callback):
    """A tqdm bar per stage with ETA, showing loss, force RMSE, frames/s and the share of time spent waiting
    for batches (`wait`: high means the loader, not the step, sets the pace; raise `data.workers`)."""

    def __init__(self):
        self.bar = None

    def on_stage_start(self, trainer: Any, stage: Any, total_steps: int) -> None:
        if trainer.is_main:
            from tqdm.auto import tqdm  # lazy: only for the progress bar (tqdm.auto probes for Jupyter)

            self.bar = tqdm(total=total_steps, desc=f"{stage.name}", unit="step", dynamic_ncols=True,
                            initial=trainer.step_in_stage, mininterval=1.0)  # fmt: skip

    def on_step_end(self, trainer: Any, info: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if "loss" in info:  # a log step (the trainer reads the device only there)
                self.bar.set_postfix(loss=f"{info['loss']:.3g}", rmse=f"{info['force_rmse']:.3g}",
                                     fps=f"{info.get('frames_per_s', 0):.0f}",
                                     wait=f"{info.get('data_wait', 0):.0%}", refresh=False)  # fmt: skip

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        parts = []
        if "loss" in metrics:
            parts.append(f"val loss {metrics['loss']:.4g}, force RMSE {metrics['force_rmse']:.4g} kcal/mol/Å")
        if "sim_score" in metrics:
            parts.append(f"sim score {metrics['sim_score']:.3f} (JS Rg {metrics['sim_js_rg']:.3f}, RMSD "
                         f"{metrics['sim_js_rmsd']:.3f}, Q {metrics['sim_js_q']:.3f}; "
                         f"{int(metrics['sim_blowups'])} blow-ups)")  # fmt: skip
        self.bar.write(f"[{trainer.stage_name} epoch {trainer.epoch}] " + "; ".join(parts))

    def on_stage_end(self, trainer: Any, stage: Any) -> None:
        self.on_fit_end(trainer)

    def on_fit_end(self, trainer: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
