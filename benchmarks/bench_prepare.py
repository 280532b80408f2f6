"""prepare throughput: frames/s with the basic map (villin, and an mdCATH-sized synthetic villin file),
the optimal-map solve time, and parallel workers.

Run: `.venv/bin/python benchmarks/bench_prepare.py` (needs ../shared/data; writes results/prepare.json).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SHARED_DATA, print_table, time_call, write_results  # noqa: E402
from cameo_eqx.data.config import PrepareConfig  # noqa: E402
from cameo_eqx.data import forcemap as fm  # noqa: E402
from cameo_eqx.data.mdcath import MDCATHFile  # noqa: E402
from cameo_eqx.data.prepare import prepare  # noqa: E402


def synthetic_mdcath(src: Path, dst: Path, temps=(320, 348, 379, 413, 450), replicas=5, frames=450):
    """An mdCATH-sized file (5 T x 5 replicas x 450 frames) by tiling villin's frames."""
    with h5py.File(src, "r") as s, h5py.File(dst, "w") as d:
        for k, v in s.attrs.items():
            d.attrs[k] = v
        dom = list(s.keys())[0]
        g = d.create_group(dom)
        for k, v in s[dom].attrs.items():
            g.attrs[k] = v
        for k in ("z", "element", "resname", "resid", "chain", "pdbProteinAtoms"):
            s.copy(s[dom][k], g, name=k)
        c = np.concatenate([s[f"{dom}/320/0/coords"][()], s[f"{dom}/348/0/coords"][()]])
        f = np.concatenate([s[f"{dom}/320/0/forces"][()], s[f"{dom}/348/0/forces"][()]])
        reps = int(np.ceil(frames / len(c)))
        c, f = np.tile(c, (reps, 1, 1))[:frames], np.tile(f, (reps, 1, 1))[:frames]
        for t in temps:
            for r in range(replicas):
                tr = g.create_group(f"{t}/{r}")
                tr.attrs["numFrames"] = frames
                tr.create_dataset("coords", data=c).attrs["unit"] = "Angstrom"
                tr.create_dataset("forces", data=f).attrs["unit"] = "kcal/mol/Angstrom"
    return len(temps) * replicas * frames


def main() -> None:
    villin = SHARED_DATA / "mdcath_dataset_villinHP35.h5"
    cln = SHARED_DATA / "mdcath_dataset_cln025.h5"
    if not villin.exists():
        raise SystemExit(f"needs {villin}")
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def run(cfg: PrepareConfig) -> float:
            shutil.rmtree(cfg.output, ignore_errors=True)
            t0 = time.perf_counter()
            prepare(cfg)
            return time.perf_counter() - t0

        base = PrepareConfig(inputs=(str(villin),), output=tmp / "v", noise_estimate=False)
        run(base)  # warm-up (imports, page cache)
        for label, cfg, n in [
            ("villin basic", base, 400),
            ("villin basic + noise estimate", dataclasses.replace(base, noise_estimate=True), 400),
            ("villin optimal", dataclasses.replace(base, force_map="optimal"), 400),
        ]:
            ts = sorted(run(cfg) for _ in range(3))
            rows.append([label, n, ts[1], n / ts[1]])
            results[label] = {"frames": n, "seconds": ts[1], "frames_per_s": n / ts[1]}
        big = tmp / "mdcath_dataset_villinHP35.h5"
        n_big = synthetic_mdcath(villin, big)
        cfg = PrepareConfig(inputs=(str(big),), output=tmp / "b", noise_estimate=False)
        t = run(cfg)
        rows.append(["synthetic mdCATH-size villin, basic", n_big, t, n_big / t])
        results["synthetic_basic"] = {"frames": n_big, "seconds": t, "frames_per_s": n_big / t}
        t = run(dataclasses.replace(cfg, noise_estimate=True))
        rows.append(["synthetic mdCATH-size villin, basic + noise", n_big, t, n_big / t])
        results["synthetic_basic_noise"] = {"frames": n_big, "seconds": t, "frames_per_s": n_big / t}
        # parallel workers over 4 copies of the synthetic domain
        for k in range(3):
            d = tmp / f"w{k}" / "mdcath_dataset_villinHP35.h5"
            d.parent.mkdir()
            shutil.copyfile(big, d)
        ins = (str(big),) + tuple(str(tmp / f"w{k}" / big.name) for k in range(3))
        # the four copies share a domain name; prepare refuses duplicates, so time the workers on
        # distinct output datasets instead: one process per file
        for w in (1, 2):
            t0 = time.perf_counter()
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            from cameo_eqx.data.prepare import prepare_domain

            with ProcessPoolExecutor(w, mp_context=get_context("spawn")) as ex:
                list(ex.map(prepare_domain, [Path(p) for p in ins], [cfg] * len(ins)))
            t = time.perf_counter() - t0
            rows.append([f"4 mdCATH-size domains, {w} worker(s) (map only)", 4 * n_big, t, 4 * n_big / t])
            results[f"workers_{w}"] = {"frames": 4 * n_big, "seconds": t, "frames_per_s": 4 * n_big / t}

    # the optimal-map solve alone (villin: all 400 frames; cln025: 2000 frames)
    for path, label in [(villin, "villin"), (cln, "cln025")]:
        with MDCATHFile(path) as f:
            coords, forces = f.sample_frames(4000)
            beads = f.beads()
            groups = fm.constraint_groups(f.n_atoms, fm.hydrogen_bond_pairs(f.atoms.element, coords[0]))
            tm = time_call(lambda: fm.optimal_map(beads.ca_index, forces, groups, lam=1e3), repeats=3)
        rows.append([f"optimal solve {label} ({len(forces)} frames, {f.n_atoms} atoms)", len(forces),
                     tm["median_s"], len(forces) / tm["median_s"]])  # fmt: skip
        results[f"optimal_solve_{label}"] = tm
    print_table("prepare throughput (target: basic map >= 5,000 frames/s; optimal solve < 1 s for villin)",
                ["case", "frames", "seconds", "frames/s"], rows)  # fmt: skip
    write_results("prepare", results)


if __name__ == "__main__":
    main()
