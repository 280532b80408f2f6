"""Ground-truth benchmark: does force matching recover a known ensemble when the data suffice?

The teacher (`cameo_eqx.synthetic.TeacherPotential`, a transferable CG model with many-body burial) is
simulated for random sequences at five temperatures (`synthesize`); students are trained on its forces
with noise σ ∈ `--sigmas` and `--frames` frames per protein, exactly as users train on mdCATH (Boltzmann-
inverted prior, then the backbone on top). Then every model (the fitted prior alone, each backbone +
prior, and the teacher itself) is simulated with the same protocol (replicas started from teacher frames
at each temperature, BAOAB, the same time step and length) for the training sequences and for held-out
sequences, and compared with the teacher's simulation:

- Jensen-Shannon divergences of Rg, end-to-end distance, contact map, bonds, angles, dihedrals;
- the free-energy profile along Rg and its largest deviation |ΔF| in kT over bins holding ≥ 1 % of the
  teacher's population (profiles aligned by their weighted mean difference);
- the force RMSE against the noise-free teacher forces on fresh teacher configurations;
- σ² against the noise in the data.

The row "teacher (rerun)" compares the teacher's simulation with the generated frames: the resolution of
these metrics at the benchmark's sample size (a student cannot be shown to be better than that).
Trajectories are written in the `simulate` format as `<protein>_<T>_teacher.h5` and
`<protein>_<T>_student.h5` (the first backbone; others `..._student-<model>.h5`) under
`<workdir>/<setting>/trajectories/`.

Run: `.venv/bin/python benchmarks/bench_consistency.py --quick` (≤ 15 min on 2 cores: σ = 0, 10^3 frames,
4 + 2 short sequences, PaiNN-small) or the full benchmark (a GPU: `--frames 1000 10000 --sigmas 0 20`).
Results: benchmarks/results/bench_consistency.json (or `--out`), a table per setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402

TARGETS = {  # (sigma kind, frames) -> (train max|ΔF| kT, held-out max|ΔF| kT, train JS(Rg))
    ("zero", 10_000): (0.3, 0.5, 0.02),
    ("realistic", 100_000): (0.5, 1.0, None),
}


def subsample_dataset(src, out: Path, names, frames: int, sigma: float, seed: int) -> Path:
    """A prepared dataset of `names` with `frames` frames per protein evenly spaced in every trajectory of
    `src`, forces F_true + σ ξ."""
    from cameo_eqx.data.store import finalise, open_for_writing, write_record
    from cameo_eqx.topology import SPECIES_MAPS

    rng = np.random.default_rng(seed)
    h5, tmp, final = open_for_writing(out, species_map_name="aa20", species_map=SPECIES_MAPS["aa20"],
                                      config={"source": str(src.path), "frames": frames, "sigma": sigma})  # fmt: skip
    for name in names:
        rec = src.record(name).load()
        traj = np.stack([rec.temperature, rec.replica], axis=1)
        _, start, count = np.unique(traj, axis=0, return_index=True, return_counts=True)
        k = max(1, frames // len(start))
        idx = np.concatenate([s + np.unique(np.linspace(0, c - 1, min(k, c)).round().astype(int))
                              for s, c in zip(start, count)])  # fmt: skip
        ft = rec.forces_true[idx]
        f = ft + sigma * rng.standard_normal(ft.shape).astype(np.float32)
        stats = json.loads(rec.attrs["stats"])
        stats.update(noise_sigma=sigma, noise_floor_true=sigma**2, n_frames=len(idx))
        stats.pop("noise_floor", None)
        sub = dataclasses.replace(rec, positions=rec.positions[idx], forces=f, forces_true=ft,
                                  temperature=rec.temperature[idx], replica=rec.replica[idx],
                                  attrs={**rec.attrs, "stats": json.dumps(stats)})  # fmt: skip
        write_record(h5, sub, frame=idx.astype(np.int32))
    finalise(h5, tmp, final)
    return final.parent


def train_student(dataset: Path, prior: Path, out: Path, backbone: str, preset: str, epochs: int,
                  target_nodes: int, max_steps: int | None, seed: int) -> Path:  # fmt: skip
    from cameo_eqx.training.config import DataConfig, ModelConfig, StageConfig, TrainConfig
    from cameo_eqx.training.trainer import train

    e1 = max(1, round(epochs * 0.75))
    cfg = TrainConfig(
        output=out, name=f"{backbone}", seed=seed, progress=False, max_steps=max_steps, log_every=50,
        checkpoint_every=10_000,
        data=DataConfig(dataset=dataset, split_by="frame", val_fraction=0.05, cutoff=10.0,
                        target_nodes=target_nodes, max_val_frames=500),
        model=ModelConfig(backbone=backbone, preset=preset, prior=prior),
        stages=(StageConfig(name="adabelief", optimizer="adabelief", epochs=e1, lr=2e-3),
                StageConfig(name="yogi", optimizer="yogi", epochs=max(1, epochs - e1), lr=3e-4,
                            warmup_fraction=0.0)),
    )  # fmt: skip
    return train(cfg)


def simulate_protocol(model, topo, starts, temps, *, ps: float, save_ps: float, timestep_fs: float, seed: int):
    """All temperatures x replicas of one protein in one run from `starts` (R, n, 3); returns the frames
    after discarding the first 20 % and the `RunResult`."""
    from cameo_eqx.simulate.langevin import Simulator
    from cameo_eqx.synthetic.generate import full_capacity

    full = full_capacity(topo.n_beads)
    sim = Simulator(model, topo, temperature=temps, timestep_fs=timestep_fs, friction_per_ps=1.0,
                    capacity=full, edge_capacity=full)  # fmt: skip
    save = max(1, int(round(save_ps * 1e3 / timestep_fs)))
    n_frames = max(5, int(round(ps / save_ps)))
    res = sim.run(sim.init(starts, seed=seed), n_frames, save, chunk_frames=min(n_frames, 100))
    return res, sim


def write_trajectory(path: Path, topo, res, sim, sel: np.ndarray, attrs: dict) -> None:
    from cameo_eqx.simulate.langevin import Frames, TrajectoryWriter

    f = res.frames
    pos = f.positions[:, sel]
    w = TrajectoryWriter.create(path, topo, int(sel.sum()), np.asarray(sim.system.masses), pos[0], attrs)
    w.append(Frames(pos, f.potential[:, sel], f.kinetic[:, sel], f.temperature[:, sel], f.step, f.time_ps))
    w.close(status="blown_up" if res.blowup else "done", message=res.blowup or "")


def run_setting(a, work: Path, teacher, full, train_names, test_names, sigma: float, frames: int, deadline: float) -> dict:
    from cameo_eqx.data.store import PreparedDataset
    from cameo_eqx.evaluation.metrics import nearest_neighbour_floor
    from cameo_eqx.modules import load
    from cameo_eqx.priors.config import FitPriorsConfig
    from cameo_eqx.priors.fit import fit_prior
    from cameo_eqx.simulate.compare import compare_ensembles
    from cameo_eqx.synthetic.generate import model_forces

    tag = f"sigma{sigma:g}_frames{frames}"
    sdir = work / tag
    (sdir / "trajectories").mkdir(parents=True, exist_ok=True)
    out: dict = {"sigma": sigma, "frames_per_protein": frames, "timings": {}}
    t = time.perf_counter()
    ds_path = subsample_dataset(full, sdir / "data", train_names, frames, sigma, a.seed + 7)
    with PreparedDataset(ds_path) as ds:
        recs = [ds.record(n) for n in ds.names]
        emp = np.mean([np.mean((np.asarray(r.forces[()]) - np.asarray(r.forces_true[()])) ** 2) for r in recs])
        nn = [nearest_neighbour_floor(r) for r in recs]
        ups = [v["noise_floor_upper"] for v in nn if v["noise_floor_upper"] is not None]
        out["noise"] = {"sigma2_true": sigma**2, "mse_F_minus_Ftrue_in_data": float(emp),
                        "project_upper_estimate": float(np.mean(ups)) if ups else None,
                        "project_upper_estimate_proteins": len(ups),
                        "project_upper_median_pair_rmsd": float(np.nanmedian([v["upper_median_rmsd"] or np.nan
                                                                              for v in nn])),
                        "project_lower_bound": None,
                        "note": "the lower bound (basic minus optimal map) needs all-atom forces; the upper "
                                "estimate (evaluation.metrics.nearest_neighbour_floor) needs frame pairs within "
                                "1 Å RMSD"}  # fmt: skip
        print(f"noise floor: true σ² = {sigma**2:g}; in the data {emp:.4g}; the project's upper estimate "
              f"{out['noise']['project_upper_estimate']} from {len(ups)}/{len(nn)} proteins (median nearest-"
              f"pair RMSD {out['noise']['project_upper_median_pair_rmsd']:.2f} Å)", flush=True)  # fmt: skip
        prior, _ = fit_prior(ds, FitPriorsConfig())
    prior_path = prior.save(sdir / "prior.yaml")
    out["timings"]["data_and_prior_s"] = time.perf_counter() - t
    models = {"prior": prior}
    for bb in a.backbones:
        t = time.perf_counter()
        run = train_student(ds_path, prior_path, sdir / "runs", bb, a.preset, a.epochs, a.target_nodes,
                            a.max_steps, a.seed)  # fmt: skip
        models[bb] = load(run / "model.eqx")
        out["timings"][f"train_{bb}_s"] = time.perf_counter() - t
        summ = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
        out.setdefault("training", {})[bb] = {k: summ.get(k) for k in ("finished", "steps", "best_val_loss")
                                              if k in summ}  # fmt: skip
    models["teacher"] = teacher
    temps_all = np.asarray(a.temperatures, np.float32)
    per = []
    rng = np.random.default_rng(a.seed + 11)
    for split, names in (("train", train_names), ("held_out", test_names)):
        for name in names:
            if time.perf_counter() > deadline:
                out["cut_by_deadline"] = True
                break
            rec = full.record(name)
            topo = rec.topology
            starts, temps = [], []
            for T in temps_all:
                idx = np.flatnonzero(np.isclose(rec.temperature, T))
                pick = np.sort(rng.choice(idx, size=a.sim_replicas, replace=len(idx) < a.sim_replicas))
                starts.append(rec.frames(pick)[0])
                temps.append(np.full(a.sim_replicas, T, np.float32))
            starts, temps = np.concatenate(starts), np.concatenate(temps)
            data_frames = {float(T): rec.frames(np.flatnonzero(np.isclose(rec.temperature, T)))[0] for T in temps_all}
            sims = {}
            for mname, model in models.items():
                t = time.perf_counter()
                res, sim = simulate_protocol(model, topo, starts, temps, ps=a.sim_ps, save_ps=a.save_ps,
                                             timestep_fs=a.timestep_fs, seed=a.seed + 3)  # fmt: skip
                sims[mname] = (res, sim)
                out["timings"][f"simulate_{mname}_s"] = out["timings"].get(f"simulate_{mname}_s", 0.0) + \
                    time.perf_counter() - t  # fmt: skip
            # fresh teacher configurations (the teacher run's last frames) for force errors
            tpos = sims["teacher"][0].frames.positions
            fresh = tpos[-min(len(tpos), 8):].reshape(-1, topo.n_beads, 3)
            f_true, _ = model_forces(teacher, topo, fresh)
            for mname, (res, sim) in sims.items():
                f_pred, _ = model_forces(models[mname], topo, fresh)
                rmse = float(np.sqrt(np.mean((f_pred - f_true) ** 2)))
                pos = res.frames.positions
                keep = pos[int(0.2 * len(pos)):]
                for T in temps_all:
                    sel = temps == T
                    x = keep[:, sel].reshape(-1, topo.n_beads, 3)
                    ref_sim = sims["teacher"][0].frames.positions
                    ref = ref_sim[int(0.2 * len(ref_sim)):, sel].reshape(-1, topo.n_beads, 3)
                    if mname == "teacher":
                        ref, row_model = data_frames[float(T)], "teacher (rerun)"
                    else:
                        row_model = mname
                    c = compare_ensembles(x, ref, bonds=topo.bonds, angles=topo.angles, dihedrals=topo.dihedrals,
                                          bins=a.bins)  # fmt: skip
                    c["rg_profile"] = {k: v for k, v in c["rg_profile"].items() if not isinstance(v, list)}
                    per.append({"split": split, "protein": name, "temperature": float(T), "model": row_model,
                                "force_rmse_vs_true": rmse, "blowup": res.blowup, **c})  # fmt: skip
                    label = "teacher" if mname == "teacher" else (
                        "student" if mname == a.backbones[0] else f"student-{mname}")  # fmt: skip
                    write_trajectory(sdir / "trajectories" / f"{name}_{T:g}_{label}.h5", topo, res, sim, sel,
                                     {"model": mname, "protein": name, "temperature": float(T), "dataset": str(ds_path),
                                      "frame": 0, "timestep_fs": a.timestep_fs, "config": "{}"})  # fmt: skip
    out["per_protein"] = per
    out["summary"] = summarise(per)
    return out


def summarise(per: list[dict]) -> dict:
    """Per (model, split): mean and worst over proteins x temperatures."""
    out: dict = {}
    for r in per:
        out.setdefault(r["model"], {}).setdefault(r["split"], []).append(r)
    summ = {}
    for m, by in out.items():
        for split, rows in by.items():
            df = np.asarray([r["rg_profile"]["max_abs_dF_kT"] for r in rows])
            summ.setdefault(m, {})[split] = {
                "max_abs_dF_kT_mean": float(np.nanmean(df)), "max_abs_dF_kT_worst": float(np.nanmax(df)),
                "rms_dF_kT_mean": float(np.nanmean([r["rg_profile"].get("rms_dF_kT", np.nan) for r in rows])),
                "js_rg_mean": float(np.mean([r["js"]["rg"] for r in rows])),
                "js_end_to_end_mean": float(np.mean([r["js"]["end_to_end"] for r in rows])),
                "js_contact_map_mean": float(np.nanmean([r["js"]["contact_map"] for r in rows])),
                "js_dihedral_mean": float(np.mean([r["js"].get("dihedral", np.nan) for r in rows])),
                "force_rmse_vs_true": float(np.mean([r["force_rmse_vs_true"] for r in rows])),
                "rg_model_minus_ref": float(np.mean([r["rg"]["model"] - r["rg"]["reference"] for r in rows])),
                "n": len(rows), "blowups": sum(bool(r["blowup"]) for r in rows),
            }  # fmt: skip
    return summ


def print_setting(res: dict) -> None:
    rows = []
    for m, by in res["summary"].items():
        for split, s in by.items():
            rows.append([m, split, s["max_abs_dF_kT_mean"], s["max_abs_dF_kT_worst"], s["rms_dF_kT_mean"], s["js_rg_mean"],
                         s["js_end_to_end_mean"], s["js_contact_map_mean"], s["js_dihedral_mean"],
                         s["force_rmse_vs_true"], s["rg_model_minus_ref"], s["blowups"]])  # fmt: skip
    print_table(f"σ = {res['sigma']:g} kcal/mol/Å, {res['frames_per_protein']} frames/protein "
                "(means over proteins x temperatures; ΔF over bins with ≥ 1% of the teacher's population)",
                ["model", "split", "max|ΔF| kT", "worst", "rms ΔF kT", "JS Rg", "JS e2e", "JS contacts", "JS dihedral",
                 "F RMSE vs true", "ΔRg Å", "blow-ups"], rows)  # fmt: skip


def main(argv=None) -> dict:
    from cameo_eqx.data.store import PreparedDataset
    from cameo_eqx.synthetic.generate import SynthesizeConfig, synthesize
    from cameo_eqx.priors.teacher import TeacherPotential

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the ≤ 15-minute CPU version")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 20.0])
    ap.add_argument("--frames", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--n-train", type=int, default=8)
    ap.add_argument("--n-test", type=int, default=3)
    ap.add_argument("--length", type=int, nargs=2, default=[30, 30], help="min and max random sequence length")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[320, 348, 379, 413, 450])
    ap.add_argument("--gen-replicas", type=int, default=8, help="teacher replicas per temperature (data)")
    ap.add_argument("--save-ps", type=float, default=1.0, help="data frame spacing (ps)")
    ap.add_argument("--equilibrate-ps", type=float, default=50.0)
    ap.add_argument("--timestep-fs", type=float, default=5.0)
    ap.add_argument("--backbones", nargs="+", default=["painn"])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--target-nodes", type=int, default=2048)
    ap.add_argument("--sim-replicas", type=int, default=8, help="replicas per temperature (evaluation runs)")
    ap.add_argument("--sim-ps", type=float, default=200.0)
    ap.add_argument("--bins", type=int, default=30)
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds; no new protein is started after it")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.quick:  # the quick settings replace the defaults; options given explicitly are kept
        quick = dict(sigmas=[0.0], frames=[1000], n_train=4, n_test=2, length=[16, 16], gen_replicas=4,
                     equilibrate_ps=20.0, preset="small", epochs=6, target_nodes=512, sim_replicas=4,
                     sim_ps=40.0, temperatures=[320, 450], bins=20)  # fmt: skip
        for k, v in quick.items():
            if getattr(a, k) == ap.get_default(k):
                setattr(a, k, v)
    t_start = time.perf_counter()
    deadline = t_start + a.deadline
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench_consistency_"))
    n_traj = len(a.temperatures) * a.gen_replicas
    gen = SynthesizeConfig(output=work / "teacher_data", n_random=a.n_train + a.n_test, min_length=a.length[0],
                           max_length=a.length[1], temperatures=tuple(a.temperatures), n_replicas=a.gen_replicas,
                           frames=max(a.frames), save_every_ps=a.save_ps, equilibrate_ps=a.equilibrate_ps,
                           timestep_fs=a.timestep_fs, seed=a.seed, progress=False)  # fmt: skip
    t = time.perf_counter()
    synthesize(gen)
    gen_s = time.perf_counter() - t
    teacher = TeacherPotential.load(work / "teacher_data" / "teacher.json")
    results = {"settings": {k: v for k, v in vars(a).items()}, "workdir": str(work), "generate_s": gen_s,
               "frames_per_trajectory": math.ceil(max(a.frames) / n_traj), "runs": []}  # fmt: skip
    with PreparedDataset(work / "teacher_data") as full:
        names = full.names
        tau = {n: json.loads(full.record(n).attrs["stats"])["rg_autocorrelation_ps"] for n in names}
        results["rg_autocorrelation_ps"] = tau
        print(f"teacher data: {len(names)} sequences in {gen_s:.0f} s; Rg autocorrelation time "
              f"{np.nanmedian(list(tau.values())):.1f} ps (median) vs frames every {a.save_ps:g} ps", flush=True)
        train_names, test_names = names[: a.n_train], names[a.n_train :]
        for frames in a.frames:
            for sigma in a.sigmas:
                if time.perf_counter() > deadline:
                    break
                r = run_setting(a, work, teacher, full, train_names, test_names, sigma, frames, deadline)
                results["runs"].append(r)
                print_setting(r)
                kind = "zero" if sigma == 0 else "realistic"
                tgt = TARGETS.get((kind, frames))
                if tgt:
                    print(f"targets (train ≤ {tgt[0]} kT, held out ≤ {tgt[1]} kT, JS(Rg) ≤ {tgt[2]}): "
                          + "; ".join(f"{m}: train {s['train']['max_abs_dF_kT_mean']:.2f} / held out "
                                      f"{s.get('held_out', {}).get('max_abs_dF_kT_mean', float('nan')):.2f} kT"
                                      for m, s in r["summary"].items()), flush=True)  # fmt: skip
                write_results("bench_consistency", results, a.out)
    results["total_s"] = time.perf_counter() - t_start
    write_results("bench_consistency", results, a.out)
    return results


if __name__ == "__main__":
    main()
