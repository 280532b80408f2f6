"""The `synthesize` command: simulate the teacher potential and write a normal prepared dataset.

For every sequence (random ones drawn with natural amino-acid frequencies, plus the proteins of
given prepared datasets started from their real CA structures) the teacher is simulated with the
project's `Simulator` (BAOAB Langevin), all temperatures x replicas in one compiled run (one replica
per temperature and seed). After an equilibration, a frame is saved every `save_every_ps`; the
teacher's forces at the saved frames are the noise-free targets `F_true`, and the training targets are
`F = F_true + σ ξ` with ξ standard normal per component (σ = `noise_sigma`, kcal/mol/Å). The dataset is a
normal prepared dataset (`data.store`), readable by every command, with two additions per protein:
`F_true` (T, N, 3) and the group attribute `stats` holding the true noise floor σ² and the measured
integrated autocorrelation time of the radius of gyration (so the frame spacing can be judged against
it). The teacher's parameters are stored in the file's `teacher` attribute (JSON) and beside the
dataset as `teacher.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Float, Int

from ..config import ConfigError, check, to_dict
from ..data.testdata import compact_chain
from ..data.store import PreparedDataset, ProteinRecord, finalise, open_for_writing, write_record
from ..fileio import write_atomic
from ..priors.teacher import TeacherPotential
from ..simulate.analysis import radius_of_gyration
from ..simulate.langevin import BlowUpError, Simulator, refresh
from ..simulate.neighborlist import grow_capacity
from ..topology import AMINO_ACIDS, SPECIES_MAPS, CGTopology

NATURAL_FREQUENCIES: dict[str, float] = {
    "ALA": 8.25, "ARG": 5.53, "ASN": 4.06, "ASP": 5.45, "CYS": 1.37, "GLN": 3.93, "GLU": 6.75,
    "GLY": 7.07, "HIS": 2.27, "ILE": 5.96, "LEU": 9.66, "LYS": 5.84, "MET": 2.42, "PHE": 3.86,
    "PRO": 4.70, "SER": 6.56, "THR": 5.34, "TRP": 1.08, "TYR": 2.92, "VAL": 6.87,
}  # fmt: skip
"""Amino-acid composition (%) of UniProtKB/Swiss-Prot, used to draw random sequences."""


@dataclasses.dataclass(frozen=True)
class SynthesizeConfig:
    """Simulate the teacher potential (a transferable CG model with known answer) for random sequences
    and given structures, and write a prepared dataset with forces F = F_true + noise and F_true."""

    output: Path = Path("synthetic")
    """Output directory; the dataset goes to <output>/dataset.h5 (atomically), the teacher to teacher.json."""
    sequences: tuple[str, ...] = ()
    """Explicit sequences to simulate (one-letter codes, e.g. MKILVAGF), started from compact chains."""
    n_random: int = 8
    """Random sequences to simulate (besides `sequences` and `structures`)."""
    min_length: int = 20
    """Shortest random sequence (beads)."""
    max_length: int = 40
    """Longest random sequence (beads); longer chains need far longer runs to converge (80-mers do not in
    250 ps)."""
    structures: tuple[Path, ...] = ()
    """Prepared datasets whose proteins are simulated too, from their first frame's CA structure."""
    proteins: tuple[str, ...] | None = None
    """Only these proteins of `structures` (None: all)."""
    temperatures: tuple[float, ...] = (320.0, 348.0, 379.0, 413.0, 450.0)
    """Temperatures (K), as in mdCATH."""
    n_replicas: int = 4
    """Independent replicas per temperature."""
    frames: int = 1000
    """Frames per protein (split evenly over temperatures x replicas)."""
    save_every_ps: float = 2.0
    """Time between saved frames (ps); compare with the Rg autocorrelation time in the protein's stats."""
    equilibrate_ps: float = 100.0
    """Discarded equilibration (ps) before the first saved frame."""
    timestep_fs: float = 4.0
    """Integration time step (fs)."""
    friction_per_ps: float = 1.0
    """Langevin friction (1/ps)."""
    noise_sigma: float = 0.0
    """Gaussian noise added to every force component (kcal/mol/Å); ~20 mimics the basic map on real data."""
    teacher: Path | None = None
    """Teacher parameters (JSON from a previous run); None: the documented default teacher."""
    seed: int = 0
    """Seed of the sequences, the dynamics and the noise."""
    progress: bool = True
    """Show progress."""

    def __post_init__(self) -> None:
        """Range checks (an invalid config cannot be constructed); a `ConfigError` names `synthesize.key`."""
        where = "synthesize"
        check(where, [
            ("n_random", self.n_random >= 0, ">= 0", self.n_random),
            ("min_length", 4 <= self.min_length <= self.max_length, "in [4, max_length]", self.min_length),
            ("temperatures", len(self.temperatures) > 0 and min(self.temperatures) > 0, "positive, at least one",
             self.temperatures),
            ("n_replicas", self.n_replicas >= 1, ">= 1", self.n_replicas),
            ("frames", self.frames >= len(self.temperatures) * self.n_replicas, ">= temperatures x replicas",
             self.frames),
            ("save_every_ps", self.save_every_ps * 1e3 >= self.timestep_fs, ">= one time step", self.save_every_ps),
            ("equilibrate_ps", self.equilibrate_ps >= 0, ">= 0", self.equilibrate_ps),
            ("timestep_fs", 0 < self.timestep_fs <= 10, "in (0, 10]", self.timestep_fs),
            ("noise_sigma", self.noise_sigma >= 0, ">= 0", self.noise_sigma),
        ] + [(f"sequences[{k}]", len(q) >= 4 and set(q.upper()) <= set(ONE_LETTER),
              ">= 4 one-letter amino-acid codes", q) for k, q in enumerate(self.sequences)])  # fmt: skip
        if self.n_random == 0 and not self.structures and not self.sequences:
            raise ConfigError.at(where, None, "nothing to simulate (n_random is 0, no sequences, no structures)")


