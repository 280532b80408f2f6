"""Where the bytes go (issue 15): the compiled HLO of energy + forces (or of a simulation or training step) per
backbone, its instructions' output bytes summed by the JAX operation that produced them, and its kernels.

XLA's `cost_analysis()` gives one FLOP and one byte count per program (`bench_gpu.py --cost`); this
splits the bytes. Each instruction of the compiled entry computation (after fusion: one fused kernel
is one instruction) is charged its output size and grouped by its `op_name` metadata cut to `--depth`
path components, e.g. `jvp()/gather` (forward) or `transpose(jvp())/scatter-add` (backward). A group
that is large for its FLOPs is what to restructure: the CPU compile writes the backward of MACE's per-path
message slices as full-size pads (the GPU compile fuses them; compare both before restructuring). Output
bytes count each buffer once, where it is written; reads are not counted, so the total is below
`cost_analysis()`'s "bytes accessed".

    python benchmarks/bench_hlo.py                    # every backbone on the 54-bead chain, top 12 groups
    python benchmarks/bench_hlo.py mace --top 25      # one backbone, more groups
    python benchmarks/bench_hlo.py --depth 6          # finer groups (einsum specs, jit-wrapped functions)

Then the kernels (`kernels`): each entry instruction after fusion is one kernel launch, charged the bytes
it reads and writes, the FLOPs of its dots and elementwise work and the elements it scatters, per scope.
`--case step` compiles one BAOAB step of backbone + prior on `--replicas` copies of the chain, as the
Simulator does, `--case train` one training step on a packed bucket, and `--target h100|h200` compiles
for that GPU on this machine (a deviceless compile; needs jax's CUDA plugin, no GPU), with a floor time
from the bytes and the kernel count, and a roofline floor where each kernel takes the longer of its bytes
and its FLOPs at the float32 peak:

    python benchmarks/bench_hlo.py --case step --target h200          # issue 15's simulation case
    python benchmarks/bench_hlo.py allegro prior --case step --replicas 1024 --target h200
    XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python benchmarks/bench_hlo.py --case train --target h200

Without a device XLA's Triton GEMM tiler fails on some dots (MACE's training step: "Couldn't find output
tile sizes"); that flag hands them to cuBLAS. `make bench-hlo-gpu` installs the plugin and runs both cases.
The floor is an estimate, not a bound: reads are charged per kernel (caches may serve some) and the
per-kernel overhead is fitted to one measured step (`LAUNCH_S`).

On a GPU, `--target cpu` (the default) compiles for the GPU itself, with Triton GEMMs as it runs them, and
prints floors on an SXM H100 or H200. Writes benchmarks/results/hlo.json after each backbone (or
`--out`).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import print_table, write_results  # noqa: E402
import variants  # noqa: E402
from bench_gpu import (BACKBONES, CUTOFF, H200, N_CHAIN, backbone, bucket_batch, chain_simulator,  # noqa: E402
                       chain_system, compile_for, demo_prior, ef_compiled, train_step_compiled)

_ITEM_BYTES = {"pred": 1, "s2": 1, "u2": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
               "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "c64": 8, "f64": 8, "s64": 8,
               "u64": 8, "c128": 16}  # fmt: skip
_OP_NAME = re.compile(r'op_name="([^"]+)"')


def output_bytes_by_op(hlo_text: str, depth: int) -> tuple[dict[str, tuple[int, int]], int]:
    """Output bytes of the entry computation's array-valued instructions, grouped by `op_name` (not those
    inside its conditional branches or loop bodies: `kernels` walks those).

    **Arguments:**

    - `hlo_text`: a compiled module's `as_text()`.
    - `depth`: how many `/`-separated components of the `op_name` (after the jit wrapper) form a group.

    **Returns:** `({group: (bytes, instructions)}, total bytes)`; instructions without metadata (constants,
    parameters, copies XLA adds) are the group `"(no op_name)"`. Tuple-valued instructions are skipped
    (their elements are counted where they are produced).
    """
    comps, entry = _computations(hlo_text)
    groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    total = 0
    for _, typ, _, _, _, op_name in comps[entry]:
        if typ.startswith("("):
            continue
        size = _type_bytes(typ)
        key = op_group(op_name, depth)
        groups[key][0] += size
        groups[key][1] += 1
        total += size
    return {k: (v[0], v[1]) for k, v in groups.items()}, total


def by_scope(groups: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Bytes per `jax.named_scope` of the backbones (`mace_symmetric_contraction`, `painn_message`, ...),
    forward and backward together; groups outside any scope are `"(other)"`."""
    out: dict[str, int] = collections.defaultdict(int)
    for key, (size, _) in groups.items():
        scopes = re.findall(r"(?<!jit)\((\w+)\)", key)  # not the jit(...) of a jitted helper
        out[scopes[-1] if scopes else "(other)"] += size
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# ------------------------------------------------------------------------ kernels and their traffic

