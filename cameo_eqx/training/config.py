"""Frozen configs of the `train` command.

`TrainConfig` holds everything a run needs; the resolved config is written to `<run>/config.json` and
into every checkpoint. Stages run in order: an optional quasi-Newton (BFGS/LBFGS) refinement of the prior
parameters (network frozen), then one or more optimiser stages (default `DEFAULT_STAGES`: AdaBelief, then
Yogi).

Each field's docstring is its `--help` text.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Literal

from ..config import ConfigError, check, check_integers
from ..modules.backbones import BackboneOverrides, check_hyperparameters
from ..precision import DEFAULT_PRECISION, MatmulPrecision
from ..priors.config import RefineConfig

Optimizer = Literal["adabelief", "yogi", "adam", "adamw", "lion", "polyak_sgd", "fromage"]
"""Optimiser names accepted by `StageConfig.optimizer` (the type; `OPTIMIZERS` is its values)."""
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
"""Optimiser names accepted by `StageConfig.optimizer`."""


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One optimiser stage: `clip → weight decay → optimiser`, with a warmup + cosine schedule."""

    name: str = "adabelief"
    """Stage name (logs and checkpoints)."""
    optimizer: Optimizer = "adabelief"
    """Optimiser of this stage."""
    epochs: int = 10
    """Epochs of this stage."""
    lr: float = 1e-3
    """Peak learning rate (Polyak SGD: the maximum step size)."""
    warmup_fraction: float = 0.05
    """Fraction of the stage's steps with a linear warmup from 0 to `lr`."""
    end_lr_factor: float = 0.01
    """The cosine decay ends at `lr * end_lr_factor`."""
    clip_norm: float | None = 10.0
    """Clip the global gradient norm to this value (None: no clipping)."""
    weight_decay: float = 0.0
    """Decoupled weight decay added before the optimiser (AdamW: its own weight decay)."""
    b1: float = 0.9
    """First-moment decay (AdaBelief, Yogi, Adam, AdamW, Lion)."""
    b2: float = 0.999
    """Second-moment decay (AdaBelief, Yogi, Adam, AdamW; Lion uses min(b2, 0.99))."""
    eps: float = 1e-8
    """Numerical epsilon of the adaptive optimisers."""
    ema_decay: float | None = None
    """Exponential moving average of the parameters with this decay (e.g. 0.999); validation, the best
    model and the saved model use the average. None: no EMA."""
    early_stopping: int | None = None
    """Stop this stage after this many epochs without a validation-loss improvement (None: never)."""
    min_delta: float = 0.0
    """Smallest validation-loss decrease that counts as an improvement."""

    def check_fields(self, where: str = "stage") -> None:
        """Range checks of one stage. A stage is checked by the `TrainConfig` that holds it (its errors name
        the stage, `train.stages[k].key`) and by `build_optimizer`, not when it is built alone.

        **Arguments:** `where`, the name errors give the stage.

        **Raises:** a `ConfigError` naming `where.key`.
        """
        check_integers(where, self, ("epochs", "early_stopping"))
        check(where, [
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}", self.optimizer),
            ("epochs", self.epochs >= 0, ">= 0", self.epochs),
            ("lr", self.lr > 0, "> 0", self.lr),
            ("warmup_fraction", 0.0 <= self.warmup_fraction < 1.0, "in [0, 1)", self.warmup_fraction),
            ("end_lr_factor", self.end_lr_factor >= 0, ">= 0", self.end_lr_factor),
            ("clip_norm", self.clip_norm is None or self.clip_norm > 0, "> 0 or null", self.clip_norm),
            ("weight_decay", self.weight_decay >= 0, ">= 0", self.weight_decay),
            ("b1", 0.0 <= self.b1 < 1.0, "in [0, 1)", self.b1),
            ("b2", 0.0 <= self.b2 < 1.0, "in [0, 1)", self.b2),
            ("eps", self.eps >= 0, ">= 0", self.eps),
            ("ema_decay", self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "in (0, 1) or null",
             self.ema_decay),
            ("early_stopping", self.early_stopping is None or self.early_stopping >= 1, ">= 1 or null",
             self.early_stopping),
            ("min_delta", self.min_delta >= 0, ">= 0", self.min_delta),
        ])  # fmt: skip