# ----------------------------------------------------------------------------------- sequences


ONE_LETTER: dict[str, str] = dict(zip("ARNDCQEGHILKMFPSTWYV", AMINO_ACIDS))
"""One-letter code → residue name."""


def random_sequence(n: int, rng: np.random.Generator) -> tuple[str, ...]:
    """A random sequence of `n` residues drawn with `NATURAL_FREQUENCIES`."""
    p = np.asarray([NATURAL_FREQUENCIES[a] for a in AMINO_ACIDS])
    return tuple(AMINO_ACIDS[i] for i in rng.choice(20, size=n, p=p / p.sum()))


def chain_topology(resnames: Sequence[str]) -> CGTopology:
    """The topology of one unbroken chain (aa20 species)."""
    n = len(resnames)
    table = SPECIES_MAPS["aa20"]
    return CGTopology(tuple(resnames), np.arange(1, n + 1, dtype=np.int32), ("A",) * n,
                      np.zeros(n, np.int32), np.asarray([table[r] for r in resnames], np.int32))  # fmt: skip


def extended_chain(n: int, rng: np.random.Generator, *, bond: float = 3.8, persistence: float = 2.0) -> np.ndarray:
    """An open CA chain: a persistent random walk (each step's direction is the last one plus noise of
    size 1/`persistence`), centred; Rg grows ~ n^0.6 like an unfolded protein."""
    x = np.zeros((n, 3))
    d = rng.normal(size=3)
    for i in range(1, n):
        d = d / np.linalg.norm(d) + rng.normal(size=3) / persistence
        x[i] = x[i - 1] + bond * d / np.linalg.norm(d)
    return x - x.mean(axis=0)


def full_capacity(n: int, up_to: int = 64) -> int | None:
    """A neighbour-list capacity holding every pair of an `n`-bead chain when n ≤ `up_to` (then every
    protein of that length compiles once, whatever its shape), else None (sized from the structure).
    Pass it as both the Simulator's `capacity` and `edge_capacity` for that guarantee."""
    return grow_capacity(n * (n - 1), factor=1.0) if n <= up_to else None


def compact_radius(n: int) -> float:
    """Rg (Å) of a compact globular protein of n residues, 2.2 n^0.38 (Skolnick et al. 1997 scaling)."""
    return 2.2 * n**0.38


# ------------------------------------------------------------------------------------ sampling


@dataclasses.dataclass
class Samples:
    """Teacher samples of one protein: positions `(F, R, n, 3)`, energies `(F, R)`, per-replica
    temperatures `(R,)` and replica indices within their temperature `(R,)`."""

    positions: np.ndarray
    potential: np.ndarray
    temperature: np.ndarray
    replica: np.ndarray
    wall_s: float


