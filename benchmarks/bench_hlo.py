"""Where the bytes go (issue 15): the compiled HLO of energy + forces per backbone, its instructions'
output bytes summed by the JAX operation that produced them.

XLA's `cost_analysis()` gives one FLOP and one byte count per program (`bench_gpu.py --cost`); this
splits the bytes. Each instruction of the compiled entry computation (after fusion: one fused kernel
is one instruction) is charged its output size and grouped by its `op_name` metadata cut to `--depth`
path components, e.g. `jvp()/gather` (forward) or `transpose(jvp())/scatter-add` (backward). A group
that is large for its FLOPs is what to restructure: the MACE message slices whose backward XLA wrote as
full-size pads were found this way. Output bytes count each buffer once, where it is written; reads are
not counted, so the total is below `cost_analysis()`'s "bytes accessed".

    python benchmarks/bench_hlo.py                    # every backbone on the 54-bead chain, top 12 groups
    python benchmarks/bench_hlo.py mace --top 25      # one backbone, more groups
    python benchmarks/bench_hlo.py --depth 6          # finer groups (einsum specs, jit-wrapped functions)

On a GPU the same command splits the GPU compile, whose fusions differ from the CPU's. Writes
benchmarks/results/hlo.json (or `--out`).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import print_table, write_results  # noqa: E402
from bench_gpu import BACKBONES, CUTOFF, backbone, chain_system, ef_compiled  # noqa: E402

_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
               "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}  # fmt: skip
_INSTR = re.compile(r"\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(\w+)\[([\d,]*)\]")
_OP_NAME = re.compile(r'op_name="([^"]+)"')


def output_bytes_by_op(hlo_text: str, depth: int) -> tuple[dict[str, tuple[int, int]], int]:
    """Output bytes of the entry computation's array-valued instructions, grouped by `op_name`.

    **Arguments:**

    - `hlo_text`: a compiled module's `as_text()`.
    - `depth`: how many `/`-separated components of the `op_name` (after the jit wrapper) form a group.

    **Returns:** `({group: (bytes, instructions)}, total bytes)`; instructions without metadata (constants,
    parameters, copies XLA adds) are the group `"(no op_name)"`. Tuple-valued instructions are skipped
    (their elements are counted where they are produced).
    """
    start = hlo_text.find("ENTRY")
    if start < 0:
        raise ValueError("no ENTRY computation in the HLO text")
    groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    total = 0
    for line in hlo_text[start:].splitlines()[1:]:
        m = _INSTR.match(line)
        if m is None or m.group(1) not in _ITEM_BYTES:
            continue
        dims = [int(d) for d in m.group(2).split(",") if d]
        size = int(np.prod(dims, dtype=np.int64)) * _ITEM_BYTES[m.group(1)]
        op = _OP_NAME.search(line)
        if op is None:
            key = "(no op_name)"
        else:
            parts = op.group(1).split("/")
            key = "/".join(parts[1 : 1 + depth] if parts[0].startswith("jit(") else parts[:depth]) or op.group(1)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backbones", nargs="*", help=f"some of {', '.join(BACKBONES)} (default: all)")
    ap.add_argument("--depth", type=int, default=2, help="op_name components per group (default 2)")
    ap.add_argument("--top", type=int, default=12, help="groups printed per backbone (default 12)")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/hlo.json)")
    args = ap.parse_args()
    if args.depth < 1 or args.top < 1:
        ap.error("--depth and --top must be at least 1")
    unknown = [b for b in args.backbones if b not in BACKBONES]
    if unknown:
        ap.error(f"unknown backbone(s) {', '.join(unknown)}; choose from {', '.join(BACKBONES)}")

    import jax

    from cameo_eqx.modules import ForceField

    print(f"jax {jax.__version__} on {jax.devices()}", flush=True)
    topo, x = chain_system()
    res: dict = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "depth": args.depth,
                 "system": f"chain ({len(x)} beads)", "backbones": {}}  # fmt: skip
    for name in args.backbones or BACKBONES:
        ff = ForceField(backbone(name), None, cutoff=CUTOFF)
        batch = ff.batch_for(x, topo)
        compiled = ef_compiled(ff, batch)
        groups, total = output_bytes_by_op(compiled.as_text(), args.depth)
        ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])
        res["backbones"][name] = {"output_bytes": total, "edges": int(batch.senders.shape[0]),
                                  "groups": {k: {"bytes": b, "instructions": n} for k, (b, n) in ranked}}  # fmt: skip
        scopes = by_scope(groups)
        res["backbones"][name]["scopes"] = scopes
        rows = [[f"{b / 1e6:.2f}", f"{b / total:.0%}", k] for k, b in scopes.items()]
        print_table(f"{name}: E+F on the chain, {total / 1e6:.1f} MB of HLO outputs, by named scope",
                    ["MB", "share", "scope (forward + backward)"], rows)  # fmt: skip
        rows = [[f"{b / 1e6:.2f}", f"{b / total:.0%}", n, k[:90]] for k, (b, n) in ranked[: args.top]]
        print_table(f"{name}: the {min(args.top, len(ranked))} largest op_name groups",
                    ["MB", "share", "instr", "op_name group"], rows)  # fmt: skip
    write_results("hlo", res, args.out)


if __name__ == "__main__":
    main()
