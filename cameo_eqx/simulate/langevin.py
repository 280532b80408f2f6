"""Langevin dynamics (BAOAB) of any `AbstractEnergyModel` in JAX, many replicas at once.

Units are LAMMPS `real`: Å, fs, g/mol, kcal/mol, K. An acceleration is force / mass ·
`ACCELERATION` ((kcal/mol/Å)/(g/mol) → Å/fs²), a thermal velocity variance kT / m · `ACCELERATION`.

One BAOAB step (Leimkuhler & Matthews 2013), with c₁ = exp(-γ Δt), c₂ = √(1 - c₁²):

    B: v += Δt/2 · F/m      A: x += Δt/2 · v      O: v = c₁ v + c₂ √(kT/m) ξ
    A: x += Δt/2 · v        (forces at the new x)  B: v += Δt/2 · F/m

γ = 0 gives velocity Verlet (energy conserving). Forces come from the model on a `Batch` that has
exactly the training layout: radius-graph edges at the model's cutoff (from the device-side neighbour
list, `neighborlist.py`), the protein's bonds/angles/dihedrals, non-bonded pairs (i < j, sequence
separation ≥ pair_min_sep, `pair_sep` from the topology). Replicas share the topology and are vmapped.

Steps run in compiled `lax.scan` chunks; between chunks the host checks the neighbour-list overflow
flag (then it grows the capacity and redoes the chunk from its start: no pair is ever dropped), the
blow-up guard (NaN, or a bond longer than `max_bond_length`: stops with the step and the reason), writes
frames and a checkpoint (`simulate`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import h5py
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..config import to_dict
from ..data.store import PreparedDataset
from ..energy import AbstractEnergyModel, graph_cutoff
from ..fileio import check_free_space, reporting_no_space, write_atomic
from ..graph import Batch, make_batch, single_frame_batch
from ..modules.forcefield import check_species
from ..modules.forcefield import load as load_force_field
from ..precision import DEFAULT_PRECISION, MatmulPrecision, check_model_precision
from ..precision import check_name as check_precision_name
from ..precision import matmul_precision as precision_context
from ..priors.prior import Prior
from ..priors.teacher import TeacherPotential
from ..topology import SEPARATION_NONBONDED, CGTopology
from ..units import KB_KCAL_PER_MOL_K
from . import neighborlist as nbl
from .config import SimulateConfig

ACCELERATION: float = 4.184e-4
"""(kcal/mol/Å) / (g/mol) in Å/fs²."""

TRAJECTORY_FORMAT = "cameo_eqx.trajectory/1"
TRAJECTORY_FILE = "trajectory.h5"
CHECKPOINT_FILE = "checkpoint.npz"

REASONS = {0: "ok", 1: "non-finite energy or positions", 2: "bond longer than max_bond_length"}


class BlowUpError(RuntimeError):
    """The simulation stopped: a non-finite value or a stretched bond (message: replica, step, reason)."""


# ------------------------------------------------------------------------------------- the system


class System(eqx.Module):
    """The protein's static description on device: species, bonded index arrays, masses.

    Build it with `System.from_topology`.
    """

    species: Int[Array, " n"]
    segment: Int[Array, " n"]
    bonds: Int[Array, "n_bond 2"]
    angles: Int[Array, "n_angle 3"]
    dihedrals: Int[Array, "n_dih 4"]
    masses: Float[Array, " n"]
    temperature: Float[Array, ""]
    cutoff: float = eqx.field(static=True)
    pair_min_sep: int = eqx.field(static=True)

    @classmethod
    def from_topology(
        cls,
        topology: CGTopology,
        *,
        cutoff: float,
        pair_min_sep: int = 2,
        masses: str | Float[np.ndarray, " n"] = "residue",
        uniform_mass: float = 110.0,
        temperature: float = 300.0,
    ) -> "System":
        """**Arguments:** the protein's `topology`; the model's `cutoff` (Å) and `pair_min_sep`;
        `masses` = "residue" (topology residue masses), "uniform" (`uniform_mass` each) or an array
        (g/mol); the bath `temperature` (K, stored in the batch)."""
        n = topology.n_beads
        if isinstance(masses, str):
            if masses == "residue":
                m = topology.masses
            elif masses == "uniform":
                m = np.full(n, float(uniform_mass))
            else:
                raise ValueError(f"masses must be 'residue', 'uniform' or an array, got {masses!r}")
        else:
            m = np.asarray(masses, np.float64)
        if m.shape != (n,) or not np.all(np.isfinite(m)) or np.any(m <= 0):
            raise ValueError(f"bead masses must be {n} positive finite values (g/mol), got shape {m.shape}")
        return cls(
            species=jnp.asarray(topology.species, jnp.int32), segment=jnp.asarray(topology.segment, jnp.int32),
            bonds=jnp.asarray(topology.bonds, jnp.int32).reshape(-1, 2),
            angles=jnp.asarray(topology.angles, jnp.int32).reshape(-1, 3),
            dihedrals=jnp.asarray(topology.dihedrals, jnp.int32).reshape(-1, 4),
            masses=jnp.asarray(m, jnp.float32), temperature=jnp.asarray(temperature, jnp.float32),
            cutoff=float(cutoff), pair_min_sep=int(pair_min_sep),
        )  # fmt: skip

    @property
    def n_beads(self) -> int:
        return self.species.shape[0]


def system_batch(system: System, positions: Float[Array, "n 3"], nl: nbl.NeighborList) -> Batch:
    """The one-frame `Batch` a model sees (training layout; see the module docstring)."""
    n = system.n_beads
    # the pairs i < j within the cutoff, then the paired edge layout (`Batch`): pairs, reversed pairs
    n_pair = (nl.edge_slots + 1) // 2
    s, r, emask, _ = nbl.edges(nl, positions, n_pair, half=True)
    seg_s = system.segment[jnp.minimum(s, n - 1)]
    seg_r = system.segment[jnp.minimum(r, n - 1)]
    sep = jnp.where(seg_s == seg_r, r - s, SEPARATION_NONBONDED).astype(jnp.int32)
    keep = emask & (sep >= system.pair_min_sep)
    ps, pr, psep, pmask = nbl.compact(keep, (s, r, sep), n_pair, (n, n, 0))
    return make_batch(
        positions, system.species, senders=jnp.concatenate([s, r]), receivers=jnp.concatenate([r, s]),
        edge_mask=jnp.concatenate([emask, emask]), edges_paired=True,
        bonds=system.bonds, angles=system.angles, dihedrals=system.dihedrals,
        pairs=jnp.stack([ps, pr], axis=-1), pair_sep=psep, pair_mask=pmask,
        temperature=jnp.broadcast_to(system.temperature, (1,)).astype(positions.dtype),
    )  # fmt: skip


def energy_and_forces(
    model: AbstractEnergyModel, system: System, positions: Float[Array, "n 3"], nl: nbl.NeighborList
) -> tuple[Float[Array, ""], Float[Array, "n 3"]]:
    """Potential energy (kcal/mol) and forces (kcal/mol/Å) of one replica."""

    def total(x):
        b = system_batch(system, x, nl)
        return model.energy(b)[0]

    e, g = jax.value_and_grad(total)(positions)
    return e, -g


def max_bond_length(system: System, positions: Float[Array, "n 3"]) -> Float[Array, ""]:
    """Longest bonded (consecutive-bead) distance, 0 without bonds."""
    if system.bonds.shape[0] == 0:
        return jnp.zeros((), positions.dtype)
    d = positions[system.bonds[:, 1]] - positions[system.bonds[:, 0]]
    return jnp.sqrt(jnp.max(jnp.sum(d * d, axis=-1)))


# ------------------------------------------------------------------------------------ integrator


class LangevinState(eqx.Module):
    """Everything the integrator carries; arrays have a leading replica axis R except `key`, `step`."""

    positions: Float[Array, "R n 3"]
    velocities: Float[Array, "R n 3"]
    forces: Float[Array, "R n 3"]
    potential: Float[Array, " R"]
    nbrs: nbl.NeighborList
    key: PRNGKeyArray
    step: Int[Array, ""]
    bad_step: Int[Array, " R"]
    bad_reason: Int[Array, " R"]
    bad_value: Float[Array, " R"]


class BAOAB(eqx.Module):
    """The BAOAB Langevin integrator (see the module docstring).

    **Arguments:** `timestep_fs` (fs), `friction_per_ps` (1/ps), `temperature` (K: one bath, or one per
    replica, shape `(R,)`, so that one compiled run samples several temperatures at once),
    `max_bond_length` (Å, the blow-up guard). They are traced, not static: changing them does not
    recompile.
    """

    timestep_fs: Float[Array, ""]
    friction_per_ps: Float[Array, ""]
    temperature: Float[Array, ""] | Float[Array, " R"]
    max_bond_length: Float[Array, ""]

    def __init__(self, timestep_fs, friction_per_ps, temperature, max_bond_length=8.0):
        self.timestep_fs = jnp.asarray(timestep_fs, jnp.float32)
        self.friction_per_ps = jnp.asarray(friction_per_ps, jnp.float32)
        self.temperature = jnp.asarray(temperature, jnp.float32)
        self.max_bond_length = jnp.asarray(max_bond_length, jnp.float32)

    @property
    def kT(self) -> Float[Array, ""] | Float[Array, "R 1 1"]:
        """kT in kcal/mol, shaped to broadcast against `(R, n, 3)` arrays."""
        kt = KB_KCAL_PER_MOL_K * self.temperature
        return kt.reshape(kt.shape + (1, 1)) if kt.ndim else kt

    def forces(self, model, system: System, positions, nbrs):
        return jax.vmap(lambda x, nl: energy_and_forces(model, system, x, nl))(positions, nbrs)

    def step(self, model: AbstractEnergyModel, system: System, state: LangevinState) -> LangevinState:
        """One BAOAB step of every replica."""
        dt = self.timestep_fs
        inv_m = (ACCELERATION / system.masses)[None, :, None]
        c1 = jnp.exp(-self.friction_per_ps * 1e-3 * dt)
        c2 = jnp.sqrt(jnp.maximum(0.0, 1.0 - c1 * c1))  # 0 without friction: plain velocity Verlet
        v = state.velocities + 0.5 * dt * state.forces * inv_m
        x = state.positions + 0.5 * dt * v
        key, sub = jax.random.split(state.key)
        xi = jax.random.normal(sub, v.shape, v.dtype)
        v = c1 * v + c2 * jnp.sqrt(self.kT * inv_m) * xi
        x = x + 0.5 * dt * v
        nbrs = nbl.update(state.nbrs, x)
        e, f = self.forces(model, system, x, nbrs)
        v = v + 0.5 * dt * f * inv_m
        step = state.step + 1
        # blow-up guard: remember the first bad step of every replica
        bond = jax.vmap(lambda p: max_bond_length(system, p))(x)
        finite = jnp.isfinite(e) & jnp.all(jnp.isfinite(x), axis=(-2, -1))
        reason = jnp.where(~finite, 1, jnp.where(bond > self.max_bond_length, 2, 0)).astype(jnp.int32)
        new_bad = (state.bad_step < 0) & (reason > 0)
        return LangevinState(
            positions=x, velocities=v, forces=f, potential=e, nbrs=nbrs, key=key, step=step,
            bad_step=jnp.where(new_bad, step, state.bad_step),
            bad_reason=jnp.where(new_bad, reason, state.bad_reason),
            bad_value=jnp.where(new_bad, jnp.where(reason == 1, jnp.nan, bond), state.bad_value),
        )  # fmt: skip


def kinetic_energy(system: System, velocities: Float[Array, "R n 3"]) -> Float[Array, " R"]:
    """Kinetic energy of every replica in kcal/mol."""
    return 0.5 * jnp.sum(system.masses[None, :, None] * velocities**2, axis=(-2, -1)) / ACCELERATION


def _max_pairs(positions: Float[np.ndarray, "k n 3"], radius: float) -> int:
    """The largest number of ordered pairs closer than `radius` over structures `positions` (host)."""
    return max(len(nbl.brute_force_pairs(p, radius)) for p in positions)


def _host_state(positions, velocities, key, step, capacity: int, cutoff: float, skin: float,
                edge_capacity: int = 0) -> LangevinState:  # fmt: skip
    """A state whose neighbour lists, forces and energies are placeholders: `run_chunk` refreshes them
    first (so making a state compiles nothing)."""
    r, n = positions.shape[:2]
    nbrs = nbl.NeighborList(
        senders=jnp.full((r, capacity), n, jnp.int32), receivers=jnp.full((r, capacity), n, jnp.int32),
        count=jnp.zeros((r,), jnp.int32), max_count=jnp.zeros((r,), jnp.int32), reference=positions,
        overflow=jnp.zeros((r,), bool), n_builds=jnp.zeros((r,), jnp.int32),
        max_edges=jnp.zeros((r,), jnp.int32), cutoff=cutoff, skin=skin, edge_capacity=int(edge_capacity),
    )  # fmt: skip
    return LangevinState(
        positions=positions, velocities=velocities, forces=jnp.zeros_like(positions),
        potential=jnp.full((r,), jnp.nan, positions.dtype), nbrs=nbrs, key=key,
        step=jnp.asarray(step, jnp.int32), bad_step=jnp.full((r,), -1, jnp.int32),
        bad_reason=jnp.zeros((r,), jnp.int32), bad_value=jnp.zeros((r,), positions.dtype),
    )  # fmt: skip


def refresh(model, system: System, integrator: BAOAB, state: LangevinState) -> LangevinState:
    """Rebuilds the neighbour lists and recomputes forces and energies at the current positions.

    The radius graph at the cutoff does not depend on when the candidate list was built (same pairs,
    same order), so a refresh does not change the trajectory: chunking and resuming are exact.
    """
    nbrs = jax.vmap(nbl.rebuild)(state.nbrs, state.positions)
    e, f = integrator.forces(model, system, state.positions, nbrs)
    return dataclasses.replace(state, nbrs=nbrs, forces=f, potential=e)


@eqx.filter_jit
def run_chunk(model, system: System, integrator: BAOAB, state: LangevinState, n_frames: int, save_every: int):
    """Refreshes the state (`refresh`), then runs `n_frames` x `save_every` steps in one compiled nested
    `lax.scan`.

    **Returns:** `(state, (positions (F, R, n, 3), potential (F, R), kinetic (F, R)), start_potential (R,))`.
    """
    state = refresh(model, system, integrator, state)
    start_potential = state.potential

    def inner(s, _):
        return integrator.step(model, system, s), None

    def outer(s, _):
        s, _ = jax.lax.scan(inner, s, None, length=save_every)
        return s, (s.positions, s.potential, kinetic_energy(system, s.velocities))

    state, frames = jax.lax.scan(outer, state, None, length=n_frames)
    return state, frames, start_potential


# ------------------------------------------------------------------------------------- the driver


@dataclasses.dataclass
class Frames:
    """Saved frames (host arrays): `positions (T, R, n, 3)`, `potential`/`kinetic`/`temperature (T, R)`
    (kcal/mol, K), `step (T,)`, `time_ps (T,)`."""

    positions: np.ndarray
    potential: np.ndarray
    kinetic: np.ndarray
    temperature: np.ndarray
    step: np.ndarray
    time_ps: np.ndarray

    @staticmethod
    def concatenate(parts: list["Frames"]) -> "Frames":
        return Frames(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Frames)))


@dataclasses.dataclass
class RunResult:
    """What `Simulator.run` returns: the final state, the saved frames, and the guard's verdict."""

    state: LangevinState
    frames: Frames
    blowup: str | None = None
    wall_s: float = 0.0
    compile_s: float = 0.0
    n_rebuilds_for_overflow: int = 0


