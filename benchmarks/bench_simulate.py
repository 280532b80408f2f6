"""Simulation throughput on this CPU: steps/s and (replicas x steps)/s of BAOAB Langevin in JAX for a
35-bead protein (villin HP35, bundled demo data) and a 300-bead protein (a synthetic 15-helix bundle,
helices 10 Å apart, one chain segment per helix), prior-only and prior + Allegro (default preset), against
the all-atom OpenMM simulation of villin HP35 (582 atoms, amber99sbildn + OBC, NoCutoff, HBonds, 2 fs,
CPU platform) timed here, as simulated time per wall-clock time: the CG speed-up.

Run: `.venv/bin/python benchmarks/bench_simulate.py [--quick]`. Medians of repeats after a warm-up run
(the compile time is reported separately). The CG time step is 2 fs (as in the tests and the notebook).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, print_table, time_call, write_results  # noqa: E402

CG_DT_FS = 2.0


def villin_setup(tmp: Path):
    from cameo_eqx.data.config import PrepareConfig
    from cameo_eqx.data.prepare import prepare
    from cameo_eqx.data.store import PreparedDataset
    from cameo_eqx.priors.config import FitPriorsConfig, PriorConfig
    from cameo_eqx.priors.fit import fit_prior

    prepare(PrepareConfig(inputs=(str(ROOT / "data/demo/mdcath_dataset_villin.h5"),), output=tmp / "prep",
                          noise_estimate=False))  # fmt: skip
    ds = PreparedDataset(tmp / "prep")
    prior, _ = fit_prior(ds, FitPriorsConfig(prior=PriorConfig(weight_bond=1.0, weight_angle=1.0,
                                                               weight_dihedral=1.0)))  # fmt: skip
    rec = ds.record("villin")
    return prior, rec.topology, rec.frames(np.asarray([0]))[0][0]


def helix_bundle(n_helices: int = 15, length: int = 20, spacing: float = 10.0, seed: int = 0):
    """A compact synthetic protein: ideal α-helices (CA rise 1.5 Å, 100°/residue, radius 2.3 Å) on a
    square grid, alternating up/down; one chain segment per helix."""
    from cameo_eqx.topology import AMINO_ACIDS, CGTopology

    side = int(np.ceil(np.sqrt(n_helices)))
    xs = []
    for h in range(n_helices):
        cx, cy = spacing * (h % side), spacing * (h // side)
        k = np.arange(length)
        z = 1.5 * k if h % 2 == 0 else 1.5 * (length - 1 - k)
        phi = np.deg2rad(100.0) * k
        xs.append(np.stack([cx + 2.3 * np.cos(phi), cy + 2.3 * np.sin(phi), z], axis=-1))
    x = np.concatenate(xs).astype(np.float32)
    n = len(x)
    rng = np.random.default_rng(seed)
    res = tuple(rng.choice(AMINO_ACIDS, n))
    topo = CGTopology(resname=res, resid=np.arange(n), chain=("A",) * n,
                      segment=np.repeat(np.arange(n_helices), length).astype(np.int32),
                      species=np.asarray([AMINO_ACIDS.index(r) for r in res], np.int32))  # fmt: skip
    return topo, x


def bench_cg(model, topo, x0, replicas: int, n_steps: int, repeats: int) -> dict:
    from cameo_eqx.simulate import Simulator

    sim = Simulator(model, topo, temperature=320.0, timestep_fs=CG_DT_FS, friction_per_ps=1.0,
                    max_bond_length=1e3)  # fmt: skip
    state = sim.init(x0, n_replicas=replicas, seed=0)
    save_every = 50
    frames = n_steps // save_every
    t0 = time.perf_counter()
    res = sim.run(state, frames, save_every, chunk_frames=frames)
    first = time.perf_counter() - t0
    assert res.blowup is None, res.blowup
    t = time_call(lambda: sim.run(state, frames, save_every, chunk_frames=frames), repeats=repeats, warmup=0)
    sps = n_steps / t["median_s"]
    return {"replicas": replicas, "beads": topo.n_beads, "steps": n_steps, "median_s": t["median_s"],
            "compile_s": max(0.0, first - t["median_s"]), "steps_per_s": sps, "replica_steps_per_s": sps * replicas,
            "ns_per_day_per_replica": sps * CG_DT_FS * 1e-6 * 86400, "capacity": sim.capacity}  # fmt: skip


def bench_openmm(n_steps: int, repeats: int) -> dict | None:
    try:
        import openmm
        import openmm.app as app
        from openmm import unit
    except ImportError:
        return None
    sys.path.insert(0, str(ROOT / "tools"))
    import make_demo_data as mdd  # the project's own demo-data generator: same structure and system

    ff = mdd.make_forcefield()
    pdb = mdd.prepare_structure(mdd.villin_pdb(), ff)
    system = mdd.make_system(pdb.topology, ff)
    integ = openmm.LangevinMiddleIntegrator(320 * unit.kelvin, 1 / unit.picosecond, 2 * unit.femtosecond)
    platform = openmm.Platform.getPlatformByName("CPU")
    ctx = openmm.Context(system, integ, platform, {"Threads": "2"})
    ctx.setPositions(pdb.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, maxIterations=200)
    t = time_call(lambda: integ.step(n_steps), repeats=repeats, warmup=1)
    sps = n_steps / t["median_s"]
    return {"atoms": system.getNumParticles(), "steps": n_steps, "median_s": t["median_s"], "steps_per_s": sps,
            "ns_per_day": sps * 2.0 * 1e-6 * 86400, "version": openmm.__version__}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    ap.add_argument("--no-allegro", action="store_true")
    ap.add_argument("--openmm-only", action="store_true", help="time only the all-atom baseline")
    args = ap.parse_args()
    steps, reps = (500, 2) if args.quick else (2000, 3)
    with tempfile.TemporaryDirectory() as d:
        prior, vtopo, vx = villin_setup(Path(d))
    btopo, bx = helix_bundle()
    models = {"prior": prior}
    if not args.no_allegro:
        try:
            from cameo_eqx.modules import ForceField, make_backbone

            models["allegro+prior"] = ForceField(make_backbone("allegro", 20, 10.0), prior)
        except ImportError as e:  # pragma: no cover
            print(f"allegro not importable ({e}); skipped")
    cases = []
    if args.openmm_only:
        models = {}
    for mname, model in models.items():
        prior_only = mname == "prior"
        for pname, topo, x, replicas in (("villin35", vtopo, vx, (1, 8)),
                                         ("bundle300", btopo, bx, (1, 4) if prior_only else (1, 2))):
            n = steps if prior_only else (100 if pname == "villin35" else 50)
            for r in replicas:
                res = bench_cg(model, topo, x, r, n, reps)
                res.update(model=mname, protein=pname)
                cases.append(res)
                print(f"{mname:14s} {pname:10s} R={r}: {res['steps_per_s']:.0f} steps/s, "
                      f"{res['replica_steps_per_s']:.0f} replica-steps/s (compile {res['compile_s']:.1f} s)", flush=True)
    aa = bench_openmm(500 if args.quick else 2000, reps)
    rows = []
    for c in cases:
        speedup = (c["steps_per_s"] * CG_DT_FS) / (aa["steps_per_s"] * 2.0) if aa else float("nan")
        c["speedup_vs_openmm_villin"] = speedup
        c["speedup_all_replicas_vs_openmm_villin"] = speedup * c["replicas"]
        rows.append([c["model"], c["protein"], c["beads"], c["replicas"], c["steps_per_s"], c["replica_steps_per_s"],
                     c["ns_per_day_per_replica"], speedup, speedup * c["replicas"], c["compile_s"]])  # fmt: skip
    print_table(f"CG Langevin (BAOAB, dt = {CG_DT_FS} fs) on this CPU; speed-up = simulated time per wall time vs "
                "OpenMM all-atom villin",
                ["model", "protein", "beads", "R", "steps/s", "R*steps/s", "ns/day/rep", "speed-up",
                 "speed-up xR", "compile s"], rows)  # fmt: skip
    if aa:
        print_table("OpenMM all-atom villin HP35 (amber99sbildn + OBC, NoCutoff, HBonds, 2 fs, CPU 2 threads)",
                    ["atoms", "steps/s", "ns/day", "version"],
                    [[aa["atoms"], aa["steps_per_s"], aa["ns_per_day"], aa["version"]]])  # fmt: skip
    write_results("simulate", {"cg_timestep_fs": CG_DT_FS, "cases": cases, "openmm_villin": aa,
                               "note": "speed-up compares one CG replica's simulated time per wall time with "
                                       "the all-atom run; 'xR' counts all replicas run at once"})  # fmt: skip


if __name__ == "__main__":
    main()
