"""`make validate-villin`: does a model trained on the real ../shared/data files keep villin HP35 native?

Stages (each skipped when its output exists, so a re-run resumes):
  1. prepare  ../shared/data villin HP35 + chignolin CLN025 → <out>/prepared (basic force map by default)
  2. fit-priors, full-weight prior (bond/angle/dihedral weight 1) → <out>/priors/prior.yaml
  3. train    configs/validate_villin.yaml → <out>/runs/validate_villin (best.eqx by simulation score)
  4. simulate villin at 320 K, 4 replicas, --ns ns → <out>/trajectory.h5 (the simulate format)
  5. analyze  against the 320 K reference frames → <out>/summary.json
  6. verdict  mean RMSD to the reference's frame 0 ≤ 3 Å, mean Rg within 5 % of the reference mean,
              mean Q ≥ 0.8, stationary; written to <out>/result.json; exit status 1 when a target is missed.

    .venv/bin/python scripts/validate_villin.py [--ns 1.0] [--output validation/villin] [--force-map basic]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"rmsd_max": 3.0, "rg_rel_tol": 0.05, "q_min": 0.8}


def stage(name: str) -> float:
    print(f"\n=== validate-villin: {name}  [{time.strftime('%H:%M:%S')}]", flush=True)
    return time.perf_counter()


def check(summary: dict) -> dict:
    """The targets against an analyze summary; returns {name: {value, target, ok}} and 'passed'."""
    o = summary["observables"]
    rmsd, q = o["rmsd"]["sim"]["mean"], o["q"]["sim"]["mean"]
    rg, rg_ref = o["rg"]["sim"]["mean"], o["rg"]["ref"]["mean"]
    st = summary.get("stationarity") or {}
    res = {
        "rmsd": {"value": rmsd, "target": f"<= {TARGETS['rmsd_max']} Å", "ok": rmsd <= TARGETS["rmsd_max"]},
        "rg": {"value": rg, "reference": rg_ref, "relative": rg / rg_ref - 1.0,
               "target": f"within {TARGETS['rg_rel_tol']:.0%} of {rg_ref:.2f} Å",
               "ok": abs(rg / rg_ref - 1.0) <= TARGETS["rg_rel_tol"]},
        "q": {"value": q, "target": f">= {TARGETS['q_min']}", "ok": q >= TARGETS["q_min"]},
        "stationary": {"value": bool(st.get("stationary", False)), "target": "yes",
                       "ok": bool(st.get("stationary", False)), "reasons": st.get("reasons", ["no stationarity section"])},
    }
    res["passed"] = all(v["ok"] for v in res.values() if isinstance(v, dict))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                   help="folder with mdcath_dataset_villinHP35.h5 and mdcath_dataset_cln025.h5")
    p.add_argument("--output", type=Path, default=Path("validation/villin"))
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "validate_villin.yaml")
    p.add_argument("--force-map", choices=("basic", "optimal"), default="basic")
    p.add_argument("--repulsion-exponent", type=int, default=12,
                   help="exponent p of the prior's repulsion (σ/r)^p (σ: the 1st percentile of non-bonded distances)")
    p.add_argument("--seed", type=int, default=None,
                   help="training seed (parameters and data order; default the config's): repeats measure the "
                        "seed-to-seed spread of the outcome")
    p.add_argument("--ns", type=float, default=1.0, help="simulated time per replica (ns)")
    p.add_argument("--timestep-fs", type=float, default=2.0)
    p.add_argument("--n-replicas", type=int, default=4)
    p.add_argument("--temperature", type=float, default=320.0)
    p.add_argument("--max-frames", type=int, default=None,
                   help="frames per (protein, temperature, replica) to prepare (learning curve); None: all")
    p.add_argument("--model", type=Path, default=None,
                   help="simulate this model (e.g. a prior.yaml for the prior alone) instead of training")
    p.add_argument("--analyze-only", action="store_true",
                   help="skip the simulation and analyze <output>/trajectory.h5 as it is (e.g. a run cut short "
                        "with Ctrl-C: rerunning without this flag resumes it)")
    a = p.parse_args(argv)

    files = [a.data / "mdcath_dataset_villinHP35.h5", a.data / "mdcath_dataset_cln025.h5"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"validate-villin: missing input {', '.join(missing)}; this check needs the reference data in "
              f"{a.data} (../shared/data next to the project: see its README). Pass --data DIR.", file=sys.stderr)
        return 2

    from cameo_eqx.config import load_yaml_defaults
    from cameo_eqx.data.config import PrepareConfig
    from cameo_eqx.priors.config import FitPriorsConfig, PriorConfig
    from cameo_eqx.simulate import analyze
    from cameo_eqx.simulate.config import AnalyzeConfig, SimulateConfig
    from cameo_eqx.training.config import TrainConfig

    out = a.output
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    t = stage(f"prepare villin + chignolin ({a.force_map} force map)")
    from cameo_eqx.data.prepare import prepare
    from cameo_eqx.data.store import PreparedDataset

    prepared = out / "prepared"
    prepare(PrepareConfig(inputs=tuple(str(f) for f in files), output=prepared, force_map=a.force_map,
                          max_frames=a.max_frames))  # a no-op when done with the same config
    with PreparedDataset(prepared) as ds:
        names = list(ds.names)
    protein = next((n for n in names if "villin" in n.lower()), None)
    if protein is None:
        print(f"validate-villin: no villin protein in {prepared} (has {names})", file=sys.stderr)
        return 2
    timings["prepare"] = time.perf_counter() - t

    t = stage("fit the prior at full weight (Boltzmann inversion)")
    from cameo_eqx.priors.fit import fit_priors

    priors = out / "priors"
    if not (priors / "prior.yaml").exists():
        fit_priors(FitPriorsConfig(dataset=prepared, output=priors,
                                   prior=PriorConfig(weight_bond=1.0, weight_angle=1.0, weight_dihedral=1.0,
                                                     repulsion_exponent=a.repulsion_exponent)))
    else:
        print(f"{priors / 'prior.yaml'} exists; skipping")
    timings["fit-priors"] = time.perf_counter() - t

    if a.model is not None:
        model = a.model
    else:
        t = stage(f"train ({a.config.name})")
        from cameo_eqx.training.trainer import train

        tcfg = load_yaml_defaults(TrainConfig, a.config, "train")
        tcfg = dataclasses.replace(
            tcfg, output=out / "runs",
            data=dataclasses.replace(tcfg.data, dataset=prepared),
            model=dataclasses.replace(tcfg.model, prior=priors / "prior.yaml"),
            sim_validation=dataclasses.replace(tcfg.sim_validation, proteins=(protein,)),
        )
        if a.seed is not None:
            tcfg = dataclasses.replace(tcfg, seed=a.seed)
        run = Path(tcfg.output) / tcfg.name
        if (run / "summary.json").exists() and json.loads((run / "summary.json").read_text()).get("finished", True):
            print(f"{run} finished; skipping")
        else:
            run = train(tcfg)
        model = run / "best.eqx" if (run / "best.eqx").exists() else run / "model.eqx"
        timings["train"] = time.perf_counter() - t

    n_steps = int(round(a.ns * 1e6 / a.timestep_fs))
    save_every = 500 if n_steps % 500 == 0 else 100
    n_steps -= n_steps % save_every
    t = stage(f"simulate {protein} with {model} at {a.temperature:g} K, {a.n_replicas} replicas x "
              f"{n_steps * a.timestep_fs / 1e6:g} ns ({n_steps} steps of {a.timestep_fs:g} fs)")
    from cameo_eqx.simulate.langevin import simulate

    if a.analyze_only:
        import h5py

        sim = out / "trajectory.h5"
        with h5py.File(sim, "r") as h:
            n_saved, n_steps = int(h["step"].shape[0]), int(h["step"][-1])
        print(f"--analyze-only: {sim} holds {n_saved} frames ({n_steps * a.timestep_fs / 1e6:g} ns); not simulating")
    else:
        sim = simulate(SimulateConfig(model=model, dataset=prepared, protein=protein, frame=0, output=out,
                                      n_replicas=a.n_replicas, temperature=a.temperature, timestep_fs=a.timestep_fs,
                                      n_steps=n_steps, save_every=save_every))  # fmt: skip
        timings["simulate"] = time.perf_counter() - t
        timings["simulate_s_per_ns"] = timings["simulate"] / (n_steps * a.timestep_fs / 1e6)

    t = stage("analyze against the reference frames")
    summary_path = analyze(AnalyzeConfig(trajectory=sim, dataset=prepared, output=out, reference_frame=0))
    timings["analyze"] = time.perf_counter() - t
    summary = json.loads(Path(summary_path).read_text())

    res = check(summary)
    res.update({"model": str(model), "force_map": a.force_map, "repulsion_exponent": a.repulsion_exponent,
                "seed": a.seed, "ns": n_steps * a.timestep_fs / 1e6,
                "simulation_status": summary["simulation"]["status"], "timings_s": timings,
                "trajectory": str(sim), "summary": str(summary_path)})  # fmt: skip
    (out / "result.json").write_text(json.dumps(res, indent=1))
    total = time.perf_counter() - t_all
    print(f"\n=== validate-villin: result ({total:.0f} s; "
          + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    r = res
    print(f"  RMSD to frame 0   {r['rmsd']['value']:.2f} Å        target {r['rmsd']['target']:<28} "
          f"{'ok' if r['rmsd']['ok'] else 'MISSED'}")
    print(f"  Rg                {r['rg']['value']:.2f} Å ({r['rg']['relative']:+.1%})  target {r['rg']['target']:<28} "
          f"{'ok' if r['rg']['ok'] else 'MISSED'}")
    print(f"  Q                 {r['q']['value']:.2f}          target {r['q']['target']:<28} "
          f"{'ok' if r['q']['ok'] else 'MISSED'}")
    print(f"  stationary        {'yes' if r['stationary']['ok'] else 'no':<12} target yes"
          + "".join(f"\n      - {x}" for x in ([] if r["stationary"]["ok"] else r["stationary"]["reasons"])))
    print(f"  simulation status {r['simulation_status']}")
    print(f"  villin kept native: {'PASSED' if r['passed'] else 'FAILED'}   ({out / 'result.json'})")
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
