"""Scatter-add vs gather cost per row on this CPU, in jax 0.10 (ours) and in the connector's jaxlib
0.4.35 (the old-XLA virtualenv of `make legacy-xla-venv`, when present).

Why: the exported chemtrain-deploy step runs in the old XLA, where a scatter-add costs ~45 ns per row
whatever the row width, against ~6 ns in jax 0.10, while a gather costs a few ns in both. Message
passing and its gradient are gathers and scatter-adds, so this table bounds what the exported step can
reach (see `bench_export.py`). It also measures the gather-only alternative: a segment sum over
receiver-sorted rows as a while loop of 8-wide gathers per segment (CSR), and the sort that would
put the edges in that order each step. Neither pays in the old XLA: the sort alone costs as much as
~3 scatter-adds of the same rows, and the CSR sum is at best ~1.8x faster than the scatter (random
degrees: the loop runs to the largest segment).

Workload: 60,000 rows into 2,400 segments (about a 1,000-bead protein's directed edges at 10 Å);
median of 30 calls after warm-up. Run: `.venv/bin/python benchmarks/bench_scatter.py`.
Writes benchmarks/results/scatter.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_SEG, N_ROWS, WIDTHS = 2400, 60000, (3, 4, 32)


def measure() -> dict:
    """Nanoseconds per row of each operation in this interpreter's jax."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    seg = jnp.asarray(rng.integers(0, N_SEG, N_ROWS).astype(np.int32))
    seg_sorted = jnp.sort(seg)
    order = jnp.argsort(seg)
    starts = jnp.searchsorted(seg_sorted, jnp.arange(N_SEG + 1, dtype=jnp.int32)).astype(jnp.int32)

    def ns_per_row(f, *args) -> float:
        jax.block_until_ready(f(*args))
        ts = []
        for _ in range(30):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            ts.append(time.perf_counter() - t0)
        return 1e9 * float(np.median(ts)) / N_ROWS

    out = {}
    for c in WIDTHS:
        rows = jnp.asarray(rng.normal(size=(N_ROWS, c)).astype(np.float32))
        table = rows[:N_SEG]
        out[f"scatter-add, {c} wide"] = ns_per_row(jax.jit(lambda x: jax.ops.segment_sum(x, seg, N_SEG)), rows)
        out[f"scatter-add sorted, {c} wide"] = ns_per_row(
            jax.jit(lambda x: jax.ops.segment_sum(x, seg_sorted, N_SEG, indices_are_sorted=True)), rows)
        out[f"gather, {c} wide"] = ns_per_row(jax.jit(lambda t: t[seg]), table)
        out[f"CSR gather segment sum, {c} wide"] = ns_per_row(jax.jit(lambda x: csr_segment_sum(x, order, starts)),
                                                              rows[order])  # fmt: skip
    ids = jnp.arange(N_ROWS, dtype=jnp.int32)
    out["sort (int32 key + payload)"] = ns_per_row(jax.jit(lambda k: jax.lax.sort((k, ids), num_keys=1)), seg)
    return {"jax": jax.__version__, "ns_per_row": out}


def csr_segment_sum(x, order, starts, width: int = 8):
    """Sum of receiver-sorted rows `x` per segment [starts[i], starts[i + 1]) with gathers only: a
    while loop over the largest segment in chunks of `width` rows (the gather-only candidate)."""
    import jax
    import jax.numpy as jnp

    lo, hi = starts[:-1], starts[1:]
    longest = jnp.max(hi - lo)
    n_rows = x.shape[0]

    def body(carry):
        k, acc = carry
        idx = lo[:, None] + k + jnp.arange(width)[None, :]
        rows = jnp.where((idx < hi[:, None])[..., None], x[jnp.minimum(idx, n_rows - 1)], 0.0)
        return k + width, acc + rows.sum(axis=1)

    init = (jnp.int32(0), jnp.zeros((lo.shape[0],) + x.shape[1:], x.dtype))
    return jax.lax.while_loop(lambda c: c[0] < longest, body, init)[1]


def main() -> None:
    if "--worker" in sys.argv:
        print(json.dumps(measure()))
        return
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import print_table, write_results

    from cameo_eqx.export.verify import legacy_python

    runs = [measure()]
    legacy = legacy_python()
    if legacy is None:
        print("old-XLA virtualenv absent (make legacy-xla-venv): jax 0.10 only")
    else:
        proc = subprocess.run([str(legacy), __file__, "--worker"], capture_output=True, text=True, timeout=900,
                              env=dict(os.environ, JAX_PLATFORMS="cpu"))  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"old-XLA worker failed:\n{proc.stderr[-3000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ops = list(runs[0]["ns_per_row"])
    header = ["operation"] + [f"jax {r['jax']} ns/row" for r in runs]
    print_table(f"{N_ROWS} rows, {N_SEG} segments (CPU)", header,
                [[op] + [r["ns_per_row"][op] for r in runs] for op in ops])  # fmt: skip
    write_results("scatter", {"rows": N_ROWS, "segments": N_SEG, "runs": runs})


if __name__ == "__main__":
    main()