def sample(
    model, topology: CGTopology, start: Float[np.ndarray, "n 3"], *, temperatures: Sequence[float],
    n_replicas: int, n_frames: int, save_every: int, equilibrate: int, timestep_fs: float = 4.0,
    friction_per_ps: float = 1.0, seed: int = 0, progress: bool = False,
) -> Samples:  # fmt: skip
    """Langevin samples of `model` at every temperature x replica, in one compiled run.

    **Arguments:** the model and protein; `start` structure (every replica starts there);
    `temperatures` (K); `n_replicas` per temperature; `n_frames` saved per replica every
    `save_every` steps after `equilibrate` steps; integrator settings; `seed`.

    **Returns:** `Samples`. **Raises:** `BlowUpError` if the dynamics blow up.
    """
    temps = np.repeat(np.asarray(temperatures, np.float32), n_replicas)
    full = full_capacity(topology.n_beads)
    sim = Simulator(model, topology, temperature=temps, timestep_fs=timestep_fs, friction_per_ps=friction_per_ps,
                    capacity=full, edge_capacity=full)  # fmt: skip
    state = sim.init(start, n_replicas=len(temps), seed=seed)
    t0 = time.perf_counter()
    if equilibrate > 0:
        k = max(1, equilibrate // save_every)
        res = sim.run(state, k, max(1, equilibrate // k), chunk_frames=k, keep_frames=False)
        if res.blowup:
            raise BlowUpError(f"teacher equilibration: {res.blowup}")
        state = res.state
    res = sim.run(state, n_frames, save_every, chunk_frames=min(n_frames, 50), progress=progress)
    if res.blowup:
        raise BlowUpError(f"teacher sampling: {res.blowup}")
    return Samples(res.frames.positions, res.frames.potential, temps,
                   np.tile(np.arange(n_replicas, dtype=np.int32), len(temperatures)),
                   time.perf_counter() - t0)  # fmt: skip


def model_forces(
    model, topology: CGTopology, positions: Float[np.ndarray, "k n 3"], chunk: int = 256
) -> tuple[Float[np.ndarray, "k n 3"], Float[np.ndarray, " k"]]:
    """Forces (kcal/mol/Å) and energies (kcal/mol) of `model` at many structures of one protein, through
    the Simulator's own batch layout (the radius graph, bonded terms and pairs a model sees in MD)."""
    positions = np.asarray(positions, np.float32)
    k = len(positions)
    full = full_capacity(topology.n_beads)
    sim = Simulator(model, topology, capacity=full, edge_capacity=full)
    if full is None:  # sized from a sample of all the structures, not from the first chunk alone
        sample = positions[:: max(1, k // 64)]
        sim.capacity, sim.edge_capacity = sim.capacity_for(sample), sim.edge_capacity_for(sample)
    go = eqx.filter_jit(refresh)
    forces, energies = np.empty_like(positions), np.empty(k, np.float32)
    for a in range(0, k, chunk):
        x = positions[a : a + chunk]
        m = len(x)
        pad = np.concatenate([x, np.repeat(x[-1:], chunk - m, axis=0)]) if m < chunk else x
        while True:
            st = go(model, sim.system, sim.integrator, sim.init(pad, velocities=np.zeros_like(pad)))
            if not sim.grow_for(st):
                break
        forces[a : a + m] = np.asarray(st.forces)[:m]
        energies[a : a + m] = np.asarray(st.potential)[:m]
    return forces, energies


def integrated_autocorrelation_time(x: Float[np.ndarray, "T R"], dt: float) -> float:
    """Integrated autocorrelation time (same unit as `dt`) of a series with replicas, averaged over
    replicas' autocorrelation functions; summed up to the first negative value (Sokal's window would
    be longer; this is a lower estimate for short series)."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    t = x.shape[0]
    if t < 4 or not np.any(x.var(axis=0) > 0):
        return float("nan")
    f = np.fft.rfft(x, n=2 * t, axis=0)
    acf = np.fft.irfft(f * np.conj(f), axis=0)[:t].mean(axis=1)
    acf = acf / acf[0]
    neg = np.flatnonzero(acf <= 0)
    m = int(neg[0]) if len(neg) else t
    return float(dt * (0.5 + np.sum(acf[1:m])))


# --------------------------------------------------------------------------------------- the command


def _structures(cfg: SynthesizeConfig) -> list[tuple[str, CGTopology, np.ndarray]]:
    out = []
    for path in cfg.structures:
        with PreparedDataset(path) as ds:
            if ds.species_map_name != "aa20":
                raise ValueError(f"{ds.path}: species map {ds.species_map_name!r}; the teacher needs aa20")
            names = ds.names if cfg.proteins is None else [n for n in ds.names if n in cfg.proteins]
            for n in names:
                rec = ds.record(n)
                out.append((n, rec.topology, rec.frames(np.asarray([0]))[0][0]))
    if cfg.proteins is not None:
        missing = sorted(set(cfg.proteins) - {n for n, _, _ in out})
        if missing:
            raise KeyError(f"synthesize: proteins {missing} not found in {[str(p) for p in cfg.structures]}")
    return out


def synthesize(cfg: SynthesizeConfig) -> Path:
    """Runs the `synthesize` command (see the module docstring); returns the dataset path."""
    teacher = TeacherPotential.load(cfg.teacher) if cfg.teacher else TeacherPotential.default()
    rng = np.random.default_rng(cfg.seed)
    jobs = _structures(cfg)
    for k, q in enumerate(cfg.sequences):
        topo = chain_topology([ONE_LETTER[c] for c in q.upper()])
        jobs.append((f"seq{k:03d}_{len(q)}", topo, compact_chain(len(q), rng)))
    for k in range(cfg.n_random):
        seq = random_sequence(int(rng.integers(cfg.min_length, cfg.max_length + 1)), rng)
        topo = chain_topology(seq)
        jobs.append((f"rand{k:03d}_{len(seq)}", topo, compact_chain(len(seq), rng)))
    n_traj = len(cfg.temperatures) * cfg.n_replicas
    per_traj = math.ceil(cfg.frames / n_traj)
    save_every = max(1, int(round(cfg.save_every_ps * 1e3 / cfg.timestep_fs)))
    equil = int(round(cfg.equilibrate_ps * 1e3 / cfg.timestep_fs))

    config = to_dict(cfg)
    h5, tmp, final = open_for_writing(cfg.output, species_map_name="aa20", species_map=SPECIES_MAPS["aa20"],
                                      config=config)  # fmt: skip
    h5.attrs["teacher"] = json.dumps(teacher.to_config())
    write_atomic(Path(cfg.output) / "teacher.json", json.dumps(teacher.to_config(), indent=1))
    try:
        for k, (name, topo, start) in enumerate(jobs):
            if name in h5 and h5[name].attrs.get("complete", False):
                continue  # resumed run: this protein is done
            s = sample(teacher, topo, start, temperatures=cfg.temperatures, n_replicas=cfg.n_replicas,
                       n_frames=per_traj, save_every=save_every, equilibrate=equil, timestep_fs=cfg.timestep_fs,
                       friction_per_ps=cfg.friction_per_ps, seed=cfg.seed + 1000 * k, progress=cfg.progress)  # fmt: skip
            rec, stats = _record(name, topo, s, teacher, cfg, rng)
            write_record(h5, rec, frame=np.tile(np.arange(per_traj, dtype=np.int32), n_traj))
            if cfg.progress:
                print(f"synthesize: {name} ({topo.n_beads} beads) {rec.n_frames} frames in {s.wall_s:.0f} s; "
                      f"Rg {stats['rg_mean_by_temperature']} Å, τ_Rg {stats['rg_autocorrelation_ps']:.1f} ps "
                      f"(frames every {cfg.save_every_ps:g} ps)", flush=True)  # fmt: skip
        finalise(h5, tmp, final, keep=[j[0] for j in jobs])
    except BaseException:
        if h5.id.valid:
            h5.close()
        raise
    return final


def _record(name, topo, s: Samples, teacher, cfg: SynthesizeConfig, rng) -> tuple[ProteinRecord, dict]:
    """The protein's record in source order (temperature, replica, frame) and its stats."""
    x = np.swapaxes(s.positions, 0, 1)  # (R, F, n, 3)
    r, f = x.shape[:2]
    flat = x.reshape(r * f, *x.shape[2:])
    f_true, _ = model_forces(teacher, topo, flat)
    noise = cfg.noise_sigma * rng.standard_normal(f_true.shape).astype(np.float32)
    rg = radius_of_gyration(s.positions)  # (F, R)
    dt = cfg.save_every_ps
    temps = sorted(set(s.temperature.tolist()))
    stats = {
        "n_frames": int(r * f), "source": "teacher", "noise_sigma": cfg.noise_sigma,
        "noise_floor": cfg.noise_sigma**2, "noise_floor_true": cfg.noise_sigma**2,
        "rg_autocorrelation_ps": integrated_autocorrelation_time(rg, dt),
        "rg_mean_by_temperature": {f"{t:g}": round(float(rg[:, s.temperature == t].mean()), 2) for t in temps},
        "mapped_force_msq": float(np.mean((f_true + noise).astype(np.float64) ** 2)),
        "true_force_msq": float(np.mean(f_true.astype(np.float64) ** 2)),
        "sampling_wall_s": s.wall_s,
    }  # fmt: skip
    rec = ProteinRecord(name=name, topology=topo, positions=flat, forces=f_true + noise,
                        temperature=np.repeat(s.temperature, f), replica=np.repeat(s.replica, f),
                        attrs={"source_file": "teacher", "domain": name, "n_atoms": topo.n_beads,
                               "stats": json.dumps(stats)},
                        forces_true=f_true)  # fmt: skip
    return rec, stats
