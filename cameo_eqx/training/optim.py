"""Optimisers and learning-rate schedules of the optimiser stages (optax).

Every stage is `clip_by_global_norm → add_decayed_weights → optimiser(schedule)`: the raw gradient is
clipped first, so a single bad batch cannot produce a large update.
"""

from __future__ import annotations

import optax

from .config import StageConfig


def make_schedule(stage: StageConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `stage.lr` over `warmup_fraction` of the steps, then cosine decay to
    `lr * end_lr_factor` at `total_steps`.

    **Arguments:**

    - `stage`: the stage config.
    - `total_steps`: optimiser steps of the stage (>= 1).

    **Returns:** an optax schedule (step → learning rate).
    """
    total = max(int(total_steps), 1)
    warm = int(round(stage.warmup_fraction * total))
    if warm == 0:
        return optax.cosine_decay_schedule(stage.lr, total, alpha=stage.end_lr_factor)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=stage.lr, warmup_steps=warm, decay_steps=max(total, warm + 1),
        end_value=stage.lr * stage.end_lr_factor,
    )  # fmt: skip


def make_optimizer(stage: StageConfig, total_steps: int) -> optax.GradientTransformationExtraArgs:
    """The stage's gradient transformation `clip → weight decay → optimiser`.

    Polyak SGD needs the loss value: call `update(..., value=loss)` (the trainer does).

    **Arguments:**

    - `stage`: the stage config (optimiser name, lr, clipping, weight decay, moments).
    - `total_steps`: optimiser steps of the stage (for the schedule).

    **Returns:** an optax transformation.
    """
    stage.check_fields()
    sched = make_schedule(stage, total_steps)
    name = stage.optimizer
    parts: list = []
    if stage.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(stage.clip_norm))
    if stage.weight_decay and name != "adamw":
        parts.append(optax.add_decayed_weights(stage.weight_decay))
    if name == "adabelief":
        opt = optax.adabelief(sched, b1=stage.b1, b2=stage.b2, eps=stage.eps)
    elif name == "yogi":
        opt = optax.yogi(sched, b1=stage.b1, b2=stage.b2, eps=stage.eps)
    elif name == "adam":
        opt = optax.adam(sched, b1=stage.b1, b2=stage.b2, eps=stage.eps)
    elif name == "adamw":
        opt = optax.adamw(sched, b1=stage.b1, b2=stage.b2, eps=stage.eps, weight_decay=stage.weight_decay)
    elif name == "lion":
        opt = optax.lion(sched, b1=stage.b1, b2=min(stage.b2, 0.99), weight_decay=0.0)
    elif name == "polyak_sgd":
        opt = optax.polyak_sgd(max_learning_rate=stage.lr, f_min=0.0, eps=stage.eps)
    elif name == "fromage":
        opt = optax.fromage(sched)
    else:  # pragma: no cover (validate() catches it)
        raise ValueError(f"unknown optimizer {name!r}")
    parts.append(opt)
    return optax.chain(*parts)


def needs_value(stage: StageConfig) -> bool:
    """Whether the optimiser's update needs the loss value (Polyak SGD)."""
    return stage.optimizer == "polyak_sgd"
