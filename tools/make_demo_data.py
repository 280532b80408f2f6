#!/usr/bin/env python
"""Regenerate the bundled demo dataset (`data/demo/*.h5`) with OpenMM.

The files follow the mdCATH HDF5 layout (`mdcath-only-protein-v1.0`, see the project's data docs) but are
NOT mdCATH data: they are short implicit-solvent simulations of two small proteins whose structures ship
with OpenMM (villin HP35, `openmm/app/data/test.pdb`) or with this project (chignolin CLN025,
`data/demo/structures/cln025.pdb`, from the aggforce test suite, Apache-2.0).

Model: amber99sbildn + amber99_obc.xml (OBC GB implicit solvent), NoCutoff, bonds to hydrogen constrained,
LangevinMiddle integrator (2 fs, friction 1/ps). Each (temperature, replica) starts from the energy-minimised
structure, gets velocities and a Langevin seed of its own, equilibrates briefly, then saves one frame every
`--steps-per-frame` steps: positions in Å, force-field forces in kcal/mol/Å (from `getState(getForces=True)`,
which excludes constraint forces, as an MD engine writes them) and the potential energy in kcal/mol.

OpenMM is an optional dependency: `pip install .[openmm]`.

Usage (the command that made the committed files):

    python tools/make_demo_data.py --output-dir data/demo

`python tools/make_demo_data.py --validate-only` re-checks existing files, including a re-evaluation of
stored forces with OpenMM from the stored coordinates.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import io
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

try:
    import openmm
    from openmm import app, unit
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise SystemExit(
        "tools/make_demo_data.py needs OpenMM: install the optional extra with `pip install .[openmm]` "
        f"({exc})"
    ) from exc

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = "mdcath-only-protein-v1.0"
FORCEFIELD_FILES = ("amber99sbildn.xml", "amber99_obc.xml")
KCAL_PER_MOL = unit.kilocalorie_per_mole
FORCE_UNIT = unit.kilocalorie_per_mole / unit.angstrom
PROTEIN_RESIDUES = frozenset(
    "ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL "
    "HID HIE HIP CYX ASH GLH LYN ACE NME".split()
)


@dataclass(frozen=True)
class ProteinSpec:
    """One demo protein: the domain name in the file and where its structure comes from."""

    name: str
    pdb_path: Path
    origin: str
    n_frames: int


def villin_pdb() -> Path:
    """Villin HP35 (N68H) as shipped with OpenMM (explicit water, removed below)."""
    return Path(app.__file__).resolve().parent / "data" / "test.pdb"


def log(msg: str) -> None:
    print(f"[make_demo_data {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_forcefield() -> app.ForceField:
    return app.ForceField(*FORCEFIELD_FILES)


def prepare_structure(pdb_path: Path, forcefield: app.ForceField) -> app.Modeller:
    """Load a PDB, keep only protein residues (and ACE/NME caps), add any missing hydrogens.

    **Arguments:** `pdb_path`: input PDB; `forcefield`: the force field whose templates must match.

    **Returns:** a `Modeller` holding the protein-only topology and positions.
    """
    if not pdb_path.exists():
        raise FileNotFoundError(f"structure {pdb_path} not found")
    pdb = app.PDBFile(str(pdb_path))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    drop = [r for r in modeller.topology.residues() if r.name not in PROTEIN_RESIDUES]
    if drop:
        names = sorted({r.name for r in drop})
        log(f"{pdb_path.name}: removing {len(drop)} non-protein residues ({', '.join(names)})")
        modeller.delete(drop)
    n_before = modeller.topology.getNumAtoms()
    modeller.addHydrogens(forcefield, pH=7.0)
    n_added = modeller.topology.getNumAtoms() - n_before
    if n_added:
        log(f"{pdb_path.name}: Modeller added {n_added} hydrogens")
    # Non-periodic (NoCutoff): drop the box the input PDB carried.
    modeller.topology.setPeriodicBoxVectors(None)
    return modeller


def make_system(topology: app.Topology, forcefield: app.ForceField) -> openmm.System:
    return forcefield.createSystem(
        topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds, rigidWater=True
    )


def make_platform(name: str, threads: int) -> tuple[openmm.Platform, dict[str, str]]:
    platform = openmm.Platform.getPlatformByName(name)
    props = {"Threads": str(threads)} if name == "CPU" else {}
    return platform, props


def constraint_pairs(system: openmm.System) -> np.ndarray:
    pairs = [system.getConstraintParameters(i)[:2] for i in range(system.getNumConstraints())]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def hydrogen_bond_count(topology: app.Topology) -> int:
    h = app.element.hydrogen
    return sum((a.element == h) != (b.element == h) for a, b in topology.bonds())


def pdb_text(topology: app.Topology, positions_nm: np.ndarray) -> str:
    buf = io.StringIO()
    app.PDBFile.writeFile(topology, positions_nm * unit.nanometer, buf)
    return buf.getvalue()


def protein_atoms_text(topology: app.Topology, positions_nm: np.ndarray) -> str:
    """Protein-only PDB ("MODEL/ATOM.../ENDMDL/END"), same atom order as coords."""
    buf = io.StringIO()
    app.PDBFile.writeModel(topology, positions_nm * unit.nanometer, buf, modelIndex=1)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith(("MODEL", "ATOM", "HETATM", "TER", "ENDMDL"))]
    return "\n".join(lines + ["END"]) + "\n"


def kabsch_align(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Superpose frames `x` (F, n, 3) onto `ref` (n, 3) by optimal rotation + translation."""
    xc = x - x.mean(axis=1, keepdims=True)
    rc = ref - ref.mean(axis=0)
    h = np.einsum("fni,nj->fij", xc, rc)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("fij,fjk->fik", u, vt)))
    u[:, :, -1] *= d[:, None]
    rot = np.einsum("fij,fjk->fik", u, vt)
    return np.einsum("fni,fij->fnj", xc, rot) + ref.mean(axis=0)


