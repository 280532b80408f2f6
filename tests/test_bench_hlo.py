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


_GPU_HLO = ROOT / "tests" / "data" / "gpu_compile.hlo.txt"  # tests/data/make_gpu_compile.py wrote it


def test_kernels_of_a_gpu_compile():
    """A real H200 compile (made without a GPU): every kernel with the bytes it reads and writes, the
    FLOPs of its dots counted from their shapes, the elements it scatters, one branch of the `cond`."""
    ks = bench_hlo.kernels(_GPU_HLO.read_text())
    assert len(ks) == 10
    gemms = [k for k in ks if k.name.startswith("gemm_fusion")]
    # x[idx] @ w forward and its transpose: (64, 16) x (16, 16), 2 * 64 * 16 * 16 FLOPs each
    assert [k.dot_flops for k in gemms] == [32768, 32768]
    assert gemms[0].bytes_in == 64 * 16 * 4 + 16 * 16 * 4 and gemms[0].bytes_out == 64 * 16 * 4
    assert sum(k.dot_flops for k in ks) == 65536
    # the segment sum and the gather's transpose each scatter 64 rows of 16
    scatters = [k for k in ks if k.scatter_updates]
    assert [k.scatter_updates for k in scatters] == [1024, 1024]
    # in place: the updates and indices are read, the (32, 16) target is not read whole; written are at most
    # the scattered elements, here all of the target
    assert [(k.bytes_in, k.bytes_out) for k in scatters] == [(64 * 16 * 4 + 64 * 4, 32 * 16 * 4)] * 2
    assert {bench_hlo.op_group(k.op_name, 2) for k in scatters} == {"jvp(nodes)/scatter-add",
                                                                   "transpose(jvp(edges))/scatter-add"}  # fmt: skip
    # the conditional: one of its branches (both launch one kernel of the same size), tagged as such
    branch = [k for k in ks if k.branch]
    assert len(branch) == 1 and branch[0].branch in ("region_4.5", "region_5.6")
    s = bench_hlo.kernel_summary(ks, bandwidth=4.8e12)
    assert s["kernels"] == 10 and s["dot_flops"] == 65536 and s["scatter_updates"] == 2048
    for f in ("kernels", "bytes_moved", "scatter_updates", "dot_flops", "other_flops"):
        assert sum(r[f] for r in s["scopes"].values()) == s[f]
    assert s["scopes"]["edges"]["dot_flops"] == 65536 and s["scopes"]["nodes"]["scatter_updates"] == 1024
    assert s["floor_s"] == pytest.approx(s["bytes_moved"] / 4.8e12 + 10 * bench_hlo.LAUNCH_S)
    assert "floor_s" not in bench_hlo.kernel_summary(ks, bandwidth=None)
    # the roofline floor: unchanged while every kernel is bound by its bytes; at a ridge of 2 FLOP per byte the
    # two GEMMs (3.6 FLOP per byte) are compute-bound and the elementwise kernels (at most 0.5) are not, so it
    # is longer by exactly the GEMMs' FLOP time less their byte time
    assert bench_hlo.kernel_summary(ks, 4.8e12, flop_rate=1e30)["roofline_floor_s"] == pytest.approx(s["floor_s"])
    slow = bench_hlo.kernel_summary(ks, 4.8e12, flop_rate=2 * 4.8e12)
    extra = sum((k.dot_flops + k.other_flops) / 9.6e12 - (k.bytes_in + k.bytes_out) / 4.8e12 for k in gemms)
    assert extra > 0 and slow["roofline_floor_s"] == pytest.approx(s["floor_s"] + extra)
    assert "roofline_floor_s" not in s


def test_kernels_of_a_cpu_compile():
    """The same accounting on this machine's compile: a matmul's FLOPs and a segment sum's scattered
    elements are found wherever XLA put them (an entry instruction or inside a fusion)."""

    def f(a, b, idx):
        return jax.ops.segment_sum(jnp.tanh(a @ b), idx, num_segments=7)

    args = (jnp.ones((64, 32)), jnp.ones((32, 16)), jnp.arange(64) % 7)
    ks = bench_hlo.kernels(bench_hlo.compile_for(f, args, bench_hlo.target_sharding("cpu")).as_text())
    assert sum(k.dot_flops for k in ks) == 2 * 64 * 32 * 16
    assert sum(k.scatter_updates for k in ks) == 64 * 16
    assert all(k.bytes_out > 0 for k in ks) and not any(k.branch for k in ks)
    with pytest.raises(ValueError, match="ENTRY"):
        bench_hlo.kernels("HloModule m\n")


