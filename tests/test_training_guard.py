"""The device-side NaN guard of the training loop (issue 15): the host reads it only at log steps,
checkpoints and epoch ends, yet a non-finite step still stops training naming the step where it first
happened; the guarded, donating step gives the same parameters as the plain one."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

from cameo_eqx.training import checkpoint as ckpt
from cameo_eqx.training import trainer as T
from cameo_eqx.training.callbacks import NonFiniteError
from cameo_eqx.training.config import DataConfig, StageConfig, TrainConfig
from cameo_eqx.training.datamodule import DataModule
from cameo_eqx.training.distributed import make_mesh, replicate, shard_leading
from cameo_eqx.training.optim import make_optimizer
from cameo_eqx.training.task import Task

from tests.test_training import TINY, records  # noqa: F401  (the same tiny model and synthetic frames)


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    data = DataConfig(cutoff=6.0, target_nodes=48, prefetch=1, split_by="frame")
    base = dict(output=tmp_path, name="run", data=data, model=TINY,
                stages=(StageConfig(name="a", epochs=2, lr=3e-3),), progress=False, checkpoint_every=0,
                keep_checkpoints=10, log_every=3)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _poison(monkeypatch, bad_index: int):
    """Every epoch's batch `bad_index` gets NaN positions; counts the batches handed out."""
    real = DataModule.train_batches
    seen = {"n": 0}

    def batches(self, epoch, start=0):
        for i, (b, desc) in enumerate(real(self, epoch, start), start=start):
            seen["n"] += 1
            if i == bad_index:
                b = dataclasses.replace(b, positions=np.full_like(b.positions, np.nan))
            yield b, desc

    monkeypatch.setattr(DataModule, "train_batches", batches)
    return seen


def test_nan_mid_epoch_stops_naming_the_first_bad_step(tmp_path, records, monkeypatch):
    """log_every 100: the guard is read only at the epoch end, after steps past the bad one ran, and the
    error still names global step 3 (epoch 0, step 2 of the epoch, its batch); no checkpoint is written."""
    seen = _poison(monkeypatch, 2)
    cfg = _cfg(tmp_path, log_every=100)
    dm = DataModule(cfg.data, seed=cfg.seed, dataset=records)
    assert dm.steps_per_epoch(0) > 4
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\).*global step 3 \(stage 'a', epoch 0, step 2 "
                                             r"of the epoch; batch: epoch 0 step 2, frames syn"):  # fmt: skip
        T.Trainer(cfg, tmp_path / "run", datamodule=dm).fit()
    assert seen["n"] == dm.steps_per_epoch(0) > 3  # the rest of the epoch ran before the host read
    assert not ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")


def test_nan_is_caught_before_a_checkpoint(tmp_path, records, monkeypatch):
    _poison(monkeypatch, 1)
    cfg = _cfg(tmp_path, log_every=100, checkpoint_every=4)
    dm = DataModule(cfg.data, seed=cfg.seed, dataset=records)
    with pytest.raises(NonFiniteError, match=r"global step 2 \(stage 'a', epoch 0, step 1 of the epoch"):
        T.Trainer(cfg, tmp_path / "run", datamodule=dm).fit()
    assert not ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")


def test_host_reads_the_guard_every_log_every_steps(tmp_path, records, monkeypatch):
    """log_every k: about steps/k host reads (+ one per epoch end), not one per step. The logs' `data_wait`
    is the share of the time the loop waited for batches: a loader slowed by 50 ms a batch dominates."""
    calls = {"n": 0}
    real = T.read_device

    def counting(tree):
        calls["n"] += 1
        return real(tree)

    monkeypatch.setattr(T, "read_device", counting)
    real_batches = DataModule.train_batches

    def slow(self, epoch, start=0):
        for item in real_batches(self, epoch, start):
            time.sleep(0.05)
            yield item

    monkeypatch.setattr(DataModule, "train_batches", slow)
    k = 3
    cfg = _cfg(tmp_path, log_every=k)
    dm = DataModule(cfg.data, seed=cfg.seed, dataset=records)
    tr = T.Trainer(cfg, tmp_path / "run", datamodule=dm)
    tr.fit()
    steps, epochs = tr.global_step, cfg.stages[0].epochs
    assert steps == sum(dm.steps_per_epoch(e) for e in range(epochs)) and steps >= 3 * k
    assert steps // k <= calls["n"] <= steps // k + epochs, (calls, steps)
    # the loggers still get every log step
    import json

    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["kind"] == "train"] == list(range(k, steps + 1, k))
    assert all(np.isfinite(r["loss"]) and r["frames_per_s"] > 0 for r in recs if r["kind"] == "train")
    waits = [r["data_wait"] for r in recs if r["kind"] == "train"]
    assert all(0.0 <= w <= 1.0 for w in waits) and max(waits) > 0.5, waits


def test_guarded_donating_step_matches_the_plain_step(records):
    """The trainer's step (device guard, donated state) gives bit-identical parameters to the plain step
    over the same batches; after a non-finite batch it applies no update at all and records that step."""
    cfg = _cfg(Path("/nonexistent"))
    dm = DataModule(cfg.data, seed=0, dataset=records)
    mesh = make_mesh(jax.devices()[:1])
    model = T.build_model(cfg, dm.n_species, jax.random.PRNGKey(0))
    params, static = eqx.partition(model, T.trainable_spec(model, cfg))
    st = dataclasses.replace(cfg.stages[0], ema_decay=0.9)
    opt = make_optimizer(st, 10)
    batches = [shard_leading(b, mesh) for b, _ in list(dm.train_batches(0))[:4]]
    S = replicate(static, mesh)

    plain = T.make_train_step(Task(), opt, mesh, ema_decay=0.9)
    p, o, e = replicate(params, mesh), replicate(opt.init(params), mesh), replicate(params, mesh)
    for b in batches:
        p, o, e, _ = plain(p, S, o, e, b)

    guarded = T.make_train_step(Task(), opt, mesh, ema_decay=0.9, guard=True, donate=True)
    fresh = lambda t: jax.tree.map(lambda x: jax.numpy.array(x, copy=True), t)  # noqa: E731
    q, oq, eq, g = fresh(params), fresh(opt.init(params)), fresh(params), replicate(T.new_guard(5), mesh)
    for b in batches:
        q, oq, eq, g, _ = guarded(q, S, oq, eq, g, b)
    for a, b_ in zip(jax.tree.leaves((p, o, e)), jax.tree.leaves((q, oq, eq))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b_))
    assert int(g["step"]) == 9 and int(g["bad_step"]) == -1

    bad = shard_leading(dataclasses.replace(list(dm.train_batches(0))[0][0],
                                            positions=np.full_like(batches[0].positions, np.nan)), mesh)  # fmt: skip
    before = [np.asarray(x) for x in jax.tree.leaves((q, oq, eq))]
    q, oq, eq, g, out = guarded(q, S, oq, eq, g, bad)
    assert not bool(out["finite"]) and int(g["bad_step"]) == 10 and np.isnan(float(g["bad_loss"]))
    q, oq, eq, g, out = guarded(q, S, oq, eq, g, batches[0])  # finite, but after the bad step: not applied
    assert bool(out["finite"]) and int(g["bad_step"]) == 10 and int(g["step"]) == 11
    for a, b_ in zip(before, jax.tree.leaves((q, oq, eq))):
        np.testing.assert_array_equal(a, np.asarray(b_))
