"""GPU speed of the equivariant backbones (issue 15): one command for the simulation and training cases,
plus XLA's cost analysis (FLOPs and bytes) of energy + forces per backbone.

1. **Simulation**: a 54-bead compact chain (1ENH-sized, `compact_chain`), BAOAB at 2 fs, 320 K, default
   presets plus the villin demo prior, for the prior alone and PaiNN / MACE / Allegro + prior at 128 and
   1,024 replicas; timestep·molecules per second (steps/s x replicas).
2. **Training step**: mdCATH-like sizes (log-normal, mean 137 beads, 50-500), 8,192-node buckets,
   frames/s of the jitted training step (a default stage's optimiser: clipping, AdaBelief) with packed
   batches against every frame padded to N_max (same frames, same node budget per batch); host batch
   building and compiles are excluded.
3. **Cost** (`--cost`, or part of the full run): `jit(...).lower(...).compile().cost_analysis()` of
   energy + forces of each backbone alone (no prior) on the 54-bead chain and on one training bucket,
   per bead and per edge, and of the whole training step on that bucket per frame; on the chain also
   with the edge geometry computed per direction instead of once per pair (`Batch.edges_paired`
   False), to show what the paired layout saves. The JSON keeps a
   FLOP/byte budget per backbone: today's measured costs as the baseline, and the FLOP and byte rates
   that the issue's targets imply (target rate x cost), next to the H200's float32 peak and memory
   bandwidth.

    python benchmarks/bench_gpu.py            # full: under 8 minutes on one H200 (cases stop at --budget)
    python benchmarks/bench_gpu.py --quick    # 4 replicas, 512-node buckets, a few steps: CPU, minutes
    python benchmarks/bench_gpu.py --cost     # the cost analysis only (compiles, runs nothing)
    python benchmarks/bench_gpu.py --matmul-precision tensorfloat32   # TF32 matmuls + their force error
    python benchmarks/bench_gpu.py --only sim --graph-slots candidates  # model graph as large as the list

Every case is traced at `--matmul-precision` (default float32, the project's default; JAX alone would use
TF32 on Ampere+ GPUs, which is what the issue's baseline figures ran at).

Writes benchmarks/results/gpu.json (or `--out`). On a GPU run it as
`XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/bench_gpu.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import loader_throughput, print_table, time_train_epochs, write_results  # noqa: E402
import variants  # noqa: E402

BACKBONES = ("painn", "mace", "allegro")
CUTOFF = 10.0
N_CHAIN = 54
MEAN_BEADS = 137.0

# The issue's measurements (one H200, jax 0.11.2) and targets.
ISSUE_SIM = {"prior": {128: 1_333_320, 1024: 3_713_107}, "painn": {128: 63_891, 1024: 72_903},
             "mace": {128: 9_845}, "allegro": {128: 8_663, 1024: 8_284}}  # fmt: skip
ISSUE_TRAIN = {"painn": 12_162, "allegro": 4_048, "mace": 3_368}
TARGET_SIM = {"painn": 150_000, "mace": 40_000, "allegro": 40_000}
TARGET_TRAIN = {"painn": 30_000, "mace": 10_000, "allegro": 12_000}
H200 = {"fp32_flop_per_s": 67e12, "hbm_bytes_per_s": 4.8e12}
"""H200 SXM datasheet figures: float32 (non-tensor-core) peak and HBM3e bandwidth."""


def chain_system(n: int = N_CHAIN, seed: int = 0):
    """A compact 54-bead chain with random residues (the issue's 1ENH-sized system)."""
    from cameo_eqx.data.testdata import compact_chain
    from cameo_eqx.topology import AMINO_ACIDS, CGTopology

    rng = np.random.default_rng(seed)
    x = compact_chain(n, rng).astype(np.float32)
    res = tuple(rng.choice(AMINO_ACIDS, n))
    topo = CGTopology(resname=res, resid=np.arange(n), chain=("A",) * n, segment=np.zeros(n, np.int32),
                      species=np.asarray([AMINO_ACIDS.index(r) for r in res], np.int32))  # fmt: skip
    return topo, x


def backbone(name: str):
    import jax

    from cameo_eqx.modules import make_backbone

    return make_backbone(name, 20, CUTOFF, "default", key=jax.random.PRNGKey(0))


def demo_prior():
    from bench_simulate import villin_setup

    with tempfile.TemporaryDirectory() as d:
        return villin_setup(Path(d))[0]


# ------------------------------------------------------------------------------------------ simulation


def chain_simulator(model, topo, precision: str = "float32"):
    """The simulation case's Simulator: BAOAB at 2 fs, 320 K, friction 1/ps, no bond-length blow-up check."""
    from cameo_eqx.simulate import Simulator

    return Simulator(model, topo, temperature=320.0, timestep_fs=2.0, friction_per_ps=1.0, max_bond_length=1e3,
                     matmul_precision=precision)  # fmt: skip


def simulate_case(model, topo, x, replicas: int, steps: int, repeats: int, precision: str = "float32",
                  graph_slots: str = "cutoff") -> dict:  # fmt: skip
    """Timestep·molecules/s of the Simulator on `x`. `graph_slots` "candidates" gives the model's graph as
    many slots as the neighbour list (cutoff + skin), as before the graph had its own size."""
    sim = chain_simulator(model, topo, precision)
    if graph_slots == "candidates":
        sim.edge_capacity = sim.capacity = sim.capacity_for(np.asarray(x)[None])
    state = sim.init(x, n_replicas=replicas, seed=0)
    save_every = min(50, steps)
    frames = steps // save_every
    t0 = time.perf_counter()
    res = sim.run(state, frames, save_every, chunk_frames=frames)
    first = time.perf_counter() - t0
    if res.blowup is not None:
        raise RuntimeError(f"blow-up: {res.blowup}")
    state = sim.with_capacity(state)  # the same start with the list sizes the first run grew to, if any
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        sim.run(state, frames, save_every, chunk_frames=frames)
        ts.append(time.perf_counter() - t)
    med = statistics.median(ts)
    sps = frames * save_every / med
    return {"replicas": replicas, "beads": topo.n_beads, "steps": frames * save_every, "median_s": med,
            "compile_s": max(0.0, first - med), "steps_per_s": sps, "timestep_mol_per_s": sps * replicas,
            "graph_slots": graph_slots, "edge_slots": int(sim.edge_capacity), "candidate_slots": int(sim.capacity),
            "regrown": res.n_rebuilds_for_overflow}  # fmt: skip


def precision_error(model, topo, x, precision: str) -> float | str:
    """Relative force difference of `model` on the chain at `precision` against float32."""
    from cameo_eqx.graph import single_frame_batch
    from cameo_eqx.precision import PrecisionError, check_model_precision

    batch = single_frame_batch(x, topo, CUTOFF)
    try:
        return check_model_precision(model, batch, precision, where="the 54-bead chain")
    except PrecisionError as e:
        return str(e)


# ------------------------------------------------------------------------------------------ training


def training_frames(n_frames: int, mean: float, lo: int, hi: int):
    from cameo_eqx.data.testdata import mdcath_like_sizes, synthetic_records

    rng = np.random.default_rng(0)
    sizes = mdcath_like_sizes(16, rng, mean=mean, lo=lo, hi=hi)
    return synthetic_records(sizes.tolist(), max(1, n_frames // len(sizes)), seed=0)


def packed_and_padded(recs, target_nodes: int):
    """The same frames as packed batches (the project's BatchLoader) and padded to N_max per frame."""
    import jax

    from cameo_eqx.data.loader import BatchLoader
    from cameo_eqx.graph import Capacity, frame_graph, pack

    loader = BatchLoader(recs, cutoff=CUTOFF, target_nodes=target_nodes, n_devices=1, prefetch=0)
    plan = loader.plan(0)
    packed = [loader.build_step(plan, s) for s in loader.steps(0)]
    graphs = [frame_graph(r.positions[k], r.topology, CUTOFF, forces=r.forces[k])
              for r in recs for k in range(r.n_frames)]  # fmt: skip
    nmax = np.max([g.sizes for g in graphs], axis=0)
    per = max(1, target_nodes // int(nmax[0]))
    cap = Capacity(*(int(x) * per if i != 2 else per for i, x in enumerate(nmax)))
    order = np.random.default_rng(1).permutation(len(graphs))
    padded = [jax.tree.map(lambda x: x[None], pack([graphs[i] for i in order[a : a + per]], cap))
              for a in range(0, len(order), per)]  # fmt: skip
    return packed, padded, int(nmax[0])


def host_build(recs, target_nodes: int, workers: int) -> dict:
    """Frames/s at which this machine's CPU builds the training case's batches (the step can go no faster in
    training): the prefetch thread alone, then `workers` worker processes (`data.workers`), after a warm-up
    epoch (which starts the processes)."""
    from cameo_eqx.data.loader import BatchLoader

    out, buckets = {}, None
    for w in (0, workers) if workers > 0 else (0,):
        loader = BatchLoader(recs, cutoff=CUTOFF, target_nodes=target_nodes, buckets=buckets, n_devices=1,
                             prefetch=2, workers=w)  # fmt: skip
        buckets = loader.buckets
        try:
            loader_throughput(loader, 0)  # warm-up: starts the processes
            dt, _, frames = loader_throughput(loader, 1)
            out[str(w)] = frames / dt
        finally:
            loader.close()
    return out


def default_optimizer():
    """The optimiser of a default training stage (`StageConfig()`: clipping at norm 10, then AdaBelief on a
    warmup-cosine schedule), as users train."""
    from cameo_eqx.training.config import StageConfig
    from cameo_eqx.training.optim import make_optimizer

    return make_optimizer(StageConfig(), 1000)


def train_case(name: str, batches, repeats: int) -> dict:
    import equinox as eqx
    import jax

    from cameo_eqx.training.distributed import make_mesh, replicate, shard_leading
    from cameo_eqx.training.task import Task
    from cameo_eqx.training.trainer import make_train_step

    model = backbone(name)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = default_optimizer()
    mesh = make_mesh(jax.devices()[:1])
    P, S, O = replicate(params, mesh), replicate(static, mesh), replicate(opt.init(params), mesh)
    return time_train_epochs(P, S, O, lambda: (make_train_step(Task(), opt, mesh), lambda b: shard_leading(b, mesh)),
                             batches, repeats)  # fmt: skip


# ------------------------------------------------------------------------------------------ cost analysis


def _cost(compiled) -> dict:
    c = getattr(compiled, "compiled", compiled).cost_analysis()  # equinox's filter_jit wraps jax's Compiled
    if isinstance(c, (list, tuple)):  # older jax: one dict per computation
        c = c[0] if c else {}
    return {"flops": float(c.get("flops", float("nan"))), "bytes": float(c.get("bytes accessed", float("nan")))}


def compile_for(fn, args: tuple, sharding=None):
    """`fn(*args)` compiled (its array leaves traced, the rest fixed) at float32 matmul precision, as
    training and simulation trace by default: for this machine's default device (`sharding` None) or for
    the device of `sharding`, which may be a GPU this machine does not have (bench_hlo.py --target)."""
    import equinox as eqx
    import jax

    from cameo_eqx.precision import matmul_precision

    dyn, st = eqx.partition(args, eqx.is_array)
    if sharding is not None:
        dyn = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), dyn)
    with matmul_precision("float32"):
        return jax.jit(lambda d: fn(*eqx.combine(d, st))).lower(dyn).compile()


def ef_compiled(model, batch, sharding=None):
    """One energy + forces evaluation of `model` (a backbone or a ForceField) on `batch`, compiled."""
    from cameo_eqx.modules import ForceField

    ff = model if isinstance(model, ForceField) else ForceField(model, None, cutoff=CUTOFF)
    return compile_for(lambda ff, b: ff.energy_and_forces(b), (ff, batch), sharding)


def ef_cost(model, batch) -> dict:
    """FLOPs and bytes of one energy + forces evaluation of `model` on `batch` (compiled, not run)."""
    return _cost(ef_compiled(model, batch))


def bucket_batch(bucket_nodes: int):
    """One packed training bucket (leading device axis of 1) of mdCATH-like frames, as the loader builds it."""
    recs = training_frames(4 * int(bucket_nodes / MEAN_BEADS) + 16, MEAN_BEADS, 50, 500)
    return packed_and_padded(recs, bucket_nodes)[0][0]


def train_step_compiled(name: str, batch, sharding=None):
    """One training step (force matching, `default_optimizer`) of backbone `name` on the packed `batch`,
    compiled."""
    import equinox as eqx
    import jax

    from cameo_eqx.training.distributed import make_mesh
    from cameo_eqx.training.task import Task
    from cameo_eqx.training.trainer import make_train_step

    params, static = eqx.partition(backbone(name), eqx.is_inexact_array)
    opt = default_optimizer()
    mesh = make_mesh(jax.devices()[:1] if sharding is None else list(sharding.mesh.devices.flat))
    step = make_train_step(Task(), opt, mesh)
    return compile_for(lambda p, o, b: step(p, static, o, None, b), (params, opt.init(params), batch), sharding)


def train_step_cost(name: str, batch) -> dict:
    return _cost(train_step_compiled(name, batch))


def cost_section(prior, bucket_nodes: int) -> dict:
    import jax

    from cameo_eqx.modules import ForceField

    topo, x = chain_system()
    out: dict = {"chain": {}, "chain_per_edge": {}, "bucket": {}, "train_step": {}, "budget": {}}
    ff_chain = ForceField(None, prior, cutoff=CUTOFF)
    chain = ff_chain.batch_for(x, topo)
    chain_per_edge = dataclasses.replace(chain, edges_paired=False)  # same edges, computed per direction
    n_edges_chain = int(np.sum(np.asarray(chain.edge_mask)))
    bucket = bucket_batch(bucket_nodes)
    b0 = jax.tree.map(lambda a: a[0], bucket)  # one device's slice
    nodes, edges = int(np.sum(b0.node_mask)), int(np.sum(b0.edge_mask))
    frames = int(np.sum(b0.graph_mask))
    out["graphs"] = {"chain": {"beads": N_CHAIN, "edges": n_edges_chain},
                     "bucket": {"capacity": list(bucket.capacity), "beads": nodes, "edges": edges, "frames": frames}}
    for name in ("prior",) + BACKBONES:
        t0 = time.perf_counter()
        model = ForceField(None, prior, cutoff=CUTOFF) if name == "prior" else backbone(name)
        c = ef_cost(model, chain)
        out["chain"][name] = {**c, "flops_per_bead": c["flops"] / N_CHAIN, "bytes_per_bead": c["bytes"] / N_CHAIN,
                              "flops_per_edge": c["flops"] / n_edges_chain,
                              "bytes_per_edge": c["bytes"] / n_edges_chain}  # fmt: skip
        if name != "prior":
            out["chain_per_edge"][name] = ef_cost(model, chain_per_edge)
            c = ef_cost(model, b0)
            out["bucket"][name] = {**c, "flops_per_bead": c["flops"] / nodes, "bytes_per_bead": c["bytes"] / nodes,
                                   "flops_per_edge": c["flops"] / edges, "bytes_per_edge": c["bytes"] / edges}
            c = train_step_cost(name, bucket)
            out["train_step"][name] = {**c, "flops_per_frame": c["flops"] / frames,
                                       "bytes_per_frame": c["bytes"] / frames}
            out["budget"][name] = budget(name, out)
        print(f"  cost {name:8s} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def budget(name: str, cost: dict) -> dict:
    """Today's costs as the baseline; the FLOP and byte rates the issue's measurements achieved and its
    targets need (rate x cost per molecule step or per training frame), as fractions of the H200 peak."""
    ch, tr = cost["chain"][name], cost["train_step"][name]
    sim_meas = ISSUE_SIM.get(name, {}).get(128)
    out = {
        "baseline": {"ef_flops_per_bead": ch["flops_per_bead"], "ef_bytes_per_bead": ch["bytes_per_bead"],
                     "ef_flops_per_edge": ch["flops_per_edge"], "ef_bytes_per_edge": ch["bytes_per_edge"],
                     "bucket_ef_flops_per_bead": cost["bucket"][name]["flops_per_bead"],
                     "train_flops_per_frame": tr["flops_per_frame"], "train_bytes_per_frame": tr["bytes_per_frame"]},
        "sim_target_timestep_mol_per_s": TARGET_SIM[name],
        "sim_target_flop_per_s": TARGET_SIM[name] * ch["flops"],
        "sim_target_bytes_per_s": TARGET_SIM[name] * ch["bytes"],
        "train_target_frames_per_s": TARGET_TRAIN[name],
        "train_target_flop_per_s": TARGET_TRAIN[name] * tr["flops_per_frame"],
        "train_target_bytes_per_s": TARGET_TRAIN[name] * tr["bytes_per_frame"],
        "issue_measured_sim_flop_per_s": sim_meas * ch["flops"] if sim_meas else None,
        "issue_measured_train_flop_per_s": ISSUE_TRAIN[name] * tr["flops_per_frame"],
    }  # fmt: skip
    for k in ("sim_target_flop_per_s", "train_target_flop_per_s", "issue_measured_sim_flop_per_s",
              "issue_measured_train_flop_per_s"):  # fmt: skip
        if out[k] is not None:
            out[k.replace("flop_per_s", "fp32_peak_fraction")] = out[k] / H200["fp32_flop_per_s"]
    for k in ("sim_target_bytes_per_s", "train_target_bytes_per_s"):
        out[k.replace("bytes_per_s", "hbm_fraction")] = out[k] / H200["hbm_bytes_per_s"]
    return out


def print_cost(c: dict) -> None:
    g = c["graphs"]
    rows = []
    for where, n_b, n_e in (("chain", g["chain"]["beads"], g["chain"]["edges"]),
                            ("bucket", g["bucket"]["beads"], g["bucket"]["edges"])):  # fmt: skip
        for name, r in c[where].items():
            rows.append([name, f"{where} ({n_b} beads, {n_e} edges)", r["flops"] / 1e6, r["flops_per_bead"] / 1e3,
                         r["flops_per_edge"] / 1e3, r["bytes_per_bead"] / 1e3, r["bytes_per_edge"] / 1e3,
                         r["flops"] / max(r["bytes"], 1.0)])  # fmt: skip
    print_table("XLA cost analysis of energy + forces (backbone alone; 'prior' the prior alone)",
                ["model", "graph", "MFLOP", "kFLOP/bead", "kFLOP/edge", "kB/bead", "kB/edge", "FLOP/B"], rows)
    if c.get("chain_per_edge"):
        rows = [[name, r["flops"] / 1e6, c["chain"][name]["flops"] / 1e6,
                 1 - c["chain"][name]["flops"] / r["flops"], r["bytes"] / 1e6, c["chain"][name]["bytes"] / 1e6,
                 1 - c["chain"][name]["bytes"] / r["bytes"]] for name, r in c["chain_per_edge"].items()]  # fmt: skip
        print_table("paired edges (the default) against per-direction geometry, chain energy + forces",
                    ["backbone", "per-edge MFLOP", "paired MFLOP", "FLOPs saved", "per-edge MB", "paired MB",
                     "bytes saved"], rows)  # fmt: skip
    rows = []
    for name, b in c["budget"].items():
        rows.append([name, c["train_step"][name]["flops_per_frame"] / 1e6, b["sim_target_timestep_mol_per_s"],
                     b["sim_target_flop_per_s"] / 1e12, b["sim_target_fp32_peak_fraction"],
                     b["sim_target_hbm_fraction"], b["train_target_frames_per_s"], b["train_target_flop_per_s"] / 1e12,
                     b["train_target_fp32_peak_fraction"], b["train_target_hbm_fraction"]])  # fmt: skip
    print_table(f"budget: the issue's targets as FLOP and byte rates (H200: {H200['fp32_flop_per_s'] / 1e12:.0f} "
                f"TFLOP/s fp32, {H200['hbm_bytes_per_s'] / 1e12:.1f} TB/s)",
                ["backbone", "train MFLOP/frame", "sim target", "sim TFLOP/s", "of fp32", "of HBM", "train target",
                 "train TFLOP/s", "of fp32", "of HBM"], rows)  # fmt: skip


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny replica counts and buckets, few steps (CPU)")
    ap.add_argument("--cost", action="store_true", help="only the XLA cost analysis")
    ap.add_argument("--only", choices=("all", "sim", "train"), default="all", help="run only these cases")
    ap.add_argument("--budget", type=float, default=None,
                    help="start no new case after this many seconds (default 420; 1,200 with --quick)")
    ap.add_argument("--bucket-nodes", type=int, default=8192, help="training bucket size (nodes)")
    ap.add_argument("--loader-workers", type=int, default=None,
                    help="worker processes for the host-build rate of the training case (default: cores - 2, at "
                    "most 8; 0: the thread alone)")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/gpu.json)")
    ap.add_argument("--matmul-precision", choices=("float32", "tensorfloat32"), default="float32",
                    help="precision of float32 matmuls (cameo_eqx.precision); tensorfloat32 also reports each "
                         "model's relative force difference from float32 on the chain")
    ap.add_argument("--variant", choices=variants.NAMES, default=None,
                    help="swap one backbone block for an experimental formulation of the same function "
                    "(benchmarks/variants.py), to A/B it against the default")
    ap.add_argument("--graph-slots", choices=("cutoff", "candidates"), default="cutoff",
                    help="simulation: the model's graph sized by the pairs within the cutoff (the Simulator's "
                         "default), or by the neighbour list's candidates (cutoff + skin: the size before it had "
                         "its own), to measure what the smaller graph saves")
    args = ap.parse_args()
    variants.apply(args.variant)
    if args.budget is None:
        args.budget = 1200.0 if args.quick else 420.0

    import jax

    # every case below is traced at this precision (JAX's own GPU default would be TF32)
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    T0 = time.perf_counter()
    res: dict = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "quick": args.quick,
                 "variant": args.variant, "matmul_precision": args.matmul_precision, "graph_slots": args.graph_slots,
                 "issue_measured": {"sim_timestep_mol_per_s": ISSUE_SIM, "train_frames_per_s": ISSUE_TRAIN},
                 "targets": {"sim_timestep_mol_per_s_at_128": TARGET_SIM, "train_frames_per_s": TARGET_TRAIN},
                 "h200": H200}  # fmt: skip
    print(f"jax {jax.__version__} on {jax.devices()}", flush=True)
    prior = demo_prior()
    if args.cost:
        res["cost"] = cost_section(prior, args.bucket_nodes)
        print_cost(res["cost"])
        write_results("gpu_cost", res, args.out)
        return

    from cameo_eqx.modules import ForceField

    def over(what: str) -> bool:
        if time.perf_counter() - T0 > args.budget:
            print(f"  budget of {args.budget:.0f} s spent: skipping {what}", flush=True)
            return True
        return False

    # simulation
    topo, x = chain_system()
    replicas = (4,) if args.quick else (128, 1024)  # quick: one compile per model (compiles dominate on a CPU)
    sim = []
    for name in ("prior",) + BACKBONES if args.only != "train" else ():
        model = prior if name == "prior" else ForceField(backbone(name), prior, cutoff=CUTOFF)
        if args.matmul_precision != "float32":
            res.setdefault("force_error_vs_float32", {})[name] = precision_error(model, topo, x, args.matmul_precision)
        for r in replicas:
            if over(f"sim {name} R={r}"):
                continue
            if args.quick:
                steps = 100 if name == "prior" else 20
            else:
                steps = 2000 if name == "prior" else (400 if r <= 128 else 100)
            try:
                c = simulate_case(model, topo, x, r, steps, 3 if args.quick else 2, args.matmul_precision,
                                  args.graph_slots)  # fmt: skip
            except Exception as e:  # an OOM at 1,024 replicas is a result, not the end of the run
                c = {"replicas": r, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            c["model"] = name
            sim.append(c)
            msg = (f"{c['timestep_mol_per_s']:11.0f} timestep*mol/s ({c['steps_per_s']:.1f} steps/s, compile "
                   f"{c['compile_s']:.1f} s)") if "error" not in c else c["error"]  # fmt: skip
            print(f"  sim {name:8s} R={r:5d}: {msg}", flush=True)
    res["sim"] = sim

    # training
    if args.quick:
        recs, nodes, reps = training_frames(24, 40.0, 20, 80), 512, 1
    else:
        recs, nodes, reps = training_frames(480, MEAN_BEADS, 50, 500), args.bucket_nodes, 3
    packed, padded, nmax = packed_and_padded(recs, nodes)
    train = {"bucket_nodes": nodes, "n_max": nmax, "mean_beads": float(np.mean([r.n_beads for r in recs]))}
    for name in BACKBONES if args.only != "sim" else ():
        if over(f"train {name}"):
            continue
        try:
            a = train_case(name, packed, reps)
            b = train_case(name, padded, reps)
            train[name] = {"packed": a, "padded": b, "ratio": a["frames_per_s"] / b["frames_per_s"]}
            print(f"  train {name:8s}: packed {a['frames_per_s']:9.1f} fr/s, padded {b['frames_per_s']:9.1f} fr/s "
                  f"(compile {a['compile_s']:.0f}+{b['compile_s']:.0f} s)", flush=True)  # fmt: skip
        except Exception as e:
            train[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"  train {name} failed: {train[name]['error']}", flush=True)
    if args.only != "sim" and not over("host build"):
        import os

        w = args.loader_workers if args.loader_workers is not None else max(0, min(8, (os.cpu_count() or 1) - 2))
        train["host_build_frames_per_s"] = host = host_build(recs, nodes, w)
        print("  host build of these batches: " + ", ".join(
            f"{v:.0f} frames/s " + ("in the prefetch thread" if k == "0" else f"with {k} worker processes")
            for k, v in host.items()) + f" ({os.cpu_count()} cores)", flush=True)  # fmt: skip
    res["train"] = train

    if not args.quick and args.only == "all" and not over("cost analysis"):
        res["cost"] = cost_section(prior, args.bucket_nodes)

    res["seconds"] = time.perf_counter() - T0
    by = {(c["model"], c["replicas"]): c for c in sim}
    rows = []
    for name in ("prior",) + BACKBONES:
        row = [name]
        for r in replicas:
            c = by.get((name, r))
            row.append("skipped" if c is None else c.get("timestep_mol_per_s", "failed"))
        row += [ISSUE_SIM.get(name, {}).get(128, "-"), TARGET_SIM.get(name, "-")]
        rows.append(row)
    if args.only != "train":
        print_table(f"simulation: {N_CHAIN}-bead chain, BAOAB 2 fs, default presets + prior, timestep*mol/s",
                    ["model"] + [f"{r} replicas" for r in replicas] + ["issue (128, H200)", "target (128)"], rows)
    rows = []
    for name in BACKBONES:
        t = train.get(name)
        if t is None or "error" in t:
            rows.append([name, "skipped" if t is None else "failed", "", "", ISSUE_TRAIN[name], TARGET_TRAIN[name]])
            continue
        rows.append([name, t["packed"]["frames_per_s"], t["padded"]["frames_per_s"], t["ratio"], ISSUE_TRAIN[name],
                     TARGET_TRAIN[name]])  # fmt: skip
    if args.only != "sim":
        print_table(f"training step: mdCATH-like sizes (mean {train['mean_beads']:.0f} beads, N_max {nmax}), "
                    f"{nodes}-node buckets, frames/s",
                    ["backbone", "packed", "padded", "ratio", "issue packed (H200)", "target"], rows)  # fmt: skip
    if "host_build_frames_per_s" in train:
        print("host build of the training batches (the rate training cannot exceed), frames/s: " + ", ".join(
            f"{v:.0f} " + ("thread" if k == "0" else f"{k} workers") for k, v in train["host_build_frames_per_s"].items()))
    if "cost" in res:
        print_cost(res["cost"])
    print(f"\ntotal {res['seconds']:.0f} s", flush=True)
    suffix = "" if args.only == "all" else "_" + args.only
    write_results(("gpu_quick" if args.quick else "gpu") + suffix, res, args.out)


if __name__ == "__main__":
    main()
