"""The Trainer: stages (optional LBFGS prior refinement, then optimiser stages), the jitted
data-parallel step, validation, early stopping, EMA, checkpoints, resume and ensembles.

The whole training step (loss, gradient, all-reduce, update, EMA, NaN guard) is one `eqx.filter_jit`
function around a filtered `shard_map` over a 1-D mesh of every device; it compiles once per capacity
bucket. Each device computes squared-error SUMS on its slice of the batch; the counts of real force
components are `psum`med first and the local loss is normalised by the GLOBAL count, so the `psum` of
the local gradients is exactly the gradient of the global-batch loss (what one device would compute on
the same global batch).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from jax.sharding import PartitionSpec as P

from ..config import to_dict, to_json
from ..fileio import DirLock, write_atomic
from ..graph import Batch
from ..modules import ForceField, make_backbone, save, trainable_filter
from ..modules.forcefield import upgrade_hyperparameters
from ..precision import check_model_precision
from ..precision import matmul_precision as precision_context
from ..priors.prior import Prior
from . import checkpoint as ckpt
from .callbacks import Callback, JsonlLogger, NaNGuard, NonFiniteError, ProgressBar, TensorBoardLogger
from .config import StageConfig, TrainConfig
from .datamodule import DataModule
from .distributed import (
    AXIS,
    filter_shard_map,
    initialize,
    local_axis_size,
    make_mesh,
    replicate,
    shard_leading,
    to_host,
)
from .optim import global_norm, make_optimizer, make_schedule, needs_value
from .refine_stage import refine_prior_stage
from .sim_validation import SimValidation
from .task import LossSums, Task, metrics_from_sums

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ the steps


def read_device(tree):
    """The training loop's host read of device values (the guard and a log step's metrics): it waits for
    the queued steps. Called at log steps, checkpoints and epoch ends only, never every step."""
    return to_host(tree)


def _sum0(tree):
    return jax.tree.map(lambda x: jnp.sum(x, axis=0), tree)


def new_guard(step: int = 0) -> dict[str, jax.Array]:
    """The device-side NaN guard `make_train_step(..., guard=True)` carries: the global step count
    (`step`), the first non-finite step (`bad_step`, -1 while none) and its loss and gradient norm."""
    return {"step": jnp.asarray(step, jnp.int32), "bad_step": jnp.asarray(-1, jnp.int32),
            "bad_loss": jnp.asarray(0.0, jnp.float32), "bad_grad_norm": jnp.asarray(0.0, jnp.float32)}  # fmt: skip


def make_train_step(task: Task, optimizer: optax.GradientTransformation, mesh, *, use_value: bool = False,
                    ema_decay: float | None = None, max_traces: int | None = None, guard: bool = False,
                    donate: bool = False):  # fmt: skip
    """The jitted data-parallel training step.

    **Arguments:**

    - `task`: the loss.
    - `optimizer`: the stage's optax transformation.
    - `mesh`: the 1-D device mesh (`distributed.make_mesh`).
    - `use_value`: pass the loss to `optimizer.update` (Polyak SGD).
    - `ema_decay`: update an EMA of the parameters with this decay (None: no EMA; `ema` passes through).
    - `max_traces`: fail if the step is traced more often (`eqx.debug.assert_max_traces`).
    - `guard`: carry a device-side NaN guard (`new_guard`) so that the host need not read `finite` every
      step: the signature becomes `step(params, static, opt_state, ema, guard, batch) -> (params,
      opt_state, ema, guard, out)`. The guard counts steps and records the first non-finite one; from then
      on no update is applied, so the state stays the last good one until the host reads the guard.
    - `donate`: donate the `params`, `opt_state`, `ema` (and `guard`) buffers to the step (the caller
      must not use the passed ones again; `ema` must not alias `params`).

    **Returns:** `step(params, static, opt_state, ema, batch) -> (params, opt_state, ema, out)` where
    `batch` has a leading axis of `mesh.size * k` (sharded over the mesh), `params`/`static` partition the
    model, and `out` holds `loss`, `grad_norm`, `finite` and the global `LossSums` fields. A non-finite
    loss or gradient leaves params, optimiser state and EMA unchanged (`finite` is False).
    """

    local = _local_step(task, optimizer, use_value=use_value, ema_decay=ema_decay, guard=guard)
    specs = (P(), P(), P(), P(), P(), P(AXIS)) if guard else (P(), P(), P(), P(), P(AXIS))
    sharded = filter_shard_map(local, mesh, specs)
    fn = sharded if max_traces is None else eqx.debug.assert_max_traces(sharded, max_traces=max_traces)
    return _donating_jit(fn) if donate else eqx.filter_jit(fn)


def _global_loss_and_grad(task: Task, params, static, batch):
    """The global-batch loss and gradient (device sums `psum`med), the global `LossSums` and the gradient norm."""
    counts = jax.vmap(task.counts)(batch)
    n_f = jax.lax.psum(jnp.sum(counts[0]), AXIS)
    n_e = jax.lax.psum(jnp.sum(counts[1]), AXIS)

    def loss_fn(p):
        model = eqx.combine(p, static)
        s = LossSums(*_sum0(jax.vmap(lambda b: task.sums(model, b))(batch)))
        return task.loss_from_sums(s, n_f, n_e), s

    (loss, s), g = eqx.filter_value_and_grad(loss_fn, has_aux=True)(params)
    g = jax.lax.psum(g, AXIS)
    loss = jax.lax.psum(loss, AXIS)
    s = jax.lax.psum(s, AXIS)
    return loss, s, g, global_norm(g)


def _guard_update(g_in, finite, loss, gnorm):
    """The guard after a step (count advanced, the first non-finite step kept) and whether to update."""
    clean = g_in["bad_step"] < 0
    first = clean & ~finite
    step_no = g_in["step"] + 1
    g_out = {"step": step_no, "bad_step": jnp.where(first, step_no, g_in["bad_step"]),
             "bad_loss": jnp.where(first, loss.astype(jnp.float32), g_in["bad_loss"]),
             "bad_grad_norm": jnp.where(first, gnorm.astype(jnp.float32), g_in["bad_grad_norm"])}  # fmt: skip
    return g_out, finite & clean


def _apply_update(optimizer, g, opt_state, params, ema, loss, finite, *, use_value: bool, ema_decay):
    """The optimiser update (a non-finite gradient zeroed) and the EMA of the new parameters."""
    g = jax.tree.map(lambda x: jnp.where(finite, x, 0.0), g)
    kw = {"value": loss} if use_value else {}
    updates, new_opt = optimizer.update(g, opt_state, params, **kw)
    new_params = eqx.apply_updates(params, updates)
    new_ema = ema
    if ema_decay is not None and ema is not None:
        new_ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, new_params)
    return new_params, new_opt, new_ema


def _local_step(task: Task, optimizer, *, use_value: bool, ema_decay, guard: bool):
    """The per-device step `make_train_step` shard-maps: gradient, guard, update, kept only when finite."""

    def local(params, static, opt_state, ema, *rest):
        g_in, batch = rest if guard else (None, rest[0])
        loss, s, g, gnorm = _global_loss_and_grad(task, params, static, batch)
        finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        ok = finite
        if guard:  # the first non-finite step is kept; no update after it (the state stays the last good one)
            g_out, ok = _guard_update(g_in, finite, loss, gnorm)
        new_params, new_opt, new_ema = _apply_update(optimizer, g, opt_state, params, ema, loss, finite,
                                                     use_value=use_value, ema_decay=ema_decay)  # fmt: skip

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

        out = {"loss": loss, "grad_norm": gnorm, "finite": finite, **s._asdict()}
        res = (keep(new_params, params), keep(new_opt, opt_state), keep(new_ema, ema))
        return (*res, g_out, out) if guard else (*res, out)

    return local


def _donating_jit(fn):
    """`fn` jitted with the carried state donated, never `static` (reused every step) nor the batch."""

    # both ride in the first argument, which is not donated
    def carried(kept, state):
        static, batch = kept
        return fn(state[0], static, *state[1:], batch)

    jitted = eqx.filter_jit(carried, donate="all-except-first")

    def step(params, static, opt_state, ema, *rest):
        return jitted((static, rest[-1]), (params, opt_state, ema, *rest[:-1]))

    return step


def make_eval_step(task: Task, mesh, *, terms: bool = True):
    """The jitted data-parallel evaluation: global `LossSums` (and per-term sums) of a batch.

    **Returns:** `evaluate(model, batch) -> dict` of global sums (`Task.sums` fields and, with `terms`,
    `Task.term_sums` keys).
    """

    def local(model, batch):
        s = LossSums(*_sum0(jax.vmap(lambda b: task.sums(model, b))(batch)))
        out = s._asdict()
        if terms:
            out.update(_sum0(jax.vmap(lambda b: task.term_sums(model, b))(batch)))
        return jax.lax.psum(out, AXIS)

    return eqx.filter_jit(filter_shard_map(local, mesh, (P(), P(AXIS))))


# ------------------------------------------------------------------------------------------ model


def build_model(cfg: TrainConfig, n_species: int, key: jax.Array):
    """The `ForceField` of a config: backbone from `make_backbone`, prior from its file."""
    backbone = None
    if cfg.model.backbone != "none":
        backbone = make_backbone(cfg.model.backbone, n_species, cfg.data.cutoff, cfg.model.preset, key=key,
                                 **cfg.model.overrides())  # fmt: skip
    prior = None
    if cfg.model.prior is not None:
        prior = Prior.load(cfg.model.prior)
    return ForceField(backbone, prior, cutoff=cfg.data.cutoff, pair_min_sep=cfg.data.pair_min_sep)


def trainable_spec(model, cfg: TrainConfig):
    """Which arrays train in the optimiser stages: the backbone, plus the prior when `train_prior` is set
    or there is no backbone."""
    train_prior = cfg.model.train_prior or model.backbone is None
    return trainable_filter(model, train_backbone=True, train_prior=train_prior)


# ------------------------------------------------------------------------------------------ trainer


def _jsonable(x):
    return json.loads(json.dumps(to_dict(x), default=str))


@dataclasses.dataclass(frozen=True, eq=False)
class _StageRun:
    """What the steps of one optimiser stage share: its index and config, schedule, compiled step, frozen part."""

    k: int
    st: StageConfig
    sched: Any
    step_fn: Any
    static: Any
    dev_static: Any
    log_every: int


class Trainer:
    """Runs the stages of one training run (one ensemble member) in `run_dir`.

    **Arguments:**

    - `cfg`: the resolved training config.
    - `run_dir`: the run directory (created).
    - `datamodule`: optional ready `DataModule` (tests); default built from `cfg.data`.
    - `callbacks`: extra callbacks, called after the built-in ones.
    - `max_traces`: assert the train step compiles at most this often per stage (tests).
    - `donate`: donate the parameter, optimiser-state and EMA buffers to the compiled step.
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, *, datamodule=None,
                 callbacks: list[Callback] | None = None, max_traces: int | None = None,
                 donate: bool = True):  # fmt: skip
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.is_main = jax.process_index() == 0
        self.mesh = make_mesh()
        self.n_local = local_axis_size(self.mesh)
        self.dm = datamodule or DataModule(cfg.data, seed=cfg.seed, n_devices=self.n_local,
                                           process_index=jax.process_index(),
                                           process_count=jax.process_count())  # fmt: skip
        self.task = Task(gamma_f=cfg.gamma_f, gamma_u=cfg.gamma_u)
        cbs: list[Callback] = [NaNGuard(), TensorBoardLogger(cfg.log_every), JsonlLogger(cfg.log_every)]
        if cfg.progress:
            cbs.append(ProgressBar())
        self.sim_validation = None
        if cfg.sim_validation.enabled:
            self.sim_validation = SimValidation(cfg)
            cbs.append(self.sim_validation)
        self.callbacks = cbs + list(callbacks or [])
        self.max_traces = max_traces
        self.donate = donate
        self.eval_step = make_eval_step(self.task, self.mesh)
        # position (restored from checkpoints)
        self.global_step = 0
        self.stage_index = 0
        self.stage_name = ""
        self.epoch = 0
        self.step_in_epoch = 0
        self.step_in_stage = 0
        self.best_val = math.inf
        self.best_sim = math.inf
        self.best_stage_val = math.inf
        self.bad_epochs = 0
        self.refined = False
        self.history: list[dict[str, Any]] = []
        self.stopped_early = False

    # ---------------------------------------------------------------------------------- helpers
    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _stage_steps(self, k: int) -> int:
        s = self.cfg.stages[k]
        return s.epochs * self.dm.steps_per_epoch(self._data_epoch(k, 0))

    def _data_epoch(self, stage: int, epoch: int) -> int:
        """Epoch index of the data order: counts epochs across stages."""
        return sum(s.epochs for s in self.cfg.stages[:stage]) + epoch

    def _template(self, model, spec, stage_k: int | None):
        params, _ = eqx.partition(model, spec)
        if stage_k is None:
            return {"model": model, "opt_state": None, "ema": None}
        st = self.cfg.stages[stage_k]
        opt = make_optimizer(st, max(self._stage_steps(stage_k), 1))
        return {"model": model, "opt_state": opt.init(params),
                "ema": params if st.ema_decay is not None else None}  # fmt: skip

    def _meta(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "stage_index": self.stage_index, "stage": self.stage_name, "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch, "step_in_stage": self.step_in_stage,
            "global_step": self.global_step, "best_val": self.best_val if math.isfinite(self.best_val) else None,
            "best_stage_val": self.best_stage_val if math.isfinite(self.best_stage_val) else None,
            "best_sim_score": self.best_sim if math.isfinite(self.best_sim) else None,
            "bad_epochs": self.bad_epochs, "refined": self.refined, "seed": self.cfg.seed,
            "rng": [int(x) for x in np.asarray(jax.random.key_data(jax.random.PRNGKey(self.cfg.seed)))],
            "data": {"seed": self.cfg.seed, "epoch": self._data_epoch(self.stage_index, self.epoch)
                     if self.stage_index < len(self.cfg.stages) else None,
                     "step": self.step_in_epoch, "split_seed": self.cfg.data.split_seed},
            "config": _jsonable(self.cfg), **(extra or {}),
        }  # fmt: skip

    def _save(self, state: dict[str, Any], static: Any, extra: dict[str, Any] | None = None) -> None:
        """Checkpoints the full model (trainable and frozen arrays), optimiser state and EMA."""
        if not self.is_main:
            return
        tree = {"model": eqx.combine(to_host(state["params"]), to_host(static)),
                "opt_state": to_host(state["opt_state"]), "ema": to_host(state["ema"])}  # fmt: skip
        ckpt.save_checkpoint(self.ckpt_dir, self.global_step, tree, self._meta(extra),
                             keep=self.cfg.keep_checkpoints)  # fmt: skip

    def _model_of(self, state, static):
        p = state["ema"] if state.get("ema") is not None else state["params"]
        return eqx.combine(to_host(p), to_host(static))

    def _save_model(self, model, name: str, extra: dict[str, Any] | None = None) -> None:
        if not self.is_main:
            return
        save(self.run_dir / name, model, {"train_config": _jsonable(self.cfg), "global_step": self.global_step,
                                          "best_val": self.best_val if math.isfinite(self.best_val) else None,
                                          "best_sim_score": self.best_sim if math.isfinite(self.best_sim) else None,
                                          "select_by": self.cfg.select_by, **(extra or {})})  # fmt: skip

    # ---------------------------------------------------------------------------------- validation
    def validate(self, model) -> dict[str, float]:
        """Global validation metrics of `model` (empty dict without validation frames)."""
        if self.dm.val is None:
            return {}
        dev_model = replicate(model, self.mesh)
        tot: dict[str, float] = {}
        for batch, _ in self.dm.val_batches():
            out = to_host(self.eval_step(dev_model, shard_leading(batch, self.mesh)))
            for k, v in out.items():
                tot[k] = tot.get(k, 0.0) + float(np.asarray(v, np.float64))
        s = LossSums(*(tot.pop(k) for k in LossSums._fields))
        return metrics_from_sums(s, self.task, tot)

    def _select(self, model, metrics: dict[str, Any]) -> None:
        """Tracks the best validation loss and simulation score; writes best.eqx when the `select_by`
        criterion improves."""
        v, s = metrics.get("loss"), metrics.get("sim_score")
        better_val = v is not None and v < self.best_val
        better_sim = s is not None and math.isfinite(s) and s < self.best_sim
        if better_val:
            self.best_val = v
        if better_sim:
            self.best_sim = s
        if better_sim if self.cfg.select_by == "simulation" else better_val:
            self._save_model(model, "best.eqx", {"val_loss": v, "sim_score": s})

    # ---------------------------------------------------------------------------------- fitting
    def fit(self) -> Path:
        """Runs (or resumes) every stage; writes `model.eqx` (final, or the current parameters when
        `max_steps` cut the run), `best.eqx` (the lowest validation loss, or with `select_by` simulation
        the lowest `sim_score`), `summary.json` (with `finished`).
        Returns the run directory.

        The run directory is locked for the whole fit (`<run>/.lock`): a second `train` into it refuses,
        naming the running one's pid. A directory that already holds a run is continued only with
        `resume` auto (or a checkpoint path) and the same config; `resume` never refuses it and
        `resume` restart discards it first."""
        lock = DirLock(self.run_dir, "train").acquire() if self.is_main else None
        try:
            with precision_context(self.cfg.matmul_precision):  # every step is traced at this precision
                return self._fit()
        finally:
            self.dm.close()
            if lock is not None:
                lock.release()

    def _fit(self) -> Path:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            self._claim_run_dir()
        resume = self._find_resume()
        if self.is_main:
            write_atomic(self.run_dir / "config.json", to_json(cfg))
        key = jax.random.PRNGKey(cfg.seed)
        model = build_model(cfg, self.dm.n_species, key)
        spec = trainable_spec(model, cfg)
        if cfg.matmul_precision != "float32":
            loader = self.dm.train
            plan = loader.plan(0)
            batch = loader.build_step(plan, loader.steps(0)[0])  # (devices, ...): check device 0's slice
            check_model_precision(model, jax.tree.map(lambda a: a[0], batch), cfg.matmul_precision,
                                  where="the first training batch (initial parameters)")
        state = None
        if resume is not None:
            path, meta = resume
            model, state = self._restore(model, spec, path, meta)
            print(f"resuming from {path} (stage {meta['stage']!r}, epoch {meta['epoch']}, "
                  f"global step {meta['global_step']})", flush=True)  # fmt: skip
        if self.is_main:  # steps after the resumed one (a kill, a corrupt newest checkpoint) are redone
            _truncate_metrics(self.run_dir / "metrics.jsonl", self.global_step)
        self._call("on_fit_start")
        try:
            if cfg.refine.enabled and not self.refined:
                model = self._refine(model)
                self.refined = True
                params, static = eqx.partition(model, spec)
                self._save({"params": params, "opt_state": None, "ema": None}, static, {"stage_index": -1})
            finished = True
            self.model = model
            while self.stage_index < len(cfg.stages):
                model, state, finished = self._run_stage(model, spec, state)
                self.model = model
                if not finished:
                    break
                self.stage_index += 1
                self.epoch = self.step_in_epoch = self.step_in_stage = 0
                self.best_stage_val, self.bad_epochs = math.inf, 0
                state = None
            # A run cut by max_steps (time-boxed jobs, smoke tests) still leaves a usable model.eqx of
            # its current parameters; summary.json says it is unfinished and --resume auto goes on.
            self._save_model(model, "model.eqx")
            if not (self.run_dir / "best.eqx").exists():
                self._save_model(model, "best.eqx")
            if self.is_main:
                summary = {"finished": finished,
                           "best_val": self.best_val if math.isfinite(self.best_val) else None,
                           "best_sim_score": self.best_sim if math.isfinite(self.best_sim) else None,
                           "select_by": cfg.select_by,
                           "global_step": self.global_step, "history": self.history,
                           "stopped_early": self.stopped_early}  # fmt: skip
                write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=1))
            if not finished:
                print(f"stopped at max_steps={cfg.max_steps} (stage {cfg.stages[self.stage_index].name!r}); "
                      f"{self.run_dir / 'model.eqx'} holds the current parameters; continue with --resume auto",
                      flush=True)  # fmt: skip
        finally:
            self._call("on_fit_end")
        return self.run_dir

    def _claim_run_dir(self) -> None:
        """Checks (under the lock) that this run may write into `run_dir`: nothing of another run is
        overwritten unless `resume` is restart, which discards it."""
        cfg, rd = self.cfg, self.run_dir
        present = [n for n in RUN_FILES if (rd / n).exists()]
        cks = ckpt.list_checkpoints(self.ckpt_dir)
        if cfg.resume == "restart":
            if present or cks:
                print(f"--resume restart: discarding the run in {rd} ({', '.join(present + ['checkpoints/'] * bool(cks))})",
                      flush=True)  # fmt: skip
            for n in RUN_FILES:
                (rd / n).unlink(missing_ok=True)
            for d in (self.ckpt_dir, rd / "tb"):
                shutil.rmtree(d, ignore_errors=True)
            return
        if not present and not cks:
            return
        if cfg.resume == "never":
            what = "already has checkpoints" if cks else f"already holds a run ({', '.join(present)})"
            raise ValueError(f"run directory {rd} {what}; use --resume auto to continue it, --resume restart "
                             "to discard it and start over, or choose another --name")  # fmt: skip
        old_path = rd / "config.json"
        if cfg.resume == "auto" and old_path.exists():
            try:
                old = json.loads(old_path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{old_path}: unreadable ({e}); the run directory {rd} cannot be checked. "
                                 "Use --resume restart to discard it, or choose another --name") from None
            # options added since that run was written take their defaults there (not a different config)
            old = _with_defaults(_upgrade_config(old), json.loads(to_json(TrainConfig())))
            diff = _config_diff(old, json.loads(to_json(cfg)))
            if diff:
                raise ValueError(f"run directory {rd} holds a run with another config ({', '.join(diff)} differ, "
                                 f"see {old_path}); choose another --name, or use --resume restart to discard "
                                 "it and start over")  # fmt: skip

    def _find_resume(self):
        mode = self.cfg.resume
        if mode in ("never", "restart"):
            return None
        if mode == "auto":
            found = ckpt.latest_valid(self.ckpt_dir)
            n = len(ckpt.list_checkpoints(self.ckpt_dir))
            if found is None and n:
                raise ckpt.CorruptCheckpointError(
                    f"no valid checkpoint in {self.ckpt_dir}: all {n} are corrupt or incomplete (see the "
                    "warnings above). Nothing was changed; restore them, resume from one with --resume PATH, "
                    "or pass --resume restart to discard this run and start over"
                )
            return found
        p = Path(mode)
        return p, ckpt.read_meta(p)

    def _restore(self, model, spec, path, meta):
        si = int(meta["stage_index"])
        k = None if si < 0 or si >= len(self.cfg.stages) else si
        loaded = ckpt.load_state(path, self._template(model, spec, k))
        model = loaded["model"]
        state = {"params": eqx.partition(model, spec)[0], "opt_state": loaded["opt_state"], "ema": loaded["ema"]}
        self.global_step = int(meta["global_step"])
        self.stage_index = max(si, 0)
        self.epoch = int(meta["epoch"])
        self.step_in_epoch = int(meta["step_in_epoch"])
        self.step_in_stage = int(meta["step_in_stage"])
        self.best_val = math.inf if meta["best_val"] is None else float(meta["best_val"])
        self.best_sim = math.inf if meta.get("best_sim_score") is None else float(meta["best_sim_score"])
        self.best_stage_val = math.inf if meta.get("best_stage_val") is None else float(meta["best_stage_val"])
        self.bad_epochs = int(meta.get("bad_epochs", 0))
        self.refined = bool(meta.get("refined", False))
        hist = self.run_dir / "summary_history.json"
        if hist.exists():
            self.history = json.loads(hist.read_text())
        if k is None or state["opt_state"] is None:
            return model, None
        return model, state

    def _check_guard(self, guard, pending: list[dict[str, Any]], out=None):
        """Reads the device-side NaN guard (and `out`, the last step's metrics, in the same host read) and
        raises `NonFiniteError` (through the `NaNGuard` callbacks) naming the first non-finite step among
        `pending` (the steps run since the last read, which it empties). Returns `out` as host floats."""
        g, host = read_device((guard, out))
        bad = int(g["bad_step"])
        if bad >= 0:
            info = next((i for i in pending if i["step"] == bad), {"step": bad, "stage": self.stage_name,
                                                                   "epoch": "?", "step_in_epoch": "?"})  # fmt: skip
            info = {**info, "loss": float(g["bad_loss"]), "grad_norm": float(g["bad_grad_norm"]), "finite": False}
            for cb in self.callbacks:
                if isinstance(cb, NaNGuard):
                    cb.on_step_end(self, info)
            raise NonFiniteError(f"non-finite loss or gradient norm at global step {bad}")  # no NaNGuard given
        pending.clear()
        return None if host is None else {kk: float(np.asarray(v)) for kk, v in host.items()}

    def _refine(self, model):
        """First stage: LBFGS force matching of the prior parameters, network frozen."""
        return refine_prior_stage(self, model)

    def _run_stage(self, model, spec, state):
        """Runs (the rest of) the current optimiser stage; returns (model, device state or None, finished)."""
        run, dev = self._start_stage(model, spec, state)
        guard = replicate(new_guard(self.global_step), self.mesh)
        pending: list[dict[str, Any]] = []  # the steps run since the guard was last read on the host
        while self.epoch < run.st.epochs:
            dev, guard, cut = self._train_epoch(run, dev, guard, pending)
            if cut:
                self._call("on_stage_end", run.st)
                return eqx.combine(to_host(dev["params"]), run.static), dev, False
            self._check_guard(guard, pending)
            self._end_epoch(run, dev)
        self._call("on_stage_end", run.st)
        model = self._model_of(dev, run.static)
        return model, None, True

    def _start_stage(self, model, spec, state):
        """The stage's schedule, compiled step and device state (fresh unless resumed), after on_stage_start."""
        cfg = self.cfg
        k = self.stage_index
        st: StageConfig = cfg.stages[k]
        self.stage_name = st.name
        total = max(self._stage_steps(k), 1)
        opt = make_optimizer(st, total)
        sched = make_schedule(st, total)
        params, static = eqx.partition(model, spec)
        if state is None:
            state = {"params": params, "opt_state": opt.init(params),
                     "ema": params if st.ema_decay is not None else None}  # fmt: skip
        step_fn = make_train_step(self.task, opt, self.mesh, use_value=needs_value(st), ema_decay=st.ema_decay,
                                  max_traces=self.max_traces, guard=True, donate=self.donate)  # fmt: skip
        if self.donate:  # the step consumes its state buffers: own copies (the EMA starts as the params)
            state = jax.tree.map(lambda x: jnp.array(x, copy=True) if eqx.is_array(x) else x, state)
        dev = replicate(state, self.mesh)
        dev_static = replicate(static, self.mesh)
        self._call("on_stage_start", st, total)
        return _StageRun(k, st, sched, step_fn, static, dev_static, max(1, cfg.log_every)), dev

    def _train_epoch(self, run: _StageRun, dev, guard, pending: list[dict[str, Any]]):
        """The epoch's remaining steps; returns (dev, guard, cut), cut True (saved) when `max_steps` is reached."""
        cfg, st = self.cfg, run.st
        dep = self._data_epoch(run.k, self.epoch)
        t_last, frames, waited = time.perf_counter(), 0, 0.0
        batches = self.dm.train_batches(dep, self.step_in_epoch)
        while True:
            t_wait = time.perf_counter()
            item = next(batches, None)  # the time spent here is the loader's, not the device's
            waited += time.perf_counter() - t_wait
            if item is None:
                break
            batch, desc = item
            frames += int(np.sum(batch.graph_mask))
            gb = shard_leading(batch, self.mesh)
            p, o, e, guard, out = run.step_fn(dev["params"], run.dev_static, dev["opt_state"], dev["ema"], guard, gb)
            dev = {"params": p, "opt_state": o, "ema": e}  # the guard keeps the last good state after a NaN
            info = {"step": self.global_step + 1, "stage": st.name, "epoch": self.epoch,
                    "step_in_epoch": self.step_in_epoch, "batch_desc": desc}  # fmt: skip
            pending.append(info)
            if info["step"] % run.log_every == 0:  # the one host read of a log step: the guard and the metrics
                out = self._check_guard(guard, pending, out)
                now = time.perf_counter()
                info.update({
                    "loss": out["loss"], "force_rmse": math.sqrt(max(out["sse_f"], 0.0) / max(out["n_f"], 1.0)),
                    "grad_norm": out["grad_norm"], "finite": bool(out["finite"]),
                    "lr": float(run.sched(self.step_in_stage)),
                    "frames_per_s": frames * jax.process_count() / max(now - t_last, 1e-9),
                    "data_wait": min(waited / max(now - t_last, 1e-9), 1.0),
                })  # fmt: skip
                t_last, frames, waited = now, 0, 0.0
            self._call("on_step_end", info)
            self.global_step += 1
            self.step_in_epoch += 1
            self.step_in_stage += 1
            if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                self._check_guard(guard, pending)
                self._save(dev, run.static)
                return dev, guard, True
            if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                self._check_guard(guard, pending)
                self._save(dev, run.static)
        return dev, guard, False

    def _end_epoch(self, run: _StageRun, dev) -> None:
        """After an epoch: validation when due, early stopping, the history file and a checkpoint."""
        cfg, st = self.cfg, run.st
        self.epoch += 1
        self.step_in_epoch = 0
        last = self.epoch == st.epochs
        stop = False
        sim_due = self.sim_validation is not None and self.sim_validation.due(self.epoch, last)
        if self.epoch % max(cfg.val_every, 1) == 0 or last or sim_due:
            stop = self._validate_epoch(st, self._model_of(dev, run.static), sim_due)
        if self.is_main:
            write_atomic(self.run_dir / "summary_history.json", json.dumps(self.history))
        if stop:
            print(f"early stopping stage {st.name!r} after epoch {self.epoch}: no validation improvement "
                  f"for {self.bad_epochs} epochs", flush=True)  # fmt: skip
            self.stopped_early = True
            self.epoch = st.epochs
        self._save(dev, run.static)

    def _validate_epoch(self, st: StageConfig, cur, sim_due: bool) -> bool:
        """Validates `cur` (and simulates when due or stopping), tracks the best; returns whether to stop early."""
        stop = False
        metrics = self.validate(cur)
        if metrics:
            v = metrics["loss"]
            if v < self.best_stage_val - st.min_delta:
                self.best_stage_val, self.bad_epochs = v, 0
            else:
                self.bad_epochs += 1
                if st.early_stopping is not None and self.bad_epochs >= st.early_stopping:
                    stop = True
        if self.sim_validation is not None and (sim_due or stop):  # an early stop ends the stage
            metrics.update(self.sim_validation.evaluate(self, cur))
        if metrics:
            self._call("on_validation_end", metrics)
            self.history.append({"stage": st.name, "epoch": self.epoch, "step": self.global_step,
                                 **{m: metrics[m] for m in ("loss", "force_rmse", "sim_score")
                                    if m in metrics}})  # fmt: skip
            self._select(cur, metrics)
        return stop


