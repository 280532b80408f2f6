"""Per-step time of the exported chemtrain-deploy function (run as the connector runs it, in the old
XLA of jax/jaxlib 0.4.35, CPU) vs the same model jitted in process (jax 0.10, CPU), for 35, 300 and
1,000 beads. The model is `verify.ToyEnergyModel` (2 message-passing hops, bonded terms baked in),
or a small PaiNN + prior ForceField with `--real`.

    .venv/bin/python benchmarks/bench_export.py [--real] [--repeats 20] [--edge-multiplier F]
        [--capacity-fractions F ...]

The exported step includes filling the connector's buffers, the edge handling inside the function and
the host<->device copies; the in-process step is `jit(grad)` of `model.energy` (the path training and
simulation use) on a prebuilt exact-size Batch. To tell the connector's XLA generation from the
exporter's own work, the same in-process step (exact batch,
no edge handling, no padding) is also run in the old XLA ("model old XLA"). The connector function
returns the energy too, so the same two references are also timed computing energy and forces
(`value_and_grad`, "E+F"): a forces-only gradient lets XLA skip part of the model's forward pass.
The connector is emulated with the buffer multipliers of the generated LAMMPS input
(`lammps.RunSettings`: atoms 1.2, edges 1.2) and the exporter's default `capacity_fractions`;
`--edge-multiplier 1.5 --capacity-fractions 0.72 0.85 1.0` measures the earlier default (three model
copies in a `switch`, which the connector's XLA runs single-threaded on CPU).
Medians after warm-up; compile times are reported separately. Writes benchmarks/results/export.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from _common import print_table, write_results  # noqa: E402
from cameo_eqx.data.testdata import compact_chain
from cameo_eqx.export import chemtrain_deploy as cd
from cameo_eqx.export import verify
from cameo_eqx.export.lammps import RunSettings
from cameo_eqx.graph import single_frame_batch
from cameo_eqx.topology import CGTopology

SIZES = (35, 300, 1000)


def protein(n, seed=0):
    """A compact synthetic CA chain (`data.testdata.compact_chain`) and a one-chain topology."""
    pos = compact_chain(n, np.random.default_rng(seed)).astype(np.float32)
    top = CGTopology(("ALA",) * n, np.arange(n), ("A",) * n, np.zeros(n, np.int32),
                     (np.arange(n) * 7 % 4).astype(np.int32))  # fmt: skip
    return pos, top


def make_model(real: bool, cutoff: float):
    if not real:
        return verify.ToyEnergyModel(n_species=4, cutoff=cutoff, layers=2)
    from cameo_eqx.modules import ForceField, make_backbone
    from cameo_eqx.priors.config import PriorConfig
    from cameo_eqx.priors.prior import Prior

    return ForceField(make_backbone("painn", 4, cutoff, preset="small"), Prior.from_prior_config(PriorConfig()),
                      cutoff=cutoff)  # fmt: skip


def model_step_artifact(model, batch, path, with_energy=False):
    """The in-process step (exact batch baked in) wrapped in the connector's signature, as an artifact,
    so that the old XLA runs exactly what jax 0.10 runs in process: forces only, or energy and forces
    (`with_energy`, the work the connector function does: its energy output is the model's forward
    pass, which a forces-only gradient partly skips)."""
    from jax import export as jax_export

    from cameo_eqx.export import ptb

    n_beads = batch.positions.shape[0]

    def f(positions, species, n_local, n_ghost, newton, senders, receivers, capacity):
        # static-size slice (needs the constraint n_atoms >= n_beads below)
        own = jax.lax.dynamic_slice_in_dim(positions, 0, n_beads)
        energy, grad = jax.value_and_grad(lambda p: jnp.sum(model.energy(batch.with_positions(p))))(own)
        forces = jax.lax.dynamic_update_slice_in_dim(jnp.zeros_like(positions), -grad, 0, axis=0)
        return forces, energy if with_energy else jnp.float32(0.0), jnp.int32(1), jnp.int32(1)

    n, b, m = jax_export.symbolic_shape(cd.SYMBOLIC_SHAPES,
                                        constraints=(*cd.SHAPE_CONSTRAINTS, f"n_atoms >= {n_beads}"))
    sds = jax.ShapeDtypeStruct
    args = (sds((n, 3), jnp.float32), sds((n,), jnp.int32), sds((), jnp.int32), sds((), jnp.int32),
            sds((), jnp.bool_), sds((b,), jnp.int32), sds((b,), jnp.int32), sds((m,), jnp.bool_))  # fmt: skip
    exported = jax_export.export(jax.jit(f), platforms=["cpu"])(*args)
    text = cd.legacy_stablehlo_text(exported.mlir_module())
    Path(path).write_bytes(ptb.encode_model(text, cutoff=8.0, nbr_order=(1, 2), unit_style="real"))
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--cutoff", type=float, default=8.0)
    ap.add_argument("--atom-multiplier", type=float, default=RunSettings.atom_multiplier)
    ap.add_argument("--edge-multiplier", type=float, default=RunSettings.edge_multiplier)
    ap.add_argument("--capacity-fractions", type=float, nargs="+", default=list(cd.CAPACITY_FRACTIONS))
    args = ap.parse_args()
    model = make_model(args.real, args.cutoff)
    connector = dict(atom_multiplier=args.atom_multiplier, edge_multiplier=args.edge_multiplier,
                     repeats=args.repeats, nghost=0, newton=True)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in SIZES:
            pos, top = protein(n)
            batch = jax.tree.map(jnp.asarray, single_frame_batch(pos, top, args.cutoff))

            def total(p):
                return jnp.sum(model.energy(batch.with_positions(p)))

            step = jax.jit(jax.grad(total))
            t0 = time.perf_counter()
            step(batch.positions).block_until_ready()
            compile_in = time.perf_counter() - t0
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                np.asarray(step(batch.positions))
                times.append(time.perf_counter() - t0)
            t_in = float(np.median(times))
            step_ef = jax.jit(jax.value_and_grad(total))
            jax.block_until_ready(step_ef(batch.positions))
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.tree.map(np.asarray, step_ef(batch.positions))
                times.append(time.perf_counter() - t0)
            t_in_ef = float(np.median(times))
            t0 = time.perf_counter()
            art = cd.export_model(model, topology=top, platform="cpu",
                                  capacity_fractions=tuple(args.capacity_fractions))  # fmt: skip
            path = art.write(Path(tmp) / f"m{n}.ptb")
            export_s = time.perf_counter() - t0
            case = dict(connector, x=pos, types=top.species + 1, nlocal=n,
                        **verify.neighbor_list(pos, args.cutoff, half=True))  # fmt: skip
            (res,) = verify.run_legacy(path, [case])
            t_ex = float(np.median(res["seconds"]))
            ref = model_step_artifact(model, batch, Path(tmp) / f"ref{n}.ptb")
            (res_ref,) = verify.run_legacy(ref, [case])
            t_old = float(np.median(res_ref["seconds"]))
            ref_ef = model_step_artifact(model, batch, Path(tmp) / f"ref_ef{n}.ptb", with_energy=True)
            (res_ref_ef,) = verify.run_legacy(ref_ef, [case])
            t_old_ef = float(np.median(res_ref_ef["seconds"]))
            rows.append(dict(n_beads=n, n_edges=res["n_valid"], in_process_ms=1e3 * t_in, exported_ms=1e3 * t_ex,
                             ratio=t_ex / t_in, model_old_xla_ms=1e3 * t_old, ratio_same_xla=t_ex / t_old,
                             in_process_ef_ms=1e3 * t_in_ef, ratio_ef=t_ex / t_in_ef, model_old_xla_ef_ms=1e3 * t_old_ef,
                             ratio_same_xla_ef=t_ex / t_old_ef, compile_in_process_s=compile_in, export_s=export_s,
                             compile_legacy_s=res["last_compile_s"], sizes=res["sizes"]))  # fmt: skip
            print(f"{n:6d} beads {res['n_valid']:7d} edges | in-process {1e3 * t_in:8.3f} ms | exported "
                  f"{1e3 * t_ex:8.3f} ms | ratio {t_ex / t_in:5.2f} | model old XLA {1e3 * t_old:8.3f} ms "
                  f"(ratio {t_ex / t_old:5.2f}) | E+F: in-process {1e3 * t_in_ef:8.3f} ms (ratio {t_ex / t_in_ef:5.2f}), "
                  f"old XLA {1e3 * t_old_ef:8.3f} ms (ratio {t_ex / t_old_ef:5.2f}) | compile {compile_in:5.1f} s / "
                  f"legacy {res['last_compile_s']:5.1f} s | export {export_s:5.1f} s", flush=True)
    print_table("exported step / in-process step (ms; E+F = energy and forces)",
                ["beads", "edges", "in-process E+F", "model old XLA E+F", "exported", "ratio", "ratio same XLA"],
                [[r["n_beads"], r["n_edges"], r["in_process_ef_ms"], r["model_old_xla_ef_ms"], r["exported_ms"],
                  r["ratio_ef"], r["ratio_same_xla_ef"]] for r in rows])  # fmt: skip
    write_results("export", {"model": "painn-small+prior" if args.real else "toy(K=2)", "cutoff": args.cutoff,
                             "repeats": args.repeats, "device": "cpu",
                             "connector": {k: connector[k] for k in ("atom_multiplier", "edge_multiplier")},
                             "capacity_fractions": list(args.capacity_fractions), "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
