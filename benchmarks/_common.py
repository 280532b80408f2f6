"""Shared helpers for the benchmark scripts: where the reference data is, timing, the results table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def time_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median and spread of wall-clock seconds over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "repeats": repeats}


def time_train_epochs(params, static, opt_state, make_step: Callable[[], Any], batches, repeats: int) -> dict:
    """Times epochs of a compiled data-parallel train step over host `batches` (one device, a leading
    device axis of 1 on every array): every distinct capacity is compiled first (`compile_s`), then
    `repeats` epochs from the same starting state give the median `epoch_s`, `frames_per_s` and the node
    utilisation of the buckets (`node_util`).

    `params`, `static`, `opt_state` are replicated on the step's mesh; `make_step()` returns
    `(step, shard)`: the step `(params, static, opt_state, ema, batch) -> (params, opt_state, ema, out)`
    and the function that puts one host batch on the mesh.
    """
    import jax
    import numpy as np

    step, shard = make_step()
    dev = [shard(b) for b in batches]
    t0 = time.perf_counter()
    seen = set()
    for b, h in zip(dev, batches):  # compile every capacity once
        if h.capacity not in seen:
            seen.add(h.capacity)
            jax.block_until_ready(step(params, static, opt_state, None, b))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        p, o = params, opt_state
        for b in dev:
            p, o, _, _ = step(p, static, o, None, b)
        jax.block_until_ready(p)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    frames = int(sum(int(np.sum(h.graph_mask)) for h in batches))
    util = sum(int(np.sum(h.node_mask)) for h in batches) / sum(h.capacity.n_node for h in batches)
    return {"frames": frames, "batches": len(batches), "buckets": len(seen), "epoch_s": med,
            "frames_per_s": frames / med, "compile_s": compile_s, "node_util": util}  # fmt: skip


def loader_throughput(loader, epoch: int = 1, limit: int | None = None) -> tuple[float, int, int]:
    """`(seconds, batches, frames)` of a `BatchLoader` yielding epoch `epoch` (its first `limit` steps, or all)
    to a consumer that does nothing with them: the rate at which the host builds batches."""
    n_steps = len(loader.steps(epoch))
    limit = n_steps if limit is None else min(limit, n_steps)
    it = loader.epoch(epoch)
    t = time.perf_counter()
    n = f = 0
    for _ in range(limit):
        b = next(it)
        n += 1
        f += int(b.graph_mask.sum())
    dt = time.perf_counter() - t
    it.close()
    return dt, n, f


def machine() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in header]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r]
                                          for r in rows]  # fmt: skip
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for k, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def write_results(name: str, data: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Writes benchmarks/results/<name>.json (or `path`, a script's `--out`) atomically, with the
    machine and date, and returns its path."""
    from cameo_eqx.fileio import write_atomic

    data = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), **data}
    target = RESULTS / f"{name}.json" if path is None else Path(path)
    out = write_atomic(target, json.dumps(data, indent=2, default=str))
    print(f"\nwrote {out}")
    return out