DEFAULT_STAGES: tuple[StageConfig, ...] = (
    StageConfig(name="adabelief", optimizer="adabelief", epochs=10, lr=1e-3),
    StageConfig(name="yogi", optimizer="yogi", epochs=5, lr=2e-4),
)
"""The default schedule: 10 epochs of AdaBelief at 1e-3, then 5 of Yogi at the lower 2e-4 to settle."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The force field: a backbone (or none) plus a fitted prior (or none)."""

    backbone: Literal["allegro", "painn", "mace", "none"] = "painn"
    """Network backbone; 'none' trains the prior alone."""
    preset: str | None = None
    """Backbone size preset (see the backbone's PRESETS); None: the backbone's default
    (`modules.backbones.DEFAULT_PRESETS`: allegro 'default', painn and mace 'small')."""
    hyperparameters: BackboneOverrides = dataclasses.field(default_factory=BackboneOverrides)
    """Backbone hyperparameters that replace the preset's values (unset: the preset's), e.g.
    `--model.hyperparameters.n-layers 2` or YAML `hyperparameters: {n_layers: 2}`; one the chosen backbone
    does not have is an error."""
    prior: Path | None = None
    """Fitted prior file (`fit-priors` output prior.yaml); None: no prior (pure ML)."""
    train_prior: bool = False
    """Also train the prior parameters with the network in the optimiser stages."""

    def __post_init__(self):
        hp = self.hyperparameters.as_dict()
        if self.backbone == "none" and hp:
            raise ConfigError.at("model", "hyperparameters",
                                 f"is invalid: backbone 'none' has no hyperparameters; got {sorted(hp)}")
        if self.backbone != "none":
            try:
                check_hyperparameters(self.backbone, hp)
            except ValueError as err:
                raise ConfigError.at("model", "hyperparameters", f"is invalid: {err}") from None

    def overrides(self) -> dict:
        """The hyperparameters that are set, as `make_backbone` keywords.

        **Returns:** name → value, without the unset (None) ones.
        """
        return self.hyperparameters.as_dict()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training data: prepared dataset, split and packing."""

    dataset: Path = Path("prepared")
    """Prepared dataset directory (or its dataset.h5)."""
    split_by: Literal["protein", "trajectory", "time_block", "frame"] = "time_block"
    """Validation split: whole proteins (transferability), whole (temperature, replica) trajectories of
    every protein (many replicas/temperatures), contiguous time blocks of every trajectory with a gap (few
    trajectories), or random frames (leaks: validation frames sit next to training frames; comparison only)."""
    val_fraction: float = 0.1
    """Fraction held out for validation."""
    split_seed: int = 0
    """Seed of the split (the same for every ensemble member)."""
    split_gap: int = 5
    """time_block split: training frames within this many stored frames of a validation frame are dropped."""
    split_blocks: int = 10
    """time_block split: contiguous blocks per trajectory (whole blocks are held out)."""
    temperatures: tuple[float, ...] | None = None
    """Temperatures (K) to train on; None: all."""
    cutoff: float = 10.0
    """Radius-graph cutoff in Å (the backbone's cutoff)."""
    pair_min_sep: int = 2
    """Minimum sequence separation of non-bonded (repulsion) pairs."""
    target_nodes: int = 512
    """Beads per packed batch (per device)."""
    shuffle: Literal["frames", "blocks"] = "frames"
    """Shuffle frames uniformly or in blocks (read locality on large datasets)."""
    prefetch: int = 2
    """Batches built ahead in a background thread (0: in the training thread)."""
    workers: int = 0
    """Processes that build batches in parallel (0: the background thread alone). A GPU step outruns one
    core's batch building (3,000-4,000 frames/s); give it a few cores (each starts in seconds). `wait=` on
    the progress bar (`data_wait` in the logs) says whether the loader holds the step back."""
    max_val_frames: int | None = None
    """Cap on validation frames (evenly subsampled per protein); None: all."""

    def __post_init__(self) -> None:
        """Range checks (an invalid config cannot be constructed); a `ConfigError` names `data.key`."""
        check("data", [
            ("val_fraction", 0.0 <= self.val_fraction < 1.0, "in [0, 1)", self.val_fraction),
            ("cutoff", self.cutoff > 0, "> 0 Å", self.cutoff),
            ("pair_min_sep", self.pair_min_sep >= 1, ">= 1", self.pair_min_sep),
            ("target_nodes", self.target_nodes >= 1, ">= 1", self.target_nodes),
            ("prefetch", self.prefetch >= 0, ">= 0", self.prefetch),
            ("workers", self.workers >= 0, ">= 0", self.workers),
            ("max_val_frames", self.max_val_frames is None or self.max_val_frames >= 1, ">= 1 or null",
             self.max_val_frames),
        ])  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Multi-process runs (one process per node with all its devices)."""

    enabled: bool | None = None
    """Call jax.distributed.initialize: None auto-detects SLURM (SLURM_NTASKS > 1) or an explicit
    coordinator; False never."""
    coordinator_address: str | None = None
    """host:port of process 0 (None: from SLURM)."""
    num_processes: int | None = None
    """Number of processes (None: from SLURM)."""
    process_id: int | None = None
    """This process's index (None: from SLURM)."""
    local_device_ids: tuple[int, ...] | None = None
    """Devices this process uses (None: all visible)."""


@dataclasses.dataclass(frozen=True)
class SimValidationConfig:
    """Simulation-based validation during training: short batched Langevin runs of validation proteins,
    compared with the reference frames by Jensen-Shannon divergences (logged as `sim_*` validation
    metrics; `select_by: simulation` picks best.eqx by their mean, `sim_score`)."""

    enabled: bool = False
    """Run the simulations (off by default: they cost far more than the force validation)."""
    every: int = 5
    """Simulate every this many epochs of a stage (and at the end of every stage)."""
    proteins: tuple[str, ...] | None = None
    """Proteins to simulate; None: the validation split's proteins (split_by protein), else every protein."""
    max_proteins: int | None = 4
    """Simulate at most this many of them (evenly chosen in name order); None: all."""
    temperatures: tuple[float, ...] | None = None
    """Bath temperatures (K); each needs reference frames within 1 K. None: each protein's lowest
    reference temperature."""
    n_replicas: int = 4
    """Replicas per protein and temperature, started from evenly spaced reference frames."""
    n_steps: int = 2000
    """Langevin (BAOAB) steps per replica."""
    timestep_fs: float = 2.0
    """Time step in fs."""
    friction_per_ps: float = 1.0
    """Langevin friction in 1/ps."""
    save_every: int = 20
    """Steps between saved frames."""
    discard: float = 0.2
    """Fraction of the saved frames dropped at the start (relaxation from the reference frames)."""
    max_reference_frames: int = 2000
    """Reference frames per protein and temperature compared with (evenly subsampled)."""
    bins: int = 40
    """Histogram bins of the Jensen-Shannon divergences."""

    def __post_init__(self) -> None:
        """Range checks (an invalid config cannot be constructed); a `ConfigError` names `sim_validation.key`."""
        where = "sim_validation"
        check_integers(where, self, ("every", "max_proteins", "n_replicas", "n_steps", "save_every",
                                     "max_reference_frames", "bins"))  # fmt: skip
        check(where, [
            ("every", self.every >= 1, ">= 1", self.every),
            ("max_proteins", self.max_proteins is None or self.max_proteins >= 1, ">= 1 or null", self.max_proteins),
            ("proteins", self.proteins is None or len(self.proteins) >= 1, "a non-empty list or null", self.proteins),
            ("temperatures", self.temperatures is None or (len(self.temperatures) >= 1
                                                           and all(t > 0 for t in self.temperatures)),
             "positive temperatures (K) or null", self.temperatures),
            ("n_replicas", self.n_replicas >= 1, ">= 1", self.n_replicas),
            ("n_steps", self.n_steps >= 1, ">= 1", self.n_steps),
            ("timestep_fs", self.timestep_fs > 0, "> 0 fs", self.timestep_fs),
            ("friction_per_ps", self.friction_per_ps > 0, "> 0 1/ps", self.friction_per_ps),
            ("save_every", 1 <= self.save_every <= self.n_steps, f"in [1, n_steps = {self.n_steps}]",
             self.save_every),
            ("discard", 0.0 <= self.discard < 1.0, "in [0, 1)", self.discard),
            ("max_reference_frames", self.max_reference_frames >= 1, ">= 1", self.max_reference_frames),
            ("bins", self.bins >= 2, ">= 2", self.bins),
        ])  # fmt: skip

    @property
    def n_frames(self) -> int:
        """Frames saved per replica."""
        return self.n_steps // self.save_every


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Train a force field by force matching on a prepared dataset."""

    output: Path = Path("runs")
    """Runs directory; this run goes to <output>/<name> (ensemble members to <output>/<name>/member_<k>)."""
    name: str = "run"
    """Run name."""
    data: DataConfig = DataConfig()
    """Training data."""
    model: ModelConfig = ModelConfig()
    """The force field."""
    refine: RefineConfig = RefineConfig()
    """Optional first stage: quasi-Newton (BFGS/LBFGS) force matching of the prior parameters with the
    network frozen."""
    stages: tuple[StageConfig, ...] = DEFAULT_STAGES
    """Optimiser stages, run in order."""
    gamma_f: float = 1.0
    """Weight of the force MSE in the loss."""
    gamma_u: float = 0.0
    """Weight of the energy MSE in the loss (needs energies in the data; 0 by default)."""
    seed: int = 0
    """Seed of the parameters and the data order (member k of an ensemble uses seed + k)."""
    ensemble: int = 1
    """Train this many members with seeds seed..seed+N-1 on the same split."""
    keep: Literal["all", "best"] = "all"
    """Ensembles: keep every member's run directory, or only the best (by the select_by criterion)."""
    resume: str = "auto"
    """'auto': continue the run in the run directory from its last valid checkpoint (a directory holding a
    run with another config, or only corrupt checkpoints, is an error); 'never': start fresh (a directory
    that already holds a run is an error); 'restart': discard the run in the directory and start over; or
    a checkpoint directory path. A second train into a directory in use refuses (the directory is locked)."""
    checkpoint_every: int = 200
    """Save a checkpoint every this many steps (and at every epoch end)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk (oldest removed first)."""
    log_every: int = 10
    """Log training scalars every this many steps."""
    progress: bool = True
    """Show a progress bar with ETA."""
    max_steps: int | None = None
    """Stop after this many optimiser steps in total (testing, time-boxed runs); None: run all stages.
    A cut run still writes model.eqx (current parameters); --resume auto continues it."""
    val_every: int = 1
    """Validate every this many epochs (and at the end of every stage)."""
    sim_validation: SimValidationConfig = SimValidationConfig()
    """Simulation-based validation (short MD of validation proteins against their reference frames)."""
    select_by: Literal["force_mse", "simulation"] = "force_mse"
    """What best.eqx is (and which ensemble member is best): the lowest validation force loss, or the
    lowest simulation score `sim_score` (needs sim_validation.enabled)."""
    distributed: DistributedConfig = DistributedConfig()
    """Multi-process settings."""
    matmul_precision: MatmulPrecision = DEFAULT_PRECISION
    """Precision of float32 matrix products in training: 'float32' (true float32, default) or
    'tensorfloat32' (TF32 tensor cores on Ampere+ GPUs; refused when it moves the forces of the first
    training batch by more than 1e-3 relative). Simulation validation runs at float32."""

    def __post_init__(self) -> None:
        """Range and cross-option checks (an invalid config cannot be constructed); a `ConfigError` names
        `train.key` (a stage's option `train.stages[k].key`). The data, model and sim_validation parts
        check themselves when they are built."""
        where = "train"
        check_integers(where, self, ("seed", "ensemble", "checkpoint_every", "keep_checkpoints", "log_every",
                                     "max_steps", "val_every"))  # fmt: skip
        check(where, [
            ("name", bool(self.name) and "/" not in self.name, "a non-empty folder name without '/'", self.name),
            ("gamma_f", self.gamma_f >= 0, ">= 0", self.gamma_f),
            ("gamma_u", self.gamma_u >= 0, ">= 0", self.gamma_u),
            ("seed", self.seed >= 0, ">= 0", self.seed),
            ("ensemble", self.ensemble >= 1, ">= 1", self.ensemble),
            ("checkpoint_every", self.checkpoint_every >= 0, ">= 0 (0: only at the end of each epoch)",
             self.checkpoint_every),
            ("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1", self.keep_checkpoints),
            ("log_every", self.log_every >= 1, ">= 1", self.log_every),
            ("max_steps", self.max_steps is None or self.max_steps >= 0, ">= 0 or null", self.max_steps),
            ("val_every", self.val_every >= 1, ">= 1", self.val_every),
            ("select_by", self.select_by in ("force_mse", "simulation"), "force_mse or simulation", self.select_by),
        ])  # fmt: skip
        for k, s in enumerate(self.stages):
            try:
                s.check_fields()
            except ConfigError as e:
                raise e.under(where, f"stages[{k}]") from None
        names = [s.name for s in self.stages]
        problems = [
            (None, not self.stages and not self.refine.enabled,
             "no stages configured (stages is empty and refine.enabled is false)"),
            (None, len(set(names)) != len(names), f"stage names must be unique, got {names}"),
            (None, self.gamma_f + self.gamma_u == 0,
             f"need gamma_f, gamma_u >= 0 and not both 0, got {self.gamma_f}, {self.gamma_u}"),
            (None, self.model.backbone == "none" and self.model.prior is None,
             "model.backbone is 'none' and model.prior is None: nothing to train"),
            ("select_by", self.select_by == "simulation" and not self.sim_validation.enabled,
             "is 'simulation' but sim_validation.enabled is false: there would be no simulation score to select "
             "best.eqx by; pass --sim-validation.enabled (YAML: sim_validation: {enabled: true}) or --select-by "
             "force_mse"),
            (None, self.refine.enabled and self.model.prior is None,
             "refine.enabled needs model.prior (a fitted prior to refine)"),
        ]  # fmt: skip
        for key, bad, reason in problems:
            if bad:
                raise ConfigError.at(where, key, reason)
