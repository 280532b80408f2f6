"""Force maps: basic-map build + apply throughput on villin (all 400 frames), apply at mdCATH scale
(synthetic 11,000 frames x 8,000 atoms), optimal-map solve time on villin and cln025, constraint
detection from data, and the held-out mapped-force noise of the three maps on cln025.

Run: `.venv/bin/python benchmarks/bench_forcemap.py` (needs ../shared/data; writes results/forcemap.json).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SHARED_DATA, print_table, time_call, write_results  # noqa: E402
from cameo_eqx.data import forcemap as fm  # noqa: E402


def load(name: str) -> dict:
    with h5py.File(SHARED_DATA / name, "r") as f:
        (dom,) = list(f.keys())
        g = f[dom]
        pdb = g["pdbProteinAtoms"][()]
        pdb = pdb.decode() if isinstance(pdb, bytes) else str(pdb)
        names = [ln[12:16].strip() for ln in pdb.splitlines() if ln.startswith(("ATOM", "HETATM"))]
        temps = sorted((k for k in g if k.isdigit()), key=int)
        trajs = [(t, r) for t in temps for r in sorted(g[t], key=int)]
        return {
            "element": g["element"][:],
            "ca": np.array([i for i, n in enumerate(names) if n == "CA"]),
            "coords": np.concatenate([g[t][r]["coords"][:] for t, r in trajs]),
            "forces": np.concatenate([g[t][r]["forces"][:] for t, r in trajs]),
        }


def main() -> None:
    for name in ("mdcath_dataset_villinHP35.h5", "mdcath_dataset_cln025.h5"):
        if not (SHARED_DATA / name).exists():
            raise SystemExit(f"needs {SHARED_DATA / name}")
    vil, cln = load("mdcath_dataset_villinHP35.h5"), load("mdcath_dataset_cln025.h5")
    rows, res = [], {}

    # villin, basic map: build (constraints from elements + distances, groups, matrix) and apply
    n, T = len(vil["element"]), len(vil["forces"])

    def build():
        pairs = fm.hydrogen_bond_pairs(vil["element"], vil["coords"][0])
        return fm.basic_map(vil["ca"], n, fm.constraint_groups(n, pairs))

    basic = build()
    t_build = time_call(build, repeats=7)
    t_apply = time_call(lambda: basic.apply(vil["forces"]), repeats=7)
    t_both = t_build["median_s"] + t_apply["median_s"]
    res["villin_basic"] = {"frames": T, "atoms": n, "build": t_build, "apply": t_apply,
                           "frames_per_s_apply": T / t_apply["median_s"],
                           "frames_per_s_build_apply": T / t_both}  # fmt: skip
    rows.append(["villin basic build", f"{n} atoms", t_build["median_s"] * 1e3, "-"])
    rows.append(["villin basic apply", f"{T} frames", t_apply["median_s"] * 1e3,
                 f"{T / t_apply['median_s']:.3g} frames/s"])  # fmt: skip
    rows.append(["villin basic build+apply", f"{T} frames", t_both * 1e3, f"{T / t_both:.3g} frames/s"])

    # constraint detection from data (all frames)
    t_det = time_call(lambda: fm.constraint_pairs_from_data(vil["coords"]), repeats=5)
    res["villin_detect_constraints"] = t_det
    rows.append(["villin constraints from data", f"{T} frames", t_det["median_s"] * 1e3, "-"])

    # optimal solve (Gram build + KKT), villin (all 400 frames) and cln025 (2000 frames)
    for key, d in (("villin", vil), ("cln025", cln)):
        nn = len(d["element"])
        g = fm.constraint_groups(nn, fm.hydrogen_bond_pairs(d["element"], d["coords"][0]))
        t = time_call(lambda: fm.optimal_map(d["ca"], d["forces"], g), repeats=5)
        res[f"{key}_optimal_solve"] = {**t, "frames": len(d["forces"]), "atoms": nn, "n_groups": g.n_groups,
                                       "sites": len(d["ca"])}  # fmt: skip
        rows.append([f"{key} optimal solve", f"{len(d['forces'])} fr, {g.n_groups} groups",
                     t["median_s"] * 1e3, "target < 1 s" if key == "villin" else "-"])  # fmt: skip
        opt = fm.optimal_map(d["ca"], d["forces"], g)
        ta = time_call(lambda: opt.apply(d["forces"]), repeats=5)
        res[f"{key}_optimal_apply"] = {**ta, "frames_per_s": len(d["forces"]) / ta["median_s"]}
        rows.append([f"{key} optimal apply", f"{len(d['forces'])} frames", ta["median_s"] * 1e3,
                     f"{len(d['forces']) / ta['median_s']:.3g} frames/s"])  # fmt: skip

    # mdCATH scale: 11,000 frames x 8,000 atoms (about 500 residues), basic map, frames made chunk-wise
    Tb, nb, Nb = 11_000, 8_000, 500
    sites = np.arange(Nb) * 16
    big = fm.basic_map(sites, nb, fm.constraint_groups(nb, np.stack([sites, sites + 1], 1)))
    chunk = np.random.default_rng(0).standard_normal((1000, nb, 3)).astype(np.float32)

    class Frames:  # h5py-like source: frames appear only when sliced (reused random block)
        shape = (Tb, nb, 3)

        def __getitem__(self, s):
            a, b, _ = s.indices(Tb)
            return chunk[: b - a] if b - a <= len(chunk) else np.resize(chunk, (b - a, nb, 3))

    t_big = time_call(lambda: big.apply(Frames()), repeats=3)
    res["mdcath_scale_basic_apply"] = {**t_big, "frames": Tb, "atoms": nb, "sites": Nb,
                                       "frames_per_s": Tb / t_big["median_s"]}  # fmt: skip
    rows.append(["basic apply 11k fr x 8k atoms", f"{Tb} frames", t_big["median_s"] * 1e3,
                 f"{Tb / t_big['median_s']:.3g} frames/s"])  # fmt: skip

    # held-out mapped-force noise on cln025 (train first 1000, held-out last 1000)
    nc = len(cln["element"])
    gc = fm.constraint_groups(nc, fm.hydrogen_bond_pairs(cln["element"], cln["coords"][0]))
    tr, ho = cln["forces"][:1000], cln["forces"][-1000:]
    noise = {
        "slice": fm.mapped_force_variance(fm.slice_map(cln["ca"], nc), ho),
        "basic": fm.mapped_force_variance(fm.basic_map(cln["ca"], nc, gc), ho),
        "optimal": fm.mapped_force_variance(fm.optimal_map(cln["ca"], tr, gc), ho),
    }
    lam_scores = fm.lambda_scores(cln["ca"], tr, ho, gc)
    res["cln025_heldout_msq_force"] = {**noise, "spec": {"slice": 398, "basic": 434, "optimal": 96.5},
                                       "lambda_scores": lam_scores}  # fmt: skip

    print_table("force maps (median wall time)", ["what", "size", "ms", "rate"], rows)
    print_table("cln025 held-out mean squared mapped force, (kcal/mol/Å)²", ["map", "measured", "spec"],
                [[k, v, res["cln025_heldout_msq_force"]["spec"][k]] for k, v in noise.items()])  # fmt: skip
    print_table("cln025 optimal map: held-out score by ridge λ", ["λ", "msq force"],
                [[k, v] for k, v in lam_scores.items()])  # fmt: skip
    write_results("forcemap", res)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s")
