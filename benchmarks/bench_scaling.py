"""Training-throughput scaling: frames/s of the data-parallel training step over device counts, in strong
(fixed global batch) and weak (fixed per-device batch) modes, with Amdahl and Gustafson fits.

Three commands:

    # local sweep (also what runs without a command): one subprocess per device count (CPU: virtual
    # devices via XLA_FLAGS; GPU: the first N visible devices), then the analysis
    python benchmarks/bench_scaling.py sweep [--devices 1,2,4] [--modes strong,weak] [--out-dir DIR]

    # one measurement in this process (or in each process of a jax.distributed job: srun, or
    # --coordinator/--num-processes/--process-id); process 0 writes DIR/scaling_<mode>_n<N>_p<P>.json
    python benchmarks/bench_scaling.py run [--devices N] [--local-devices G] [--modes strong,weak] --out-dir DIR

    # merge per-run JSON files: fits, DIR/scaling.json, DIR/scaling.png, a table
    python benchmarks/bench_scaling.py analyze DIR [--out-json F] [--png F]

Per run it measures: time per step (median over repeats; steps dispatched back to back), the same with the
step's outputs read on the host after every step (as Trainer.fit does for logging and the NaN guard: the
"synced" column; the difference is what that per-step host sync costs), frames/s, the time of an all-reduce of a
parameter-sized pytree alone (so compute ≈ step - all-reduce; XLA may overlap the two, so this is the
exposed-communication upper bound), and a communication check on the compiled step's HLO: the summed
all-reduce operand bytes must equal the trainable parameter bytes plus a few loss scalars, with no
all-gather / all-to-all / reduce-scatter / collective-permute and no host transfers (send/recv,
in/outfeed, host callbacks) — i.e. no batch is gathered and nothing syncs with the host inside a step.

Fits (least squares with covariance, scipy.optimize.curve_fit, both with the one-device throughput X1 as a
free parameter): strong: X(N) = X1 * S(N), S(N) = 1 / (s + (1 - s) / N) (Amdahl, serial fraction s);
weak: X(N) = X1 * S(N), S(N) = N - s_g (N - 1) (Gustafson, serial fraction s_g). Efficiency E = S / N.

On CPU the virtual devices share the same cores: CPU numbers prove only the machinery, not scaling.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import RESULTS, print_table, write_results  # noqa: E402

RUN_KIND = "bench_scaling_run"
CPU_NOTE = ("CPU: the virtual devices share the same cores, so these numbers prove only the machinery "
            "(sweep, collectives, fits), not how training scales; measure on GPUs for that.")  # fmt: skip
TINY_HP = ("n_features=8", "n_layers=1", "n_radial_basis=4")
DEFAULT_HP = ("n_features=16", "n_layers=2", "n_radial_basis=8")
MODES = ("strong", "weak")

# ---------------------------------------------------------------------------------------------- fits


def amdahl(n, s):
    n = np.asarray(n, float)
    return 1.0 / (s + (1.0 - s) / n)


def gustafson(n, s):
    n = np.asarray(n, float)
    return n - s * (n - 1.0)


LAWS = {"strong": ("amdahl", amdahl), "weak": ("gustafson", gustafson)}


def fit_law(mode: str, devices, throughput, sigma=None) -> dict[str, Any]:
    """Fits X(N) = X1 * S(N) (Amdahl for `strong`, Gustafson for `weak`) to throughputs.

    **Arguments:**

    - `mode`: "strong" or "weak".
    - `devices`, `throughput`: the measured points (several points per N are allowed).
    - `sigma`: optional per-point standard deviations of the throughput (relative weights).

    **Returns:** `{"law", "s", "s_err", "x1", "x1_err", "cov", "points", "dof"}`; with three or more
    points both `s` and `x1` are fitted; with two, `x1` is fixed to the one-device throughput (fails if
    there is none) and `s` is solved for, without an error (no degree of freedom is left). A strong-mode
    `s` above 1 means that adding devices slowed the step down (as virtual CPU devices do).
    """
    from scipy.optimize import curve_fit

    if mode not in LAWS:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    n = np.asarray(devices, float)
    x = np.asarray(throughput, float)
    if n.shape != x.shape or n.size < 2:
        raise ValueError(f"need at least two (devices, throughput) points of equal length, got {n.size}/{x.size}")
    if len(set(n.tolist())) < 2:
        raise ValueError(f"need at least two distinct device counts, got {sorted(set(n.tolist()))}")
    if np.any(~np.isfinite(x)) or np.any(x <= 0):
        raise ValueError(f"throughputs must be finite and positive, got {x.tolist()}")
    law, fn = LAWS[mode]
    sig = None if sigma is None else np.asarray(sigma, float)
    if sig is not None and (sig.shape != x.shape or np.any(~(sig > 0))):
        sig = None
    ones = x[n == 1]
    x1_guess = float(ones.mean()) if ones.size else float(np.max(x / n))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OptimizeWarning when the covariance cannot be estimated
        if n.size >= 3:
            popt, pcov = curve_fit(lambda nn, x1, s: x1 * fn(nn, s), n, x, p0=(x1_guess, 0.1), sigma=sig,
                                   absolute_sigma=False, maxfev=20000)  # fmt: skip
            x1, s = float(popt[0]), float(popt[1])
            cov = np.asarray(pcov, float)
            x1_err, s_err = (math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])) if np.all(np.isfinite(cov)) else (None, None)
            dof = n.size - 2
        else:
            if not ones.size:
                raise ValueError("with two points, one must be at 1 device (X1 is then fixed to it)")
            x1 = x1_guess
            popt, pcov = curve_fit(lambda nn, s: x1 * fn(nn, s), n, x, p0=(0.1,), sigma=sig, maxfev=20000)
            s = float(popt[0])
            cov = np.asarray(pcov, float)
            s_err = math.sqrt(cov[0, 0]) if np.all(np.isfinite(cov)) else None
            x1_err, dof = None, n.size - 2  # X1 was taken from the data too: no degree of freedom left
    if dof == 0:
        x1_err = s_err = None
    return {"law": law, "s": s, "s_err": s_err, "x1": x1, "x1_err": x1_err,
            "cov": cov.tolist() if np.all(np.isfinite(cov)) else None, "points": int(n.size), "dof": int(dof)}  # fmt: skip


def predicted_efficiency(fit: dict, mode: str, n: int) -> float:
    return float(LAWS[mode][1](n, fit["s"]) / n)


# ------------------------------------------------------------------------------------ HLO checks

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}  # fmt: skip
_SHAPE = re.compile(r"\b(pred|s8|u8|s16|u16|f16|bf16|s32|u32|f32|s64|u64|f64|c64|c128)\[([0-9,]*)\]")
_COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "reduce-scatter", "collective-permute",
                "collective-broadcast", "ragged-all-to-all")  # fmt: skip
_HOST = ("send", "recv", "infeed", "outfeed")
_OP = re.compile(r"=\s(.*?)\s([a-z][a-z\-]*)\(")


def _shape_bytes(shape_text: str) -> tuple[int, int]:
    """(total bytes, bytes of rank-0 elements) of an HLO shape (array or tuple)."""
    tot = scal = 0
    for dt, dims in _SHAPE.findall(shape_text):
        k = _DTYPE_BYTES[dt] * (math.prod(int(d) for d in dims.split(",")) if dims else 1)
        tot += k
        if not dims:
            scal += k
    return tot, scal


def hlo_collectives(hlo_text: str) -> dict[str, Any]:
    """Collective and host-transfer ops of an (optimised) HLO module's text.

    Async pairs count once (`all-reduce-start` counts, `all-reduce-done` does not). Host callbacks are
    custom-calls whose target names a host callback.

    **Returns:** `{"ops": {op: count}, "bytes": {op: result bytes}, "allreduce_bytes",
    "allreduce_scalar_bytes", "host_transfers": [lines], "other_collectives": {op: count}}`.
    """
    ops: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    ar_scalar = 0
    host: list[str] = []
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if m is None:
            continue
        shape, op = m.group(1), m.group(2)
        if op.endswith("-done"):
            continue
        base = op[: -len("-start")] if op.endswith("-start") else op
        if base in _COLLECTIVES:
            tot, scal = _shape_bytes(shape)
            ops[base] = ops.get(base, 0) + 1
            nbytes[base] = nbytes.get(base, 0) + tot
            if base == "all-reduce":
                ar_scalar += scal
        elif base in _HOST or (base == "custom-call" and re.search(r"callback|host", line, re.I)):
            host.append(line.strip()[:200])
    return {"ops": ops, "bytes": nbytes, "allreduce_bytes": nbytes.get("all-reduce", 0),
            "allreduce_scalar_bytes": ar_scalar, "host_transfers": host,
            "other_collectives": {k: v for k, v in ops.items() if k != "all-reduce"}}  # fmt: skip


def comm_check(hlo_text: str, param_bytes: int, n_devices: int, max_extra_scalars: int = 16) -> dict[str, Any]:
    """Compares the step's all-reduce volume with the parameter bytes.

    Passes when the summed all-reduce bytes equal `param_bytes` plus at most `max_extra_scalars`
    8-byte scalars (the psummed loss and counting sums), there are no other collectives and no host
    transfers. On one device XLA removes the all-reduces: the check is then `not applicable`.
    """
    c = hlo_collectives(hlo_text)
    extra = c["allreduce_bytes"] - param_bytes
    res = {**c, "param_bytes": int(param_bytes), "extra_allreduce_bytes": int(extra)}
    if n_devices < 2:
        res["ok"] = None
        res["verdict"] = "not applicable (one device: no collectives)"
        return res
    problems = []
    if extra < 0:
        problems.append(f"all-reduce moves {c['allreduce_bytes']} B < parameter bytes {param_bytes} B "
                        "(gradients not combined?)")  # fmt: skip
    elif extra > 8 * max_extra_scalars:
        problems.append(f"all-reduce moves {extra} B more than the parameters (more than loss scalars)")
    if c["other_collectives"]:
        problems.append(f"unexpected collectives {c['other_collectives']} (batch gathered?)")
    if c["host_transfers"]:
        problems.append(f"{len(c['host_transfers'])} host transfers inside the step")
    res["ok"] = not problems
    res["verdict"] = "ok: all-reduce bytes = parameter bytes + loss scalars" if not problems else "; ".join(problems)
    return res


# ------------------------------------------------------------------------------------ measurement


def _parse_hp(items) -> dict[str, Any]:
    import ast

    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"hyperparameter {it!r} must be key=value")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def _tree_bytes(tree) -> int:
    import jax

    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def measure(args, mode: str) -> dict[str, Any]:
    """One (mode, device count) measurement in this process (or this process's part of a job)."""
    import equinox as eqx
    import jax
    import optax
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P

    from cameo_eqx.data.loader import BatchLoader
    from cameo_eqx.data.testdata import mdcath_like_sizes, synthetic_records
    from cameo_eqx.modules import make_backbone
    from cameo_eqx.training.distributed import AXIS, filter_shard_map, make_mesh, replicate, shard_leading, to_host
    from cameo_eqx.training.task import Task
    from cameo_eqx.training.trainer import make_train_step

    nproc = jax.process_count()
    if nproc > 1:
        devs = jax.devices()
    else:
        devs = jax.devices() if args.devices in (None, 0) else jax.devices()[: args.devices]
        if args.devices and len(devs) < args.devices:
            raise SystemExit(f"--devices {args.devices}: only {len(devs)} {jax.default_backend()} devices visible"
                             " (on CPU set XLA_FLAGS=--xla_force_host_platform_device_count, or use `sweep`)")  # fmt: skip
    mesh = make_mesh(devs)
    n = mesh.size
    n_local = sum(1 for d in devs if d.process_index == jax.process_index())
    per_dev = args.nodes_per_device if mode == "weak" else args.global_nodes // n
    if per_dev < args.max_size:
        raise SystemExit(f"{mode}: {per_dev} beads per device < --max-size {args.max_size}: the largest protein"
                         f" would not fit; raise --global-nodes (now {args.global_nodes}) or lower --max-size")  # fmt: skip
    # enough synthetic mdCATH-like frames for warm-up + steps full global steps
    rng = np.random.default_rng(args.seed)
    sizes = mdcath_like_sizes(args.proteins, rng, mean=args.mean_size, lo=args.min_size, hi=args.max_size)
    need = (args.steps + 2) * per_dev * n * 1.4
    per = max(2, math.ceil(need / float(np.sum(sizes))))
    recs = synthetic_records(sizes.tolist(), per, seed=args.seed)
    loader = BatchLoader(recs, cutoff=args.cutoff, target_nodes=per_dev, n_devices=n_local, prefetch=0,
                         process_index=jax.process_index(), process_count=nproc, seed=args.seed)  # fmt: skip
    plan = loader.plan(0)
    steps = [s for s in loader.steps(0) if all(b >= 0 for b in s.batches)]
    if not steps:
        raise SystemExit("no full step in the synthetic epoch (too few frames)")
    # the most common size class; one capacity => one compile
    classes = [s.size_class for s in steps]
    main_cls = max(set(classes), key=classes.count)
    host = []
    for s in steps:
        if s.size_class != main_cls:
            continue
        b = loader.build_step(plan, s)
        if host and b.capacity != host[0].capacity:
            continue  # an overflow bucket: a different shape
        host.append(b)
        if len(host) >= args.steps:
            break
    local_frames = np.asarray([int(np.sum(h.graph_mask)) for h in host], np.int64)
    if nproc > 1:  # the same number of steps everywhere is needed below
        counts = multihost_utils.process_allgather(np.asarray([len(host)]))
        k = int(np.min(counts))
        host, local_frames = host[:k], local_frames[:k]
        frames = np.asarray(multihost_utils.process_allgather(local_frames)).reshape(nproc, k).sum(0)
    else:
        frames = local_frames
    n_steps = len(host)

    hp = _parse_hp(args.hp if args.hp is not None else (TINY_HP if args.tiny else DEFAULT_HP))
    model = make_backbone(args.backbone, 20, args.cutoff, args.preset, key=jax.random.PRNGKey(0), **hp)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.adabelief(1e-3)
    Pr, S, O = replicate(params, mesh), replicate(static, mesh), replicate(opt.init(params), mesh)
    dev = [shard_leading(b, mesh) for b in host]
    step = make_train_step(Task(), opt, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(Pr, S, O, None, dev[0]).compile()
    compile_s = time.perf_counter() - t0
    param_bytes = _tree_bytes(params)
    comm = comm_check(compiled.compiled.as_text(), param_bytes, n)

    def epoch():
        p, o = Pr, O
        for b in dev:
            p, o, _, out = compiled(p, S, o, None, b)
        jax.block_until_ready((p, out))

    def epoch_synced():  # as Trainer.fit does: every step's outputs read on the host before the next step
        p, o = Pr, O
        for b in dev:
            p, o, _, out = compiled(p, S, o, None, b)
            {k: float(np.asarray(v)) for k, v in to_host(out).items()}
        jax.block_until_ready(p)

    epoch()  # warm-up
    times, synced = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        epoch()
        times.append((time.perf_counter() - t) / n_steps)
        t = time.perf_counter()
        epoch_synced()
        synced.append((time.perf_counter() - t) / n_steps)
    step_s = statistics.median(times)

    # an all-reduce of a parameter-sized pytree alone (what the gradient psum moves)
    gshape = jax.tree.map(lambda x: np.zeros((n,) + x.shape, x.dtype), params)
    g = jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, NamedSharding(mesh, P(AXIS)),
                                                            lambda idx, x=x: x[idx]), gshape)  # fmt: skip
    ar = jax.jit(filter_shard_map(lambda t: jax.lax.psum(t, AXIS), mesh, (P(AXIS),), P()))
    jax.block_until_ready(ar(g))
    ar_times = []
    for _ in range(max(3, args.repeats)):
        t = time.perf_counter()
        for _ in range(10):
            r = ar(g)
        jax.block_until_ready(r)
        ar_times.append((time.perf_counter() - t) / 10)
    allreduce_s = statistics.median(ar_times) if n > 1 else 0.0
    fps = float(np.mean(frames)) / step_s
    return {
        "kind": RUN_KIND, "mode": mode, "devices": n, "processes": nproc, "local_devices": n_local,
        "platform": jax.default_backend(), "device_kind": devs[0].device_kind,
        "model": {"backbone": args.backbone, "preset": args.preset, "hyperparameters": hp,
                  "param_bytes": param_bytes, "n_params": int(sum(x.size for x in jax.tree.leaves(params)))},
        "data": {"proteins": args.proteins, "sizes": sizes.tolist(), "frames_per_protein": per,
                 "cutoff": args.cutoff, "nodes_per_device": per_dev, "global_nodes": per_dev * n,
                 "capacity": list(host[0].capacity)},
        "steps": n_steps, "repeats": args.repeats, "frames_per_step": float(np.mean(frames)),
        "step_s": step_s, "step_s_all": times, "step_s_std": statistics.pstdev(times) if len(times) > 1 else 0.0,
        "frames_per_s": fps, "frames_per_s_per_device": fps / n, "compile_s": compile_s,
        "step_s_host_sync": statistics.median(synced),
        "allreduce_s": allreduce_s, "compute_s": max(step_s - allreduce_s, 0.0),
        "allreduce_fraction": allreduce_s / step_s if step_s > 0 else None,
        "comm_check": comm,
    }  # fmt: skip


