"""Checks of a chemtrain-deploy artifact without the connector: static checks of the file and its
StableHLO, LAMMPS-style neighbour lists and connector buffers, the old-XLA emulation driver, and a small
reference energy model for tests and benchmarks.

The old-XLA emulation runs `tools/legacy_xla/run_artifact.py` inside a separate virtualenv with
jax/jaxlib 0.4.35 (the XLA the connector was built on; created by `tools/legacy_xla/setup_venv.sh`).
That driver parses the artifact's text, refines its symbolic shapes to padded sizes as the connector
does, compiles for CPU and executes with connector-style buffers, including the capacity overflow
(first call with M = 1) and the rerun with a grown M.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export
from jaxtyping import Array, Float, Int

from ..energy import AbstractEnergyModel
from ..graph import Batch
from ..modules.radial import safe_norm
from . import ptb
from .chemtrain_deploy import connector_arg_specs

ROOT = Path(__file__).resolve().parents[2]
LEGACY_VENV = ROOT / ".venv-xla0435"
LEGACY_DRIVER = ROOT / "tools" / "legacy_xla" / "run_artifact.py"

ARG_TYPES: tuple[str, ...] = (
    "tensor<?x3xf32>", "tensor<?xi32>", "tensor<i32>", "tensor<i32>", "tensor<i1>",
    "tensor<?xi32>", "tensor<?xi32>", "tensor<?xi1>",
)  # fmt: skip
"""The `main` argument types the connector expects (symbolic dims print as `?`)."""

RESULT_TYPES: tuple[str, ...] = ("tensor<?x3xf32>", "tensor<f32>", "tensor<i32>", "tensor<i32>")
ALLOWED_DIALECTS = frozenset({"builtin", "func", "stablehlo", "chlo"})
ALLOWED_CUSTOM_CALLS = frozenset(
    {"shape_assertion", "stablehlo.dynamic_reduce_window", "stablehlo.dynamic_rng_bit_generator",
     "stablehlo.dynamic_top_k", "stablehlo.dynamic_approx_top_k"}
)  # fmt: skip
"""Custom calls the connector's XLA resolves itself (shape assertions, dynamic-shape shims)."""


# ------------------------------------------------------------------------------------------------
# Static checks
# ------------------------------------------------------------------------------------------------


def _ops_and_custom_calls(text: str) -> tuple[set[str], set[str]]:
    """Names of all ops in a module and the targets of its custom calls (parsed with jax's MLIR)."""
    # lazy: private JAX internals (jax._src, no stable API), kept to the functions that parse the MLIR
    from jax._src.interpreters import mlir as jax_mlir
    from jax._src.lib.mlir import ir

    names: set[str] = set()
    targets: set[str] = set()

    def visit(op) -> None:
        names.add(op.name)
        if op.name == "stablehlo.custom_call":
            targets.add(ir.StringAttr(op.attributes["call_target_name"]).value)
        for region in op.regions:
            for block in region.blocks:
                for child in block.operations:
                    visit(child.operation)

    with jax_mlir.make_ir_context(), ir.Location.unknown():
        visit(ir.Module.parse(text).operation)
    return names, targets


def _main_signature(text: str) -> tuple[list[str], list[str]]:
    m = re.search(r"func\.func public @main\((.*?)\)\s*->\s*\((.*?)\)\s*(attributes|\{)", text, re.S)
    if m is None:
        raise ValueError("the StableHLO module has no public @main function")
    args = re.findall(r"%arg\d+: (tensor<[^>]*>)", m.group(1))
    results = re.findall(r"(tensor<[^>]*>)", m.group(2))
    return args, results