def analysis(coords_a: np.ndarray, ref_a: np.ndarray, ca: np.ndarray) -> dict[str, np.ndarray]:
    """mdCATH-style per-trajectory observables, in nm as in mdCATH.

    rmsd: C-alpha RMSD to the minimised start structure after superposition; gyrationRadius: unweighted over
    all atoms; rmsf: per C-alpha, about the trajectory mean after superposition.
    """
    x = coords_a.astype(np.float64) / 10.0
    ref = ref_a.astype(np.float64) / 10.0
    xca = x[:, ca]
    aligned = kabsch_align(xca, ref[ca])
    rmsd = np.sqrt(((aligned - ref[ca]) ** 2).sum(-1).mean(-1))
    rg = np.sqrt(((x - x.mean(axis=1, keepdims=True)) ** 2).sum(-1).mean(-1))
    mean = kabsch_align(xca, xca[0]).mean(axis=0)
    aligned_mean = kabsch_align(xca, mean)
    rmsf = np.sqrt(((aligned_mean - aligned_mean.mean(axis=0)) ** 2).sum(-1).mean(0))
    return {
        "rmsd": rmsd.astype(np.float32),
        "gyrationRadius": rg.astype(np.float64),
        "rmsf": rmsf.astype(np.float32),
    }


@dataclass(frozen=True)
class TrajectoryJob:
    """One (protein, temperature, replica) simulation; `seed` drives both velocities and Langevin noise."""

    protein: str
    temperature: int
    replica: int
    seed: int
    n_frames: int

    @property
    def label(self) -> str:
        return f"{self.protein} {self.temperature} K replica {self.replica} (seed {self.seed})"


@dataclass(frozen=True)
class PreparedProtein:
    """A protein ready to simulate: topology, serialised System, minimised start (nm), constraints."""

    spec: ProteinSpec
    topology: app.Topology
    system_xml: str
    start_nm: np.ndarray
    constraints: np.ndarray


