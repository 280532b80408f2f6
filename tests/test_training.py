"""Training: the masked loss, the optimisers, one compile per bucket, resume (bit-identical), corrupt
checkpoints, the NaN guard, early stopping, ensembles. Tiny models on synthetic frames (CPU, fast)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cameo_eqx.data.testdata import synthetic_records
from cameo_eqx.graph import Capacity, frame_graph, pack
from cameo_eqx.modules.backbones import BackboneOverrides
from cameo_eqx.training import checkpoint as ckpt
from cameo_eqx.training.callbacks import NonFiniteError
from cameo_eqx.training.config import DataConfig, ModelConfig, StageConfig, TrainConfig
from cameo_eqx.training.datamodule import DataModule
from cameo_eqx.training.distributed import make_mesh, replicate, shard_leading
from cameo_eqx.training.optim import make_optimizer, needs_value
from cameo_eqx.training.task import Task
from cameo_eqx.training.trainer import Trainer, make_train_step

TINY = ModelConfig(backbone="painn", preset="small",
                   hyperparameters=BackboneOverrides(n_features=8, n_layers=1, n_radial_basis=4))


@pytest.fixture(scope="module")
def records():
    return synthetic_records([9, 14, 21], 10, seed=3, temperatures=(300.0, 350.0))


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    # synthetic_records frames are independent draws (no time correlation): a frame split does not leak here,
    # and the default time_block split's gaps would swallow these 5-frame trajectories
    data = DataConfig(cutoff=6.0, target_nodes=48, prefetch=1, split_by="frame")
    base = dict(output=tmp_path, name="run", data=data,
                model=TINY, stages=(StageConfig(name="a", epochs=2, lr=3e-3),
                                    StageConfig(name="b", optimizer="yogi", epochs=1, lr=1e-3, ema_decay=0.8)),
                progress=False, checkpoint_every=3, keep_checkpoints=10, log_every=1)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _fit(cfg: TrainConfig, records, **kw) -> Trainer:
    dm = DataModule(cfg.data, seed=cfg.seed, dataset=records)
    tr = Trainer(cfg, cfg.output / cfg.name, datamodule=dm, **kw)
    tr.fit()
    return tr


def _leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))]


# ----------------------------------------------------------------------------------------- the loss


def _model(n_species=20):
    from cameo_eqx.modules import make_backbone

    return make_backbone("painn", n_species, 6.0, "small", key=jax.random.PRNGKey(0), n_features=8, n_layers=1,
                         n_radial_basis=4)  # fmt: skip


def test_loss_is_masked_mse_over_real_beads(records):
    """The loss equals a NumPy MSE over real beads; more padding changes nothing (value and gradient);
    NaN target forces (absent) are left out; RMSE is in kcal/mol/Å per component."""
    from cameo_eqx.training.task import predict

    rec = records[1]
    fgs = [frame_graph(rec.positions[k], rec.topology, 6.0, forces=rec.forces[k]) for k in range(3)]
    tot = np.sum([f.sizes for f in fgs], axis=0)
    tight = pack(fgs, Capacity(*[int(x) for x in tot[:2]], 3, *[int(x) for x in tot[3:]]))
    loose = pack(fgs, Capacity(*[int(x) + 17 for x in tot[:2]], 5, *[int(x) + 9 for x in tot[3:]]))
    model, task = _model(), Task()
    predict = eqx.filter_jit(predict)
    task_loss = eqx.filter_jit(lambda m, b: task.loss(m, b))
    _, f = predict(model, tight.to_device())
    n = int(tight.node_mask.sum())
    want = np.mean((np.asarray(f)[:n] - rec.forces[:3].reshape(-1, 3)) ** 2)
    l1 = float(task_loss(model, tight.to_device()))
    l2 = float(task_loss(model, loose.to_device()))
    np.testing.assert_allclose(l1, want, rtol=1e-5)
    np.testing.assert_allclose(l2, l1, rtol=1e-6)
    grad = eqx.filter_jit(eqx.filter_grad(lambda m, b: task.loss(m, b)))
    g1 = grad(model, tight.to_device())
    g2 = grad(model, loose.to_device())
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    # a frame without targets (NaN forces) is left out of the loss
    nof = fgs[2]._replace(forces=np.full_like(fgs[2].forces, np.nan))
    mixed = pack([fgs[0], fgs[1], nof], loose.capacity)
    m2 = sum(len(x.positions) for x in fgs[:2])
    want2 = np.mean((np.asarray(f)[:m2] - rec.forces[:2].reshape(-1, 3)) ** 2)
    s = eqx.filter_jit(task.sums)(model, mixed.to_device())
    assert float(s.n_f) == 3 * m2
    np.testing.assert_allclose(float(task_loss(model, mixed.to_device())), want2, rtol=1e-5)
    # energy term: γ_U adds the per-frame energy MSE where energies are known
    e, _ = predict(model, tight.to_device())
    fe = [fg._replace(energy=float(e[i]) + 2.0 * (i + 1)) for i, fg in enumerate(fgs)]
    eb = pack(fe, tight.capacity).to_device()
    te = Task(gamma_f=0.0, gamma_u=1.0)
    np.testing.assert_allclose(float(eqx.filter_jit(te.loss)(model, eb)), np.mean([4.0, 16.0, 36.0]), rtol=1e-4)


@pytest.mark.parametrize("name", ["adabelief", "yogi", "adam", "adamw", "lion", "polyak_sgd", "fromage"])
def test_every_optimizer_decreases_a_quadratic(name):
    st = StageConfig(name=name, optimizer=name, epochs=1, lr=0.05, warmup_fraction=0.0, weight_decay=1e-4)
    opt = make_optimizer(st, 50)
    target = jnp.asarray([1.0, -2.0, 0.5])
    params = {"w": jnp.asarray([0.3, 0.1, -0.2]), "b": jnp.ones((2, 2))}

    def loss(p):
        return jnp.sum((p["w"] - target) ** 2) + jnp.sum(p["b"] ** 2)

    state = opt.init(params)
    l0 = float(loss(params))
    for _ in range(20):
        v, g = jax.value_and_grad(loss)(params)
        kw = {"value": v} if needs_value(st) else {}
        up, state = opt.update(g, state, params, **kw)
        params = optax.apply_updates(params, up)
    assert float(loss(params)) < l0


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_by_global_norm_equals_optax(max_norm):
    """Our clip (one reduction over the concatenated leaves) gives optax's updates and state, clipped (norm
    above `max_norm`) and not; a norm over one leaf only, or a wrong scale, fails this."""
    from cameo_eqx.training.optim import clip_by_global_norm, global_norm

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    g = {"w": jax.random.normal(k1, (5, 3)), "b": jax.random.normal(k2, (3,)), "s": jax.random.normal(k3, ())}
    np.testing.assert_allclose(float(global_norm(g)), float(optax.tree.norm(g)), rtol=1e-6)
    assert float(global_norm({})) == 0.0
    ours, theirs = clip_by_global_norm(max_norm), optax.clip_by_global_norm(max_norm)
    assert jax.tree.structure(ours.init(g)) == jax.tree.structure(theirs.init(g))
    got, _ = jax.jit(ours.update)(g, ours.init(g))
    want, _ = theirs.update(g, theirs.init(g))
    for k in g:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-6, atol=1e-7)
    clipped = float(optax.tree.norm(got))
    assert clipped == pytest.approx(min(max_norm, float(optax.tree.norm(g))), rel=1e-5)


def test_schedule_warmup_then_cosine():
    from cameo_eqx.training.optim import make_schedule

    s = make_schedule(StageConfig(lr=1e-2, warmup_fraction=0.1, end_lr_factor=0.01), 100)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(10)), 1e-2, rtol=1e-6)
    np.testing.assert_allclose(float(s(100)), 1e-4, rtol=1e-4)
    assert float(s(40)) > float(s(70)) > float(s(95))


def test_bad_configs_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="stages\\[0\\].optimizer"):
        _cfg(tmp_path, stages=(StageConfig(optimizer="sgdx"),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="refine.enabled needs model.prior"):
        from cameo_eqx.priors.config import RefineConfig

        _cfg(tmp_path, refine=RefineConfig(enabled=True))


# ----------------------------------------------------------------------------------------- the step


def test_step_compiles_once_per_bucket(records):
    """Two capacities, three rounds each: exactly two traces (eqx.debug.assert_max_traces)."""
    caps = []
    batches = []
    for sizes in ([9, 14], [21, 21, 9]):
        rec = {r.n_beads: r for r in records}
        fgs = [frame_graph(rec[n].positions[0], rec[n].topology, 6.0, forces=rec[n].forces[0]) for n in sizes]
        tot = np.sum([f.sizes for f in fgs], axis=0)
        cap = Capacity(*[int(x) + 4 for x in tot])
        caps.append(cap)
        batches.append(jax.tree.map(lambda x: x[None], pack(fgs, cap)))
    mesh = make_mesh(jax.devices()[:1])
    model = _model()
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.adam(1e-3)
    step = make_train_step(Task(), opt, mesh, max_traces=2)
    p, o, s = replicate(params, mesh), replicate(opt.init(params), mesh), replicate(static, mesh)
    for _ in range(3):
        for b in batches:
            p, o, _, out = step(p, s, o, None, shard_leading(b, mesh))
            assert bool(out["finite"])
    with pytest.raises(Exception, match="trace"):
        b3 = jax.tree.map(lambda x: x, batches[0])
        pad = pack([frame_graph(records[0].positions[0], records[0].topology, 6.0, forces=records[0].forces[0])],
                   Capacity(*[c + 8 for c in caps[0]]))  # fmt: skip
        del b3
        step(p, s, o, None, shard_leading(jax.tree.map(lambda x: x[None], pad), mesh))


def test_trainer_one_trace_per_bucket_and_logs(tmp_path, records):
    cfg = _cfg(tmp_path, stages=(StageConfig(name="a", epochs=2, lr=3e-3),), ensemble=1)
    dm = DataModule(cfg.data, seed=0, dataset=records)
    tr = Trainer(cfg, tmp_path / "run", datamodule=dm, max_traces=dm.n_buckets)
    tr.fit()
    run = tmp_path / "run"
    for f in ("model.eqx", "best.eqx", "config.json", "summary.json", "metrics.jsonl"):
        assert (run / f).exists(), f
    assert list((run / "tb").iterdir())
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in recs} == {"train", "val"}
    assert all(np.isfinite(r["loss"]) for r in recs)
    assert json.loads((run / "config.json").read_text())["stages"][0]["optimizer"] == "adabelief"


# ----------------------------------------------------------------------------------------- resume


def test_resume_is_bit_identical_and_skips_a_corrupt_checkpoint(tmp_path, records, capsys):
    """Uninterrupted vs stopped after 5 steps (mid-epoch, stage 1) with the newest checkpoint then
    truncated, and resumed from the previous one: the final parameters are bit-identical on CPU
    (same compiled step, same inputs; the data order is a pure function of (seed, epoch))."""
    full = _fit(_cfg(tmp_path / "a"), records)
    cut = _cfg(tmp_path / "b", max_steps=5)
    part = _fit(cut, records)
    assert part.global_step == 5
    cks = ckpt.list_checkpoints(tmp_path / "b" / "run" / "checkpoints")
    assert [c.name for c in cks] == ["step_000000003", "step_000000005"]
    # the cut run still leaves its current parameters, marked unfinished
    assert (tmp_path / "b" / "run" / "model.eqx").exists()
    assert json.loads((tmp_path / "b" / "run" / "summary.json").read_text())["finished"] is False
    # truncate the newest checkpoint: detected, reported, the previous one is used
    sp = cks[-1] / ckpt.STATE_FILE
    sp.write_bytes(sp.read_bytes()[:-100])
    with pytest.raises(ckpt.CorruptCheckpointError, match="truncated"):
        ckpt.read_meta(cks[-1])
    path, meta = ckpt.latest_valid(cks[-1].parent)
    assert path == cks[0] and meta["global_step"] == 3 and meta["step_in_epoch"] == 3
    assert "using the previous checkpoint" in capsys.readouterr().out
    resumed = _fit(dataclasses.replace(cut, max_steps=None), records)
    assert resumed.global_step == full.global_step
    for a, b in zip(_leaves(full.model), _leaves(resumed.model)):
        np.testing.assert_array_equal(a, b)
    assert resumed.best_val == full.best_val
    # a corrupted (bit-flipped) checkpoint is caught by the checksum
    last = ckpt.list_checkpoints(tmp_path / "b" / "run" / "checkpoints")[-1]
    raw = bytearray((last / ckpt.STATE_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (last / ckpt.STATE_FILE).write_bytes(bytes(raw))
    with pytest.raises(ckpt.CorruptCheckpointError, match="checksum"):
        ckpt.read_meta(last)


@pytest.mark.slow
def test_resume_never_refuses_existing_checkpoints(tmp_path, records):
    _fit(_cfg(tmp_path, max_steps=3, stages=(StageConfig(name="a", epochs=1),)), records)
    with pytest.raises(ValueError, match="already has checkpoints"):
        _fit(_cfg(tmp_path, resume="never", stages=(StageConfig(name="a", epochs=1),)), records)


# ----------------------------------------------------------------------------------------- guards


def test_nan_guard_names_step_and_batch_and_keeps_good_state(tmp_path, records, monkeypatch):
    from cameo_eqx.training import trainer as T

    real = T.build_model

    def poisoned(cfg, n_species, key):
        m = real(cfg, n_species, key)
        return eqx.tree_at(lambda f: f.backbone.readout.layers[-1].weight, m,
                           m.backbone.readout.layers[-1].weight * jnp.nan)  # fmt: skip

    monkeypatch.setattr(T, "build_model", poisoned)
    cfg = _cfg(tmp_path, stages=(StageConfig(name="a", epochs=1),))
    with pytest.raises(NonFiniteError, match=r"global step 1 .*stage 'a', epoch 0.*batch: epoch 0 step 0, frames syn"):
        _fit(cfg, records)
    assert not ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")


def test_nonfinite_update_is_not_applied(records):
    mesh = make_mesh(jax.devices()[:1])
    rec = records[0]
    fg = frame_graph(rec.positions[0], rec.topology, 6.0, forces=rec.forces[0])
    b = pack([fg], fg.sizes)
    bad = dataclasses.replace(b, positions=np.where(np.arange(len(b.positions))[:, None] == 0, np.nan, b.positions))
    model = _model()
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.sgd(1e-2)
    step = make_train_step(Task(), opt, mesh)
    p, _, _, out = step(replicate(params, mesh), replicate(static, mesh), replicate(opt.init(params), mesh), None,
                        shard_leading(jax.tree.map(lambda x: x[None], bad), mesh))  # fmt: skip
    assert not bool(out["finite"])
    for a, b_ in zip(jax.tree.leaves(p), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b_))


@pytest.mark.slow
def test_early_stopping(tmp_path, records):
    st = StageConfig(name="a", epochs=6, lr=1e-3, early_stopping=1, min_delta=1e9)
    tr = _fit(_cfg(tmp_path, stages=(st,)), records)
    assert tr.stopped_early
    assert [h["epoch"] for h in tr.history] == [1, 2]


@pytest.mark.slow
def test_ensemble_reports_spread_and_keeps_best(tmp_path, records, monkeypatch):
    from cameo_eqx.training import trainer as T

    real_init = T.Trainer.__init__

    def init(self, cfg, run_dir, **kw):
        real_init(self, cfg, run_dir, datamodule=DataModule(cfg.data, seed=cfg.seed, dataset=records), **kw)

    monkeypatch.setattr(T.Trainer, "__init__", init)
    cfg = _cfg(tmp_path, stages=(StageConfig(name="a", epochs=1),), ensemble=2, keep="best")
    run = T.train_ensemble(cfg)
    rep = json.loads((run / "ensemble.json").read_text())
    vals = [m["best_val"] for m in rep["members"]]
    assert rep["best_member"] == int(np.argmin(vals))
    assert [m["seed"] for m in rep["members"]] == [0, 1]
    assert rep["val_loss_std"] == pytest.approx(float(np.std(vals, ddof=1)))
    assert (run / "model.eqx").exists()
    kept = sorted(p.name for p in run.iterdir() if p.name.startswith("member_"))
    assert kept == [f"member_{rep['best_member']}"]