def _run_name(r: dict) -> str:
    return f"scaling_{r['mode']}_n{r['devices']}_p{r['processes']}.json"


def cmd_run(args) -> list[dict]:
    import jax

    from cameo_eqx.training.config import DistributedConfig
    from cameo_eqx.training.distributed import initialize

    local_ids = tuple(range(args.local_devices)) if args.local_devices else None
    initialize(DistributedConfig(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                 process_id=args.process_id, local_device_ids=local_ids))  # fmt: skip
    if args.local_devices and jax.process_count() == 1:
        args.devices = args.local_devices  # one process: the first G devices
    out = []
    for mode in _modes(args.modes):
        r = measure(args, mode)
        out.append(r)
        if jax.process_index() == 0:
            c = r["comm_check"]
            print(f"{mode:6s} N={r['devices']:3d} P={r['processes']}: {r['step_s'] * 1e3:8.2f} ms/step "
                  f"{r['frames_per_s']:9.1f} frames/s  with a host read per step {r['step_s_host_sync'] * 1e3:.2f} ms  "
                  f"all-reduce alone {r['allreduce_s'] * 1e3:.3f} ms  "
                  f"compile {r['compile_s']:.1f} s  comm: {c['verdict']}", flush=True)  # fmt: skip
            write_results("", {**r, "note": CPU_NOTE if r["platform"] == "cpu" else None},
                          Path(args.out_dir) / _run_name(r))  # fmt: skip
    if out and out[0]["platform"] == "cpu" and jax.process_index() == 0:
        print(CPU_NOTE)
    return out


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise SystemExit(f"--modes: {bad or text!r} not in {MODES}")
    return modes


