"""Calibration of the teacher potential: radius of gyration against temperature for random sequences.

For every chain length and every scale s of the teacher's non-local energies (contact ε and burial b
multiplied by s), all temperatures x replicas run in one compiled BAOAB simulation; half the replicas
start from a compact chain, half from an extended one, so that a run which has not converged shows as a
gap between the two. Reported per temperature: mean Rg over the second half, its spread between the two
starts, and the fraction of frames with Rg < 1.3 x the compact-globule Rg (2.2 n^0.38 Å). The default
teacher (`TeacherPotential.default()`, s = 1) was chosen from this table: compact at 320 K, expanded at
450 K, both populated near 380 K.

Run: `.venv/bin/python benchmarks/calibrate_teacher.py [--lengths 20 40 80] [--scales 1.0] [--ps 300]`
(a GPU helps: the default settings take ~40 min on 2 CPU cores, ~3 min on one H200).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402


def main(argv=None) -> dict:
    from cameo_eqx.data.testdata import compact_chain
    from cameo_eqx.simulate.analysis import radius_of_gyration
    from cameo_eqx.simulate.langevin import Simulator
    from cameo_eqx.synthetic.generate import chain_topology, compact_radius, extended_chain, random_sequence
    from cameo_eqx.priors.teacher import TeacherPotential

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[20, 40, 80])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[300, 340, 380, 420, 460])
    ap.add_argument("--replicas", type=int, default=8, help="per start (compact and extended) and temperature")
    ap.add_argument("--ps", type=float, default=300.0, help="simulated time per replica")
    ap.add_argument("--timestep-fs", type=float, default=5.0)
    ap.add_argument("--angle-weight", type=float, default=None)
    ap.add_argument("--dihedral-weight", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    base = TeacherPotential.default()
    rng = np.random.default_rng(a.seed)
    temps = np.repeat(np.asarray(a.temperatures, np.float32), 2 * a.replicas)
    results, rows = [], []
    for n in a.lengths:
        topo = chain_topology(random_sequence(n, rng))
        starts = np.stack([compact_chain(n, rng) if (k // a.replicas) % 2 == 0 else extended_chain(n, rng)
                           for k in range(len(temps))])  # fmt: skip
        compact_start = (np.arange(len(temps)) // a.replicas) % 2 == 0
        for s in a.scales:
            lw = {k: w for k, w in (("angle", a.angle_weight), ("dihedral", a.dihedral_weight)) if w is not None}
            model = TeacherPotential.default(lw, **{k: s * float(getattr(base, k)) for k in TeacherPotential._SCALARS})
            sim = Simulator(model, topo, temperature=temps, timestep_fs=a.timestep_fs, friction_per_ps=1.0)
            steps = int(a.ps * 1e3 / a.timestep_fs)
            save = max(1, int(2000 / a.timestep_fs))  # a frame every 2 ps
            t0 = time.perf_counter()
            res = sim.run(sim.init(starts, seed=a.seed), steps // save, save, chunk_frames=25)
            wall = time.perf_counter() - t0
            rg = radius_of_gyration(res.frames.positions)  # (F, R)
            rg = rg[rg.shape[0] // 2 :]
            rc = 1.3 * compact_radius(n)
            per_t = {}
            for t in a.temperatures:
                sel = temps == t
                per_t[f"{t:g}"] = {
                    "rg_mean": float(rg[:, sel].mean()), "rg_std": float(rg[:, sel].std()),
                    "rg_compact_start": float(rg[:, sel & compact_start].mean()),
                    "rg_extended_start": float(rg[:, sel & ~compact_start].mean()),
                    "compact_fraction": float(np.mean(rg[:, sel] < rc)),
                }  # fmt: skip
            results.append({"n": n, "scale": s, "sequence": "".join(r[0] for r in topo.resname), "wall_s": wall,
                            "blowup": res.blowup, "steps": steps, "per_temperature": per_t})  # fmt: skip
            rows.append([n, s] + [f"{per_t[f'{t:g}']['rg_mean']:.1f} ({per_t[f'{t:g}']['compact_fraction']:.2f}, "
                                  f"{per_t[f'{t:g}']['rg_compact_start'] - per_t[f'{t:g}']['rg_extended_start']:+.1f})"
                                  for t in a.temperatures] + [f"{wall:.0f}"])  # fmt: skip
            print_table("teacher calibration so far: Rg Å (compact fraction, compact-start minus extended-start Rg)",
                        ["beads", "scale"] + [f"{t:g} K" for t in a.temperatures] + ["wall s"], rows)  # fmt: skip
    out = {"settings": vars(a), "results": results}
    write_results("calibrate_teacher", out, a.out)
    return out


if __name__ == "__main__":
    main()
