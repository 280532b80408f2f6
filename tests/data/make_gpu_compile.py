"""Regenerates gpu_compile.hlo.txt, the fixture of tests/test_bench_hlo.py: a small gradient with a gather,
a matmul, a segment sum and a `lax.cond`, compiled for an H200 without a GPU. Needs jax's CUDA plugin at
the installed jax's version; run from the project root:

    python tests/data/make_gpu_compile.py tests/data/gpu_compile.hlo.txt
"""

import sys

sys.path.insert(0, "benchmarks")

import bench_hlo  # noqa: E402

sharding = bench_hlo.target_sharding("h200")  # before jax picks its backends

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def f(x, w, idx):
    def energy(x):
        with jax.named_scope("edges"):
            h = jnp.tanh(x[idx] @ w)  # (64, 16) gathered rows times (16, 16)
        with jax.named_scope("nodes"):
            e = jax.ops.segment_sum(h, idx, num_segments=32)
        return jnp.sum(e**2)

    e, g = jax.value_and_grad(energy)(x)
    return jax.lax.cond(e > 1e6, lambda g: g * 0.0, lambda g: g, g)


args = (jnp.ones((32, 16)), jnp.ones((16, 16)), jnp.arange(64) % 32)
with open(sys.argv[1], "w") as fh:
    fh.write(bench_hlo.compile_for(f, args, sharding).as_text())