class Simulator:
    """Host-side driver: a model, a protein and an integrator; `init` a state, `run` it in chunks.

    **Arguments:**

    - `model`: any `AbstractEnergyModel` (a `ForceField`, a `Prior`, ...).
    - `topology`: the protein's `CGTopology`.
    - `temperature` (K), `timestep_fs` (fs), `friction_per_ps` (1/ps): the Langevin bath; `temperature`
      may be a sequence, one per replica (then `init` needs that many replicas).
    - `masses`: "residue", "uniform" (`uniform_mass` g/mol) or an array.
    - `skin` (Å), `capacity` (candidate pairs per replica; None: sized from the start structure).
    - `edge_capacity`: radius-graph slots per replica, the edges the model computes (ordered pairs
      within the cutoff; None: sized from the start structure, `edge_capacity_for`). A step with more
      pairs sets the overflow flag and `run` redoes the chunk with more slots, as for `capacity`.
    - `pair_min_sep`: non-bonded pair selection (None: the model's, else 2); `cutoff`: None: the model's.
    - `max_bond_length`: Å, the blow-up guard.
    - `matmul_precision`: precision of the model's float32 matrix products ('float32', or
      'tensorfloat32' after `cameo_eqx.precision.check_model_precision` on the first structure).
    """

    def __init__(
        self, model: AbstractEnergyModel, topology: CGTopology, *, temperature: float | Any = 300.0,
        timestep_fs: float = 2.0, friction_per_ps: float = 1.0, masses: Any = "residue",
        uniform_mass: float = 110.0, skin: float = 2.0, capacity: int | None = None,
        edge_capacity: int | None = None, pair_min_sep: int | None = None, cutoff: float | None = None,
        max_bond_length: float = 8.0, matmul_precision: MatmulPrecision = DEFAULT_PRECISION,
    ):  # fmt: skip
        if not isinstance(model, AbstractEnergyModel):
            raise TypeError(f"model must be an AbstractEnergyModel, got {type(model)}")
        check_species(model, topology.species)
        self.model = model
        self.topology = topology
        if pair_min_sep is None:
            pair_min_sep = int(model.pair_min_sep)
        self.system = System.from_topology(
            topology, cutoff=graph_cutoff(model) if cutoff is None else float(cutoff),
            pair_min_sep=pair_min_sep, masses=masses, uniform_mass=uniform_mass,
            temperature=float(np.mean(temperature)),
        )  # fmt: skip
        temps = np.asarray(temperature, np.float32)
        if temps.ndim > 1 or not np.all(temps > 0):
            raise ValueError(f"temperature must be a positive number or one per replica, got {temperature!r}")
        self.integrator = BAOAB(float(timestep_fs), float(friction_per_ps), temps, float(max_bond_length))
        self.skin = float(skin)
        self.capacity = capacity
        self.edge_capacity = edge_capacity
        self.matmul_precision = check_precision_name(matmul_precision)  # now, not at the first run
        self._precision_checked = matmul_precision == "float32"

    # --------------------------------------------------------------------------------------- state
    def capacity_for(self, positions: Float[np.ndarray, "k n 3"]) -> int:
        """Candidate-pair slots for structures `positions` (the largest pair count at cutoff + skin,
        with headroom): what `init` sizes the neighbour list with."""
        return nbl.grow_capacity(_max_pairs(positions, self.system.cutoff + self.skin))

    def edge_capacity_for(self, positions: Float[np.ndarray, "k n 3"]) -> int:
        """Radius-graph slots for structures `positions`: the largest number of ordered pairs within the
        cutoff, with 25% headroom (a folded protein's count moves by a few percent; a collapse that
        needs more slots redoes one chunk). What `init` sizes the model's graph with."""
        return nbl.grow_capacity(_max_pairs(positions, self.system.cutoff), factor=1.25)

    def grow_for(self, state: LangevinState) -> bool:
        """After an overflow in `state`, sets `capacity` and `edge_capacity` to hold every pair it saw.

        **Returns:** whether `state` had overflowed (False: nothing changed).
        """
        if not bool(jnp.any(state.nbrs.overflow)):
            return False
        need = int(jnp.max(state.nbrs.max_count))
        if need > state.nbrs.capacity:
            self.capacity = nbl.grow_capacity(need)
        need_edges = int(jnp.max(state.nbrs.max_edges))
        if need_edges > state.nbrs.edge_slots:
            self.edge_capacity = nbl.grow_capacity(need_edges)
        return True

    def init(
        self,
        positions: Float[np.ndarray, "n 3"] | Float[np.ndarray, "R n 3"],
        n_replicas: int = 1,
        seed: int = 0,
        velocities: Float[np.ndarray, "R n 3"] | None = None,
        key: Any = None,
        step: int = 0,
    ) -> LangevinState:
        """A starting state: `positions` (one structure for all replicas, or one per replica),
        Maxwell-Boltzmann velocities at the bath temperature (unless `velocities` are given).

        Forces, energies and neighbour lists are computed at the start of `run` (nothing compiles here).
        """
        x = np.asarray(positions, np.float32)
        n = self.system.n_beads
        if x.ndim == 2:
            x = np.broadcast_to(x, (n_replicas, *x.shape)).copy()
        if x.ndim != 3 or x.shape[1:] != (n, 3):
            raise ValueError(f"positions must have shape ({n}, 3) or (R, {n}, 3), got {np.shape(positions)}")
        if not np.all(np.isfinite(x)):
            raise ValueError("starting positions contain non-finite values")
        key = jax.random.PRNGKey(seed) if key is None else jnp.asarray(key)
        if velocities is None:
            key, sub = jax.random.split(key)
            if self.integrator.temperature.ndim and self.integrator.temperature.shape[0] != x.shape[0]:
                raise ValueError(f"{self.integrator.temperature.shape[0]} replica temperatures for "
                                 f"{x.shape[0]} replicas")  # fmt: skip
            sd = jnp.sqrt(self.integrator.kT * ACCELERATION / self.system.masses[None, :, None])
            velocities = sd * jax.random.normal(sub, x.shape, jnp.float32)
        if self.capacity is None:
            self.capacity = self.capacity_for(x)
        if self.edge_capacity is None:
            self.edge_capacity = self.edge_capacity_for(x)
        if not self._precision_checked:
            batch = single_frame_batch(x[0], self.topology, self.system.cutoff,
                                       pair_min_sep=self.system.pair_min_sep)  # fmt: skip
            check_model_precision(self.model, batch, self.matmul_precision, where="the starting structure")
            self._precision_checked = True
        return _host_state(jnp.asarray(x), jnp.asarray(velocities, jnp.float32), key, step, self.capacity,
                           self.system.cutoff, self.skin, self.edge_capacity)  # fmt: skip

    def with_capacity(self, state: LangevinState, capacity: int | None = None,
                      edge_capacity: int | None = None) -> LangevinState:  # fmt: skip
        """The same state with (placeholder) neighbour lists of new capacities (None: the current)."""
        if capacity is not None:
            self.capacity = int(capacity)
        if edge_capacity is not None:
            self.edge_capacity = int(edge_capacity)
        return _host_state(state.positions, state.velocities, state.key, state.step, self.capacity,
                           self.system.cutoff, self.skin, self.edge_capacity or 0)  # fmt: skip

    def kinetic_energy(self, state: LangevinState) -> np.ndarray:
        return np.asarray(kinetic_energy(self.system, state.velocities))

    def temperature_of(self, kinetic: np.ndarray) -> np.ndarray:
        """Instantaneous temperature (K) from kinetic energies (3n degrees of freedom)."""
        return 2.0 * np.asarray(kinetic) / (3 * self.system.n_beads * KB_KCAL_PER_MOL_K)

    # ----------------------------------------------------------------------------------------- run
    def run(
        self,
        state: LangevinState,
        n_frames: int,
        save_every: int,
        *,
        chunk_frames: int = 20,
        callback: Callable[[LangevinState | None, Frames], None] | None = None,
        progress: bool = False,
        keep_frames: bool = True,
        include_start: bool = False,
    ) -> RunResult:
        """Runs `n_frames` x `save_every` steps in chunks of `chunk_frames` frames.

        **Arguments:**

        - `state`: from `init` (or a previous run).
        - `n_frames`, `save_every`: frames to save and steps between them.
        - `chunk_frames`: frames per compiled chunk (one compilation per distinct chunk length).
        - `callback(state, frames)`: called after every chunk (writing, checkpointing); `state` is None
          for the last, partial chunk of a blown-up run.
        - `progress`: show a tqdm bar; `keep_frames`: collect the frames in the result;
          `include_start`: also save the starting state as a frame.

        **Returns:** a `RunResult`; `blowup` is a message when the guard stopped the run (the frames
        before the bad step are kept and passed to the callback).
        """
        from tqdm.auto import tqdm  # lazy: only for the progress bar (tqdm.auto probes for Jupyter)

        parts: list[Frames] = []
        done = 0
        n_rebuilds = 0
        blowup = None
        compile_s = 0.0
        t_start = time.perf_counter()
        bar = tqdm(total=n_frames * save_every, unit="step", disable=not progress, desc="simulate")
        try:
            while done < n_frames:
                k = min(chunk_frames, n_frames - done)
                t0 = time.perf_counter()
                with precision_context(self.matmul_precision):  # traced at this precision
                    new, out, e0 = run_chunk(self.model, self.system, self.integrator, state, k, save_every)
                jax.block_until_ready(new.positions)
                if done == 0:
                    compile_s = time.perf_counter() - t0  # compile + one chunk of work
                if self.grow_for(new):
                    state = self.with_capacity(state)
                    n_rebuilds += 1
                    continue  # redo the chunk from its start with room for every pair
                frames = self._chunk_frames(state, out, e0, k, save_every, include_start and done == 0)
                stopped = self._blown_up(new, state, frames)
                if stopped is not None:
                    frames, blowup = stopped
                    if keep_frames and len(frames.step):
                        parts.append(frames)
                    if callback is not None and len(frames.step):
                        callback(None, frames)
                    break
                state = new
                done += k
                if keep_frames:
                    parts.append(frames)
                if callback is not None:
                    callback(state, frames)
                bar.update(k * save_every)
                bar.set_postfix(T=f"{frames.temperature[-1].mean():.0f}K", E=f"{frames.potential[-1].mean():.1f}")
        finally:
            bar.close()
        return RunResult(state, _joined(parts, state), blowup, time.perf_counter() - t_start, compile_s, n_rebuilds)

    def _chunk_frames(self, state: LangevinState, out, e0, k: int, save_every: int, with_start: bool) -> Frames:
        """A chunk's saved frames after `state` (its outputs `out`), the starting frame first when `with_start`."""
        dt = float(self.integrator.timestep_fs)
        pos, pot, kin = (np.asarray(a) for a in out)
        steps = (int(state.step) + save_every * np.arange(1, k + 1)).astype(np.int64)
        if with_start:
            k0 = self.kinetic_energy(state)
            pos = np.concatenate([np.asarray(state.positions)[None], pos])
            pot = np.concatenate([np.asarray(e0)[None], pot])
            kin = np.concatenate([k0[None], kin])
            steps = np.concatenate([[int(state.step)], steps])
        return Frames(pos, pot, kin, self.temperature_of(kin), steps, steps * dt * 1e-3)

    def _blown_up(self, new: LangevinState, state: LangevinState, frames: Frames) -> tuple[Frames, str] | None:
        """When the guard stopped a replica in the chunk: the frames before its first bad step and the message."""
        bad = np.asarray(new.bad_step)
        if not np.any(bad >= 0):
            return None
        dt = float(self.integrator.timestep_fs)
        first = int(bad[bad >= 0].min())
        rep = int(np.flatnonzero(bad == first)[0])
        reason = int(np.asarray(new.bad_reason)[rep])
        value = float(np.asarray(new.bad_value)[rep])
        good = frames.step < first
        frames = Frames(*(getattr(frames, f.name)[good] for f in dataclasses.fields(Frames)))
        last = int(frames.step[-1]) if len(frames.step) else int(state.step)
        detail = f" ({value:.2f} Å > {float(self.integrator.max_bond_length):g} Å)" if reason == 2 else ""
        blowup = (f"replica {rep} blew up at step {first} (t = {first * dt * 1e-3:.3f} ps): "
                  f"{REASONS[reason]}{detail}; frames up to step {last} are kept")  # fmt: skip
        return frames, blowup