def _counts(text: str) -> list[int]:
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"--devices must be a comma-separated list of integers, got {text!r}") from None
    if not out or out[0] < 1:
        raise SystemExit(f"--devices must list counts >= 1, got {text!r}")
    return out


def _run_flags(args) -> list[str]:
    f = ["--modes", args.modes, "--steps", str(args.steps), "--repeats", str(args.repeats),
         "--nodes-per-device", str(args.nodes_per_device), "--global-nodes", str(args.global_nodes),
         "--backbone", args.backbone, "--preset", args.preset, "--proteins", str(args.proteins),
         "--mean-size", str(args.mean_size), "--min-size", str(args.min_size), "--max-size", str(args.max_size),
         "--cutoff", str(args.cutoff), "--seed", str(args.seed)]  # fmt: skip
    if args.tiny:
        f.append("--tiny")
    if args.hp is not None:
        f += ["--hp", *args.hp]
    return f


def cmd_sweep(args) -> dict:
    counts = _counts(args.devices_list)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.global_nodes is None:
        args.global_nodes = args.nodes_per_device * max(counts)
    for n in counts:
        env = dict(os.environ)
        flags = env.get("XLA_FLAGS", "")
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, str(Path(__file__).resolve()), "run", "--devices", str(n), "--out-dir", str(out_dir),
               *_run_flags(args)]  # fmt: skip
        print(f"== {n} device(s)", flush=True)
        p = subprocess.run(cmd, env=env, timeout=args.timeout)
        if p.returncode != 0:
            raise SystemExit(f"run with {n} device(s) failed (exit {p.returncode}): {' '.join(cmd)}")
    return cmd_analyze(argparse.Namespace(dir=str(out_dir), out_json=args.out_json, png=None, no_plot=args.no_plot))


