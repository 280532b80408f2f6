"""Our backbones vs the PyTorch reference implementations (mace-torch, nequip-allegro), same graphs.

For Allegro and MACE (default presets, 10 Å cutoff, 20 species) the reference model is built with our
model's hyperparameters (mapping in `benchmarks/reference/torch_driver.py`, reported in the JSON) and timed
on the very graphs we time: `bench_models.bench_graphs` (compact CA-like chains of 35, 100, 300 beads,
several frames packed per batch) written to an .npz with `bench_models.export_graphs`.

- `ef`: energy + forces; `train`: energy + forces + gradient of the force-MSE loss w.r.t. all parameters
  (no optimiser step on either side).
- The reference runs in its own virtualenv (`benchmarks/reference/setup_venvs.sh`), as a child process
  that answers timing requests over a pipe, so ours and the reference are timed in alternation, call by
  call, under the same machine load; medians over rounds after warm-up (JAX compile time and the torch
  first call reported separately). Torch runs eager (its default for training), with
  `OMP_WAIT_POLICY=PASSIVE` (on a loaded machine libgomp's spin-waiting made it up to 7x slower, which
  would flatter us).
- `speedup` = reference time / our time (> 1: ours faster). Target of issue 4: >= 1.5 for training steps.

Prints a table and writes benchmarks/results/reference.json. Backbones whose reference venv is missing
are skipped with a note (so `make bench` works without them).

Run: `.venv/bin/python benchmarks/bench_reference.py [--backbones allegro,mace] [--sizes 35,100,300]
[--rounds 7] [--threads 2] [--quick]`
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "benchmarks" / "reference" / "torch_driver.py"
VENVS = {"allegro": ROOT / ".venv-bench-allegro", "mace": ROOT / ".venv-bench-mace"}


def _parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="allegro,mace")
    ap.add_argument("--sizes", default="35,100,300")
    ap.add_argument("--rounds", type=int, default=7, help="alternating timed calls per side")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per side after the first")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for each side (JAX and torch)")
    ap.add_argument("--quick", action="store_true", help="35 and 100 beads, 3 rounds (smoke run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reference.json"))
    return ap.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads == 1:  # must precede the jax import
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")  # fmt: skip

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import print_table, write_results  # noqa: E402
from bench_models import (  # noqa: E402
    CUTOFF, N_SPECIES, bench_graphs, energy_forces_fn, export_graphs, time_callable, train_step_fn,
)  # fmt: skip

from cameo_eqx.modules import make_backbone  # noqa: E402


def our_hyperparameters(model) -> dict:
    """The backbone's `hyperparameters()` (JSON-friendly: tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in model.hyperparameters().items()}


class Reference:
    """The torch driver as a child process in the reference venv (JSON lines over a pipe)."""

    def __init__(self, name: str, graphs: Path, hp: dict, threads: int):
        py = VENVS[name] / "bin" / "python"
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")  # fmt: skip
        env.pop("XLA_FLAGS", None)
        self.proc = subprocess.Popen(
            [str(py), str(DRIVER), "--model", name, "--graphs", str(graphs), "--hp", json.dumps(hp),
             "--cutoff", str(CUTOFF), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(ROOT),
        )  # fmt: skip
        try:
            self.info = self._read()
        except Exception:
            self.proc.kill()
            raise

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"reference driver exited (rc {self.proc.wait()}); see its stderr above")
            if line.lstrip().startswith("{"):
                break
            print(f"  (reference says) {line.rstrip()}", file=sys.stderr)
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"reference driver: {out['error']}")
        return out

    def time(self, case: str, what: str, calls: int = 1) -> list[float]:
        self.proc.stdin.write(json.dumps({"case": case, "what": what, "calls": calls}) + "\n")
        self.proc.stdin.flush()
        return self._read()["times_s"]

    def close(self) -> None:
        try:
            self.proc.stdin.write('{"quit": true}\n')
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.proc.kill()


