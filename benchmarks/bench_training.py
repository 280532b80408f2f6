"""Training benchmarks.

1. Throughput (frames/s) of the jitted training step with packed batches vs padding every frame to
   N_max (one graph per frame), same model, same frames (mdCATH-like mixed sizes), same node budget per
   batch.
   Host batch building is excluded (it runs in the prefetch thread); compile time is reported apart.
   The padded variant keeps sparse edges (padded to the largest frame's count): dense N_max x N_max
   neighbour lists would be slower still.
2. `--villin`: validation force RMSE on villin (../shared/data, split by frame) of the prior alone,
   the trained hybrid model, and the noise floor (prepare → fit priors → train → evaluate).

    python benchmarks/bench_training.py [--frames 96] [--villin --villin-steps 400]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import SHARED_DATA, machine, print_table, time_train_epochs, write_results  # noqa: E402


def throughput(n_frames: int, target_nodes: int, repeats: int) -> dict:
    import equinox as eqx
    import jax
    import optax

    from cameo_eqx.data.loader import BatchLoader
    from cameo_eqx.data.testdata import mdcath_like_sizes, synthetic_records
    from cameo_eqx.graph import Capacity, frame_graph, pack
    from cameo_eqx.modules import make_backbone
    from cameo_eqx.training.distributed import make_mesh, replicate, shard_leading
    from cameo_eqx.training.task import Task
    from cameo_eqx.training.trainer import make_train_step

    rng = np.random.default_rng(0)
    sizes = mdcath_like_sizes(12, rng, mean=60.0, lo=20, hi=160)
    per = max(1, n_frames // len(sizes))
    recs = synthetic_records(sizes.tolist(), per, seed=0)
    cutoff = 8.0
    model = make_backbone("painn", 20, cutoff, "small", key=jax.random.PRNGKey(0), n_features=16, n_layers=2,
                          n_radial_basis=8)  # fmt: skip
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.adabelief(1e-3)
    mesh = make_mesh(jax.devices()[:1])
    P, S, O = replicate(params, mesh), replicate(static, mesh), replicate(opt.init(params), mesh)

    def run(batches, label):
        res = time_train_epochs(P, S, O, lambda: (make_train_step(Task(), opt, mesh), lambda b: shard_leading(b, mesh)),
                                batches, repeats)  # fmt: skip
        return {"label": label, **res}

    # packed
    loader = BatchLoader(recs, cutoff=cutoff, target_nodes=target_nodes, n_devices=1, prefetch=0)
    plan = loader.plan(0)
    packed = [loader.build_step(plan, s) for s in loader.steps(0)]
    # padded to N_max: every frame occupies N_max node slots and the largest frame's edge/term counts
    graphs = []
    for r in recs:
        for k in range(r.n_frames):
            graphs.append(frame_graph(r.positions[k], r.topology, cutoff, forces=r.forces[k]))
    nmax = np.max([g.sizes for g in graphs], axis=0)
    per_batch = max(1, target_nodes // int(nmax[0]))
    cap = Capacity(int(nmax[0]) * per_batch, int(nmax[1]) * per_batch, per_batch,
                   *(int(x) * per_batch for x in nmax[3:]))  # fmt: skip
    order = np.random.default_rng(1).permutation(len(graphs))
    padded = []
    for a in range(0, len(order), per_batch):
        grp = [graphs[i] for i in order[a : a + per_batch]]
        padded.append(__import__("jax").tree.map(lambda x: x[None], pack(grp, cap)))
    res_packed = run(packed, "packed")
    res_padded = run(padded, "padded to N_max")
    return {"sizes": sizes.tolist(), "frames_per_protein": per, "n_max": int(nmax[0]), "target_nodes": target_nodes,
            "packed": res_packed, "padded": res_padded,
            "speedup": res_packed["frames_per_s"] / res_padded["frames_per_s"]}  # fmt: skip


VILLIN_ALLEGRO = dict(n_layers=2, n_radial_basis=8, l_max=1, n_tensor_features=8, latent_dim=32,
                      two_body_hidden=(32,), latent_hidden=(32,), edge_energy_hidden=(16,), embed_dim=8)  # fmt: skip
"""A small Allegro."""


def villin(steps: int, workdir: Path) -> dict:
    """prepare → fit priors → (prior-only evaluation) → train hybrid → evaluate, on villin."""
    import dataclasses

    from cameo_eqx.data.config import PrepareConfig
    from cameo_eqx.data.prepare import prepare
    from cameo_eqx.evaluation import evaluate
    from cameo_eqx.evaluation.config import EvaluateConfig
    from cameo_eqx.modules import ForceField, save
    from cameo_eqx.modules.backbones import BackboneOverrides
    from cameo_eqx.priors.config import FitPriorsConfig
    from cameo_eqx.priors.fit import fit_priors
    from cameo_eqx.priors.prior import Prior
    from cameo_eqx.training.config import DataConfig, ModelConfig, StageConfig, TrainConfig
    from cameo_eqx.training.trainer import Trainer

    src = SHARED_DATA / "mdcath_dataset_villinHP35.h5"
    if not src.exists():
        return {"skipped": f"{src} not found"}
    t0 = time.perf_counter()
    prepare(PrepareConfig(inputs=(str(src),), output=workdir / "prep"))
    prior_path = fit_priors(FitPriorsConfig(dataset=workdir / "prep", output=workdir / "priors", plots=False))
    data = DataConfig(dataset=workdir / "prep", split_by="frame", val_fraction=0.2, cutoff=10.0, target_nodes=512)
    base = TrainConfig(output=workdir, name="hybrid", data=data,
                       model=ModelConfig(backbone="allegro", preset="default",
                                         hyperparameters=BackboneOverrides(**VILLIN_ALLEGRO), prior=Path(prior_path)),
                       stages=(StageConfig(name="adabelief", epochs=1000, lr=2e-3),), progress=False,
                       max_steps=steps, checkpoint_every=0, log_every=20)  # fmt: skip
    # prior only: the same split and evaluation path
    po = workdir / "prior_only"
    po.mkdir(parents=True, exist_ok=True)
    (po / "config.json").write_text(json.dumps({"data": dataclasses.asdict(data) | {"dataset": str(data.dataset)}}))
    save(po / "model.eqx", ForceField(None, Prior.load(prior_path), cutoff=10.0))
    rep_prior = json.loads((evaluate(EvaluateConfig(run=po, max_frames=None, plots=False)) / "report.json").read_text())
    # hybrid: a time-boxed run of `steps` optimiser steps (cosine schedule over the planned epochs)
    epochs = max(1, steps // max(1, _steps_per_epoch(base)))
    cfg = dataclasses.replace(base, stages=(StageConfig(name="adabelief", epochs=epochs, lr=2e-3),), max_steps=None)
    t1 = time.perf_counter()
    tr = Trainer(cfg, workdir / "hybrid")
    tr.fit()
    train_s = time.perf_counter() - t1
    rep = json.loads((evaluate(EvaluateConfig(run=workdir / "hybrid", max_frames=None)) / "report.json").read_text())
    nf = rep["noise"]["noise_floor_lower"]
    return {
        "val_frames": rep["n_frames"], "epochs": epochs, "steps": tr.global_step, "train_seconds": train_s,
        "prior_only_rmse": rep_prior["overall"]["rmse"], "hybrid_rmse": rep["overall"]["rmse"],
        "noise_floor_lower_rmse": float(np.sqrt(nf)) if nf is not None else None,
        "zero_force_rmse": float(np.sqrt(rep["overall"]["msq_target"])),
        "gain_vs_lower_floor": rep["gain_vs_lower_floor"], "gain_baseline": rep["gain_baseline"],
        "total_seconds": time.perf_counter() - t0,
    }  # fmt: skip


def _steps_per_epoch(cfg) -> int:
    from cameo_eqx.training.datamodule import DataModule

    return DataModule(cfg.data, seed=cfg.seed).steps_per_epoch(0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=96, help="frames in the throughput set")
    ap.add_argument("--target-nodes", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--villin", action="store_true", help="also run the villin validation-RMSE path")
    ap.add_argument("--villin-steps", type=int, default=400)
    args = ap.parse_args()
    res = {"machine": machine(), "throughput": throughput(args.frames, args.target_nodes, args.repeats)}
    t = res["throughput"]
    rows = [[r["label"], r["frames"], r["batches"], r["buckets"], r["node_util"], r["epoch_s"], r["frames_per_s"],
             r["compile_s"]] for r in (t["packed"], t["padded"])]  # fmt: skip
    print_table(f"training step throughput (PaiNN 16x2, mixed sizes 20-160 beads, N_max {t['n_max']})",
                ["batching", "frames", "batches", "buckets", "node util", "epoch s", "frames/s", "compile s"], rows)
    print(f"packed / padded throughput: {t['speedup']:.2f}x")
    if args.villin:
        with tempfile.TemporaryDirectory() as d:
            res["villin"] = villin(args.villin_steps, Path(d))
        v = res["villin"]
        print(json.dumps(v, indent=1))
    write_results("training", res)


if __name__ == "__main__":
    main()