# ------------------------------------------------------------------------------------------ run folders

RUN_FILES = ("config.json", "model.eqx", "best.eqx", "summary.json", "summary_history.json", "metrics.jsonl")
"""What a run writes into its folder besides checkpoints/ and tb/."""

_NOT_IDENTITY = {"output", "name", "resume", "progress", "max_steps", "log_every", "checkpoint_every",
                 "keep_checkpoints", "distributed", "data.prefetch", "data.workers"}  # fmt: skip
"""Config keys a resumed run may change: where it runs, how it reports, how long this job runs."""


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (`_NOT_IDENTITY` keys ignored)."""
    out = []
    for k in sorted(set(old) | set(new)):
        key = prefix + k
        if key in _NOT_IDENTITY:
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_config_diff(a, b, key + "."))
        elif a != b:
            out.append(key)
    return out


def _upgrade_config(old: dict) -> dict:
    """A config.json written before `model.hyperparameters` was typed: its KEY=VALUE strings become the
    mapping they meant (Allegro's `num_layers`/`n_radial` renamed as in model files 1 → 2)."""
    model = old.get("model")
    if not (isinstance(model, dict) and isinstance(model.get("hyperparameters"), list)):
        return old
    pairs = (str(kv).partition("=") for kv in model["hyperparameters"])
    hp = upgrade_hyperparameters(str(model.get("backbone")), {k.strip(): yaml.safe_load(v) for k, _, v in pairs})
    return {**old, "model": {**model, "hyperparameters": hp}}


def _with_defaults(old: dict, defaults: dict) -> dict:
    """`old` with the keys it lacks (options added after it was written) taken from `defaults`."""
    out = dict(old)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_defaults(out[k], v)
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops records after `step` (and a line cut by a kill) from metrics.jsonl, so that a resumed run
    never logs a step twice."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and int(rec.get("step", 0)) <= step:
            keep.append(line)
    if len(keep) != len(lines):
        write_atomic(path, "".join(keep))


# ------------------------------------------------------------------------------------------ entry points


def train(cfg: TrainConfig) -> Path:
    """Trains (or resumes) the configured run; with `ensemble > 1` trains every member.

    **Arguments:**

    - `cfg`: the training config (`cli.py train`).

    **Returns:** the run directory (`<output>/<name>`), holding `model.eqx`, `best.eqx`, `config.json`,
    `metrics.jsonl`, `tb/` and `checkpoints/` (for an ensemble: the members and the best member's model).
    """
    initialize(cfg.distributed)
    run_dir = Path(cfg.output) / cfg.name
    if cfg.ensemble == 1:
        return Trainer(cfg, run_dir).fit()
    return train_ensemble(cfg)


def train_ensemble(cfg: TrainConfig) -> Path:
    """Trains `cfg.ensemble` members (seeds `seed + k`, the same split) in `<run>/member_<k>`, reports
    the validation spread in `<run>/ensemble.json`, copies the best member's `model.eqx`, `best.eqx` and
    `config.json` into `<run>`, and deletes the other members when `keep == "best"`. Each member selects
    its own best.eqx and the best member is chosen by the same `select_by` criterion (validation loss or
    simulation score)."""
    run_dir = Path(cfg.output) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = DirLock(run_dir, "train").acquire() if jax.process_index() == 0 else None
    try:
        return _train_ensemble(cfg, run_dir)
    finally:
        if lock is not None:
            lock.release()


def _train_ensemble(cfg: TrainConfig, run_dir: Path) -> Path:
    results = []
    for k in range(cfg.ensemble):
        member = dataclasses.replace(cfg, seed=cfg.seed + k, ensemble=1, output=run_dir, name=f"member_{k}")
        d = run_dir / member.name
        summ = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
        if not summ.get("finished", False):  # new, or cut by max_steps: (re)run, resuming its checkpoints
            Trainer(member, d).fit()
            summ = json.loads((d / "summary.json").read_text())
        results.append({"member": k, "seed": member.seed, "dir": str(d), "best_val": summ.get("best_val"),
                        "best_sim_score": summ.get("best_sim_score")})  # fmt: skip
    vals = np.asarray([r["best_val"] if r["best_val"] is not None else np.inf for r in results], float)
    sims = np.asarray([r["best_sim_score"] if r["best_sim_score"] is not None else np.inf for r in results], float)
    best = int(np.argmin(sims if cfg.select_by == "simulation" else vals))
    fin = vals[np.isfinite(vals)]
    fin_sim = sims[np.isfinite(sims)]
    report = {
        "members": results, "best_member": best, "select_by": cfg.select_by,
        "sim_score_mean": float(fin_sim.mean()) if len(fin_sim) else None,
        "sim_score_std": float(fin_sim.std(ddof=1)) if len(fin_sim) > 1 else None,
        "val_loss_mean": float(fin.mean()) if len(fin) else None,
        "val_loss_std": float(fin.std(ddof=1)) if len(fin) > 1 else None,
        "val_loss_min": float(fin.min()) if len(fin) else None,
        "val_loss_max": float(fin.max()) if len(fin) else None,
        "keep": cfg.keep,
    }  # fmt: skip
    if jax.process_index() == 0:
        bd = run_dir / f"member_{best}"
        for name in ("model.eqx", "best.eqx", "config.json", "metrics.jsonl"):
            if (bd / name).exists():
                shutil.copy2(bd / name, run_dir / name)
        if cfg.keep == "best":
            for r in results:
                if r["member"] != best:
                    shutil.rmtree(r["dir"], ignore_errors=True)
        write_atomic(run_dir / "ensemble.json", json.dumps(report, indent=1))
        sim = (f"; simulation score {report['sim_score_mean']} ± {report['sim_score_std']}"
               if cfg.select_by == "simulation" or report["sim_score_mean"] is not None else "")
        print(f"ensemble of {cfg.ensemble}: validation loss {report['val_loss_mean']} ± {report['val_loss_std']}{sim}; "
              f"best member {best} (by {cfg.select_by})", flush=True)  # fmt: skip
    return run_dir