def _joined(parts: list[Frames], state: LangevinState) -> Frames:
    """The collected frames in one `Frames` (an empty one, shaped like `state`, when none)."""
    r, n = state.positions.shape[:2]
    empty = Frames(np.zeros((0, r, n, 3), np.float32), *(np.zeros((0, r)) for _ in range(3)),
                   np.zeros(0, np.int64), np.zeros(0))  # fmt: skip
    return Frames.concatenate(parts) if parts else empty


# ------------------------------------------------------------------------------ files: simulate()


def load_model(path: str | os.PathLike) -> AbstractEnergyModel:
    """A saved force field (`cameo_eqx.modules.load`), a teacher potential (`teacher.json` from
    `synthesize`) or, for .yaml/.yml/.json, a `Prior` file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}: expected a saved force field (model.eqx), a prior "
                                "file (prior.yaml from fit-priors) or a teacher (teacher.json from synthesize)")  # fmt: skip
    if path.suffix == ".json" and '"cameo_eqx.teacher/' in path.read_text()[:200]:
        return TeacherPotential.load(path)
    if path.suffix in (".yaml", ".yml", ".json"):
        return Prior.load(path)
    return load_force_field(path)


_NOT_PHYSICS = {"n_steps", "progress", "resume", "chunk_frames", "output", "neighbor_capacity"}


def _config_json(cfg: SimulateConfig) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def _physics(cfg_json: str) -> dict:
    return {k: v for k, v in json.loads(cfg_json).items() if k not in _NOT_PHYSICS}


class TrajectoryWriter:
    """Appends frames to `trajectory.h5` (extendable datasets; see `simulate` for the layout)."""

    def __init__(self, path: Path, h5: h5py.File):
        self.path, self.h5 = path, h5

    @classmethod
    def create(cls, path: Path, topology: CGTopology, n_replicas: int, masses: np.ndarray,
               start: np.ndarray, attrs: dict[str, Any]) -> "TrajectoryWriter":  # fmt: skip
        tmp = path.with_name(path.name + ".tmp")
        h5 = h5py.File(tmp, "w")
        n = topology.n_beads
        h5.create_dataset("positions", (0, n_replicas, n, 3), np.float32, maxshape=(None, n_replicas, n, 3),
                          chunks=(max(1, min(16, 4096 // max(1, n_replicas * n))), n_replicas, n, 3))  # fmt: skip
        for name in ("potential_energy", "kinetic_energy", "temperature"):
            h5.create_dataset(name, (0, n_replicas), np.float32, maxshape=(None, n_replicas), chunks=(256, n_replicas))
        h5.create_dataset("step", (0,), np.int64, maxshape=(None,), chunks=(1024,))
        h5.create_dataset("time_ps", (0,), np.float64, maxshape=(None,), chunks=(1024,))
        t = h5.create_group("topology")
        t["species"] = np.asarray(topology.species, np.int32)
        t["resname"] = np.asarray([s.encode() for s in topology.resname], dtype="S4")
        t["resid"] = np.asarray(topology.resid, np.int32)
        t["chain"] = np.asarray([s.encode() for s in topology.chain], dtype="S8")
        t["segment"] = np.asarray(topology.segment, np.int32)
        t["masses"] = np.asarray(masses, np.float64)
        h5["start_positions"] = np.asarray(start, np.float32)
        h5.attrs["format"] = TRAJECTORY_FORMAT
        for k, v in attrs.items():
            h5.attrs[k] = v
        h5.attrs["status"] = "running"
        h5.flush()
        h5.close()
        os.replace(tmp, path)
        return cls(path, h5py.File(path, "a"))

    @classmethod
    def reopen(cls, path: Path, n_frames: int) -> "TrajectoryWriter":
        """Opens an existing trajectory and truncates it to the checkpoint's `n_frames`."""
        try:
            h5 = h5py.File(path, "a")
        except OSError as e:
            raise OSError(f"cannot reopen {path} to resume ({e}); rerun with --no-resume to start over") from e
        have = h5["step"].shape[0]
        if have < n_frames:
            h5.close()
            raise ValueError(f"{path} has {have} frames but the checkpoint expects {n_frames}; "
                             "rerun with --no-resume to start over")  # fmt: skip
        for name in ("positions", "potential_energy", "kinetic_energy", "temperature", "step", "time_ps"):
            h5[name].resize(n_frames, axis=0)
        h5.attrs["status"] = "running"
        return cls(path, h5)

    @property
    def n_frames(self) -> int:
        return int(self.h5["step"].shape[0])

    def append(self, frames: Frames) -> None:
        k = len(frames.step)
        t = self.n_frames
        for name, arr in (("positions", frames.positions), ("potential_energy", frames.potential),
                          ("kinetic_energy", frames.kinetic), ("temperature", frames.temperature),
                          ("step", frames.step), ("time_ps", frames.time_ps)):  # fmt: skip
            ds = self.h5[name]
            ds.resize(t + k, axis=0)
            ds[t:] = arr
        self.h5.flush()

    def close(self, **attrs: Any) -> None:
        for k, v in attrs.items():
            self.h5.attrs[k] = v
        self.h5.close()