# ---------------------------------------------------------------------------------------- analysis


def load_runs(directory: str | os.PathLike) -> list[dict]:
    """Every per-run JSON file (kind `bench_scaling_run`) under `directory` (recursively)."""
    files = sorted(glob.glob(os.path.join(str(directory), "**", "*.json"), recursive=True))
    runs = []
    for f in files:
        try:
            d = json.loads(Path(f).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{f}: not readable JSON ({e})") from None
        if isinstance(d, dict) and d.get("kind") == RUN_KIND:
            d["_file"] = f
            runs.append(d)
    return runs


def _setup(r: dict, mode: str) -> str:
    """What must be equal across the runs of one fit: model, cutoff and the batch that the mode fixes."""
    d = r.get("data", {})
    batch = d.get("global_nodes") if mode == "strong" else d.get("nodes_per_device")
    return json.dumps([r.get("model", {}).get("backbone"), r.get("model", {}).get("preset"),
                       r.get("model", {}).get("hyperparameters"), d.get("cutoff"), batch], sort_keys=True)  # fmt: skip


def analyze(runs: list[dict]) -> dict[str, Any]:
    """Fits per mode over the merged runs; returns the summary (points, fits, efficiencies, comm)."""
    res: dict[str, Any] = {"modes": {}}
    for mode in MODES:
        rs = sorted([r for r in runs if r["mode"] == mode], key=lambda r: (r["devices"], r["processes"]))
        if not rs:
            continue
        setups = {_setup(r, mode) for r in rs}
        if len(setups) > 1:
            raise SystemExit(f"{mode}: the runs do not share one setup (model, cutoff, batch), so one fit over "
                             f"them means nothing: {sorted(setups)}; analyze each setup's files apart")  # fmt: skip
        n = [r["devices"] for r in rs]
        x = [r["frames_per_s"] for r in rs]
        # weights from the spread over repeats, at least 1% (a lucky tight repeat must not dominate)
        sig = [r["frames_per_s"] * max(r.get("step_s_std", 0.0) / r["step_s"], 0.01) for r in rs]
        x1 = statistics.mean([xi for ni, xi in zip(n, x) if ni == 1]) if 1 in n else None
        points = [{"devices": r["devices"], "processes": r["processes"], "frames_per_s": r["frames_per_s"],
                   "step_s": r["step_s"], "step_s_host_sync": r.get("step_s_host_sync"),
                   "allreduce_s": r["allreduce_s"], "compute_s": r["compute_s"],
                   "speedup": (r["frames_per_s"] / x1) if x1 else None,
                   "efficiency": (r["frames_per_s"] / x1 / r["devices"]) if x1 else None,
                   "comm_ok": r["comm_check"]["ok"], "file": r.get("_file")} for r in rs]  # fmt: skip
        m: dict[str, Any] = {"points": points}
        try:
            fit = fit_law(mode, n, x, sig)
            fit["efficiency_at"] = {str(k): predicted_efficiency(fit, mode, k) for k in (8, 24, 64, 256)}
            m["fit"] = fit
        except ValueError as e:
            m["fit"] = None
            m["fit_error"] = str(e)
        res["modes"][mode] = m
    checks = [r["comm_check"] for r in runs if r["comm_check"]["ok"] is not None]
    res["comm_ok"] = all(c["ok"] for c in checks) if checks else None
    res["comm"] = [{"mode": r["mode"], "devices": r["devices"], "processes": r["processes"],
                    "allreduce_bytes": r["comm_check"]["allreduce_bytes"], "param_bytes": r["comm_check"]["param_bytes"],
                    "extra_bytes": r["comm_check"]["extra_allreduce_bytes"],
                    "other_collectives": r["comm_check"]["other_collectives"],
                    "host_transfers": len(r["comm_check"]["host_transfers"]), "ok": r["comm_check"]["ok"]}
                   for r in runs]  # fmt: skip
    res["platforms"] = sorted({r["platform"] for r in runs})
    res["runs"] = len(runs)
    return res


def plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cameo_eqx.fileio import write_atomic

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"strong": "C0", "weak": "C1"}
    nmax = 1
    for mode, m in summary["modes"].items():
        n = np.asarray([p["devices"] for p in m["points"]], float)
        x = np.asarray([p["frames_per_s"] for p in m["points"]], float)
        nmax = max(nmax, int(n.max()))
        axes[0].plot(n, x, "o", color=colors[mode], label=f"{mode} (measured)")
        fit = m.get("fit")
        if fit:
            nn = np.linspace(1, max(n.max(), 2), 200)
            fn = LAWS[mode][1]
            err = f" ± {fit['s_err']:.3f}" if fit["s_err"] is not None else ""
            lab = f"{fit['law']}: s = {fit['s']:.3f}{err}"
            axes[0].plot(nn, fit["x1"] * fn(nn, fit["s"]), "-", color=colors[mode], label=lab)
            axes[1].plot(nn, fn(nn, fit["s"]) / nn, "-", color=colors[mode], label=lab)
            axes[1].plot(n, x / fit["x1"] / n, "o", color=colors[mode], label=f"{mode} (measured / fitted X1)")
    axes[0].set_xlabel("devices")
    axes[0].set_ylabel("training throughput (frames/s)")
    axes[0].set_xscale("log", base=2)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[1].axhline(1.0, color="0.6", lw=0.8)
    axes[1].set_xlabel("devices")
    axes[1].set_ylabel("parallel efficiency S(N)/N")
    axes[1].set_xscale("log", base=2)
    axes[1].set_ylim(0, 1.2)
    axes[1].legend(fontsize=8)
    title = "training-step scaling"
    if "cpu" in summary.get("platforms", []):
        title += " (CPU virtual devices share cores: machinery only)"
    fig.suptitle(title)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def cmd_analyze(args) -> dict:
    runs = load_runs(args.dir)
    if not runs:
        raise SystemExit(f"no per-run scaling JSON files (kind {RUN_KIND!r}) under {args.dir}")
    summary = analyze(runs)
    for mode, m in summary["modes"].items():
        rows = [[p["devices"], p["processes"], p["step_s"] * 1e3,
                 p["step_s_host_sync"] * 1e3 if p["step_s_host_sync"] is not None else "-",
                 p["allreduce_s"] * 1e3, p["frames_per_s"],
                 p["speedup"] if p["speedup"] is not None else "-",
                 p["efficiency"] if p["efficiency"] is not None else "-",
                 {True: "ok", False: "FAIL", None: "n/a"}[p["comm_ok"]]] for p in m["points"]]  # fmt: skip
        print_table(f"{mode} scaling ({'fixed global' if mode == 'strong' else 'fixed per-device'} batch)",
                    ["devices", "procs", "ms/step", "synced ms/step", "all-reduce ms", "frames/s", "speed-up",
                     "efficiency", "comm"],
                    rows)  # fmt: skip
        f = m.get("fit")
        if f:
            err = f" ± {f['s_err']:.4f}" if f["s_err"] is not None else " (no error: no degrees of freedom)"
            print(f"  {f['law']} fit: serial fraction s = {f['s']:.4f}{err}; X1 = {f['x1']:.4g} frames/s; "
                  + ", ".join(f"E({k}) = {v:.2f}" for k, v in f["efficiency_at"].items()))  # fmt: skip
        else:
            print(f"  no fit: {m.get('fit_error')}")
    c = summary["comm"]
    if c:
        r = max(c, key=lambda r: r["devices"])
        print(f"\ncommunication: all-reduce {r['allreduce_bytes']} B per step vs parameters {r['param_bytes']} B "
              f"(+{r['extra_bytes']} B of loss scalars) at {r['devices']} devices; other collectives "
              f"{r['other_collectives'] or 'none'}; host transfers {r['host_transfers']}; "
              f"all runs: {'ok' if summary['comm_ok'] else 'n/a' if summary['comm_ok'] is None else 'FAIL'}")  # fmt: skip
    if "cpu" in summary["platforms"]:
        print(CPU_NOTE)
        summary["note"] = CPU_NOTE
    out_json = Path(args.out_json) if args.out_json else Path(args.dir) / "scaling.json"
    write_results("scaling", summary, out_json)
    if not args.no_plot:
        png = Path(args.png) if args.png else out_json.with_suffix(".png")
        print(f"wrote {plot(summary, png)}")
    return summary


