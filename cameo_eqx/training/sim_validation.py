"""Simulation-based validation during training (the `SimValidation` callback).

Force errors cannot rank coarse-grained models (the mapped-force noise is larger than the signal), so the
trainer can also judge a model by what it simulates. Every `sim_validation.every` epochs and at the end of
every stage, `SimValidation.evaluate` runs short batched Langevin (BAOAB) simulations of a few proteins,
replicas started from evenly spaced reference frames of that protein and temperature in the prepared
dataset, and compares the saved frames with the reference frames of the same protein and temperature:
Jensen-Shannon divergences (base 2, 0 identical, 1 disjoint) of Rg, RMSD and Q (to the protein's first
frame), of the bonded distributions (CA-CA bonds, angles, dihedrals), of the end-to-end distance and the
contact map (`simulate.compare.compare_ensembles`), and the RMS deviation of F(Rg) in kT.

`sim_score` = the mean of the JS divergences of Rg, RMSD, Q, bonds, angles and dihedrals (lower is
better), per protein and temperature, then averaged. A blown-up simulation (a stretched bond or a
non-finite value) scores 1, the worst, on every divergence; it is logged, never raised. The metrics are
merged into the validation metrics (TensorBoard `val/sim_*`, `metrics.jsonl`), and `select_by:
simulation` makes best.eqx the model with the lowest `sim_score`.

Only process 0 simulates (the model is replicated; the score only decides what process 0 writes). The
training layer uses `simulate` here (simulate imports nothing of training).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from ..config import ConfigError
from ..data.store import PreparedDataset
from ..simulate.analysis import fraction_native_contacts, histogram, js_divergence, kabsch_rmsd, native_contacts
from ..simulate.compare import compare_ensembles
from ..simulate.langevin import BlowUpError, Simulator
from .callbacks import Callback
from .config import SimValidationConfig, TrainConfig

log = logging.getLogger(__name__)

SCORE_KEYS = ("rg", "rmsd", "q", "bond", "angle", "dihedral")
"""JS divergences averaged into `sim_score`."""
JS_KEYS = SCORE_KEYS + ("end_to_end", "contact_map")
"""JS divergences logged (`sim_js_<key>`)."""
TEMPERATURE_TOLERANCE = 1.0
"""K; a requested temperature uses the reference frames within this distance."""


@dataclasses.dataclass
class Target:
    """One protein at one temperature: where its replicas start and what they are compared with."""

    protein: str
    temperature: float
    start: Float[np.ndarray, "R n 3"]
    reference: Float[np.ndarray, "m n 3"]


@dataclasses.dataclass
class ProteinTargets:
    """Everything simulated of one protein (all its temperatures in one batched run)."""

    protein: str
    topology: Any
    native: Float[np.ndarray, "n 3"]
    contacts: tuple[Int[np.ndarray, "c 2"], Float[np.ndarray, " c"]]
    targets: list[Target]


def _evenly(n: int, k: int) -> np.ndarray:
    """`k` evenly spaced indices of `range(n)` (all of them when `k >= n`)."""
    if k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def _names(dataset: Any) -> list[str]:
    return list(dataset.names) if isinstance(dataset, PreparedDataset) else [r.name for r in dataset]


def _record(dataset: Any, name: str) -> Any:
    if isinstance(dataset, PreparedDataset):
        return dataset.record(name)
    return next(r for r in dataset if r.name == name)


def choose_proteins(cfg: TrainConfig, names: list[str], val_proteins: list[str]) -> list[str]:
    """The proteins to simulate: `sim_validation.proteins` (checked against the dataset), else the
    validation split's proteins when the split holds out whole proteins, else every protein; at most
    `max_proteins`, evenly chosen in name order.

    **Raises:** `ConfigError` naming unknown proteins.
    """
    sv = cfg.sim_validation
    if sv.proteins is not None:
        unknown = [p for p in sv.proteins if p not in names]
        if unknown:
            raise ConfigError(f"train.sim_validation.proteins: {unknown} not in dataset {cfg.data.dataset} "
                              f"(it has {sorted(names)})")  # fmt: skip
        chosen = list(dict.fromkeys(sv.proteins))
    elif cfg.data.split_by == "protein" and val_proteins:
        chosen = sorted(val_proteins)
    else:
        chosen = sorted(names)
    if sv.max_proteins is not None and len(chosen) > sv.max_proteins:
        chosen = [chosen[i] for i in _evenly(len(chosen), sv.max_proteins)]
    return chosen


def prepare_targets(cfg: TrainConfig, dataset: Any, val_proteins: list[str]) -> list[ProteinTargets]:
    """Reads the start and reference frames of every chosen protein and temperature (once, at fit start).

    **Arguments:**

    - `cfg`: the training config (its `sim_validation`, `data.temperatures`, `data.split_by`).
    - `dataset`: a `PreparedDataset` or a list of `ProteinRecord`s.
    - `val_proteins`: the proteins with validation frames.

    **Returns:** one `ProteinTargets` per protein with at least one usable temperature.
    **Raises:** `ConfigError` when no protein has reference frames at any requested temperature.
    """
    sv = cfg.sim_validation
    out: list[ProteinTargets] = []
    missing: list[str] = []
    for name in choose_proteins(cfg, _names(dataset), val_proteins):  # only the chosen records are opened
        rec = _record(dataset, name)
        temps = np.asarray(rec.temperature, np.float64)
        have = np.unique(temps)
        if cfg.data.temperatures is not None:
            allowed = np.asarray(cfg.data.temperatures, np.float64)
            have = have[np.min(np.abs(have[:, None] - allowed[None]), axis=1) <= TEMPERATURE_TOLERANCE]
        if len(have) == 0:
            missing.append(f"{name}: no frames at the training temperatures")
            continue
        wanted = [float(have.min())] if sv.temperatures is None else [float(t) for t in sv.temperatures]
        targets = []
        for t in wanted:
            near = have[np.argmin(np.abs(have - t))]
            if abs(near - t) > TEMPERATURE_TOLERANCE:
                missing.append(f"{name}: no frames at {t:g} K (has {have.tolist()})")
                continue
            idx = np.flatnonzero(np.abs(temps - near) <= 1e-3)
            start = rec.frames(idx[_evenly(len(idx), sv.n_replicas)])[0]
            if len(start) < sv.n_replicas:  # fewer frames than replicas: reuse them (the noise differs)
                start = start[np.arange(sv.n_replicas) % len(start)]
            ref = rec.frames(idx[_evenly(len(idx), sv.max_reference_frames)])[0]
            targets.append(Target(name, float(t), np.asarray(start, np.float32), np.asarray(ref, np.float32)))
        if not targets:
            continue
        native = np.asarray(rec.frames(np.asarray([0]))[0][0], np.float64)
        contacts = native_contacts(native, 8.0, 3, rec.topology.segment)
        out.append(ProteinTargets(name, rec.topology, native, contacts, targets))
    for m in missing:
        log.warning("sim_validation: skipping %s", m)
    if not out:
        raise ConfigError("train.sim_validation: no protein has reference frames at the requested temperatures "
                          f"({'; '.join(missing) or 'no proteins'}); set sim_validation.temperatures or proteins")
    return out


def score_target(
    x: Float[np.ndarray, "k n 3"], target: Target, pt: ProteinTargets, bins: int = 40
) -> dict[str, float]:
    """JS divergences of simulated structures `x` against a target's reference frames, and `score`.

    **Returns:** `{"js_<key>" for JS_KEYS, "rg_dF_kT", "score"}`; `score` is the mean of the finite
    divergences in `SCORE_KEYS` (1 when none is finite).
    """
    topo = pt.topology
    ref = np.asarray(target.reference, np.float64)
    x = np.asarray(x, np.float64)
    cmp = compare_ensembles(x, ref, bonds=np.asarray(topo.bonds).reshape(-1, 2),
                            angles=np.asarray(topo.angles).reshape(-1, 3),
                            dihedrals=np.asarray(topo.dihedrals).reshape(-1, 4), bins=bins)  # fmt: skip
    js = dict(cmp["js"])
    r_x, r_r = kabsch_rmsd(x, pt.native), kabsch_rmsd(ref, pt.native)
    r_edges = np.linspace(0.0, max(r_x.max(), r_r.max()) + 1e-6, bins + 1)
    js["rmsd"] = js_divergence(histogram(r_x, r_edges), histogram(r_r, r_edges))
    q_x = fraction_native_contacts(x, *pt.contacts)
    q_r = fraction_native_contacts(ref, *pt.contacts)
    q_edges = np.linspace(-1e-6, 1.0 + 1e-6, bins + 1)
    js["q"] = js_divergence(histogram(q_x, q_edges), histogram(q_r, q_edges))
    out = {f"js_{k}": float(js.get(k, math.nan)) for k in JS_KEYS}
    out["rg_dF_kT"] = float(cmp["rg_profile"]["rms_dF_kT"])
    vals = [js[k] for k in SCORE_KEYS if k in js and math.isfinite(js[k])]
    out["score"] = float(np.mean(vals)) if vals else 1.0
    return out


def worst_score() -> dict[str, float]:
    """What a blown-up simulation scores: every divergence 1 (disjoint), no F(Rg) deviation."""
    return {**{f"js_{k}": 1.0 for k in JS_KEYS}, "rg_dF_kT": math.nan, "score": 1.0}


def summarize(results: dict[tuple[str, float], dict[str, float]], blowups: dict[str, str]) -> dict[str, Any]:
    """Flat validation metrics from per-(protein, temperature) scores.

    **Returns:** `sim_score` and `sim_js_<key>` (means over every protein and temperature),
    `sim_rg_dF_kT` (mean of the finite values), `sim_blowups` (proteins blown up), per protein
    `sim_score/<protein>` and `sim_js_<key>/<protein>` (means over its temperatures), and
    `sim_blowup_messages` (protein → message; not a scalar, JSON only).
    """

    def mean(vals):
        v = [x for x in vals if math.isfinite(x)]
        return float(np.mean(v)) if v else math.nan

    rows = list(results.values())
    out: dict[str, Any] = {"sim_score": mean(r["score"] for r in rows)}
    for k in JS_KEYS:
        out[f"sim_js_{k}"] = mean(r[f"js_{k}"] for r in rows)
    out["sim_rg_dF_kT"] = mean(r["rg_dF_kT"] for r in rows)
    out["sim_blowups"] = float(len(blowups))
    for p in dict.fromkeys(p for p, _ in results):
        mine = [r for (q, _), r in results.items() if q == p]
        out[f"sim_score/{p}"] = mean(r["score"] for r in mine)
        for k in SCORE_KEYS:
            out[f"sim_js_{k}/{p}"] = mean(r[f"js_{k}"] for r in mine)
    if blowups:
        out["sim_blowup_messages"] = dict(blowups)
    return out


class SimValidation(Callback):
    """Simulation-based validation (see the module docstring); the trainer calls `evaluate`.

    **Arguments:**

    - `cfg`: the training config (its `sim_validation` section).
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.sv: SimValidationConfig = cfg.sim_validation
        self.proteins: list[ProteinTargets] | None = None
        self.capacity: dict[str, int] = {}
        self.edge_capacity: dict[str, int] = {}

    def due(self, epoch: int, stage_end: bool) -> bool:
        """Whether the epoch that just ended (1-based within its stage) is simulated."""
        return stage_end or epoch % self.sv.every == 0

    def on_fit_start(self, trainer: Any) -> None:
        if self.proteins is None and trainer.is_main:
            val = [p for p, idx in trainer.dm.split.val.items() if len(idx)]
            self.proteins = prepare_targets(self.cfg, trainer.dm.dataset, val)
            desc = ", ".join(f"{p.protein} at {'/'.join(f'{t.temperature:g}' for t in p.targets)} K"
                             for p in self.proteins)  # fmt: skip
            print(f"sim validation: {desc}; {self.sv.n_replicas} replicas x {self.sv.n_steps} steps of "
                  f"{self.sv.timestep_fs:g} fs every {self.sv.every} epochs", flush=True)  # fmt: skip

    def simulate(self, model: Any, pt: ProteinTargets) -> tuple[np.ndarray | None, str | None]:
        """Runs every temperature of one protein in one batch.

        **Returns:** `(positions (F, R_total, n, 3) or None, blow-up message or None)`.
        """
        sv = self.sv
        temps = np.repeat([t.temperature for t in pt.targets], sv.n_replicas).astype(np.float32)
        start = np.concatenate([t.start for t in pt.targets])
        try:
            sim = Simulator(model, pt.topology, temperature=temps, timestep_fs=sv.timestep_fs,
                            friction_per_ps=sv.friction_per_ps, capacity=self.capacity.get(pt.protein),
                            edge_capacity=self.edge_capacity.get(pt.protein))  # fmt: skip
            state = sim.init(start, seed=self.cfg.seed)
            res = sim.run(state, sv.n_frames, sv.save_every, chunk_frames=min(sv.n_frames, 50))
        except BlowUpError as e:
            return None, str(e)
        if sim.capacity is not None:  # the same shapes next time: no recompilation
            self.capacity[pt.protein] = int(sim.capacity)
            self.edge_capacity[pt.protein] = int(sim.edge_capacity)
        if res.blowup:
            return None, res.blowup
        x = np.asarray(res.frames.positions)
        if not np.all(np.isfinite(x)):
            return None, "non-finite positions in the saved frames"
        return x, None

    def evaluate(self, trainer: Any, model: Any) -> dict[str, Any]:
        """Simulates every target with `model` and scores it (`summarize`); {} on other processes."""
        if not trainer.is_main:
            return {}
        if self.proteins is None:
            self.on_fit_start(trainer)
        t0 = time.perf_counter()
        results: dict[tuple[str, float], dict[str, float]] = {}
        blowups: dict[str, str] = {}
        sv = self.sv
        for pt in self.proteins:
            x, msg = self.simulate(model, pt)
            if msg is not None:
                blowups[pt.protein] = msg
                where = f"stage {trainer.stage_name!r} epoch {trainer.epoch} (global step {trainer.global_step})"
                text = f"sim validation: {pt.protein} blew up at {where}: {msg}; scored as the worst (JS 1)"
                log.warning(text)
                print(text, flush=True)
            for k, t in enumerate(pt.targets):
                if x is None:
                    results[(pt.protein, t.temperature)] = worst_score()
                    continue
                mine = x[:, k * sv.n_replicas : (k + 1) * sv.n_replicas]
                mine = mine[min(int(round(sv.discard * len(mine))), len(mine) - 1) :]
                results[(pt.protein, t.temperature)] = score_target(mine.reshape(-1, *mine.shape[2:]), t, pt, sv.bins)
        out = summarize(results, blowups)
        out["sim_wall_s"] = time.perf_counter() - t0
        return out
