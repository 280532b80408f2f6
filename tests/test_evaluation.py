"""Evaluation on the bundled demo data: the report's numbers agree with the trainer's validation and
with the dataset's noise-floor statistics; plots are written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cameo_eqx.evaluation import metrics as M

ROOT = Path(__file__).resolve().parents[1]
ALLEGRO_TINY = ("num_layers=1", "n_radial=6", "l_max=1", "n_tensor_features=4", "latent_dim=16",
                "two_body_hidden=[16]", "latent_hidden=[16]", "edge_energy_hidden=[16]", "embed_dim=8")  # fmt: skip


def test_errors_and_captured_fraction():
    ref = np.asarray([[1.0, -2.0, 0.0], [3.0, 0.0, 1.0]])
    pred = ref + np.asarray([[0.5, 0.0, -0.5], [0.0, 1.0, 0.0]])
    e = M.errors(pred, ref)
    assert e["mse"] == pytest.approx((0.25 + 0.25 + 1.0) / 6)
    assert e["mae"] == pytest.approx(2.0 / 6)
    assert e["rmse"] == pytest.approx(math.sqrt(e["mse"]))
    assert M.captured_fraction(10.0, 4.0, 2.0) == pytest.approx(0.75)
    assert M.captured_fraction(10.0, 4.0, None) is None


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from cameo_eqx.config import PrepareConfig
    from cameo_eqx.data.prepare import prepare
    from cameo_eqx.priors.config import FitPriorsConfig
    from cameo_eqx.priors.fit import fit_priors
    from cameo_eqx.training.config import DataConfig, ModelConfig, StageConfig, TrainConfig
    from cameo_eqx.training.trainer import Trainer

    tmp = tmp_path_factory.mktemp("evaldemo")
    prepare(PrepareConfig(inputs=(str(ROOT / "data" / "demo"),), output=tmp / "prep"))
    prior = fit_priors(FitPriorsConfig(dataset=tmp / "prep", output=tmp / "priors", plots=False))
    cfg = TrainConfig(output=tmp, name="run",
                      data=DataConfig(dataset=tmp / "prep", cutoff=8.0, target_nodes=256, val_fraction=0.1),
                      model=ModelConfig(backbone="allegro", preset="default", hyperparameters=ALLEGRO_TINY,
                                        prior=Path(prior)),
                      stages=(StageConfig(name="a", epochs=1, lr=2e-3),), progress=False, log_every=2)  # fmt: skip
    tr = Trainer(cfg, tmp / "run")
    tr.fit()
    return tmp, tr


def test_evaluate_report_matches_training_validation_and_noise_floor(demo_run):
    from cameo_eqx.data.store import PreparedDataset
    from cameo_eqx.evaluation import evaluate
    from cameo_eqx.training.config import EvaluateConfig

    tmp, tr = demo_run
    out = evaluate(EvaluateConfig(run=tmp / "run", max_frames=None))
    rep = json.loads((out / "report.json").read_text())
    # the same validation frames, the same model: the trainer's last validation RMSE
    val = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    last_val = [r for r in val if r["kind"] == "val"][-1]
    assert rep["overall"]["rmse"] == pytest.approx(last_val["force_rmse"], rel=1e-4)
    assert rep["n_frames"] == tr.dm.split.n_val
    # per-protein noise floors are the dataset's statistics; the overall one is their bead-weighted mean
    ds = PreparedDataset(tmp / "prep")
    w, num = 0.0, 0.0
    for name, e in rep["per_protein"].items():
        st = json.loads(ds.record(name).attrs["stats"])
        assert e["noise_floor"] == pytest.approx(st["noise_floor"])
        num += e["n_beads"] * st["noise_floor"]
        w += e["n_beads"]
        assert e["captured_fraction"] == pytest.approx(
            (e["msq_target"] - e["mse"]) / (e["msq_target"] - st["noise_floor"]))
    assert rep["noise"]["noise_floor"] == pytest.approx(num / w)
    # per-temperature bead counts add up; per-term: ml + prior terms, and the prior-only model
    assert sum(e["n_beads"] for e in rep["per_temperature"].values()) == rep["overall"]["n_beads"]
    assert {"ml", "bond", "angle", "dihedral", "repulsion", "prior"} <= set(rep["per_term"])
    for f in ("parity.png", "force_histograms.png", "loss_curves.png", "report.md"):
        assert (out / f).stat().st_size > 1000, f
    md = (out / "report.md").read_text()
    assert "noise floor" in md and "learnable part captured" in md