def prepare_protein(spec: ProteinSpec, args: argparse.Namespace) -> PreparedProtein:
    """Build the System and minimise the structure once; every replica starts from the minimum."""
    forcefield = make_forcefield()
    modeller = prepare_structure(spec.pdb_path, forcefield)
    topology = modeller.topology
    system = make_system(topology, forcefield)
    pairs = constraint_pairs(system)
    n_hbonds = hydrogen_bond_count(topology)
    if len(pairs) != n_hbonds:
        raise RuntimeError(f"{spec.name}: {len(pairs)} constraints but {n_hbonds} bonds to hydrogen")
    log(
        f"{spec.name}: {system.getNumParticles()} atoms, {topology.getNumResidues()} residues, "
        f"{len(pairs)} H-bond constraints"
    )
    integrator = openmm.VerletIntegrator(1.0 * unit.femtosecond)
    platform, props = make_platform(args.platform, args.threads)
    context = openmm.Context(system, integrator, platform, props)
    context.setPositions(modeller.positions)
    context.applyConstraints(1e-6)
    e0 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KCAL_PER_MOL)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, args.minimize_iterations)
    state = context.getState(getPositions=True, getEnergy=True)
    start_nm = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
    e1 = state.getPotentialEnergy().value_in_unit(KCAL_PER_MOL)
    log(f"{spec.name}: minimised {e0:.1f} -> {e1:.1f} kcal/mol")
    return PreparedProtein(spec, topology, openmm.XmlSerializer.serialize(system), start_nm, pairs)