def _save_checkpoint(path: Path, state: LangevinState, n_frames: int, sim: Simulator, cfg_json: str) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        with reporting_no_space(path, "the trajectory up to the previous checkpoint is kept; free some space "
                                      "and rerun the same command to resume"):  # fmt: skip
            np.savez(tmp, positions=np.asarray(state.positions), velocities=np.asarray(state.velocities),
                     key=np.asarray(state.key),
                     step=int(state.step), n_frames=n_frames, capacity=sim.capacity,
                     edge_capacity=sim.edge_capacity or 0, config=cfg_json)  # fmt: skip
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written (or zero-byte) temporary is left behind
        raise


def _finished(path: Path, n_frames: int) -> bool:
    """Whether `path` is a trajectory that ended with status "done" holding exactly `n_frames` frames."""
    try:
        with h5py.File(path, "r") as h:
            return h.attrs.get("status") == "done" and int(h["step"].shape[0]) == n_frames
    except (OSError, KeyError):
        return False


def simulate(cfg: SimulateConfig) -> Path:
    """The `simulate` command: Langevin dynamics of `cfg.model` from a prepared-dataset structure.

    Writes `<output>/trajectory.h5`:

    ```
    positions        (T, R, n, 3) float32   Å; frame 0 is the start, then every save_every steps
    potential_energy (T, R), kinetic_energy (T, R) kcal/mol; temperature (T, R) K (instantaneous, 3n dof)
    step (T,), time_ps (T,)
    start_positions  (n, 3); topology/ species resname resid chain segment masses
    attrs: format, config (JSON), model, dataset, protein, frame, timestep_fs, temperature, status
           (running | done | blown_up), message, wall_s, steps_per_s, ns_per_day, compile_s
    ```
    plus `<output>/checkpoint.npz` after every chunk (resume: rerun the same command) and
    `<output>/simulate_config.json`.

    **Returns:** the trajectory path. **Raises:** `BlowUpError` (after saving the good frames).
    """
    model = load_model(cfg.model)
    begin = _load_start(cfg)
    sim = Simulator(model, begin.topology, temperature=cfg.temperature, timestep_fs=cfg.timestep_fs,
                    friction_per_ps=cfg.friction_per_ps, masses=cfg.masses, uniform_mass=cfg.uniform_mass,
                    skin=cfg.skin, capacity=cfg.neighbor_capacity, pair_min_sep=cfg.pair_min_sep,
                    max_bond_length=cfg.max_bond_length, matmul_precision=cfg.matmul_precision)  # fmt: skip
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    traj_path, ckpt_path = out / TRAJECTORY_FILE, out / CHECKPOINT_FILE
    cfg_json = _config_json(cfg)
    total = cfg.n_steps // cfg.save_every + 1

    if cfg.resume and ckpt_path.exists() and traj_path.exists():
        resumed = _resume_run(cfg, sim, out, cfg_json, total)
        if resumed is None:
            return traj_path
        writer, state = resumed
    else:
        writer, state = _start_run(cfg, sim, out, cfg_json, begin)
    on_chunk = _chunk_writer(writer, sim, traj_path, ckpt_path, cfg_json)
    fresh = writer.n_frames == 0  # the first chunk also saves the starting frame
    remaining = total - writer.n_frames
    try:
        result = sim.run(state, remaining - fresh, cfg.save_every, chunk_frames=cfg.chunk_frames,
                         callback=on_chunk, progress=cfg.progress, keep_frames=False, include_start=fresh)  # fmt: skip
    except BaseException:
        writer.close(status="interrupted", message="interrupted; rerun the same command to resume")
        raise
    _close_run(cfg, sim, writer, result, (remaining - fresh) * cfg.save_every, traj_path)
    return traj_path


