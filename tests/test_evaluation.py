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
ALLEGRO_TINY = dict(n_layers=1, n_radial_basis=6, l_max=1, n_tensor_features=4, latent_dim=16,
                    two_body_hidden=(16,), latent_hidden=(16,), edge_energy_hidden=(16,), embed_dim=8)  # fmt: skip


def test_errors_and_gain_fraction():
    ref = np.asarray([[1.0, -2.0, 0.0], [3.0, 0.0, 1.0]])
    pred = ref + np.asarray([[0.5, 0.0, -0.5], [0.0, 1.0, 0.0]])
    e = M.errors(pred, ref)
    assert e["mse"] == pytest.approx((0.25 + 0.25 + 1.0) / 6)
    assert e["mae"] == pytest.approx(2.0 / 6)
    assert e["rmse"] == pytest.approx(math.sqrt(e["mse"]))
    assert M.gain_fraction(10.0, 4.0, 2.0) == pytest.approx(0.75)
    assert M.gain_fraction(10.0, 4.0, None) is None and M.gain_fraction(10.0, 4.0, 12.0) is None


def _noisy_record(rng, spread, k=3.0, sigma=2.0, n=8, frames=200):
    """Frames x0 + spread·ξ, randomly rotated, with mapped forces = the rotated mean force −k (x − x0) plus
    Gaussian noise σ per component (the true floor is σ²); two replicas at one temperature."""
    from scipy.spatial.transform import Rotation

    from cameo_eqx.data.store import ProteinRecord
    from cameo_eqx.topology import CGTopology

    x0 = np.cumsum(rng.normal(size=(n, 3)) * 2.0, axis=0)
    d = spread * rng.normal(size=(frames, n, 3))
    rot = Rotation.random(frames, random_state=int(rng.integers(1 << 30))).as_matrix()
    x = np.einsum("fij,fnj->fni", rot, x0 + d)
    f = np.einsum("fij,fnj->fni", rot, -k * d) + sigma * rng.normal(size=(frames, n, 3))
    topo = CGTopology(resname=("ALA",) * n, resid=np.arange(n), chain=("A",) * n,
                      segment=np.zeros(n, np.int32), species=np.zeros(n, np.int32))  # fmt: skip
    return ProteinRecord(name="p", topology=topo, positions=x.astype(np.float32), forces=f.astype(np.float32),
                         temperature=np.full(frames, 300.0, np.float32),
                         replica=(np.arange(frames) % 2).astype(np.int32))  # fmt: skip


def test_nearest_neighbour_floor_brackets_the_true_floor():
    """Nearly coinciding configurations (0.1 Å spread, rotated): ½ mean (F_i − Q F_j)² recovers σ² = 4 from
    above within sampling error; far-apart configurations inflate it (the mean-force difference), and the
    pairs' RMSD says so; without close pairs there is no estimate, with the reason."""
    rng = np.random.default_rng(0)
    close = M.nearest_neighbour_floor(_noisy_record(rng, 0.1), max_rmsd=1.0)
    assert close["upper_pairs"] > 50 and close["upper_median_rmsd"] < 0.3
    assert 0.92 * 4.0 < close["noise_floor_upper"] < 1.15 * 4.0, close
    far = M.nearest_neighbour_floor(_noisy_record(rng, 1.0), max_rmsd=10.0)
    assert far["noise_floor_upper"] > 1.5 * 4.0 and far["upper_median_rmsd"] > 1.0
    none = M.nearest_neighbour_floor(_noisy_record(rng, 1.0), max_rmsd=0.05)
    assert none["noise_floor_upper"] is None and "within 0.05" in none["upper_reason"]