def static_problems(data: bytes) -> list[str]:
    """Everything that keeps an artifact from loading in the chemtrain-deploy connector.

    Checks: the protobuf decodes with all required fields (`type` written explicitly as `08 00`);
    cutoff is a positive float32; `nbr_order` has two positive values; the module text has no debug
    locations, no `stablehlo.composite`, no custom calls beyond shape assertions, only
    func/stablehlo/chlo ops, keeps `jax.uses_shape_polymorphism = true`, and `main` has exactly the 8
    argument and 4 result types of the contract. The file does not record its platform; a module
    lowered for more than one platform shows up as an extra platform-index argument of `main`.

    **Arguments:**

    - `data`: the `.ptb` bytes.

    **Returns:** a list of human-readable problems (empty when the artifact passes).
    """
    problems: list[str] = []
    try:
        model = ptb.decode_model(data)
    except ValueError as e:
        return [f"protobuf does not decode: {e}"]
    nl_start = data.find(b"\x22", len(model.mlir_module))  # field 4 (neighbor_list), length-delimited
    if model.type != ptb.SIMPLE_SPARSE:
        problems.append(f"neighbor_list.type is {model.type}, expected SIMPLE_SPARSE (0)")
    if b"\x08\x00" not in data[nl_start:]:
        problems.append("neighbor_list.type is not written explicitly (bytes 08 00 missing)")
    if not (model.cutoff > 0 and math.isfinite(model.cutoff)):
        problems.append(f"cutoff {model.cutoff} is not positive and finite")
    if len(model.nbr_order) != 2 or min(model.nbr_order, default=0) < 1:
        problems.append(f"nbr_order {list(model.nbr_order)} is not two positive values")
    if model.unit_style not in ("real", "metal"):
        problems.append(f"unit_style {model.unit_style!r} is not 'real' or 'metal'")
    text = model.mlir_module
    if "loc(" in text or "#loc" in text:
        problems.append("module text contains debug locations (loc(...))")
    if "composite" in text:
        problems.append("module text contains stablehlo.composite")
    if "jax.uses_shape_polymorphism = true" not in text:
        problems.append("module lacks `jax.uses_shape_polymorphism = true`")
    try:
        op_names, targets = _ops_and_custom_calls(text)
    except Exception as e:  # noqa: BLE001 - any parse failure is a problem to report
        problems.append(f"module text does not parse: {e}")
        op_names, targets = set(), set()
    bad_targets = sorted(targets - ALLOWED_CUSTOM_CALLS)
    if bad_targets:
        problems.append(f"custom calls beyond shape assertions: {bad_targets}")
    bad_ops = sorted(o for o in op_names if o.split(".")[0] not in ALLOWED_DIALECTS)
    if bad_ops:
        problems.append(f"ops outside func/stablehlo/chlo: {bad_ops}")
    if any(o == "stablehlo.composite" for o in op_names):
        problems.append("module contains stablehlo.composite ops")
    m = re.search(r"(?:jax|mhlo)\.platforms?\s*=\s*\[([^\]]*)\]", text)
    if m is not None:
        names = re.findall(r'"([^"]+)"', m.group(1))
        if len(names) != 1:
            problems.append(f"lowered for {len(names)} platforms {names}; the connector needs one")
    if "platform_index" in text or "_platform_index" in text:
        problems.append("module takes a platform-index argument (multi-platform export)")
    try:
        args, results = _main_signature(text)
    except ValueError as e:
        problems.append(str(e))
    else:
        if tuple(args) != ARG_TYPES:
            problems.append(f"main arguments {args}, expected {list(ARG_TYPES)}")
        if tuple(results) != RESULT_TYPES:
            problems.append(f"main results {results}, expected {list(RESULT_TYPES)}")
    return problems


