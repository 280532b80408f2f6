"""The HLO byte breakdown (benchmarks/bench_hlo.py): every array-valued instruction of the compiled entry
computation is charged its output size once, to the JAX operation and named scope that produced it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_hlo  # noqa: E402

_TEXT = """HloModule m

fused_computation {
  %p = f32[1000]{0} parameter(0)
  ROOT %big = f32[1000]{0} multiply(%p, %p), metadata={op_name="jit(f)/ignored/inside_a_fusion"}
}

ENTRY main {
  %a = f32[10,4]{1,0} parameter(0), metadata={op_name="x"}
  %b = f32[10,4]{1,0} fusion(%a), kind=kLoop, metadata={op_name="jit(f)/jvp(blk)/gather" stack_frame_id=3}
  %c = s32[5]{0} iota(), iota_dimension=0
  %d = (f32[10,4]{1,0}, s32[5]{0}) tuple(%b, %c)
  ROOT %e = bf16[2,3]{1,0} fusion(%b), metadata={op_name="jit(f)/transpose(jvp(blk))/jit(silu)/mul"}
}
"""


def test_output_bytes_on_known_hlo_text():
    groups, total = bench_hlo.output_bytes_by_op(_TEXT, depth=2)
    # only the ENTRY computation; the tuple is not counted again; element sizes by dtype
    assert groups == {"x": (160, 1), "jvp(blk)/gather": (160, 1), "(no op_name)": (20, 1),
                      "transpose(jvp(blk))/jit(silu)": (12, 1)}  # fmt: skip
    assert total == 160 + 160 + 20 + 12
    # a jitted helper's jit(...) is not a scope: its bytes go to the enclosing named scope
    assert bench_hlo.by_scope(groups) == {"blk": 172, "(other)": 180}
    with pytest.raises(ValueError, match="ENTRY"):
        bench_hlo.output_bytes_by_op("HloModule m\n", depth=2)


def test_named_scopes_of_a_compiled_gradient():
    """On a real compile the forward and backward of a named scope are found, and the bytes add up to
    the sum of the entry instructions' output sizes."""

    def f(x):
        with jax.named_scope("edges"):
            y = jnp.sin(x)[jnp.asarray([0, 1, 1, 2] * 64)] * 3.0
        with jax.named_scope("nodes"):
            return jnp.sum(jnp.tanh(y) ** 2)

    text = jax.jit(jax.grad(f)).lower(jnp.ones(3, jnp.float32)).compile().as_text()
    groups, total = bench_hlo.output_bytes_by_op(text, depth=3)
    scopes = bench_hlo.by_scope(groups)
    assert "edges" in scopes and scopes["edges"] > 0
    assert any(k.startswith("transpose(jvp(edges))") for k in groups)  # the backward is named too
    assert sum(scopes.values()) == total == sum(b for b, _ in groups.values())
    entry = text[text.index("ENTRY"):]
    n_arrays = sum(1 for line in entry.splitlines()[1:] if re.match(r"\s*(ROOT\s+)?%?[\w.\-]+\s*=\s*f32\[", line))
    assert sum(n for _, n in groups.values()) >= n_arrays > 0
    assert np.isfinite(total)
