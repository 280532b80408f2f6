"""Batch packing on an mdCATH-like size mix: slot utilisation vs the old dense padding, host build
throughput, and the ratio to a stand-in JAX training step.

    .venv/bin/python benchmarks/bench_batching.py [--proteins 300] [--frames 24] [--target-nodes 2048]

Synthesises compact CA chains (3.8 Å bonds, radius of gyration 2.2 N^0.38 Å) with log-normal sizes
clipped to 50-500 beads (mean 137), packs them with `BatchLoader`, and reports, side by side:

- node / edge slot utilisation of our packing (real entries / capacity over the epoch) and of the old
  approach (every protein padded to N_max with a dense N_max x N_max neighbour list);
- host batch building (read + radius graph + bonded terms + pack): frames/s and batches/s,
  single thread (from memory and from a prepared HDF5 dataset of the same frames), in the prefetch
  thread, in `--workers` worker processes, and with the prefetch thread feeding the JAX step;
- the JAX stand-in step on the same batches: an edge MLP (16 radial features -> 64 -> 64 -> 1) summed
  to per-frame energies, forces = -dE/dR, and the force-matching loss gradient w.r.t. the parameters
  (a "train step"), plus the energy+forces evaluation alone. Target: host >= 5x faster than the step.

Medians of repeats after warm-up; compile time reported separately. Writes
benchmarks/results/batching.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from _common import loader_throughput, write_results  # noqa: E402
from cameo_eqx.data.buckets import SizeEstimate, choose_buckets
from cameo_eqx.data.loader import BatchLoader
from cameo_eqx.data.planner import EpochPlanner
from cameo_eqx.data.testdata import mdcath_like_sizes, synthetic_records
from cameo_eqx.data.store import PreparedDataset, ProteinRecord, finalise, open_for_writing, write_record
from cameo_eqx.topology import CGTopology

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------- the JAX stand-in
def init_mlp(key, sizes=(16, 64, 64, 1)):
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        key, k = jax.random.split(key)
        params.append((jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b)))
    return params


def energy(params, pos, batch, cutoff):
    s, r = batch["senders"], batch["receivers"]
    vec = pos[r] - pos[s]
    d2 = jnp.sum(vec * vec, axis=-1)
    d = jnp.sqrt(jnp.where(batch["edge_mask"], d2, 1.0))  # safe norm: padded edges never at 0
    n = jnp.arange(1, 17, dtype=pos.dtype)
    x = d[:, None] / cutoff
    env = jnp.where(x < 1, (1 - x) ** 2, 0.0)
    h = jnp.sin(n * jnp.pi * x) / d[:, None] * env
    for w, b in params[:-1]:
        h = jax.nn.silu(h @ w + b)
    w, b = params[-1]
    e_edge = jnp.where(batch["edge_mask"], (h @ w + b)[:, 0], 0.0)
    e_node = jax.ops.segment_sum(e_edge, r, num_segments=pos.shape[0])
    e_graph = jax.ops.segment_sum(e_node, batch["graph_index"], num_segments=batch["n_graph"])
    return jnp.sum(e_graph), e_graph


def make_steps(cutoff, n_graph):
    def forces(params, batch):
        g = jax.grad(lambda p: energy(params, p, batch, cutoff)[0])(batch["positions"])
        return -g

    def loss(params, batch):
        f = forces(params, batch)
        err = jnp.where(batch["node_mask"][:, None], f - batch["forces"], 0.0)
        return jnp.sum(err**2) / jnp.maximum(jnp.sum(batch["node_mask"]), 1)

    @jax.jit
    def train_step(params, batch):
        batch = dict(batch, n_graph=n_graph)
        val, g = jax.value_and_grad(loss)(params, batch)
        params = jax.tree.map(lambda p, q: p - 1e-4 * q, params, g)
        return params, val

    @jax.jit
    def eval_step(params, batch):
        batch = dict(batch, n_graph=n_graph)
        return energy(params, batch["positions"], batch, cutoff)[1], forces(params, batch)

    return train_step, eval_step


FIELDS = ("positions", "forces", "node_mask", "graph_index", "senders", "receivers", "edge_mask")


def as_jax(b):
    return {k: jnp.asarray(getattr(b, k)) for k in FIELDS}


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out), out


# ------------------------------------------------------------------------------------ the benchmark
def old_approach(records, real_edges_per_frame):
    """Every protein padded to N_max, dense N_max x N_max neighbour list (frame-weighted)."""
    n_max = max(r.n_beads for r in records)
    frames = np.asarray([r.n_frames for r in records], float)
    beads = np.asarray([r.n_beads for r in records], float)
    node = float((frames * beads).sum() / (frames.sum() * n_max))
    edge = float(real_edges_per_frame / n_max**2)
    return {"n_max": n_max, "nodes": node, "edges": edge}


def planner_scale(n_proteins, frames_per_protein, target_nodes, seed=0):
    """Planning cost at mdCATH-like scale from size estimates alone (nothing read)."""
    rng = np.random.default_rng(seed)
    sizes = mdcath_like_sizes(n_proteins, rng)
    recs, est = [], {}
    temps = np.repeat(np.asarray([320, 348, 379, 413, 450], np.float32), frames_per_protein // 5)
    for k, n in enumerate(sizes.tolist()):
        topo = CGTopology(("ALA",) * n, np.arange(n), ("A",) * n, np.zeros(n, np.int32),
                          np.zeros(n, np.int32))  # fmt: skip
        t = len(temps)
        recs.append(ProteinRecord(f"p{k}", topo, np.zeros((t, 1, 3), np.float32), None, temps,
                                  np.zeros(t, np.int32)))  # fmt: skip
        e = [int(n * (22 - 60 / n**0.5) * (1 - 0.04 * j)) for j in range(5)]
        est[f"p{k}"] = SizeEstimate(f"p{k}", n, n - 1, n - 2, n - 3, tuple(float(x) for x in
                                    (320, 348, 379, 413, 450)), tuple(e), tuple(x // 2 - n for x in e),
                                    ((0,),) * 5)  # fmt: skip
    bp = choose_buckets(recs, cutoff=10.0, target_nodes=target_nodes, estimates=est)
    planner = EpochPlanner(recs, None, bp)
    t = time.perf_counter()
    plan = planner.plan_epoch(0, 0)
    dt = time.perf_counter() - t
    return {"proteins": n_proteins, "frames": planner.n_frames, "batches": len(plan),
            "plan_seconds": dt, "frames_per_s": planner.n_frames / dt}  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proteins", type=int, default=300)
    ap.add_argument("--frames", type=int, default=24, help="frames per protein")
    ap.add_argument("--target-nodes", type=int, default=2048)
    ap.add_argument("--cutoff", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="batches timed per repeat")
    ap.add_argument("--plan-proteins", type=int, default=5398)
    ap.add_argument("--plan-frames", type=int, default=400, help="frames per protein, planning")
    ap.add_argument("--workers", default="1,2", help="worker-process counts to time (comma-separated; '' none)")
    ap.add_argument("--out", type=Path, default=RESULTS / "batching.json")
    a = ap.parse_args()

    rng = np.random.default_rng(0)
    sizes = mdcath_like_sizes(a.proteins, rng)
    t = time.perf_counter()
    records = synthetic_records(sizes, a.frames, seed=1)
    synth_s = time.perf_counter() - t
    n_frames = sum(r.n_frames for r in records)
    print(f"{a.proteins} synthetic proteins, beads {sizes.min()}-{sizes.max()} (mean {sizes.mean():.1f})"
          f", {n_frames} frames ({synth_s:.1f} s to synthesise)")

    t = time.perf_counter()
    bp = choose_buckets(records, cutoff=a.cutoff, target_nodes=a.target_nodes)
    choose_s = time.perf_counter() - t

    # utilisation over full epochs (real packed batches)
    loader = BatchLoader(records, cutoff=a.cutoff, buckets=bp, seed=0, prefetch=0)
    epochs = []
    for e in range(2):
        for _ in loader.epoch(e):
            pass
        epochs.append(loader.stats)
    st = epochs[0]
    ours = st.overall()
    edges_per_frame = sum(d["edges"] for d in st.per_bucket.values()) / st.frames
    old = old_approach(records, edges_per_frame)

    # host building, single thread: median per batch over repeats
    plan = loader.plan(0)
    steps = loader.steps(0)[: a.steps]

    def build_all():
        for s in steps:
            loader.build_step(plan, s)

    build_all()
    host_s, _ = timed(build_all, a.repeats)
    host_batch = host_s / len(steps)
    frames_in = sum(int(plan.offsets[s.batches[0] + 1] - plan.offsets[s.batches[0]]) for s in steps)
    host_fps = frames_in / host_s

    # the JAX stand-in step on the same bucket
    cap = bp.buckets[0]
    train_step, eval_step = make_steps(a.cutoff, cap.n_graph)
    params = init_mlp(jax.random.PRNGKey(0))
    batches = [loader.build_step(plan, s) for s in steps]
    batches = [b for b in batches if b.capacity == cap]
    jb = [as_jax(b) for b in batches]
    t = time.perf_counter()
    jax.block_until_ready(train_step(params, jb[0]))
    compile_train = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(eval_step(params, jb[0]))
    compile_eval = time.perf_counter() - t

    def run_train():
        p = params
        for b in jb:
            p, v = train_step(p, b)
        jax.block_until_ready(v)

    def run_eval():
        for b in jb:
            out = eval_step(params, b)
        jax.block_until_ready(out)

    run_train()
    train_s, _ = timed(run_train, a.repeats)
    eval_s, _ = timed(run_eval, a.repeats)
    train_batch, eval_batch = train_s / len(jb), eval_s / len(jb)

    # pipelined: prefetch thread builds while the consumer runs the train step
    pipe = BatchLoader(records, cutoff=a.cutoff, buckets=bp, seed=0, prefetch=2)

    def run_pipe(limit=a.steps):
        p = params
        k = 0
        frames = 0
        it = pipe.epoch(0)
        t = time.perf_counter()
        wait = 0.0
        for _ in range(limit):
            w = time.perf_counter()
            b = next(it)
            wait += time.perf_counter() - w
            if b.capacity != cap:
                continue
            p, v = train_step(p, as_jax(b))
            frames += int(b.graph_mask.sum())
            k += 1
        jax.block_until_ready(v)
        dt = time.perf_counter() - t
        it.close()
        return dt, k, frames, wait

    run_pipe(3)
    pipes = [run_pipe() for _ in range(a.repeats)]
    dt, k, frames, wait = sorted(pipes)[len(pipes) // 2]
    pipe_batch = dt / k

    # prefetch thread alone (no consumer work)
    def run_prefetch_only(loader, limit=a.steps):
        return loader_throughput(loader, 1, limit)

    pre = sorted(run_prefetch_only(pipe) for _ in range(a.repeats))[a.repeats // 2]

    # worker processes alone (no consumer work), after the pool has started
    pooled = {}
    for n_workers in [int(x) for x in a.workers.split(",") if x.strip()]:
        pool = BatchLoader(records, cutoff=a.cutoff, buckets=bp, seed=0, prefetch=2, workers=n_workers)
        loader_throughput(pool, 1, 1)  # starts the processes
        r = sorted(run_prefetch_only(pool, 2 * a.steps) for _ in range(a.repeats))[a.repeats // 2]
        pool.close()
        pooled[n_workers] = {"batches_per_s": r[1] / r[0], "frames_per_s": r[2] / r[0]}

    # the same frames read from a prepared dataset (HDF5, the store's 64-frame chunks), one thread
    with tempfile.TemporaryDirectory() as tmp:
        h5, part, final = open_for_writing(tmp, species_map_name="aa20", species_map={"ALA": 0}, config={})
        for r in records:
            write_record(h5, r, frame=np.arange(r.n_frames))
        finalise(h5, part, final)
        with PreparedDataset(tmp) as ds:
            disk = BatchLoader(ds, cutoff=a.cutoff, buckets=bp, seed=0, prefetch=0)
            h5_run = sorted(run_prefetch_only(disk) for _ in range(a.repeats))[a.repeats // 2]

    scale = planner_scale(a.plan_proteins, a.plan_frames, a.target_nodes)

    res = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_1min": os.getloadavg()[0], "jax": jax.__version__,
                    "device": str(jax.devices()[0])},  # fmt: skip
        "config": vars(a) | {"out": str(a.out)},
        "dataset": {"proteins": a.proteins, "frames": n_frames, "beads_min": int(sizes.min()),
                    "beads_max": int(sizes.max()), "beads_mean": float(sizes.mean()),
                    "real_edges_per_frame": edges_per_frame},  # fmt: skip
        "buckets": [c._asdict() for c in bp.buckets],
        "choose_buckets_seconds": choose_s,
        "utilisation": {
            "ours": {"nodes": ours["nodes"], "edges": ours["edges"],
                     "per_bucket": {str(k): v for k, v in st.utilisation().items()},
                     "epochs": [e.overall() for e in epochs],
                     "promoted_steps": [e.promoted for e in epochs],
                     "steps": [e.steps for e in epochs]},  # fmt: skip
            "old_dense_nmax": old,
        },
        "host": {
            "single_thread": {"seconds_per_batch": host_batch, "batches_per_s": 1 / host_batch,
                              "frames_per_s": host_fps},  # fmt: skip
            "prefetch_only": {"batches_per_s": pre[1] / pre[0], "frames_per_s": pre[2] / pre[0]},
            "worker_processes": {str(k): v for k, v in pooled.items()},
            "single_thread_from_hdf5": {"batches_per_s": h5_run[1] / h5_run[0], "frames_per_s": h5_run[2] / h5_run[0]},
            "pipelined_with_train_step": {"seconds_per_step": pipe_batch,
                                          "frames_per_s": frames / dt,
                                          "consumer_wait_fraction": wait / dt},  # fmt: skip
        },
        "jax_step": {
            "train_seconds_per_batch": train_batch, "eval_seconds_per_batch": eval_batch,
            "compile_train_seconds": compile_train, "compile_eval_seconds": compile_eval,
            "workload": "edge MLP 16->64->64->1 on Bessel-like radial features; energies by "
                        "segment_sum; forces = -dE/dR; train = grad of force MSE w.r.t. params",
        },
        "ratio_step_over_host": {"train": train_batch / host_batch, "eval": eval_batch / host_batch},
        "planner_mdcath_scale": scale,
    }

    w = 46
    print(f"\nbuckets: {[tuple(c) for c in bp.buckets]}   (choose_buckets {choose_s:.1f} s)")
    print(f"\n{'slot utilisation':<{w}}{'ours':>12}{'old (N_max pad)':>18}")
    print(f"{'node slots holding real beads':<{w}}{ours['nodes']:>12.1%}{old['nodes']:>18.1%}")
    print(f"{'edge slots holding real edges':<{w}}{ours['edges']:>12.1%}{old['edges']:>18.1%}")
    print(f"{'(old: N_max = ' + str(old['n_max']) + ', dense N_max^2 neighbour list)':<{w}}")
    print(f"\n{'host vs step (bucket ' + str(tuple(cap)[:3]) + ')':<{w}}{'s/batch':>12}{'batches/s':>12}"
          f"{'frames/s':>12}")
    print(f"{'host build, single thread':<{w}}{host_batch:>12.4f}{1 / host_batch:>12.1f}{host_fps:>12.0f}")
    print(f"{'host build, prefetch thread only':<{w}}{pre[0] / pre[1]:>12.4f}{pre[1] / pre[0]:>12.1f}"
          f"{pre[2] / pre[0]:>12.0f}")
    for k, v in pooled.items():
        print(f"{f'host build, {k} worker process' + ('es' if k > 1 else ''):<{w}}{1 / v['batches_per_s']:>12.4f}"
              f"{v['batches_per_s']:>12.1f}{v['frames_per_s']:>12.0f}")
    print(f"{'host build, one thread, frames from HDF5':<{w}}{h5_run[0] / h5_run[1]:>12.4f}"
          f"{h5_run[1] / h5_run[0]:>12.1f}{h5_run[2] / h5_run[0]:>12.0f}")
    print(f"{'JAX train step (stand-in)':<{w}}{train_batch:>12.4f}{1 / train_batch:>12.1f}")
    print(f"{'JAX energy+forces eval (stand-in)':<{w}}{eval_batch:>12.4f}{1 / eval_batch:>12.1f}")
    print(f"{'pipelined: prefetch + train step':<{w}}{pipe_batch:>12.4f}{1 / pipe_batch:>12.1f}"
          f"{frames / dt:>12.0f}   consumer waited {wait / dt:.1%}")
    print(f"\nstep / host ratio: train {train_batch / host_batch:.1f}x, eval {eval_batch / host_batch:.1f}x"
          f"   (target >= 5x)   compile: train {compile_train:.1f} s, eval {compile_eval:.1f} s")
    print(f"planner at scale: {scale['frames']} frames of {scale['proteins']} proteins -> "
          f"{scale['batches']} batches in {scale['plan_seconds']:.1f} s "
          f"({scale['frames_per_s']:.2e} frames/s)")
    print(f"load average (1 min) during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    write_results("batching", res, path=a.out)


if __name__ == "__main__":
    main()
