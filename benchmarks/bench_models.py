"""Backbone speed and memory: energy+forces and a training step (energy+forces+parameter gradient).

For every registered backbone (`cameo_eqx.modules.BACKBONES`, default preset, 10 Å cutoff):

- frames/s on compact synthetic CA chains of 35, 100 and 300 beads (`data.testdata.compact_chain`: 3.8 Å
  bonds, radius of gyration 2.2 n^0.38 Å as in folded proteins), several frames packed into one graph;
- peak memory: XLA's compiled temp-buffer size of the jitted function (`memory_analysis()`, bytes of
  scratch the step needs beyond its inputs/outputs), plus the process's ru_maxrss at the end;
- cost growth: time per frame vs beads from 50 to 1,000 (one frame per batch), fitted exponent of
  t ∝ n^a, on two series: compact globules of n beads (real-protein-like, but edges per bead still
  rise from ~20 to ~50 over this range because small globules are mostly surface, so the fit is also
  reported against the edge count, t ∝ E^b, with the time per edge; fastest of the repeats), and
  "tiled" frames of n/50 well-separated 50-bead globules (edges exactly ∝ n), which isolates the
  algorithm's own scaling.

Medians of repeats after a warm-up; compile time reported separately. Prints a table and writes
benchmarks/results/models.json. Reusable pieces for comparisons with other implementations:
`bench_graphs(...)` builds the same graphs (and `export_graphs` writes them to .npz: positions,
species, senders, receivers, graph_index per batch), `time_callable(fn, *args)` times any callable.

Run: `.venv/bin/python benchmarks/bench_models.py [--backbones allegro,painn] [--quick]`
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import write_results  # noqa: E402
from cameo_eqx.data.testdata import compact_chain  # noqa: E402
from cameo_eqx.graph import Capacity, frame_graph, pack  # noqa: E402
from cameo_eqx.modules import BACKBONES, make_backbone  # noqa: E402
from cameo_eqx.topology import CGTopology  # noqa: E402

CUTOFF = 10.0
N_SPECIES = 20


def synthetic_chain(n: int, seed: int = 0) -> np.ndarray:
    """`data.testdata.compact_chain` (the project's synthetic folded-protein CA chain) as float32."""
    return compact_chain(n, np.random.default_rng(seed)).astype(np.float32)


def chain_topology(n: int, seed: int = 0) -> CGTopology:
    species = np.random.default_rng(seed).integers(0, N_SPECIES, n).astype(np.int32)
    return CGTopology(resname=("ALA",) * n, resid=np.arange(n), chain=("A",) * n,
                      segment=np.zeros(n, np.int32), species=species)  # fmt: skip


def bench_graphs(n_beads: int, n_frames: int, cutoff: float = CUTOFF, seed: int = 0):
    """`n_frames` different conformations of one `n_beads` protein packed into one unpadded batch.

    **Returns:** `(batch, frames)`: the device `Batch` and the host `FrameGraph`s (with random target
    forces, so a force-matching loss can be evaluated).
    """
    top = chain_topology(n_beads, seed)
    rng = np.random.default_rng(seed)
    frames = [frame_graph(synthetic_chain(n_beads, seed + 1000 * k), top, cutoff,
                          forces=rng.normal(size=(n_beads, 3)).astype(np.float32))
              for k in range(n_frames)]  # fmt: skip
    sizes = [f.sizes for f in frames]
    cap = Capacity(*(sum(s[i] for s in sizes) for i in range(7)))
    return pack(frames, cap).to_device(), frames


def tiled_graph(n_beads: int, tile: int = 50, seed: int = 0):
    """One frame of `n_beads // tile` different `tile`-bead globules, 1,000 Å apart (no edges between
    them), so the edge count is exactly proportional to the number of beads. **Returns:** a `Batch`."""
    k = n_beads // tile
    pos = np.concatenate([synthetic_chain(tile, seed + j) + np.float32(1000.0 * j) for j in range(k)])
    top = chain_topology(k * tile, seed)
    cap_frame = frame_graph(pos, top, CUTOFF, forces=np.zeros_like(pos))
    return pack([cap_frame], Capacity(*cap_frame.sizes)).to_device()


def export_graphs(path: str | Path, batches: dict[str, object]) -> None:
    """Writes batches' positions, species, senders, receivers, graph_index to one .npz (for torch)."""
    out = {}
    for name, b in batches.items():
        for field in ("positions", "species", "senders", "receivers", "graph_index", "forces"):
            out[f"{name}/{field}"] = np.asarray(getattr(b, field))
    np.savez_compressed(path, **out)


def time_callable(fn, *args, repeats: int = 5, warmup: int = 1) -> dict:
    """Times `fn(*args)` (blocking on the result): first call (compile + run), then the median of
    `repeats` calls after `warmup` extra calls. **Returns:** dict(first_s, median_s, min_s)."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return {"first_s": first, "median_s": float(np.median(ts)), "min_s": float(np.min(ts))}


def energy_forces_fn():
    def ef(model, batch):
        def total(pos):
            return jnp.sum(model.node_energies(batch.with_positions(pos)))

        e, g = jax.value_and_grad(total)(batch.positions)
        return e, -g

    return ef


def train_step_fn():
    """Force-matching loss and its gradient w.r.t. all parameters (what one optimiser step needs)."""
    ef = energy_forces_fn()

    def loss(model, batch):
        _, f = ef(model, batch)
        err = jnp.where(batch.node_mask[:, None], f - batch.forces, 0.0)
        return jnp.sum(err**2) / jnp.maximum(jnp.sum(batch.node_mask), 1)

    def step(model, batch):
        return eqx.filter_value_and_grad(loss)(model, batch)

    return step


def temp_bytes(fn, *args) -> int | None:
    """XLA's scratch (temp) buffer size of the compiled function, in bytes."""
    try:
        params, static = eqx.partition(args, eqx.is_array)
        f = jax.jit(lambda p: fn(*eqx.combine(p, static)))
        return int(f.lower(params).compile().memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 (memory analysis is best-effort)
        return None


def bench_backbone(name: str, sizes, scaling_sizes, repeats: int) -> dict:
    model = make_backbone(name, N_SPECIES, CUTOFF, "default", key=jax.random.PRNGKey(0))
    n_params = sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    ef, step = eqx.filter_jit(energy_forces_fn()), eqx.filter_jit(train_step_fn())
    rows = []
    for n in sizes:
        n_frames = max(2, round(800 / n))
        batch, _ = bench_graphs(n, n_frames)
        row = {"beads": n, "frames": n_frames, "edges": int(batch.senders.shape[0]),
               "edges_per_bead": float(batch.senders.shape[0] / (n * n_frames))}  # fmt: skip
        for what, fn, raw in (("ef", ef, energy_forces_fn()), ("train", step, train_step_fn())):
            t = time_callable(fn, model, batch, repeats=repeats)
            row[f"{what}_frames_per_s"] = n_frames / t["median_s"]
            row[f"{what}_ms_per_batch"] = 1e3 * t["median_s"]
            row[f"{what}_compile_s"] = t["first_s"] - t["median_s"]
            row[f"{what}_temp_MB"] = (lambda b: None if b is None else b / 2**20)(temp_bytes(raw, model, batch))
        rows.append(row)
        print(f"  {name} {n:5d} beads x{n_frames:3d}: E+F {row['ef_frames_per_s']:8.1f} fr/s, "
              f"train {row['train_frames_per_s']:8.1f} fr/s", flush=True)  # fmt: skip
    series = {}
    for kind, make in (("compact", lambda n: bench_graphs(n, 1, seed=1)[0]), ("tiled", tiled_graph)):
        pts = []
        for n in scaling_sizes:
            batch = make(n)
            # fastest of the repeats: the growth fit should see the work, not other processes' load
            t_ef = time_callable(ef, model, batch, repeats=max(3, repeats // 2))["min_s"]
            t_tr = time_callable(step, model, batch, repeats=max(3, repeats // 2))["min_s"]
            e = int(batch.senders.shape[0])
            pts.append({"beads": n, "edges": e, "ef_s": t_ef, "train_s": t_tr,
                        "ef_ns_per_edge": 1e9 * t_ef / e, "train_ns_per_edge": 1e9 * t_tr / e})  # fmt: skip
            print(f"  {name} {kind:7s} {n:5d} beads {e:6d} edges: E+F {1e3 * t_ef:8.1f} ms "
                  f"({1e9 * t_ef / e:5.0f} ns/edge), train {1e3 * t_tr:8.1f} ms", flush=True)  # fmt: skip
        series[kind] = {"points": pts, "fit": scaling_fit(pts)}
    return {"n_params": int(n_params), "sizes": rows, "scaling": series,
            "hyperparameters": getattr(model, "hyperparameters", lambda: {})()}  # fmt: skip


def scaling_fit(pts: list[dict]) -> dict:
    """Least-squares exponents of log t vs log beads and vs log edges (E+F and train), and of edges vs beads."""
    if len(pts) < 2:
        return {}
    lb, le = np.log([p["beads"] for p in pts]), np.log([p["edges"] for p in pts])
    fit = {"edges_vs_beads": float(np.polyfit(lb, le, 1)[0])}
    for k in ("ef", "train"):
        lt = np.log([p[f"{k}_s"] for p in pts])
        fit[f"{k}_vs_beads"] = float(np.polyfit(lb, lt, 1)[0])
        fit[f"{k}_vs_edges"] = float(np.polyfit(le, lt, 1)[0])
    return fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "models.json"))
    ap.add_argument("--export-graphs", default=None, help="also write the graphs to this .npz")
    args = ap.parse_args()
    sizes = [35, 100] if args.quick else [35, 100, 300]
    scaling_sizes = [50, 200] if args.quick else [50, 100, 200, 400, 700, 1000]
    repeats = 2 if args.quick else args.repeats
    names = [b for b in args.backbones.split(",") if b]
    unknown = [b for b in names if b not in BACKBONES]
    if unknown:
        raise SystemExit(f"unknown backbones {unknown}; registered: {sorted(BACKBONES)}")
    if args.export_graphs:
        export_graphs(args.export_graphs, {f"n{n}": bench_graphs(n, max(2, round(800 / n)))[0] for n in sizes})
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]},
               "cutoff_A": CUTOFF, "n_species": N_SPECIES, "memory_note":
               "temp_MB = XLA compiled scratch buffers of the jitted step (memory_analysis); "
               "ru_maxrss_MB = process peak resident set at the end (all backbones)",
               "backbones": {}}  # fmt: skip
    for name in names:
        print(f"[{name}]", flush=True)
        try:
            results["backbones"][name] = bench_backbone(name, sizes, scaling_sizes, repeats)
        except Exception as err:  # noqa: BLE001 (a backbone in progress must not sink the others)
            print(f"  {name} FAILED: {type(err).__name__}: {err}", flush=True)
            results.setdefault("failed", {})[name] = f"{type(err).__name__}: {err}"
    results["ru_maxrss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["ru_maxrss_start_MB"] = rss0 / 1024

    print(f"\n{'backbone':9s} {'beads':>5s} {'frames':>6s} {'edges/bead':>10s} {'E+F fr/s':>9s} "
          f"{'train fr/s':>10s} {'E+F MB':>7s} {'train MB':>8s} {'compile s (E+F/train)':>22s}")  # fmt: skip
    for name, r in results["backbones"].items():
        for s in r["sizes"]:
            print(f"{name:9s} {s['beads']:5d} {s['frames']:6d} {s['edges_per_bead']:10.1f} "
                  f"{s['ef_frames_per_s']:9.1f} {s['train_frames_per_s']:10.1f} "
                  f"{s['ef_temp_MB'] or float('nan'):7.1f} {s['train_temp_MB'] or float('nan'):8.1f} "
                  f"{s['ef_compile_s']:10.1f}/{s['train_compile_s']:.1f}")  # fmt: skip
        for kind, ser in r["scaling"].items():
            f, nan = ser["fit"], float("nan")
            print(f"{name:9s} cost growth {kind:7s} {scaling_sizes[0]}-{scaling_sizes[-1]} beads: "
                  f"t ∝ n^{f.get('ef_vs_beads', nan):.2f} (E+F), n^{f.get('train_vs_beads', nan):.2f} (train); "
                  f"t ∝ E^{f.get('ef_vs_edges', nan):.2f} (E+F), E^{f.get('train_vs_edges', nan):.2f} (train); "
                  f"edges ∝ n^{f.get('edges_vs_beads', nan):.2f}")  # fmt: skip
    print(f"peak RSS {results['ru_maxrss_MB']:.0f} MB")
    write_results("models", results, path=args.out)


if __name__ == "__main__":
    main()
