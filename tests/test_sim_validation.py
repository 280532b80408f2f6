"""Simulation-based validation during training: the callback's metrics (JSON lines, TensorBoard), a blow-up
scored as the worst instead of a crash, best.eqx chosen by the simulation score (also in ensembles), and
the config refusing select_by simulation without simulations. A prior-only model on the bundled demo
villin (CPU, a few hundred MD steps)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cameo_eqx.config import ConfigError
from cameo_eqx.data.store import PreparedDataset
from cameo_eqx.modules import ForceField, load_config
from cameo_eqx.priors.config import PriorConfig
from cameo_eqx.priors.prior import Prior
from cameo_eqx.training.config import DataConfig, ModelConfig, SimValidationConfig, StageConfig, TrainConfig
from cameo_eqx.training.datamodule import DataModule
from cameo_eqx.training.sim_validation import SCORE_KEYS, SimValidation
from cameo_eqx.training.trainer import Trainer

SIM = SimValidationConfig(enabled=True, every=1, n_replicas=2, n_steps=200, save_every=10, timestep_fs=2.0)


@pytest.fixture(scope="module")
def prior_yaml(tmp_path_factory) -> Path:
    return Prior.from_prior_config(PriorConfig()).save(tmp_path_factory.mktemp("prior") / "prior.yaml")


@pytest.fixture(scope="module")
def records(villin_prepared):
    """The demo villin, every 6th frame (a few training steps per epoch)."""
    with PreparedDataset(villin_prepared) as ds:
        rec = ds.record(ds.names[0]).load()
    k = np.arange(0, rec.n_frames, 6)
    return [dataclasses.replace(rec, positions=rec.positions[k], forces=rec.forces[k],
                                temperature=rec.temperature[k], replica=rec.replica[k])]  # fmt: skip


def _cfg(prior: Path, out: Path, **kw) -> TrainConfig:
    base = dict(output=out, name="run", data=DataConfig(cutoff=8.0, target_nodes=128, prefetch=0, split_by="frame",
                                                        val_fraction=0.2),
                model=ModelConfig(backbone="none", prior=prior),
                stages=(StageConfig(name="a", epochs=2, lr=3e-3),), progress=False, checkpoint_every=0,
                log_every=1, sim_validation=SIM, select_by="simulation")  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _fit(cfg: TrainConfig, records) -> Trainer:
    tr = Trainer(cfg, Path(cfg.output) / cfg.name, datamodule=DataModule(cfg.data, seed=cfg.seed, dataset=records))
    tr.fit()
    return tr


def _val_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "val"]


def test_select_by_simulation_needs_sim_validation(prior_yaml, tmp_path):
    # such a config cannot be constructed (so no Trainer can be given one)
    with pytest.raises(ConfigError, match="select_by is 'simulation' but sim_validation.enabled is false"):
        _cfg(prior_yaml, tmp_path, sim_validation=SimValidationConfig())
    with pytest.raises(ConfigError, match="sim_validation.n_steps"):
        _cfg(prior_yaml, tmp_path, sim_validation=dataclasses.replace(SIM, n_steps=0))
    _cfg(prior_yaml, tmp_path, select_by="force_mse", sim_validation=SimValidationConfig())


def test_callback_logs_sim_metrics_and_selects_best_by_them(prior_yaml, records, tmp_path):
    run = _fit(_cfg(prior_yaml, tmp_path), records).run_dir
    val = _val_records(run)
    assert len(val) == 2  # every epoch (every=1)
    name = records[0].name
    for r in val:
        assert "loss" in r and 0.0 <= r["sim_score"] <= 1.0
        for k in SCORE_KEYS:
            assert 0.0 <= r[f"sim_js_{k}"] <= 1.0, k
            assert r[f"sim_js_{k}/{name}"] == pytest.approx(r[f"sim_js_{k}"])
        assert r["sim_score"] == pytest.approx(np.mean([r[f"sim_js_{k}"] for k in SCORE_KEYS]))
        assert r["sim_blowups"] == 0
    best = min(val, key=lambda r: r["sim_score"])
    meta = load_config(run / "best.eqx")["config"]
    assert meta["select_by"] == "simulation"
    assert meta["sim_score"] == pytest.approx(best["sim_score"])
    assert meta["global_step"] == best["step"]
    summ = json.loads((run / "summary.json").read_text())
    assert summ["best_sim_score"] == pytest.approx(best["sim_score"])
    assert [h["sim_score"] for h in summ["history"]] == [r["sim_score"] for r in val]
    # TensorBoard got the scalars (their tags are stored verbatim in the event file)
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert events and b"val/sim_score" in b"".join(p.read_bytes() for p in events)


def test_injected_scores_pick_the_lowest_and_force_mse_ignores_them(prior_yaml, records, tmp_path, monkeypatch):
    """Scripted scores 0.5, 0.2, 0.4 over three epochs: best.eqx is epoch 2's model under select_by
    simulation, while force_mse keeps the lowest validation loss."""
    scores = iter([0.5, 0.2, 0.4] * 2)
    monkeypatch.setattr(SimValidation, "on_fit_start", lambda self, trainer: None)
    monkeypatch.setattr(SimValidation, "evaluate", lambda self, trainer, model: {"sim_score": next(scores)})
    stages = (StageConfig(name="a", epochs=3, lr=3e-3),)
    run = _fit(_cfg(prior_yaml, tmp_path, stages=stages), records).run_dir
    val = _val_records(run)
    assert [r["sim_score"] for r in val] == [0.5, 0.2, 0.4]
    meta = load_config(run / "best.eqx")["config"]
    assert meta["global_step"] == val[1]["step"] and meta["sim_score"] == 0.2
    run2 = _fit(_cfg(prior_yaml, tmp_path, name="by_force", stages=stages, select_by="force_mse"), records).run_dir
    val2 = _val_records(run2)
    meta2 = load_config(run2 / "best.eqx")["config"]
    assert meta2["global_step"] == min(val2, key=lambda r: r["loss"])["step"]


def test_ensemble_members_and_best_member_by_simulation(prior_yaml, records, tmp_path, monkeypatch):
    from cameo_eqx.training import trainer as T

    real_init = T.Trainer.__init__

    def init(self, cfg, run_dir, **kw):
        real_init(self, cfg, run_dir, datamodule=DataModule(cfg.data, seed=cfg.seed, dataset=records), **kw)

    # member 0 simulates badly whatever its loss, member 1 well
    monkeypatch.setattr(T.Trainer, "__init__", init)
    monkeypatch.setattr(SimValidation, "on_fit_start", lambda self, trainer: None)
    monkeypatch.setattr(SimValidation, "evaluate",
                        lambda self, trainer, model: {"sim_score": 0.9 - 0.5 * trainer.cfg.seed - 0.01 * trainer.epoch})
    cfg = _cfg(prior_yaml, tmp_path, ensemble=2, keep="best")
    run = T.train_ensemble(cfg)
    rep = json.loads((run / "ensemble.json").read_text())
    assert rep["select_by"] == "simulation" and rep["best_member"] == 1
    assert [m["best_sim_score"] for m in rep["members"]] == pytest.approx([0.88, 0.38])
    assert load_config(run / "best.eqx")["config"]["sim_score"] == pytest.approx(0.38)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("member_")) == ["member_1"]


def test_blowup_scores_worst_and_is_logged(prior_yaml, records, capsys):
    """A time step far too long blows the simulation up: every divergence 1, counted and named, no raise."""
    cfg = _cfg(prior_yaml, Path("unused"), sim_validation=dataclasses.replace(SIM, timestep_fs=200.0, n_steps=100))
    dm = SimpleNamespace(dataset=records, split=SimpleNamespace(val={records[0].name: np.arange(3)}))
    trainer = SimpleNamespace(is_main=True, dm=dm, stage_name="a", epoch=1, global_step=7)
    model = ForceField(None, Prior.load(prior_yaml), cutoff=8.0)
    out = SimValidation(cfg).evaluate(trainer, model)
    assert out["sim_score"] == 1.0 and out["sim_blowups"] == 1.0
    assert all(out[f"sim_js_{k}"] == 1.0 for k in SCORE_KEYS)
    assert records[0].name in out["sim_blowup_messages"]
    assert "blew up" in capsys.readouterr().out


def test_resume_of_a_run_written_before_these_options(prior_yaml, records, tmp_path):
    """A run folder whose config.json predates sim_validation/select_by resumes (the absent options take
    their defaults); switching select_by on a resume is a different config and refused."""
    cfg = _cfg(prior_yaml, tmp_path, select_by="force_mse", sim_validation=SimValidationConfig(),
               stages=(StageConfig(name="a", epochs=1, lr=3e-3),))  # fmt: skip
    run = _fit(cfg, records).run_dir
    old = json.loads((run / "config.json").read_text())
    del old["sim_validation"], old["select_by"]
    (run / "config.json").write_text(json.dumps(old))
    _fit(cfg, records)  # resumes the finished run: nothing refused
    with pytest.raises(ValueError, match="select_by"):
        _fit(dataclasses.replace(cfg, select_by="simulation", sim_validation=SIM), records)