def run_trajectory(
    system_xml: str, positions_nm: np.ndarray, job: TrajectoryJob, args: argparse.Namespace
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equilibrate and sample one replica (runs in a worker process).

    **Arguments:** `system_xml`: the serialised `openmm.System`; `positions_nm`: start positions (N, 3) nm;
    `job`: what to run; `args`: the command-line settings (integrator, platform, threads).

    **Returns:** coords (F, N, 3) float32 Å, forces (F, N, 3) float32 kcal/mol/Å (force-field forces, no
    constraint forces), energies (F,) float64 kcal/mol.
    """
    if job.seed <= 0:
        raise ValueError(f"{job.label}: seed must be positive (OpenMM treats 0 as 'pick a random seed')")
    system = openmm.XmlSerializer.deserialize(system_xml)
    temperature = float(job.temperature) * unit.kelvin
    integrator = openmm.LangevinMiddleIntegrator(
        temperature, args.friction / unit.picosecond, args.timestep_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(job.seed)
    platform, props = make_platform(args.platform, args.threads)
    context = openmm.Context(system, integrator, platform, props)
    context.setPositions(positions_nm * unit.nanometer)
    context.setVelocitiesToTemperature(temperature, job.seed)
    n_atoms = system.getNumParticles()
    coords = np.empty((job.n_frames, n_atoms, 3), np.float32)
    forces = np.empty((job.n_frames, n_atoms, 3), np.float32)
    energies = np.empty((job.n_frames,), np.float64)
    t0 = time.perf_counter()
    integrator.step(args.equilibration_steps)
    log(f"{job.label}: equilibrated {args.equilibration_steps} steps in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    report = max(1, job.n_frames // 4)
    for i in range(job.n_frames):
        integrator.step(args.steps_per_frame)
        state = context.getState(getPositions=True, getForces=True, getEnergy=True)
        coords[i] = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        forces[i] = state.getForces(asNumpy=True).value_in_unit(FORCE_UNIT)
        energies[i] = state.getPotentialEnergy().value_in_unit(KCAL_PER_MOL)
        if (i + 1) % report == 0 or i + 1 == job.n_frames:
            rate = (i + 1) * args.steps_per_frame / (time.perf_counter() - t0)
            eta = (job.n_frames - i - 1) * args.steps_per_frame / rate
            log(
                f"{job.label}: frame {i + 1}/{job.n_frames}, {rate:.0f} steps/s, "
                f"E={energies[i]:.1f} kcal/mol, ETA {eta:.0f} s"
            )
    if not (np.isfinite(coords).all() and np.isfinite(forces).all() and np.isfinite(energies).all()):
        raise FloatingPointError(f"{job.label}: non-finite coordinates, forces or energies (simulation blew up)")
    return coords, forces, energies


def write_vlen_str(group: h5py.Group, name: str, values: list[str]) -> None:
    group.create_dataset(name, data=np.asarray(values, dtype=object), dtype=h5py.string_dtype())


def write_file(
    prep: PreparedProtein,
    results: dict[TrajectoryJob, tuple[np.ndarray, np.ndarray, np.ndarray]],
    args: argparse.Namespace,
    out_path: Path,
) -> None:
    """Write one protein's trajectories in the mdCATH layout, atomically (temp file, then rename)."""
    spec, topology, start_nm = prep.spec, prep.topology, prep.start_nm
    atoms = list(topology.atoms())
    n_atoms = len(atoms)
    n_res = topology.getNumResidues()
    ca = np.array([a.index for a in atoms if a.name == "CA"], dtype=np.int64)
    start_a = (start_nm * 10.0).astype(np.float32)
    created = datetime.date.today().isoformat()
    note = (
        f"NOT mdCATH: demo data generated by cameo_eqx tools/make_demo_data.py on {created} with OpenMM "
        f"{openmm.__version__}, {' + '.join(FORCEFIELD_FILES)} (OBC implicit solvent), NoCutoff, HBonds "
        f"constraints, LangevinMiddle {args.timestep_fs:g} fs, friction {args.friction:g}/ps; {spec.origin}; "
        f"frames every {args.steps_per_frame * args.timestep_fs / 1000:g} ps; mdCATH-like layout for demos and tests"
    )
    tmp = out_path.with_name(out_path.name + ".tmp")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["layout"] = LAYOUT
            f.attrs["note"] = note
            f.attrs["generator"] = "tools/make_demo_data.py"
            f.attrs["openmm_version"] = openmm.__version__
            f.attrs["forcefield"] = " + ".join(FORCEFIELD_FILES)
            f.attrs["created"] = created
            g = f.create_group(spec.name)
            g.attrs["numProteinAtoms"] = np.int64(n_atoms)
            g.attrs["numResidues"] = np.int64(n_res)
            g.attrs["numChains"] = np.int64(topology.getNumChains())
            g.create_dataset("z", data=np.array([a.element.atomic_number for a in atoms], np.int64))
            write_vlen_str(g, "element", [a.element.symbol for a in atoms])
            write_vlen_str(g, "resname", [a.residue.name for a in atoms])
            g.create_dataset("resid", data=np.array([a.residue.index + 1 for a in atoms], np.int64))
            write_vlen_str(g, "chain", ["0"] * n_atoms)
            g.create_dataset("pdb", data=pdb_text(topology, start_nm), dtype=h5py.string_dtype())
            g.create_dataset(
                "pdbProteinAtoms", data=protein_atoms_text(topology, start_nm), dtype=h5py.string_dtype()
            )
            g.create_dataset("hbond_constraints_ground_truth", data=prep.constraints)
            for job, (coords, forces, energies) in results.items():
                if job.protein != spec.name:
                    continue
                tg = g.create_group(f"{job.temperature}/{job.replica}")
                tg.attrs["numFrames"] = np.int64(job.n_frames)
                tg.attrs["seed"] = np.int64(job.seed)
                tg.attrs["timestep_fs"] = float(args.timestep_fs)
                tg.attrs["steps_per_frame"] = np.int64(args.steps_per_frame)
                tg.attrs["equilibration_steps"] = np.int64(args.equilibration_steps)
                tg.create_dataset("coords", data=coords).attrs["unit"] = "Angstrom"
                tg.create_dataset("forces", data=forces).attrs["unit"] = "kcal/mol/Angstrom"
                tg.create_dataset("box", data=np.zeros((3, 3), np.float32)).attrs["unit"] = "nm"
                for key, val in analysis(coords, start_a, ca).items():
                    tg.create_dataset(key, data=val).attrs["unit"] = "nm"
                dssp = tg.create_dataset(
                    "dssp",
                    data=np.full((job.n_frames, n_res), b"-", dtype=object),
                    dtype=h5py.string_dtype(encoding="ascii"),
                )
                dssp.attrs["note"] = "placeholder: DSSP was not computed for the demo data"
                tg.create_dataset("potential_energy", data=energies).attrs["unit"] = "kcal/mol"
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log(f"{spec.name}: wrote {out_path} ({out_path.stat().st_size / 1e6:.2f} MB)")


def run_all(
    jobs: list[TrajectoryJob], prepared: dict[str, PreparedProtein], args: argparse.Namespace
) -> dict[TrajectoryJob, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Run every trajectory, `args.workers` at a time in spawned processes (or inline for one worker)."""
    results: dict[TrajectoryJob, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    if args.workers == 1:
        for job in jobs:
            p = prepared[job.protein]
            results[job] = run_trajectory(p.system_xml, p.start_nm, job, args)
        return results
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        futures = {
            pool.submit(
                run_trajectory, prepared[j.protein].system_xml, prepared[j.protein].start_nm, j, args
            ): j
            for j in jobs
        }
        try:
            for k, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                results[futures[fut]] = fut.result()
                log(f"finished {futures[fut].label} ({k}/{len(jobs)} trajectories)")
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    # Keep the job order (temperature, replica) in the file regardless of completion order.
    return {j: results[j] for j in jobs}


def validate(path: Path, args: argparse.Namespace) -> None:
    """Read a generated file back and check it; re-evaluate stored forces with OpenMM. Raises on failure."""
    forcefield = make_forcefield()
    with h5py.File(path, "r") as f:
        if f.attrs.get("layout") != LAYOUT:
            raise ValueError(f"{path}: root attr layout={f.attrs.get('layout')!r}, expected {LAYOUT!r}")
        if "NOT mdCATH" not in str(f.attrs.get("note", "")):
            raise ValueError(f"{path}: root attr note must say 'NOT mdCATH'")
        (name,) = list(f.keys())
        g = f[name]
        n = int(g.attrs["numProteinAtoms"])
        z = g["z"][:]
        pdb = app.PDBFile(io.StringIO(g["pdbProteinAtoms"].asstr()[()]))
        if pdb.topology.getNumAtoms() != n or len(z) != n:
            raise ValueError(f"{path}: {name}: atom counts disagree (attr {n}, z {len(z)}, pdb {pdb.topology.getNumAtoms()})")
        system = make_system(pdb.topology, forcefield)
        pairs = g["hbond_constraints_ground_truth"][:]
        n_h = int((z == 1).sum())
        if not np.array_equal(pairs, constraint_pairs(system)) or len(pairs) != n_h:
            raise ValueError(f"{path}: {name}: constraints ({len(pairs)}) differ from OpenMM's or from #H ({n_h})")
        integrator = openmm.VerletIntegrator(1.0 * unit.femtosecond)
        platform, props = make_platform(args.platform, args.threads)
        context = openmm.Context(system, integrator, platform, props)
        worst = 0.0
        for t in sorted(k for k in g.keys() if k.isdigit()):
            for r in sorted(g[t].keys()):
                tg = g[t][r]
                where = f"{path}: {name}/{t}/{r}"
                nf = int(tg.attrs["numFrames"])
                c, fo, e = tg["coords"], tg["forces"], tg["potential_energy"][:]
                if c.shape != (nf, n, 3) or fo.shape != (nf, n, 3) or e.shape != (nf,):
                    raise ValueError(f"{where}: shapes {c.shape} {fo.shape} {e.shape}, expected ({nf}, {n}, 3)")
                if c.dtype != np.float32 or fo.dtype != np.float32:
                    raise ValueError(f"{where}: coords/forces must be float32")
                if c.attrs["unit"] != "Angstrom" or fo.attrs["unit"] != "kcal/mol/Angstrom":
                    raise ValueError(f"{where}: wrong unit attrs")
                cc, ff = c[:], fo[:]
                if not (np.isfinite(cc).all() and np.isfinite(ff).all() and np.isfinite(e).all()):
                    raise ValueError(f"{where}: non-finite values")
                rms = float(np.sqrt((ff.astype(np.float64) ** 2).sum(-1).mean()))
                if not 5.0 < rms < 100.0:
                    raise ValueError(f"{where}: per-atom force RMS {rms:.1f} kcal/mol/A outside (5, 100)")
                d = np.linalg.norm(cc[:, pairs[:, 0]] - cc[:, pairs[:, 1]], axis=-1)
                for i in (0, nf - 1):
                    context.setPositions(cc[i].astype(np.float64) * unit.angstrom)
                    st = context.getState(getForces=True, getEnergy=True)
                    f_ref = st.getForces(asNumpy=True).value_in_unit(FORCE_UNIT)
                    e_ref = st.getPotentialEnergy().value_in_unit(KCAL_PER_MOL)
                    err = float(np.abs(f_ref - ff[i]).max())
                    worst = max(worst, err)
                    if err > args.force_tolerance or abs(e_ref - e[i]) > 0.05:
                        raise ValueError(
                            f"{where}: frame {i}: OpenMM re-evaluation differs: max |dF| {err:.3g} kcal/mol/A "
                            f"(tol {args.force_tolerance}), dE {e_ref - e[i]:.3g} kcal/mol"
                        )
                log(
                    f"{name}/{t}/{r}: {nf} frames OK, |F| RMS {rms:.1f} kcal/mol/A, E {e.mean():.1f}"
                    f"+-{e.std():.1f} kcal/mol, X-H length std {d.std(0).max():.1e} A, "
                    f"CA-RMSD to start max {tg['rmsd'][:].max() * 10:.2f} A"
                )
        log(f"{path}: valid; max |F_stored - F_openmm| over checked frames {worst:.2e} kcal/mol/A")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output-dir", type=Path, default=ROOT / "data" / "demo", help="where the .h5 files go")
    p.add_argument("--proteins", nargs="+", default=["villin", "cln025"], choices=["villin", "cln025"])
    p.add_argument("--temperatures", nargs="+", type=int, default=[320, 348, 413], help="K; group keys")
    p.add_argument("--replicas", type=int, default=2, help="replicas per temperature (different seeds)")
    p.add_argument("--villin-frames", type=int, default=35, help="frames per villin trajectory")
    p.add_argument("--cln025-frames", type=int, default=80, help="frames per cln025 trajectory")
    p.add_argument("--steps-per-frame", type=int, default=500, help="MD steps between saved frames")
    p.add_argument("--equilibration-steps", type=int, default=5000, help="steps discarded per replica")
    p.add_argument("--minimize-iterations", type=int, default=2000)
    p.add_argument("--timestep-fs", type=float, default=2.0)
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps")
    p.add_argument("--seed", type=int, default=2024, help="base seed; replica seeds derive from it")
    p.add_argument("--workers", type=int, default=2, help="trajectories run in parallel (processes)")
    p.add_argument(
        "--threads", type=int, default=1,
        help="CPU-platform threads per worker; 1 makes runs bitwise repeatable on one machine (more threads do not)",
    )
    p.add_argument("--platform", default="CPU", help="OpenMM platform (Reference is bitwise reproducible, slow)")
    p.add_argument("--cln025-pdb", type=Path, default=ROOT / "data" / "demo" / "structures" / "cln025.pdb")
    p.add_argument("--force-tolerance", type=float, default=0.02, help="kcal/mol/A, for the re-evaluation check")
    p.add_argument("--no-validate", action="store_true", help="skip reading the files back")
    p.add_argument("--validate-only", action="store_true", help="only validate existing files")
    args = p.parse_args(argv)
    if args.workers < 1 or args.threads < 1 or args.replicas < 1 or args.villin_frames < 1 or args.cln025_frames < 1 or args.steps_per_frame < 1:
        p.error("replicas, frame counts and steps per frame must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    specs = {
        "villin": ProteinSpec(
            "villin", villin_pdb(), "villin HP35 (N68H) from openmm/app/data/test.pdb, water and ions removed",
            args.villin_frames,
        ),
        "cln025": ProteinSpec(
            "cln025", args.cln025_pdb, "chignolin CLN025 with ACE/NME caps from data/demo/structures/cln025.pdb "
            "(aggforce test suite, Apache-2.0)", args.cln025_frames,
        ),
    }
    t0 = time.perf_counter()
    outputs = {k: args.output_dir / f"mdcath_dataset_{specs[k].name}.h5" for k in args.proteins}
    if not args.validate_only:
        prepared = {k: prepare_protein(specs[k], args) for k in args.proteins}
        jobs = [
            TrajectoryJob(k, t, r, args.seed + 1000 * ti + 10 * r + 1, specs[k].n_frames)
            for k in args.proteins
            for ti, t in enumerate(args.temperatures)
            for r in range(args.replicas)
        ]
        # Longest first (most atoms x frames), for a balanced pool.
        order = sorted(
            jobs, key=lambda j: -len(prepared[j.protein].start_nm) * j.n_frames
        )
        results = run_all(order, prepared, args)
        results = {j: results[j] for j in jobs}
        for k in args.proteins:
            write_file(prepared[k], results, args, outputs[k])
        log(f"generated in {time.perf_counter() - t0:.0f} s")
    if not args.no_validate:
        for k in args.proteins:
            validate(outputs[k], args)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