# ------------------------------------------------------------------------------------------- CLI


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modes", default="strong,weak", help="comma-separated: strong (fixed global batch), "
                   "weak (fixed per-device batch)")  # fmt: skip
    p.add_argument("--steps", type=int, default=8, help="distinct training steps timed per repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the steps (median reported)")
    p.add_argument("--nodes-per-device", type=int, default=512, help="weak mode: beads per device per step")
    p.add_argument("--global-nodes", type=int, default=None,
                   help="strong mode: beads per step over all devices (sweep default: nodes-per-device x "
                        "the largest device count; run default: nodes-per-device x 4)")  # fmt: skip
    p.add_argument("--backbone", default="painn")
    p.add_argument("--preset", default="small")
    p.add_argument("--hp", nargs="*", default=None, metavar="KEY=VALUE",
                   help=f"backbone hyperparameters (default {' '.join(DEFAULT_HP)}; --tiny: {' '.join(TINY_HP)})")
    p.add_argument("--tiny", action="store_true", help="a tiny model (tests)")
    p.add_argument("--proteins", type=int, default=12, help="synthetic proteins (mdCATH-like log-normal sizes)")
    p.add_argument("--mean-size", type=float, default=60.0)
    p.add_argument("--min-size", type=int, default=20)
    p.add_argument("--max-size", type=int, default=160)
    p.add_argument("--cutoff", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> Any:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="CPU numbers prove only the machinery: virtual devices share the same cores.")  # fmt: skip
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{sweep,run,analyze}  (default: sweep)")
    sw = sub.add_parser("sweep", help="one subprocess per device count, then analyze")
    sw.add_argument("--devices", dest="devices_list", default="1,2,4", help="comma-separated device counts")
    sw.add_argument("--out-dir", default=str(RESULTS / "scaling"), help="per-run JSON files and the merged results")
    sw.add_argument("--out-json", default=None, help="merged JSON (default OUT_DIR/scaling.json; PNG beside it)")
    sw.add_argument("--no-plot", action="store_true")
    sw.add_argument("--timeout", type=float, default=3600, help="seconds per device count")
    _add_run_args(sw)
    rn = sub.add_parser("run", help="measure in this process (or this process of a jax.distributed job)")
    rn.add_argument("--devices", type=int, default=0, help="one process: use the first N devices (0: all)")
    rn.add_argument("--local-devices", type=int, default=0,
                    help="use the first G devices of each process (jax.distributed local_device_ids; 0: all)")
    rn.add_argument("--out-dir", default=str(RESULTS / "scaling"))
    rn.add_argument("--coordinator", default=None, help="host:port of process 0 (default: from SLURM)")
    rn.add_argument("--num-processes", type=int, default=None)
    rn.add_argument("--process-id", type=int, default=None)
    _add_run_args(rn)
    an = sub.add_parser("analyze", help="merge per-run JSON files into the fits, JSON and PNG")
    an.add_argument("dir", help="directory searched (recursively) for per-run JSON files")
    an.add_argument("--out-json", default=None, help="default DIR/scaling.json")
    an.add_argument("--png", default=None, help="default beside the JSON")
    an.add_argument("--no-plot", action="store_true")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["sweep", *argv]  # `make bench` runs every benchmark without arguments: the local sweep
    args = ap.parse_args(argv)
    if args.cmd == "analyze":
        return cmd_analyze(args)
    for k in ("steps", "repeats", "nodes_per_device", "proteins"):
        if getattr(args, k) < 1:
            raise SystemExit(f"--{k.replace('_', '-')} must be >= 1")
    if args.cmd == "sweep":
        return cmd_sweep(args)
    if args.global_nodes is None:
        args.global_nodes = args.nodes_per_device * 4
    return cmd_run(args)


if __name__ == "__main__":
    main()