_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "opt-barrier", "add-dependency",
         "after-all", "domain"}  # fmt: skip
_HEADER = re.compile(r"(?:ENTRY\s+)?%?([\w.\-]+)\s*[({]")
_LINE = re.compile(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s([a-z][\w\-]*)\((.*)$")
_SHAPE = re.compile(r"\b(pred|[sufc]\d+|bf16|f8e\w+)\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One launched kernel of a compiled program (an entry instruction after fusion)."""

    name: str
    opcode: str
    op_name: str
    bytes_in: int  # its operands' sizes (of a sliced operand, the slices): what it reads from memory
    bytes_out: int
    scatter_updates: int  # elements scattered (atomic read-modify-writes on a GPU)
    dot_flops: int  # in dots (matrix units or GEMM kernels)
    other_flops: int  # elementwise and reductions
    branch: str = ""  # the conditional branch it runs in ("" = every call)


def _type_bytes(t: str, *, elements: bool = False) -> int:
    """Bytes (or elements) of the arrays in an HLO type, e.g. `(f32[8,3]{1,0}, s32[8]{0})`."""
    unknown = {m.group(1) for m in _SHAPE.finditer(t)} - set(_ITEM_BYTES)
    if unknown:
        raise ValueError(f"HLO element type(s) {sorted(unknown)} not in bench_hlo._ITEM_BYTES: {t[:80]}")
    return sum(int(np.prod([int(d) for d in m.group(2).split(",") if d], dtype=np.int64))
               * (1 if elements else _ITEM_BYTES[m.group(1)]) for m in _SHAPE.finditer(t))  # fmt: skip


def _scattered(opcode: str, ops: list[str], shapes: dict[str, str]) -> int:
    """Elements a `scatter` writes: its updates (operands, indices, updates; variadic: the last half)."""
    if opcode != "scatter" or len(ops) < 3:
        return 0
    return sum(_type_bytes(shapes.get(u, ""), elements=True) for u in ops[(len(ops) + 1) // 2 :])


def _operands(rest: str) -> tuple[list[str], str]:
    """Operand names of an instruction (the text after its opcode's "(") and the attributes after them."""
    depth = 1
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return re.findall(r"%([\w.\-]+)", rest[:i]), rest[i + 1 :]
    raise ValueError(f"unbalanced operand list: {rest[:80]}")


def _computations(hlo_text: str) -> tuple[dict[str, list[tuple]], str]:
    """`{computation: [(name, type, opcode, operands, attributes, op_name)]}` and the entry's name."""
    comps: dict[str, list[tuple]] = {}
    entry, cur = None, None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace():
            m = _HEADER.match(line)
            if m and line.rstrip().endswith("{"):
                cur = m.group(1)
                comps[cur] = []
                entry = cur if line.startswith("ENTRY") else entry
            elif line.startswith("}"):
                cur = None
            continue
        m = _LINE.match(line) if cur is not None else None
        if m:
            ops, attrs = _operands(m.group(4))
            if m.group(3) == "parameter":  # parameter(k): keep k, there are no operands
                attrs = f"number={m.group(4).split(')')[0]}{attrs}"
            op = _OP_NAME.search(line)
            comps[cur].append((m.group(1), m.group(2), m.group(3), ops, attrs, op.group(1) if op else ""))
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, entry


_ARITH = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "exponential",
          "exponential-minus-one", "log", "log-plus-one", "tanh", "logistic", "sqrt", "rsqrt", "cbrt", "power",
          "sine", "cosine", "atan2", "sign", "clamp", "remainder"}  # fmt: skip


def _instr_work(instr: tuple, shapes: dict[str, str], comps: dict) -> tuple[int, int, int]:
    """(dot FLOPs, other arithmetic FLOPs, scattered elements) of one instruction and the fusions it calls:
    a dot is 2 x output x contracted size, an elementwise op or a reduce one per element."""
    _, typ, opcode, ops, attrs, _ = instr
    dot = other = 0
    n_out = _type_bytes(typ, elements=True)
    gemm = opcode == "custom-call" and re.search(r'custom_call_target="[^"]*(gemm|matmul)', attrs)
    if (opcode == "dot" or gemm) and ops:
        m = _SHAPE.search(shapes.get(ops[0], ""))
        dims = [int(d) for d in m.group(2).split(",") if d] if m else []
        lhs_c = re.search(r'lhs_contracting_dim\w*\\?"?[=:]\W*([\d,"\\]*)', attrs)  # HLO attribute or cuBLAS config
        nums = re.findall(r"\d+", lhs_c.group(1)) if lhs_c else []
        contracted = [dims[int(i)] for i in nums] if dims else []
        n_out = _type_bytes(_without_workspace(typ), elements=True) if gemm else n_out
        dot = 2 * n_out * int(np.prod(contracted))
    elif opcode in _ARITH:
        other = n_out
    elif opcode == "reduce":
        other = sum(_type_bytes(shapes.get(o, ""), elements=True) for o in ops[: len(ops) // 2])
    scattered = _scattered(opcode, ops, shapes)
    for c in re.findall(r"calls=%([\w.\-]+)", attrs):
        inner = comps.get(c, [])
        inner_shapes = {i[0]: i[1] for i in inner}
        for w in (_instr_work(i, inner_shapes, comps) for i in inner):
            dot, other, scattered = dot + w[0], other + w[1], scattered + w[2]
    return dot, other, scattered


def _without_workspace(typ: str) -> str:
    """A GEMM custom call's result type without the trailing s8 workspace cuBLAS returns beside it."""
    return re.sub(r",\s*s8\[\d+\](\{[\d,]*\})?\)$", ")", typ)


def _scatter_root(comps: dict, instr: tuple) -> int | None:
    """For a scatter, or a fusion whose root is one, the operand it updates in place (its number), else None."""
    _, _, opcode, ops, attrs, _ = instr
    if opcode == "scatter":
        return 0
    for c in re.findall(r"calls=%([\w.\-]+)", attrs)[:1]:
        inner = comps.get(c, [])
        root = [i for i in inner if i[2] == "scatter"][-1:] if inner and inner[-1][2] == "scatter" else []
        params = {i[0]: int(re.match(r"number=(\d+)", i[4]).group(1)) for i in inner if i[2] == "parameter"}
        if root and root[0][3] and root[0][3][0] in params:
            return params[root[0][3][0]]
    return None


def _bytes_read(comps: dict, instr: tuple, shapes: dict[str, str]) -> int:
    """The bytes a kernel reads: its operands' sizes, except that an operand a fusion only slices is
    charged the slices (XLA passes a fusion whole arrays of which it may read a part), and a scatter's
    target, updated in place, is not read whole (its read-modify-writes are the scattered elements)."""
    _, _, _, ops, attrs, _ = instr
    sizes = [_type_bytes(shapes.get(o, "")) for o in ops]
    k = _scatter_root(comps, instr)
    if k is not None and k < len(sizes):
        sizes[k] = 0
    for c in re.findall(r"calls=%([\w.\-]+)", attrs)[:1]:
        inner = comps.get(c, [])
        for name, typ, opcode, _, attrs_p, _ in inner:
            k = re.match(r"number=(\d+)", attrs_p) if opcode == "parameter" else None
            if k is None or int(k.group(1)) >= len(sizes):
                continue
            users = _readers(inner, name)
            if users and all(u[2] in ("slice", "dynamic-slice") for u in users):
                sizes[int(k.group(1))] = min(sizes[int(k.group(1))], sum(_type_bytes(u[1]) for u in users))
    return sum(sizes)


def _readers(inner: list[tuple], name: str) -> list[tuple]:
    """The instructions of a fused computation that read `name`, looking through bitcasts (which move no
    data: XLA 0.11 reshapes a GEMM's output by a bitcast before slicing it)."""
    out = []
    for u in (u for u in inner if name in u[3]):
        out += _readers(inner, u[0]) if u[2] == "bitcast" else [u]
    return out


def kernels(hlo_text: str) -> list[Kernel]:
    """The kernels one call of a compiled program launches, with the bytes each reads and writes.

    **Arguments:**

    - `hlo_text`: a compiled module's `as_text()` (after fusion: each fusion or library call of the entry
      computation is one kernel).

    **Returns:** the kernels in program order. A `conditional` contributes its cheapest branch (by bytes),
    the path a step takes when nothing is rebuilt, tagged with the branch; a `while` or `call` its body,
    once. Reads are charged to every kernel that reads a buffer (an upper bound: caches may serve
    some of them).
    """
    comps, entry = _computations(hlo_text)

    def walk(cname: str, branch: str) -> list[Kernel]:
        instrs = comps[cname]
        shapes = {i[0]: i[1] for i in instrs}
        out: list[Kernel] = []
        for instr in instrs:
            iname, typ, opcode, ops, attrs, op_name = instr
            if opcode in _FREE:
                continue
            if opcode == "conditional":
                names = re.findall(r"(?:true_computation|false_computation)=%([\w.\-]+)", attrs)
                names += re.findall(r"%([\w.\-]+)", (re.findall(r"branch_computations=\{([^}]*)\}", attrs) or [""])[0])
                paths = [walk(b, b) for b in names]
                out += min(paths, key=lambda ks: sum(k.bytes_in + k.bytes_out for k in ks)) if paths else []
            elif opcode in ("while", "call"):
                for body in re.findall(r"(?:body|to_apply)=%([\w.\-]+)", attrs):
                    out += walk(body, branch)
            else:
                dot, other, upd = _instr_work(instr, shapes, comps)
                written = _type_bytes(_without_workspace(typ) if "gemm" in attrs or "matmul" in attrs else typ)
                if _scatter_root(comps, instr) is not None:  # in place: only the scattered elements are written
                    written = min(written, upd * _ITEM_BYTES[_SHAPE.search(typ).group(1)])
                out.append(Kernel(iname, opcode, op_name, _bytes_read(comps, instr, shapes), written, upd, dot,
                                  other, branch))  # fmt: skip
        return out

    return walk(entry, "")


def op_group(op_name: str, depth: int) -> str:
    """An `op_name` cut to `depth` components after the jit wrapper (the grouping of `output_bytes_by_op`)."""
    if not op_name:
        return "(no op_name)"
    parts = op_name.split("/")
    return "/".join(parts[1 : 1 + depth] if parts[0].startswith("jit(") else parts[:depth]) or op_name


def kernel_summary(ks: list[Kernel], bandwidth: float | None, flop_rate: float | None = None) -> dict:
    """Totals of `kernels` and per named scope; with a `bandwidth` (bytes/s) also the floor time: all bytes
    at that bandwidth plus `LAUNCH_S` per kernel; with a `flop_rate` (FLOP/s) too, `roofline_floor_s`,
    where each kernel takes the longer of its bytes at the bandwidth and its FLOPs at that rate (a GEMM with
    K = 64 in float32 is compute-bound on an H200: about 18 FLOP per byte against a ridge of 14)."""
    fields = ("kernels", "bytes_moved", "scatter_updates", "dot_flops", "other_flops")
    scopes: dict[str, dict] = collections.defaultdict(lambda: dict.fromkeys(fields, 0))
    total = dict.fromkeys(fields, 0)
    for k in ks:
        scope = next(iter(by_scope({op_group(k.op_name, 8): (1, 1)})))
        for row in (scopes[scope], total):
            for f, v in zip(fields, (1, k.bytes_in + k.bytes_out, k.scatter_updates, k.dot_flops, k.other_flops)):
                row[f] += v
    out = {**total, "scopes": dict(sorted(scopes.items(), key=lambda kv: -kv[1]["bytes_moved"]))}
    if bandwidth:
        out["floor_s"] = total["bytes_moved"] / bandwidth + len(ks) * LAUNCH_S
        if flop_rate:
            out["roofline_floor_s"] = len(ks) * LAUNCH_S + sum(
                max((k.bytes_in + k.bytes_out) / bandwidth, (k.dot_flops + k.other_flops) / flop_rate) for k in ks
            )
    return out


# Deviceless GPU compiles: XLA's GpuTargetConfig for sm_90 parts (datasheet bandwidth and memory).
_GPU = {"h100": ("NVIDIA H100 80GB HBM3", 3.35e12, 84_929_347_584),
        "h200": ("NVIDIA H200", H200["hbm_bytes_per_s"], 150_754_820_096)}  # fmt: skip
FP32_FLOP_S = H200["fp32_flop_per_s"]
"""Float32 (non-tensor-core) peak of both SXM parts (the same GH100 chip): the rate of `roofline_floor_s`, since
the models run their matmuls at float32 by default (`cameo_eqx/precision.py`)."""
LAUNCH_S = 1.4e-6
"""Per-kernel overhead: the issue's prior-only step on an H200 took 96 µs for its 59 kernels (less 15 µs of
traffic), 128 replicas, before the work on issue 15 (commit 725d0ec)."""


def gpu_target_config(name: str) -> str:
    """The `target_config` text of an H100 or H200 (132 SMs, compute capability 9.0) for XLA."""
    desc, bandwidth, memory = _GPU[name]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {int(bandwidth)} l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: {memory} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 }} registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 7 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{desc}"
"""


def local_bandwidth() -> float | None:
    """The datasheet bandwidth of this machine's own GPU when it is one of `_GPU` (an SXM H100 or H200, by
    its exact device kind: PCIe and NVL parts differ), since `--target cpu` on a GPU host compiles for that
    GPU; else None (no floor)."""
    import jax

    kind = jax.devices()[0].device_kind if jax.default_backend() == "gpu" else ""
    return next((bw for desc, bw, _ in _GPU.values() if desc == kind), None)


def target_sharding(target: str):
    """Where to compile: `None` for this machine's default device, else the sharding of a deviceless
    one-GPU topology (needs jax's CUDA plugin, `pip install "jax[cuda12]"` at the installed jax's version;
    no GPU or driver)."""
    if target == "cpu":
        return None
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # its CUDA version check needs a driver
    from jax.experimental import topologies
    from jax.sharding import NamedSharding, PartitionSpec

    try:
        topo = topologies.get_topology_desc(platform="cuda", target_config=gpu_target_config(target),
                                            topology="1x1x1")  # fmt: skip
    except Exception as e:  # noqa: BLE001 - any failure here means the same thing
        raise SystemExit(f"--target {target}: cannot make a deviceless CUDA topology ({type(e).__name__}: "
                         f"{str(e)[:200]}); install jax's CUDA plugin at the installed jax's version, e.g. "
                         f'pip install "jax[cuda12]==$(python -c "import jax; print(jax.__version__)")"')  # fmt: skip
    return NamedSharding(topologies.make_mesh(topo, (1,), ("d",)), PartitionSpec())


def ef_case(name: str, sharding):
    """Energy + forces of backbone `name` alone on the chain: (compiled, edge slots)."""
    from cameo_eqx.modules import ForceField

    topo, x = chain_system()
    ff = ForceField(backbone(name), None, cutoff=CUTOFF)
    batch = ff.batch_for(x, topo)
    return ef_compiled(ff, batch, sharding), int(batch.senders.shape[0])


def step_case(name: str, prior, replicas: int, sharding):
    """One BAOAB step of backbone `name` + prior (or the prior alone: `name` "prior") on `replicas` copies
    of the chain, as the Simulator runs it (bench_gpu.py's simulation case): (compiled, model edge slots
    per replica)."""
    from cameo_eqx.modules import ForceField

    topo, x = chain_system()
    model = prior if name == "prior" else ForceField(backbone(name), prior, cutoff=CUTOFF)
    sim = chain_simulator(model, topo)
    state = sim.init(x, n_replicas=replicas, seed=0)
    compiled = compile_for(sim.integrator.step, (sim.model, sim.system, state), sharding)
    return compiled, int(sim.edge_capacity)


def train_step_case(name: str, bucket_nodes: int, sharding):
    """One training step of backbone `name` on one packed bucket of mdCATH-like frames (bench_gpu.py's
    training case): (compiled, frames in the bucket)."""
    bucket = bucket_batch(bucket_nodes)
    return train_step_compiled(name, bucket, sharding), int(np.sum(np.asarray(bucket.graph_mask)))


def print_kernels(title: str, ks: list[Kernel], summary: dict, top: int) -> None:
    """The scope table and the `top` kernels by bytes moved."""
    rows = [[s, r["kernels"], f"{r['bytes_moved'] / 1e6:.1f}", f"{r['scatter_updates'] / 1e6:.1f}",
             f"{r['dot_flops'] / 1e9:.2f}", f"{r['other_flops'] / 1e9:.2f}"] for s, r in summary["scopes"].items()]
    floor = f"; floor {summary['floor_s'] * 1e3:.2f} ms" if "floor_s" in summary else ""
    if "roofline_floor_s" in summary:
        floor += f" ({summary['roofline_floor_s'] * 1e3:.2f} ms with each kernel's FLOPs at the float32 peak)"
    print_table(f"{title}: {summary['kernels']} kernels, {summary['bytes_moved'] / 1e9:.2f} GB read + written, "
                f"{summary['scatter_updates'] / 1e6:.0f} M scattered elements, {summary['dot_flops'] / 1e9:.1f} "
                f"GFLOP in dots + {summary['other_flops'] / 1e9:.1f} elementwise{floor}",
                ["scope", "kernels", "MB moved", "M scattered", "dot GFLOP", "other GFLOP"], rows)  # fmt: skip
    big = sorted(ks, key=lambda k: -(k.bytes_in + k.bytes_out))[:top]
    rows = [[f"{(k.bytes_in + k.bytes_out) / 1e6:.1f}", f"{k.scatter_updates / 1e6:.1f}", k.opcode,
             op_group(k.op_name, 6)[-80:]] for k in big]  # fmt: skip
    print_table(f"{title}: the {len(big)} kernels that move the most bytes",
                ["MB", "M scattered", "opcode", "op_name"], rows)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backbones", nargs="*", help=f"some of {', '.join(BACKBONES)} (default: all); with "
                    "--case step also 'prior' (the prior alone)")
    ap.add_argument("--case", choices=("ef", "step", "train"), default="ef",
                    help="ef: energy + forces of the backbone on the chain (default); step: one BAOAB step of "
                    "backbone + prior on --replicas copies of the chain, as the Simulator compiles it; train: one "
                    "training step on a packed bucket of --bucket-nodes mdCATH-like beads")
    ap.add_argument("--replicas", type=int, default=128, help="replicas for --case step (default 128)")
    ap.add_argument("--bucket-nodes", type=int, default=8192, help="bucket size for --case train (default 8192)")
    ap.add_argument("--target", choices=("cpu", *_GPU), default="cpu",
                    help="compile for this machine (cpu, default) or, without a GPU, for an H100/H200 "
                    "(needs jax's CUDA plugin)")
    ap.add_argument("--variant", choices=variants.NAMES, default=None,
                    help="swap one backbone block for an experimental formulation of the same function "
                    "(benchmarks/variants.py), to A/B it against the default")
    ap.add_argument("--depth", type=int, default=2, help="op_name components per group (default 2)")
    ap.add_argument("--top", type=int, default=12, help="groups and kernels printed per backbone (default 12)")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/hlo.json)")
    args = ap.parse_args()
    variants.apply(args.variant)
    if min(args.depth, args.top, args.replicas) < 1 or args.bucket_nodes < 512:
        ap.error("--depth, --top and --replicas must be at least 1, --bucket-nodes at least 512")
    allowed = (*BACKBONES, "prior") if args.case == "step" else BACKBONES
    unknown = [b for b in args.backbones if b not in allowed]
    if unknown:
        ap.error(f"unknown backbone(s) {', '.join(unknown)} for --case {args.case}; choose from {', '.join(allowed)}")

    sharding = target_sharding(args.target)  # before jax picks its backends
    import jax

    where = args.target if sharding is not None else str(jax.devices())
    print(f"jax {jax.__version__}, compiled for {where}", flush=True)
    bandwidth = _GPU[args.target][1] if args.target in _GPU else local_bandwidth()
    prior = demo_prior() if args.case == "step" else None
    what = {"ef": "E+F on the chain", "step": f"one step, {args.replicas} replicas of the chain",
            "train": f"one training step, a {args.bucket_nodes}-node bucket"}[args.case]
    res: dict = {"jax": jax.__version__, "target": where, "case": args.case, "variant": args.variant,
                 "depth": args.depth,
                 "system": f"chain ({N_CHAIN} beads)", "backbones": {}}  # fmt: skip
    res.update({"step": {"replicas": args.replicas}, "train": {"bucket_nodes": args.bucket_nodes}}.get(args.case, {}))
    for name in args.backbones or BACKBONES:
        if args.case == "ef":
            compiled, size = ef_case(name, sharding)
        elif args.case == "step":
            compiled, size = step_case(name, prior, args.replicas, sharding)
        else:
            compiled, size = train_step_case(name, args.bucket_nodes, sharding)
        text = compiled.as_text()
        groups, total = output_bytes_by_op(text, args.depth)
        ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])
        ks = kernels(text)
        summary = kernel_summary(ks, bandwidth, FP32_FLOP_S)
        size_key = {"ef": "edges", "step": "edge_slots_per_replica", "train": "frames"}[args.case]
        res["backbones"][name] = {"output_bytes": total, size_key: size, "scopes": by_scope(groups),
                                  "groups": {k: {"bytes": b, "instructions": n} for k, (b, n) in ranked},
                                  "kernels": summary}  # fmt: skip
        rows = [[f"{b / 1e6:.2f}", f"{b / total:.0%}", k] for k, b in res["backbones"][name]["scopes"].items()]
        print_table(f"{name}: {what}, {total / 1e6:.1f} MB of HLO outputs, by named scope",
                    ["MB", "share", "scope (forward + backward)"], rows)  # fmt: skip
        rows = [[f"{b / 1e6:.2f}", f"{b / total:.0%}", n, k[:90]] for k, (b, n) in ranked[: args.top]]
        print_table(f"{name}: the {min(args.top, len(ranked))} largest op_name groups",
                    ["MB", "share", "instr", "op_name group"], rows)  # fmt: skip
        print_kernels(f"{name}: {what}", ks, summary, args.top)
        if "floor_s" in summary and args.case != "ef":
            units = size if args.case == "train" else args.replicas
            unit = "frames/s" if args.case == "train" else "timestep*mol/s"
            print(f"{name}: at the floor, {units / summary['floor_s']:,.0f} {unit}; "
                  f"{units / summary['roofline_floor_s']:,.0f} with each kernel's FLOPs at the float32 peak")
        write_results("hlo", res, args.out)  # after each backbone: a later failure keeps these


if __name__ == "__main__":
    main()