@dataclasses.dataclass(frozen=True)
class _Start:
    """The starting structure of a run and where it came from."""

    positions: np.ndarray
    topology: CGTopology
    dataset_path: str
    protein: str


def _load_start(cfg: SimulateConfig) -> _Start:
    """The configured frame of the configured protein (default: the first) of the prepared dataset."""
    with PreparedDataset(cfg.dataset) as ds:
        if not ds.names:
            raise ValueError(f"{ds.path}: no complete proteins")
        protein = cfg.protein or ds.names[0]
        if protein not in ds.names:
            raise KeyError(f"protein {protein!r} not in {ds.path}; it has {ds.names}")
        rec = ds.record(protein)
        if not 0 <= cfg.frame < rec.n_frames:
            raise IndexError(f"{ds.path}: protein {protein!r} has {rec.n_frames} frames; frame {cfg.frame} "
                             "is out of range")  # fmt: skip
        start = rec.frames(np.asarray([cfg.frame]))[0][0]
        return _Start(start, rec.topology, str(ds.path), protein)


def _resume_run(cfg: SimulateConfig, sim: Simulator, out: Path, cfg_json: str, total: int):
    """Continues from the checkpoint: (reopened writer, state), or None when the run is already complete."""
    traj_path, ckpt_path = out / TRAJECTORY_FILE, out / CHECKPOINT_FILE
    with np.load(ckpt_path) as ck:
        # options added since the checkpoint was written take their defaults there
        old = {**_physics(_config_json(SimulateConfig())), **_physics(str(ck["config"]))}
        new = _physics(cfg_json)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise ValueError(f"{ckpt_path} was written with a different config ({', '.join(diff)} differ); "
                             "rerun with --no-resume to start over or choose another --output")  # fmt: skip
        n_done = int(ck["n_frames"])
        sim.capacity = int(ck["capacity"]) if cfg.neighbor_capacity is None else cfg.neighbor_capacity
        if int(ck.get("edge_capacity", 0)) > 0:  # the same graph size: a resumed run continues bit for bit
            sim.edge_capacity = int(ck["edge_capacity"])
        state = sim.init(ck["positions"], velocities=ck["velocities"], key=ck["key"], step=int(ck["step"]))
    if n_done > total:
        raise ValueError(f"{ckpt_path} holds {n_done} frames, more than n_steps/save_every + 1 = {total}")
    if n_done == total and _finished(traj_path, total):
        # a finished run is left as it is (its timing attributes describe the run that made it)
        print(f"{traj_path} is complete ({total} frames); nothing to do")
        return None
    # the config (saved only once the resume is accepted) is the one that continues the run
    write_atomic(out / "simulate_config.json", json.dumps(json.loads(cfg_json), indent=1))
    return TrajectoryWriter.reopen(traj_path, n_done), state


