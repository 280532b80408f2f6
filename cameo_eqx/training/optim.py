"""Optimisers and learning-rate schedules of the optimiser stages (optax).

Every stage is `clip_by_global_norm → add_decayed_weights → optimiser(schedule)`: the raw gradient is
clipped first, so a single bad batch cannot produce a large update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PyTree

from .config import StageConfig


def global_norm(tree: PyTree) -> Float[Array, ""]:
    """The 2-norm of all of a pytree's array leaves together (`optax.tree.norm`'s value).

    One reduction over the leaves' concatenation: `optax.tree.norm` reduces each leaf on its own, one
    kernel per parameter array on a GPU, once for the trainer's norm and once for clipping (PaiNN's
    training step on the H200 compile: 400 kernels with per-leaf norms, 324 with this one;
    `benchmarks/bench_hlo.py painn --case train --target h200`).

    **Arguments:** `tree`, a pytree of arrays (gradients, updates).

    **Returns:** a scalar, 0 for a tree without leaves.
    """
    leaves = [jnp.ravel(x) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros(())
    return jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate(leaves))))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm` with the norm of `global_norm`: updates scaled by `max_norm / norm` when
    their norm exceeds `max_norm`. Its state is optax's (empty), so optimiser states and checkpoints are
    unchanged. The trainer's gradient norm is the same expression on the same gradient, which XLA computes
    once.

    **Arguments:** `max_norm`, the largest norm let through (> 0).

    **Returns:** an optax transformation.
    """

    def update(updates, state, params=None):
        del params
        norm = global_norm(updates)
        keep = norm < max_norm
        return jax.tree.map(lambda t: jax.lax.select(keep, t, (t / norm.astype(t.dtype)) * max_norm), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


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
        parts.append(clip_by_global_norm(stage.clip_norm))
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