_KERNEL_TEXT = """HloModule m

%fused_slice (param_0: f32[100,8]) -> f32[10,8] {
  %param_0 = f32[100,8]{1,0} parameter(0)
  ROOT %s = f32[10,8]{1,0} slice(%param_0), slice={[0:10], [0:8]}
}

%fused_bitcast_slice (param_0.2: f32[100,8]) -> f32[10,8] {
  %param_0.2 = f32[100,8]{1,0} parameter(0)
  %bc = f32[10,10,8]{2,1,0} bitcast(%param_0.2)
  %s2 = f32[1,10,8]{2,1,0} slice(%bc), slice={[0:1], [0:10], [0:8]}
  ROOT %bc2 = f32[10,8]{1,0} bitcast(%s2)
}

%fused_mul (param_0.1: f32[100,8]) -> f32[100,8] {
  %param_0.1 = f32[100,8]{1,0} parameter(0)
  ROOT %m = f32[100,8]{1,0} multiply(%param_0.1, %param_0.1)
}

%body (p: f32[100,8]) -> f32[100,8] {
  %p = f32[100,8]{1,0} parameter(0)
  ROOT %k = f32[100,8]{1,0} fusion(%p), kind=kLoop, calls=%fused_mul, metadata={op_name="jit(f)/while/body/mul"}
}

%cheap (q: f32[100,8]) -> f32[10,8] {
  %q = f32[100,8]{1,0} parameter(0)
  %c = f32[10,8]{1,0} fusion(%q), kind=kLoop, calls=%fused_slice
  %c2 = f32[10,8]{1,0} fusion(%q), kind=kLoop, calls=%fused_bitcast_slice
  ROOT %c3 = f32[10,8]{1,0} add(%c, %c2)
}

%dear (r: f32[100,8]) -> f32[10,8] {
  %r = f32[100,8]{1,0} parameter(0)
  %d = f32[100,8]{1,0} fusion(%r), kind=kLoop, calls=%fused_mul
  ROOT %e = f32[10,8]{1,0} fusion(%d), kind=kLoop, calls=%fused_slice
}

ENTRY %main (a: f32[100,8], i: s32[]) -> f32[10,8] {
  %a = f32[100,8]{1,0} parameter(0)
  %i = s32[] parameter(1)
  %w = f32[100,8]{1,0} while(%a), condition=%cond, body=%body
  ROOT %b = f32[10,8]{1,0} conditional(%i, %w, %w), branch_computations={%dear, %cheap}
}
"""


def test_kernels_of_loops_branches_and_slices():
    """A while body counts once; a conditional its cheapest branch; a fusion that only slices an operand,
    directly or through a bitcast, is charged the slice it reads, not the whole operand."""
    ks = bench_hlo.kernels(_KERNEL_TEXT)
    assert [(k.name, k.branch) for k in ks] == [("k", ""), ("c", "cheap"), ("c2", "cheap"), ("c3", "cheap")]
    assert ks[0].bytes_in == ks[0].bytes_out == 3200 and ks[0].other_flops == 800
    assert ks[1].bytes_in == ks[1].bytes_out == 320
    assert ks[2].bytes_in == ks[2].bytes_out == 320


def test_kernels_of_a_cublas_call():
    """A GEMM that XLA hands to cuBLAS (a custom call): FLOPs from its dimension numbers, and its
    workspace is not counted as written."""
    text = """HloModule m

ENTRY %main (a: f32[100,8], w: f32[8,4]) -> f32[100,4] {
  %a = f32[100,8]{1,0} parameter(0)
  %w = f32[8,4]{1,0} parameter(1)
  %g = (f32[100,4]{1,0}, s8[4194304]{0}) custom-call(%a, %w), custom_call_target="__cublas$lt$matmul", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"]}}}
  ROOT %r = f32[100,4]{1,0} get-tuple-element(%g), index=0
}
"""
    (k,) = bench_hlo.kernels(text)
    assert k.opcode == "custom-call" and k.dot_flops == 2 * 100 * 4 * 8
    assert k.bytes_in == (100 * 8 + 8 * 4) * 4 and k.bytes_out == 100 * 4 * 4
    # the same config printed as an escaped JSON string
    escaped = text.replace('backend_config={"gemm', 'backend_config="{\\"gemm').replace('"]}}}', '"]}}}"')
    escaped = re.sub(r'(?<=[{,\[])"([^"]+)"(?=[:\],])', r'\\"\1\\"', escaped)
    assert '\\"lhs_contracting_dimensions\\"' in escaped
    assert bench_hlo.kernels(escaped)[0].dot_flops == 2 * 100 * 4 * 8
    assert bench_hlo._type_bytes("(c64[2,3]{1,0}, s4[8]{0})") == 2 * 3 * 8 + 8
    with pytest.raises(ValueError, match="s3"):
        bench_hlo._type_bytes("s3[4]{0}")


def test_floor_bandwidth_of_the_local_gpu(monkeypatch):
    """On a GPU host a `--target cpu` run gets the floor of its own card, matched by the exact device kind
    (an H200 NVL or H100 PCIe has another bandwidth: no floor); on CPU there is none."""
    assert bench_hlo.local_bandwidth() is None  # this machine: CPU

    class Dev:
        def __init__(self, kind):
            self.device_kind = kind

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    for kind, want in (("NVIDIA H200", bench_hlo._GPU["h200"][1]), ("NVIDIA H100 80GB HBM3", 3.35e12),
                       ("NVIDIA H200 NVL", None), ("NVIDIA H100 PCIe", None)):  # fmt: skip
        monkeypatch.setattr(jax, "devices", lambda k=kind: [Dev(k)])
        assert bench_hlo.local_bandwidth() == want, kind