def _start_run(cfg: SimulateConfig, sim: Simulator, out: Path, cfg_json: str, begin: _Start):
    """A new run (old trajectory and checkpoint removed): (new writer, starting state)."""
    traj_path, ckpt_path = out / TRAJECTORY_FILE, out / CHECKPOINT_FILE
    write_atomic(out / "simulate_config.json", json.dumps(json.loads(cfg_json), indent=1))
    for p in (traj_path, ckpt_path):
        if p.exists():
            p.unlink()
    state = sim.init(begin.positions, n_replicas=cfg.n_replicas, seed=cfg.seed)
    attrs = {"config": cfg_json, "model": str(cfg.model), "dataset": begin.dataset_path, "protein": begin.protein,
             "frame": cfg.frame, "timestep_fs": cfg.timestep_fs, "temperature": cfg.temperature,
             "friction_per_ps": cfg.friction_per_ps, "cutoff": sim.system.cutoff,
             "pair_min_sep": sim.system.pair_min_sep, "message": ""}  # fmt: skip
    writer = TrajectoryWriter.create(traj_path, begin.topology, cfg.n_replicas, np.asarray(sim.system.masses),
                                     np.asarray(begin.positions), attrs)  # fmt: skip
    return writer, state


def _chunk_writer(writer: TrajectoryWriter, sim: Simulator, traj_path: Path, ckpt_path: Path, cfg_json: str):
    """The run's chunk callback: appends the frames, then (after a good chunk) moves the checkpoint on."""

    def on_chunk(st, frames):
        # HDF5 can crash the process when the disk fills mid-write: check first, then report any ENOSPC
        # that still gets through by name (the frames already written stay readable)
        hint = "the frames written so far are kept; free some space and rerun the same command to resume"
        check_free_space(traj_path, 2 * np.asarray(frames.positions).nbytes + (1 << 20), hint)
        with reporting_no_space(traj_path, hint):
            writer.append(frames)
        if st is not None:  # a good chunk: the checkpoint moves on
            _save_checkpoint(ckpt_path, st, writer.n_frames, sim, cfg_json)

    return on_chunk


def _close_run(cfg: SimulateConfig, sim: Simulator, writer: TrajectoryWriter, result: RunResult, steps: int,
               traj_path: Path) -> None:  # fmt: skip
    """Closes the trajectory with its status and timing; raises `BlowUpError` for a blown-up run."""
    rate = steps / result.wall_s if result.wall_s > 0 and steps else 0.0
    timing = {"wall_s": result.wall_s, "compile_s": result.compile_s, "steps_per_s": rate,
              "ns_per_day": rate * cfg.timestep_fs * 1e-6 * 86400.0,
              "neighbor_capacity": int(sim.capacity or 0), "edge_capacity": int(sim.edge_capacity or 0)}  # fmt: skip
    if result.blowup:
        writer.close(status="blown_up", message=result.blowup, **timing)
        raise BlowUpError(f"{traj_path}: {result.blowup}")
    writer.close(status="done", message="", **timing)