def test_against_truth_and_bracket():
    """With F_true: the true floor is mean (F − F_true)², the model's error against F_true is reported, and
    the weighted bracket keeps lower, upper and true apart."""
    rng = np.random.default_rng(1)
    n, frames = 5, 4
    ft = rng.normal(size=(frames, n, 3))
    noise = 0.5 * rng.normal(size=ft.shape)

    class Rec:  # the store's record with noise-free forces (synthetic data)
        name, attrs = "p", {"stats": json.dumps({"noise_floor": 0.1, "msq_basic": 2.0})}

        def true_forces(self, idx):
            return ft[np.asarray(idx)].astype(np.float32)

    order = rng.permutation(frames * n)  # prediction rows in any order
    fr, bead = np.repeat(np.arange(frames), n)[order], np.tile(np.arange(n), frames)[order]
    ref = (ft + noise)[fr, bead]
    p = M.Predictions(ref=ref, pred=ft[fr, bead] + 0.1, terms={}, protein=np.zeros(len(fr), int),
                      temperature=np.full(len(fr), 300.0), frame=fr, names=("p",), bead=bead)  # fmt: skip
    t = M.against_truth(p, {"p": Rec()})["p"]
    assert t["noise_floor_true"] == pytest.approx(np.mean(noise**2))
    assert t["mse_vs_true"] == pytest.approx(0.01)
    nf = M.noise_floor([Rec()], None, {"p": {"noise_floor_upper": 3.0}}, {"p": t["noise_floor_true"]})
    assert (nf["noise_floor_lower"], nf["noise_floor_upper"]) == (0.1, 3.0)
    assert nf["noise_floor_true"] == pytest.approx(np.mean(noise**2)) and nf["missing"] == []


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from cameo_eqx.data.config import PrepareConfig
    from cameo_eqx.data.prepare import prepare
    from cameo_eqx.priors.config import FitPriorsConfig
    from cameo_eqx.priors.fit import fit_priors
    from cameo_eqx.modules.backbones import BackboneOverrides
    from cameo_eqx.training.config import DataConfig, ModelConfig, StageConfig, TrainConfig
    from cameo_eqx.training.trainer import Trainer

    tmp = tmp_path_factory.mktemp("evaldemo")
    prepare(PrepareConfig(inputs=(str(ROOT / "data" / "demo"),), output=tmp / "prep"))
    prior = fit_priors(FitPriorsConfig(dataset=tmp / "prep", output=tmp / "priors", plots=False))
    cfg = TrainConfig(output=tmp, name="run",
                      data=DataConfig(dataset=tmp / "prep", cutoff=8.0, target_nodes=256, val_fraction=0.1),
                      model=ModelConfig(backbone="allegro", preset="default", hyperparameters=BackboneOverrides(**ALLEGRO_TINY),
                                        prior=Path(prior)),
                      stages=(StageConfig(name="a", epochs=1, lr=2e-3),), progress=False, log_every=2)  # fmt: skip
    tr = Trainer(cfg, tmp / "run")
    tr.fit()
    return tmp, tr


def test_evaluate_report_matches_training_validation_and_noise_floor(demo_run):
    from cameo_eqx.data.store import PreparedDataset
    from cameo_eqx.evaluation import evaluate
    from cameo_eqx.evaluation.config import EvaluateConfig

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
        assert e["noise_floor_lower"] == pytest.approx(st["noise_floor"])
        num += e["n_beads"] * st["noise_floor"]
        w += e["n_beads"]
        # the gain is measured from the prior-only model against the lower floor
        assert e["gain_vs_lower_floor"] == pytest.approx(
            (e["mse_prior"] - e["mse"]) / (e["mse_prior"] - st["noise_floor"]))
        # the nearest-neighbour estimate sits above the lower bound (real data: no close pairs, so near MSE₀)
        assert st["noise_floor"] < e["noise_floor_upper"] <= 1.1 * e["msq_target"]
    assert rep["noise"]["noise_floor_lower"] == pytest.approx(num / w)
    assert rep["gain_baseline"] == "prior" and rep["noise"]["noise_floor_true"] is None
    assert rep["overall"]["mse_baseline"] == pytest.approx(rep["per_term"]["prior"]["rmse_alone"] ** 2)
    # per-temperature bead counts add up; per-term: ml + prior terms, and the prior-only model
    assert sum(e["n_beads"] for e in rep["per_temperature"].values()) == rep["overall"]["n_beads"]
    assert {"ml", "bond", "angle", "dihedral", "repulsion", "prior"} <= set(rep["per_term"])
    for f in ("parity.png", "force_histograms.png", "loss_curves.png", "report.md"):
        assert (out / f).stat().st_size > 1000, f
    md = (out / "report.md").read_text()
    assert "noise floor, lower bound" in md and "upper estimate" in md and "pessimistic" in md
    assert "captured" not in md
    # the demo's closing line reads the same report
    from cameo_eqx.demo import force_summary

    line = force_summary(out)[0]
    assert "noise floor between" in line and "pessimistic" in line and "n/a of what" not in line