def check_artifact(path_or_bytes: str | os.PathLike | bytes) -> ptb.PtbModel:
    """Decodes an artifact and raises `ValueError` listing every static problem (see `static_problems`)."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    problems = static_problems(data)
    if problems:
        where = "" if isinstance(path_or_bytes, bytes) else f" {path_or_bytes}"
        raise ValueError(f"artifact{where} fails the connector contract:\n  - " + "\n  - ".join(problems))
    return ptb.decode_model(data)


# ------------------------------------------------------------------------------------------------
# LAMMPS-style neighbour lists and connector buffers
# ------------------------------------------------------------------------------------------------


def neighbor_list(
    positions: Float[np.ndarray, "n 3"], cutoff: float, *, half: bool, skin: float = 2.0,
    rows: int | None = None,
) -> dict[str, Any]:
    """A LAMMPS-like neighbour list (`ilist`, `numneigh`, `firstneigh`) with cutoff + skin.

    A half list holds each pair once (the row of the lower index), a full list both directions.
    Rows are visited in a shuffled order and neighbours are unsorted, as LAMMPS's binned lists are.
    `rows`: only the first `rows` atoms (the local ones) own a row, as in LAMMPS without a ghost
    list (then ghost-ghost pairs are absent and a full list holds local -> ghost edges only once);
    default every atom (a list with ghost rows).
    """
    pos = np.asarray(positions, np.float64)
    n = len(pos)
    n_rows = n if rows is None else int(rows)
    d = np.linalg.norm(pos[:, None] - pos[None, :], axis=-1)
    near = (d < cutoff + skin) & ~np.eye(n, dtype=bool)
    if half:
        near &= np.triu(np.ones((n, n), bool), 1)
    near[n_rows:] = False
    rng = np.random.default_rng(n)
    ilist = rng.permutation(n_rows).astype(np.int32)
    firstneigh = [rng.permutation(np.nonzero(near[i])[0]).astype(np.int32) for i in ilist]
    return {"ilist": ilist, "numneigh": np.asarray([len(f) for f in firstneigh], np.int32),
            "firstneigh": firstneigh}  # fmt: skip


def connector_arguments(
    positions: Float[np.ndarray, "n 3"],
    species: Int[np.ndarray, " n"],
    nlist: dict[str, Any],
    *,
    n_local: int,
    n_ghost: int,
    newton: bool,
    n_atoms: int,
    n_buffer: int,
    n_edges: int,
) -> tuple[np.ndarray, ...]:
    """The 8 arguments exactly as the connector fills them (padding N for senders/receivers)."""
    n_valid = n_local + n_ghost
    pos = np.zeros((n_atoms, 3), np.float32)
    pos[:n_valid] = np.asarray(positions, np.float32)[:n_valid]
    spc = np.zeros(n_atoms, np.int32)
    spc[:n_valid] = np.asarray(species, np.int32)[:n_valid]
    snd = np.full(n_buffer, n_atoms, np.int32)
    rcv = np.full(n_buffer, n_atoms, np.int32)
    k = 0
    for i, nn, neigh in zip(nlist["ilist"], nlist["numneigh"], nlist["firstneigh"]):
        snd[k : k + nn] = i
        rcv[k : k + nn] = neigh
        k += nn
    return (pos, spc, np.int32(n_local), np.int32(n_ghost), np.bool_(newton), snd, rcv,
            np.zeros(n_edges, np.bool_))  # fmt: skip


def exported_from_ptb(data: bytes):
    """The artifact's own StableHLO text as a `jax.export.Exported` of this jax, so that
    `jax.jit(exported.call)(*connector_arguments(...))` runs exactly the module in the file in process.

    The calling convention (argument/result types, symbolic shapes) comes from a stand-in function
    with the contract's signature; only its module is swapped for the file's.

    **Arguments:**

    - `data`: the `.ptb` bytes.

    **Returns:** the `Exported`.
    """
    # lazy: private JAX internals (jax._src, no stable API), kept to the functions that parse the MLIR
    from jax._src.interpreters import mlir as jax_mlir
    from jax._src.lib.mlir import ir


    def signature(pos, spc, n_local, n_ghost, newton, snd, rcv, cap):
        z = (jnp.sum(spc) + n_local + n_ghost + newton.astype(jnp.int32) + jnp.sum(snd) + jnp.sum(rcv)
             + jnp.sum(cap)).astype(jnp.float32)  # fmt: skip
        return pos * z, z, n_local, n_ghost

    args = connector_arg_specs()
    with jax.enable_x64(False):
        template = jax_export.export(jax.jit(signature), platforms=["cpu"])(*args)
    with jax_mlir.make_ir_context():
        code = jax_mlir.module_to_bytecode(ir.Module.parse(ptb.decode_model(data).mlir_module))
    return dataclasses.replace(template, mlir_module_serialized=code)


# ------------------------------------------------------------------------------------------------
# The old-XLA emulation (subprocess into the jax 0.4.35 virtualenv)
# ------------------------------------------------------------------------------------------------


def legacy_python(venv: str | os.PathLike | None = None) -> Path | None:
    """The jax 0.4.35 interpreter, or None when its virtualenv is absent."""
    venv = Path(os.environ.get("CAMEO_XLA0435_VENV", LEGACY_VENV) if venv is None else venv)
    py = venv / "bin" / "python"
    return py if py.exists() else None


def run_legacy(
    ptb_path: str | os.PathLike,
    cases: list[dict[str, Any]],
    *,
    venv: str | os.PathLike | None = None,
    timeout: float = 900.0,
) -> list[dict[str, Any]]:
    """Runs an artifact like the connector, in the old-XLA virtualenv.

    **Arguments:**

    - `ptb_path`: the artifact.
    - `cases`: dicts with `x` (n, 3), `types` (LAMMPS types, 1-based), `nlocal`, `nghost`, `newton`,
      `ilist`, `numneigh`, `firstneigh` (as `neighbor_list` returns), and optionally
      `atom_multiplier`, `edge_multiplier`, `repeats` (timed executions after the first).
    - `venv`: the virtualenv (default `.venv-xla0435`, or `$CAMEO_XLA0435_VENV`).

    **Returns:** one dict per case: `forces` (rows local + ghost if newton), `energy`, `n_valid`,
    `n_in_cutoff`, `compiles`, `trials`, `sizes` (N, B, M of the final call), `seconds` (timings).
    """
    py = legacy_python(venv)
    if py is None:
        raise FileNotFoundError(
            f"old-XLA virtualenv not found ({venv or LEGACY_VENV}); run tools/legacy_xla/setup_venv.sh"
        )
    with tempfile.TemporaryDirectory(prefix="cameo_legacy_") as tmp:
        arrays: dict[str, np.ndarray] = {}
        meta = []
        for c, case in enumerate(cases):
            arrays[f"{c}_x"] = np.asarray(case["x"], np.float64)
            arrays[f"{c}_types"] = np.asarray(case["types"], np.int32)
            arrays[f"{c}_ilist"] = np.asarray(case["ilist"], np.int32)
            arrays[f"{c}_numneigh"] = np.asarray(case["numneigh"], np.int32)
            fn = [np.asarray(f, np.int32) for f in case["firstneigh"]]
            arrays[f"{c}_neigh"] = np.concatenate(fn) if fn else np.zeros(0, np.int32)
            meta.append({k: case[k] for k in ("nlocal", "nghost", "newton")}
                        | {k: case[k] for k in ("atom_multiplier", "edge_multiplier", "repeats") if k in case})  # fmt: skip
        np.savez(Path(tmp) / "in.npz", **arrays)
        request = {"ptb": str(Path(ptb_path).resolve()), "inputs": str(Path(tmp) / "in.npz"),
                   "outputs": str(Path(tmp) / "out.npz"), "cases": meta}  # fmt: skip
        (Path(tmp) / "request.json").write_text(json.dumps(request))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_FLAGS"))}
        env["JAX_PLATFORMS"] = "cpu"
        proc = subprocess.run([str(py), str(LEGACY_DRIVER), str(Path(tmp) / "request.json")],
                              capture_output=True, text=True, timeout=timeout, env=env)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"old-XLA driver failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
        out = np.load(Path(tmp) / "out.npz")
        results = []
        for c in range(len(cases)):
            info = json.loads(str(out[f"{c}_info"]))
            info["forces"] = out[f"{c}_forces"]
            results.append(info)
        return results


# ------------------------------------------------------------------------------------------------
# Reference model for tests and benchmarks
# ------------------------------------------------------------------------------------------------


class ToyEnergyModel(AbstractEnergyModel):
    """A small energy model with every feature the exporter must carry (tests and benchmarks only).

    Per-bead energies: half of each edge's species-dependent Morse-like pair energy (smoothly cut off),
    a K-hop message-passing term (so the receptive field is `n_message_passing_layers` hops),
    harmonic bonds and `arccos` angles on the baked topology (half/a third to each bead), and an
    `erf`-softened repulsion on the non-bonded `pairs` with sequence separation >= 3.
    """

    depth: Float[Array, " n_species"]
    r0: float = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    n_message_passing_layers: int = eqx.field(static=True)
    pair_min_sep: ClassVar[int] = 2

    def __init__(self, n_species: int = 4, cutoff: float = 8.0, layers: int = 2, *, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.depth = jnp.asarray(0.2 + 0.3 * rng.random(n_species), jnp.float32)
        self.r0 = 5.0
        self.cutoff = float(cutoff)
        self.n_message_passing_layers = int(layers)

    def node_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        n = batch.n_node
        pos, spc = batch.positions, batch.species
        s, r, em = batch.senders, batch.receivers, batch.edge_mask
        d = safe_norm(pos[r] - pos[s], em)
        x = jnp.clip(d / self.cutoff, 0.0, 1.0)
        env = jnp.where(em & (d < self.cutoff), (1.0 - x**2) ** 3, 0.0)
        eps = self.depth[spc[s]] * self.depth[spc[r]]
        morse = eps * ((1.0 - jnp.exp(-0.8 * (d - self.r0))) ** 2 - 1.0) * env
        e = jax.ops.segment_sum(0.5 * morse, r, num_segments=n)
        h = jax.ops.segment_sum(env, r, num_segments=n)
        for _ in range(self.n_message_passing_layers - 1):
            h = jax.ops.segment_sum(env * jnp.tanh(0.3 * h[s]), r, num_segments=n)
        e = e + 0.05 * h
        # harmonic bonds, half to each end
        b, bm = batch.bonds, batch.bond_mask
        lb = safe_norm(pos[b[:, 1]] - pos[b[:, 0]], bm)
        eb = jnp.where(bm, 20.0 * (lb - 3.8) ** 2, 0.0)
        e = e + jax.ops.segment_sum(0.5 * eb, b[:, 0], n) + jax.ops.segment_sum(0.5 * eb, b[:, 1], n)
        # angles with arccos (a composite in jax's StableHLO)
        a, am = batch.angles, batch.angle_mask
        u = pos[a[:, 0]] - pos[a[:, 1]]
        v = pos[a[:, 2]] - pos[a[:, 1]]
        cos = jnp.sum(u * v, -1) / (safe_norm(u, am) * safe_norm(v, am) + 1e-6)
        theta = jnp.arccos(jnp.clip(cos, -0.999, 0.999))
        ea = jnp.where(am, 1.5 * (theta - 1.8) ** 2, 0.0) / 3.0
        for k in range(3):
            e = e + jax.ops.segment_sum(ea, a[:, k], n)
        # erf-softened repulsion on non-bonded pairs
        p, pm = batch.pairs, batch.pair_mask & (batch.pair_sep >= 3)
        dp = safe_norm(pos[p[:, 1]] - pos[p[:, 0]], pm)
        ep = jnp.where(pm, 2.0 * jax.scipy.special.erfc(dp - 4.0), 0.0)
        e = e + jax.ops.segment_sum(0.5 * ep, p[:, 0], n) + jax.ops.segment_sum(0.5 * ep, p[:, 1], n)
        return jnp.where(batch.node_mask, e, 0.0)


def model_forces(model, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """Per-bead energies and forces of a model on a batch, in process (the reference)."""

    def total(pos):
        e = model.node_energies(batch.with_positions(pos))
        return jnp.sum(e), e

    grad, e = jax.jit(jax.grad(total, has_aux=True))(jnp.asarray(batch.positions))
    return np.asarray(e), -np.asarray(grad)