def compare(name: str, sizes, rounds: int, warmup: int, threads: int, tmp: Path) -> dict:
    model = make_backbone(name, N_SPECIES, CUTOFF, "default", key=jax.random.PRNGKey(0))
    hp = our_hyperparameters(model)
    n_params = sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    batches = {f"n{n}": bench_graphs(n, max(2, round(800 / n)))[0] for n in sizes}
    graphs = tmp / f"graphs_{name}.npz"
    export_graphs(graphs, batches)
    t0 = time.perf_counter()
    ref = Reference(name, graphs, hp, threads)
    print(f"  reference {name} ready in {time.perf_counter() - t0:.1f} s: {ref.info['versions']}, "
          f"{ref.info['n_params']} parameters (ours {n_params})", flush=True)  # fmt: skip
    fns = {"ef": eqx.filter_jit(energy_forces_fn()), "train": eqx.filter_jit(train_step_fn())}
    rows = []
    try:
        for n in sizes:
            case, batch = f"n{n}", batches[f"n{n}"]
            n_frames = int(np.asarray(batch.graph_index).max()) + 1
            row = {"beads": n, "frames": n_frames, "edges": int(batch.senders.shape[0])}
            for what, fn in fns.items():
                first = time_callable(fn, model, batch, repeats=1, warmup=warmup)["first_s"]
                ref_first = ref.time(case, what, 1)[0]
                ref.time(case, what, warmup)
                ours, theirs = [], []
                for _ in range(rounds):  # alternate, one call each, so both see the same load
                    ours.append(time_callable(fn, model, batch, repeats=1, warmup=0)["median_s"])
                    theirs.append(ref.time(case, what, 1)[0])
                t_o, t_r = float(np.median(ours)), float(np.median(theirs))
                row.update({
                    f"{what}_ours_ms": 1e3 * t_o, f"{what}_ref_ms": 1e3 * t_r,
                    f"{what}_ours_frames_per_s": n_frames / t_o, f"{what}_ref_frames_per_s": n_frames / t_r,
                    f"{what}_speedup": t_r / t_o,
                    f"{what}_speedup_paired_median": float(np.median(np.asarray(theirs) / np.asarray(ours))),
                    f"{what}_ours_compile_s": first - t_o, f"{what}_ref_first_call_s": ref_first,
                    f"{what}_ours_times_s": ours, f"{what}_ref_times_s": theirs,
                })  # fmt: skip
                print(f"  {name} {n:4d} beads x{n_frames:2d} {what:5s}: ours {1e3 * t_o:8.1f} ms, "
                      f"reference {1e3 * t_r:8.1f} ms, speedup {t_r / t_o:5.2f}x "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
            rows.append(row)
    finally:
        ref.close()
    return {"our_hyperparameters": hp, "our_n_params": int(n_params), "reference": ref.info, "sizes": rows}


def main() -> None:
    args = ARGS or _parse()
    sizes = [35, 100] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = 3 if args.quick else args.rounds
    names = [b for b in args.backbones.split(",") if b]
    load0 = os.getloadavg()
    results = {"jax": jax.__version__, "threads_per_side": args.threads, "rounds": rounds,
               "warmup": args.warmup, "cutoff_A": CUTOFF, "n_species": N_SPECIES,
               "loadavg_start": load0, "backbones": {}, "skipped": {},
               "note": "speedup = reference median time / our median time (>1: ours faster); "
                       "train = E + F + parameter gradient of the force MSE, no optimiser step"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name not in VENVS:
                results["skipped"][name] = "no PyTorch reference configured"
                continue
            if not (VENVS[name] / ".installed-stamp").exists():
                msg = f"{VENVS[name].name} missing: run `bash benchmarks/reference/setup_venvs.sh {name}`"
                print(f"[{name}] skipped: {msg}", flush=True)
                results["skipped"][name] = msg
                continue
            print(f"[{name}]", flush=True)
            try:
                results["backbones"][name] = compare(name, sizes, rounds, args.warmup, args.threads, Path(tmp))
            except Exception as err:  # noqa: BLE001 (one failing reference must not sink the other)
                print(f"  {name} FAILED: {type(err).__name__}: {err}", flush=True)
                results["skipped"][name] = f"failed: {type(err).__name__}: {err}"
    results["loadavg_end"] = os.getloadavg()
    rows = []
    for name, r in results["backbones"].items():
        for s in r["sizes"]:
            rows.append([name, s["beads"], s["frames"], s["edges"],
                         s["ef_ours_frames_per_s"], s["ef_ref_frames_per_s"], s["ef_speedup"],
                         s["train_ours_frames_per_s"], s["train_ref_frames_per_s"], s["train_speedup"]])  # fmt: skip
    print_table(f"ours vs PyTorch reference, frames/s ({args.threads} thread(s) each; load average "
                f"{load0[0]:.1f} -> {results['loadavg_end'][0]:.1f})",
                ["backbone", "beads", "frames", "edges", "E+F ours", "E+F ref", "E+F x",
                 "train ours", "train ref", "train x"], rows)  # fmt: skip
    for name, r in results["backbones"].items():
        print(f"  {name}: reference {r['reference']['versions']}; parameters ours {r['our_n_params']}, "
              f"reference {r['reference']['n_params']}")  # fmt: skip
    write_results("reference", results, path=args.out)


if __name__ == "__main__":
    main()
