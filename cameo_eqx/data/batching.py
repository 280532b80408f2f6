"""Splits, capacity buckets, epoch planning and the prefetching batch loader.

From a prepared dataset to packed `Batch`es (see `cameo_eqx.graph` for the batch layout):

1. `split_frames` selects frames (optionally by temperature) and splits them into train and
   validation: by protein (whole proteins held out: transferability), by (temperature, replica)
   trajectory, by time block (contiguous blocks with a gap), or by frame (leaks: for comparison).
2. `choose_buckets` derives a few `Capacity` buckets from the dataset: beads and bonded terms per
   frame are exact (topology); radius-graph edges and non-bonded pairs are estimated from a few
   sampled frames per (protein, temperature) and recorded in the returned `BucketPlan`. Make one
   plan on the whole dataset and give it to the train and validation loaders: they share buckets,
   hence compiled steps.
3. `EpochPlanner.plan_epoch(seed, epoch)` shuffles every selected frame and packs them greedily
   (first fit over a few open batches) under the bucket limits. Every selected frame appears
   exactly once per epoch; the plan is a pure function of (seed, epoch).
4. `BatchLoader` reads each step's frames grouped by protein (one sorted h5py read per protein per
   step), builds the frame graphs (matscipy) and packs them in a background thread, optionally
   with a leading device axis and sharded across processes.

Overflow policy. The planner fills a batch up to the bucket's capacity divided by `1 + margin`
using the estimates; the real sizes are only known once a frame is read. A step whose real sizes
exceed its bucket is packed into the smallest bucket that holds it (each size class has an
"overflow" bucket with `1 + overflow` times the edges and pairs), counted in `EpochStats.promoted`.
Nothing is dropped or truncated: if no bucket holds the step, a `CapacityError` names the frames
and sizes. (In a multi-process run a promotion changes that step's shapes on one process only;
the default margins make it rare, and the stats count it.)

Shuffling. `shuffle="frames"` is a uniform permutation of all selected frames (random h5py reads,
one call per protein per step). `shuffle="blocks"` trades randomness for read locality: each
protein's frames are cut into blocks of `block_frames` consecutive frames (match the HDF5 chunk
length), blocks are permuted, and frames are permuted inside windows of `window_blocks`
consecutive blocks, so nearby steps read the same chunks.
"""

from __future__ import annotations

import array
import dataclasses
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jaxtyping import Int

from ..fileio import write_atomic
from ..graph import Batch, Capacity, FrameGraph, frame_graph, pack, stack_batches
from ..topology import AMINO_ACIDS, CGTopology
from .store import PreparedDataset, ProteinRecord

log = logging.getLogger(__name__)

__all__ = [
    "BatchLoader",
    "BucketClass",
    "BucketPlan",
    "CapacityError",
    "EpochPlan",
    "EpochPlanner",
    "EpochStats",
    "SPLITS",
    "SizeEstimate",
    "Split",
    "Step",
    "choose_buckets",
    "select_frames",
    "split_frames",
]

Source = PreparedDataset | Sequence[ProteinRecord]
TEMPERATURE_TOL = 0.5  # K; frames whose temperature is within this of a requested one are selected


class CapacityError(ValueError):
    """A frame or step does not fit any planned capacity bucket."""


def _records(source: Source) -> list[ProteinRecord]:
    if isinstance(source, PreparedDataset):
        return [source.record(n) for n in source.names]
    recs = list(source)
    names = [r.name for r in recs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate protein names among the records: {dup}")
    return recs


# --------------------------------------------------------------------------------------------------
# splits


@dataclasses.dataclass(frozen=True)
class Split:
    """Train / validation frame indices per protein name (sorted, unique)."""

    train: dict[str, Int[np.ndarray, " k"]]
    val: dict[str, Int[np.ndarray, " k"]]
    by: str
    seed: int
    dropped: dict[str, Int[np.ndarray, " k"]] = dataclasses.field(default_factory=dict)
    """Frames in neither set: the gaps between training and validation blocks."""

    @property
    def n_train(self) -> int:
        return int(sum(len(v) for v in self.train.values()))

    @property
    def n_val(self) -> int:
        return int(sum(len(v) for v in self.val.values()))


def select_frames(
    source: Source, temperatures: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """All frames of every protein, or those at the given temperatures (K, within 0.5 K).

    **Arguments:**

    - `source`: a `PreparedDataset` or a sequence of `ProteinRecord`s.
    - `temperatures`: keep only frames simulated at one of these temperatures.

    **Returns:** protein name → sorted frame indices (proteins with no selected frame are left out).
    """
    out = {}
    for rec in _records(source):
        idx = np.arange(rec.n_frames, dtype=np.int64)
        if temperatures is not None:
            t = np.asarray(rec.temperature, np.float64)
            if len(t) != rec.n_frames:
                raise ValueError(
                    f"protein {rec.name}: temperature has {len(t)} entries for "
                    f"{rec.n_frames} frames"
                )
            keep = np.zeros(rec.n_frames, bool)
            for want in temperatures:
                keep |= np.abs(t - float(want)) <= TEMPERATURE_TOL
            idx = idx[keep]
        if len(idx):
            out[rec.name] = idx
    if not out:
        raise ValueError(f"no frames selected (temperatures={temperatures})")
    return out


SPLITS = ("protein", "trajectory", "time_block", "frame")
"""The `split_frames` modes, most to least strict."""


def subsample_frames(frames: dict[str, np.ndarray], cap: int | None) -> dict[str, np.ndarray]:
    """At most `cap` frames in total (None: all), evenly spaced within every protein, each protein
    keeping a share proportional to its frames (at least one). Used for the validation set of training
    (`max_val_frames`) and the frames `evaluate` reads (`max_frames`)."""
    total = sum(len(v) for v in frames.values())
    if cap is None or total <= cap:
        return frames
    out = {}
    for n, idx in frames.items():
        k = max(1, int(round(cap * len(idx) / total)))
        pos = np.unique(np.linspace(0, len(idx) - 1, k).round().astype(np.int64))
        out[n] = idx[pos]
    return out


def _trajectories(rec: ProteinRecord, idx: np.ndarray) -> list[np.ndarray]:
    """The selected frames `idx` of one protein grouped by (temperature, replica), each group in stored
    (time) order."""
    t = np.round(np.asarray(rec.temperature, np.float64)[idx], 3)
    r = np.asarray(rec.replica, np.int64)[idx]
    keys = sorted(set(zip(t.tolist(), r.tolist())))
    return [idx[(t == kt) & (r == kr)] for kt, kr in keys]


def _time_blocks(traj: np.ndarray, val_fraction: float, n_blocks: int, gap: int, rng: np.random.Generator):
    """One trajectory cut into `n_blocks` contiguous blocks; `round(val_fraction · n_blocks)` random blocks
    (at least one when val_fraction > 0, at most all but one) are validation; training frames within `gap`
    positions of a validation frame are dropped. **Returns:** `(train, val)` frame indices."""
    m = len(traj)
    b = max(1, min(n_blocks, m))
    block = np.arange(m) * b // m  # block id of every position, contiguous and balanced
    k = round(val_fraction * b)
    if val_fraction > 0 and b >= 2:
        k = min(max(k, 1), b - 1)
    held = np.isin(block, rng.permutation(b)[:k])
    if not held.any():
        return traj, traj[:0]
    pos = np.arange(m)
    vpos = pos[held]
    # distance (in positions) from every frame to the nearest validation frame
    j = np.clip(np.searchsorted(vpos, pos), 1, len(vpos)) - 1
    near = np.minimum(np.abs(pos - vpos[j]), np.abs(pos - vpos[np.minimum(j + 1, len(vpos) - 1)]))
    keep = ~held & (near > gap)
    return traj[keep], traj[held]


def split_frames(
    source: Source,
    by: Literal["protein", "trajectory", "time_block", "frame"] = "protein",
    val_fraction: float = 0.1,
    seed: int = 0,
    *,
    temperatures: Sequence[float] | None = None,
    gap: int = 5,
    n_blocks: int = 10,
) -> Split:
    """Splits the selected frames into train and validation sets, deterministically by `seed`.

    **Arguments:**

    - `source`: a `PreparedDataset` or a sequence of `ProteinRecord`s.
    - `by`:
      - `"protein"` holds out whole proteins (`round(val_fraction * n_proteins)`, at least one when
        `val_fraction > 0` and there are two or more proteins): tests transferability.
      - `"trajectory"` holds out whole (temperature, replica) trajectories of every protein
        (`round(val_fraction * n)`, at least one, at most all but one); a protein with a single trajectory
        falls back, with a warning, to the time-block split.
      - `"time_block"` cuts every trajectory into `n_blocks` contiguous blocks and holds out whole blocks;
        training frames within `gap` frames of a validation frame are dropped (used by neither side).
      - `"frame"` holds out `round(val_fraction * n)` random frames of every protein. Validation frames
        then sit next to training frames of the same trajectory (correlated): for comparison only.
    - `val_fraction`: fraction held out, in [0, 1).
    - `seed`: the random seed.
    - `temperatures`: select only frames at these temperatures (K) first.
    - `gap`: frames dropped on the training side of every train/validation boundary ("time_block", and
      "trajectory"'s fallback); distances count stored frames of one trajectory, which are in time order.
    - `n_blocks`: blocks per trajectory for "time_block" (fewer when a trajectory has fewer frames).

    **Returns:** a `Split`; train and validation are disjoint and, except the frames in `Split.dropped`,
    together cover the selection.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if by not in SPLITS:
        raise ValueError(f"split by must be one of {SPLITS}, got {by!r}")
    if gap < 0 or n_blocks < 1:
        raise ValueError(f"split gap must be >= 0 and n_blocks >= 1, got gap {gap}, n_blocks {n_blocks}")
    sel = select_frames(source, temperatures)
    names = sorted(sel)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    train: dict[str, np.ndarray] = {}
    val: dict[str, np.ndarray] = {}
    dropped: dict[str, np.ndarray] = {}

    def put(name, tr, va):
        tr, va = np.sort(np.asarray(tr, np.int64)), np.sort(np.asarray(va, np.int64))
        drop = np.setdiff1d(sel[name], np.concatenate([tr, va]))
        for d, v in ((train, tr), (val, va), (dropped, drop)):
            if len(v):
                d[name] = v

    if by == "protein":
        n_val = round(val_fraction * len(names))
        if val_fraction > 0 and len(names) >= 2:
            n_val = min(max(n_val, 1), len(names) - 1)
        held = set(rng.permutation(len(names))[:n_val].tolist())
        for k, n in enumerate(names):
            (val if k in held else train)[n] = sel[n]
    elif by == "frame":
        for n in names:
            idx = sel[n]
            k = round(val_fraction * len(idx))
            pick = np.zeros(len(idx), bool)
            pick[rng.permutation(len(idx))[:k]] = True
            put(n, idx[~pick], idx[pick])
    else:
        recs = {r.name: r for r in _records(source)}
        for n in names:
            trajs = _trajectories(recs[n], sel[n])
            if by == "trajectory" and len(trajs) >= 2:
                k = round(val_fraction * len(trajs))
                if val_fraction > 0:
                    k = min(max(k, 1), len(trajs) - 1)
                held = set(rng.permutation(len(trajs))[:k].tolist())
                put(n, np.concatenate([t for i, t in enumerate(trajs) if i not in held] or [sel[n][:0]]),
                    np.concatenate([t for i, t in enumerate(trajs) if i in held] or [sel[n][:0]]))  # fmt: skip
                continue
            if by == "trajectory" and val_fraction > 0:
                log.warning("split by trajectory: protein %s has a single (temperature, replica) trajectory; "
                            "splitting it into time blocks instead", n)  # fmt: skip
            parts = [_time_blocks(t, val_fraction, n_blocks, gap, rng) for t in trajs]
            put(n, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    n_drop, n_sel = sum(len(v) for v in dropped.values()), sum(len(v) for v in sel.values())
    if n_drop and not train:
        raise ValueError(f"split by {by} leaves no training frames: the gaps of split_gap {gap} frames around the "
                         f"validation blocks cover every trajectory (the shortest has "
                         f"{min(len(t) for n in names for t in _trajectories(recs[n], sel[n]))} frames); use a "
                         "smaller split_gap, fewer split_blocks, or split_by trajectory")  # fmt: skip
    if n_drop > 0.2 * n_sel:
        log.warning("split by %s drops %d of %d frames in the gaps between training and validation blocks: "
                    "the trajectories are short for split_gap %d and split_blocks %d (use fewer blocks, a "
                    "smaller gap, or split_by trajectory)", by, n_drop, n_sel, gap, n_blocks)  # fmt: skip
    return Split(train=train, val=val, by=by, seed=seed, dropped=dropped)


def _check_selection(recs: Mapping[str, ProteinRecord], frames: Mapping[str, Any]):
    out = {}
    for name, idx in frames.items():
        if name not in recs:
            raise KeyError(f"frame selection names protein {name!r}, which is not in the dataset")
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) == 0:
            continue
        t = recs[name].n_frames
        if idx.min() < 0 or idx.max() >= t:
            bad = int(idx[(idx < 0) | (idx >= t)][0])
            raise IndexError(f"protein {name}: frame index {bad} out of range [0, {t})")
        u = np.unique(idx)
        if len(u) != len(idx):
            raise ValueError(f"protein {name}: the frame selection has duplicate indices")
        out[name] = u
    if not out:
        raise ValueError("the frame selection is empty")
    return out


# --------------------------------------------------------------------------------------------------
# size estimates and buckets


class _CachedTopology:
    """A `CGTopology` stand-in with the bonded index arrays computed once (fast `frame_graph`)."""

    def __init__(self, topo):
        self.topology = topo
        self.species = np.asarray(topo.species, np.int32)
        self.bonds = topo.bonds
        self.angles = topo.angles
        self.dihedrals = topo.dihedrals
        self.segment = np.asarray(topo.segment)
        self.n_beads = topo.n_beads

    def sequence_separation(self, i, j):
        return self.topology.sequence_separation(i, j)


@dataclasses.dataclass(frozen=True)
class SizeEstimate:
    """Sizes of one protein's frames: exact bead and bonded counts, sampled edge and pair counts.

    `edges[g]`/`pairs[g]` are the largest counts seen over the frames `sampled[g]` of temperature
    group `temperatures[g]` (directed edges; undirected pairs with the planner's minimum
    separation).
    """

    name: str
    beads: int
    bonds: int
    angles: int
    dihedrals: int
    temperatures: tuple[float, ...]
    edges: tuple[int, ...]
    pairs: tuple[int, ...]
    sampled: tuple[tuple[int, ...], ...]


def _temperature_groups(rec: ProteinRecord, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group keys (rounded temperatures) and the group of every selected frame."""
    t = np.asarray(rec.temperature, np.float64)
    if len(t) != rec.n_frames or not np.isfinite(t[idx]).all():
        t = np.zeros(rec.n_frames)  # no usable temperatures: one group
    keys, group = np.unique(np.round(t[idx], 1), return_inverse=True)
    return keys, group.astype(np.int32)


def _frame_groups(rec: ProteinRecord, idx: np.ndarray, est: SizeEstimate) -> np.ndarray:
    """For every selected frame, its temperature group in `est` (unknown groups: the largest)."""
    keys, g = _temperature_groups(rec, idx)
    lookup = {float(t): k for k, t in enumerate(est.temperatures)}
    remap = np.asarray([lookup.get(float(k), int(np.argmax(est.edges))) for k in keys], np.int32)
    return remap[g]


def estimate_sizes(
    rec: ProteinRecord,
    idx: np.ndarray,
    *,
    cutoff: float,
    pair_min_sep: int,
    samples: int,
) -> SizeEstimate:
    """One protein's per-frame sizes from `samples` evenly spaced frames per temperature."""
    topo = _CachedTopology(rec.topology)
    keys, group = _temperature_groups(rec, idx)
    picks = []
    for g in range(len(keys)):
        members = idx[group == g]
        k = min(samples, len(members))
        pos = np.unique(np.linspace(0, len(members) - 1, k).round().astype(np.int64))
        picks.append(members[pos])
    allpick = np.unique(np.concatenate(picks))
    pos_all, _ = rec.frames(allpick)
    if pos_all.shape[1:] != (topo.n_beads, 3):
        raise ValueError(
            f"protein {rec.name}: positions have shape {pos_all.shape[1:]} per frame, expected "
            f"({topo.n_beads}, 3) from its topology"
        )
    counts = {}
    for f, x in zip(allpick.tolist(), pos_all):
        if not np.isfinite(x).all():
            raise ValueError(f"protein {rec.name}: frame {f} has non-finite positions")
        fg = frame_graph(x, topo, cutoff, pair_min_sep=pair_min_sep)
        counts[f] = (len(fg.senders), len(fg.pairs))
    return SizeEstimate(
        name=rec.name,
        beads=topo.n_beads,
        bonds=len(topo.bonds),
        angles=len(topo.angles),
        dihedrals=len(topo.dihedrals),
        temperatures=tuple(float(k) for k in keys),
        edges=tuple(max(counts[f][0] for f in p.tolist()) for p in picks),
        pairs=tuple(max(counts[f][1] for f in p.tolist()) for p in picks),
        sampled=tuple(tuple(int(f) for f in p) for p in picks),
    )


@dataclasses.dataclass(frozen=True)
class BucketClass:
    """One size class: frames with at most `max_beads` beads, packed into `bucket` (index into
    `BucketPlan.buckets`) under the planning limits; `overflow` is the bucket for steps whose real
    sizes exceed `bucket`."""

    max_beads: int
    bucket: int
    overflow: int
    node_limit: int
    edge_limit: int
    pair_limit: int
    graph_limit: int


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """The capacity buckets of a dataset and the size estimates they were derived from."""

    buckets: tuple[Capacity, ...]
    classes: tuple[BucketClass, ...]
    estimates: dict[str, SizeEstimate]
    cutoff: float
    pair_min_sep: int
    target_nodes: int
    margin: float
    overflow: float

    def class_of(self, beads: int) -> int:
        for k, c in enumerate(self.classes):
            if beads <= c.max_beads:
                return k
        raise CapacityError(
            f"a frame with {beads} beads is larger than every planned bucket "
            f"(largest holds {self.classes[-1].max_beads}); re-run choose_buckets on this dataset"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "buckets": [c._asdict() for c in self.buckets],
            "classes": [dataclasses.asdict(c) for c in self.classes],
            "estimates": {k: dataclasses.asdict(v) for k, v in self.estimates.items()},
            "cutoff": self.cutoff,
            "pair_min_sep": self.pair_min_sep,
            "target_nodes": self.target_nodes,
            "margin": self.margin,
            "overflow": self.overflow,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BucketPlan":
        def est(v):
            v = dict(v)
            for k in ("temperatures", "edges", "pairs"):
                v[k] = tuple(v[k])
            v["sampled"] = tuple(tuple(s) for s in v["sampled"])
            return SizeEstimate(**v)

        return cls(
            buckets=tuple(Capacity(**c) for c in d["buckets"]),
            classes=tuple(BucketClass(**c) for c in d["classes"]),
            estimates={k: est(v) for k, v in d["estimates"].items()},
            cutoff=float(d["cutoff"]),
            pair_min_sep=int(d["pair_min_sep"]),
            target_nodes=int(d["target_nodes"]),
            margin=float(d["margin"]),
            overflow=float(d["overflow"]),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Writes the plan (buckets and estimates) as JSON, atomically."""
        write_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BucketPlan":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _round_up(x: float, m: int = 8) -> int:
    return int(math.ceil(max(x, 1) / m) * m)


def choose_buckets(
    source: Source,
    frames: Mapping[str, Any] | None = None,
    *,
    cutoff: float = 10.0,
    target_nodes: int = 2048,
    pair_min_sep: int = 2,
    samples: int = 4,
    margin: float = 0.05,
    overflow: float = 0.25,
    seed: int = 0,
    estimates: Mapping[str, SizeEstimate] | None = None,
) -> BucketPlan:
    """Derives at most four capacity buckets from the dataset's size distribution.

    Frames of proteins with at most `target_nodes` beads form the main class (bucket `n_node =
    target_nodes`); proteins larger than that, if any, form a second class whose bucket holds the
    largest one. Each class has a normal bucket and an overflow bucket (`1 + overflow` times the
    edges and pairs) for steps whose real sizes exceed the estimates. The edge and pair limits are
    chosen by simulating the planner on a sample of frames so that node and edge slots fill well.

    **Arguments:**

    - `source`: a `PreparedDataset` or a sequence of `ProteinRecord`s.
    - `frames`: the frame selection (protein → indices); default every frame.
    - `cutoff`: radius-graph cutoff in Å (the loader must use the same).
    - `target_nodes`: the node budget of one batch (the training's batch size in beads).
    - `pair_min_sep`: minimum sequence separation of non-bonded pairs (as in `frame_graph`).
    - `samples`: frames sampled per (protein, temperature) to estimate edges and pairs.
    - `margin`: headroom of the bucket over the planned (estimated) sizes.
    - `overflow`: extra edge/pair headroom of the overflow bucket.
    - `seed`: seed of the planner simulation.
    - `estimates`: reuse estimates from an earlier plan (skips reading frames).

    **Returns:** a `BucketPlan` (save it with `BucketPlan.save` to record the estimates).
    """
    recs = {r.name: r for r in _records(source)}
    sel = _check_selection(recs, frames if frames is not None else select_frames(source))
    names = sorted(sel)
    est: dict[str, SizeEstimate] = {}
    for n in names:
        if estimates is not None and n in estimates:
            est[n] = estimates[n]
        else:
            est[n] = estimate_sizes(recs[n], sel[n], cutoff=cutoff, pair_min_sep=pair_min_sep,
                                    samples=samples)  # fmt: skip
    beads = np.asarray([est[n].beads for n in names])
    if target_nodes < 1:
        raise ValueError(f"target_nodes must be positive, got {target_nodes}")

    # per-frame sizes of a sample of items (frame-weighted), for the limit simulation
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB0C]))
    counts = np.asarray([len(sel[n]) for n in names], np.int64)
    n_sample = int(min(counts.sum(), 20000))
    pick = rng.choice(len(names), size=n_sample, p=counts / counts.sum())
    grp_rows = []
    for k in np.unique(pick).tolist():
        e, idx = est[names[k]], sel[names[k]]
        groups = _frame_groups(recs[names[k]], idx, e)
        g = groups[rng.integers(len(idx), size=int((pick == k).sum()))]
        grp_rows += [(e.beads, e.edges[j], e.pairs[j]) for j in g.tolist()]
    sample = np.asarray(grp_rows, np.int64).reshape(-1, 3)

    classes_beads = [int(target_nodes)] if beads.min() <= target_nodes else []
    if beads.max() > target_nodes:
        classes_beads.append(int(beads.max()))
    buckets: list[Capacity] = []
    classes: list[BucketClass] = []
    lo = 0
    for cb in classes_beads:
        in_cls = (sample[:, 0] > lo) & (sample[:, 0] <= cb)
        s = sample[in_cls]
        member = (beads > lo) & (beads <= cb)
        n_node = _round_up(cb)
        min_beads = int(beads[member].min())
        graph_limit = max(1, n_node // max(min_beads, 1))
        max_e = max(max(est[n].edges) for n, m in zip(names, member) if m)
        max_p = max(max(est[n].pairs) for n, m in zip(names, member) if m)
        e_rate = s[:, 1].sum() / max(s[:, 0].sum(), 1) if len(s) else max_e / cb
        p_rate = s[:, 2].sum() / max(s[:, 0].sum(), 1) if len(s) else max_p / cb
        best = None
        for slack in (0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.5):
            el = max(int(math.ceil(n_node * e_rate * (1 + slack))), max_e)
            pl = max(int(math.ceil(n_node * p_rate * (1 + slack))), max_p)
            lim = np.asarray([[n_node, el, pl, graph_limit]], np.int64)
            if len(s):
                _, off, _ = _first_fit(
                    [(np.arange(len(s)), s[:, 0], s[:, 1], s[:, 2], np.zeros(len(s), np.int8))],
                    lim, n_open=8, min_nodes=np.asarray([min_beads]),
                )
                nb = len(off) - 1
                score = (s[:, 0].sum() / (nb * n_node)) * (s[:, 1].sum() / (nb * el))
            else:
                score = 0.0
            if best is None or score > best[0] + 1e-9:
                best = (score, el, pl)
        _, el, pl = best
        normal = Capacity(
            n_node=n_node,
            n_edge=_round_up(el * (1 + margin)),
            n_graph=graph_limit,
            n_bond=n_node,
            n_angle=n_node,
            n_dih=n_node,
            n_pair=_round_up(pl * (1 + margin)),
        )
        over = normal._replace(
            n_edge=_round_up(normal.n_edge * (1 + overflow)),
            n_pair=_round_up(normal.n_pair * (1 + overflow)),
        )
        buckets += [normal, over]
        classes.append(BucketClass(max_beads=cb, bucket=len(buckets) - 2, overflow=len(buckets) - 1,
                                   node_limit=n_node, edge_limit=el, pair_limit=pl,
                                   graph_limit=graph_limit))  # fmt: skip
        lo = cb
    return BucketPlan(buckets=tuple(buckets), classes=tuple(classes), estimates=est, cutoff=cutoff,
                      pair_min_sep=pair_min_sep, target_nodes=int(target_nodes), margin=margin,
                      overflow=overflow)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# epoch planning


def _first_fit(chunks, limits, *, n_open: int, min_nodes):
    """Greedy first-fit packing over at most `n_open` open batches per class.

    `chunks` yields `(ids, nodes, edges, pairs, cls)` arrays in item order; `limits[c]` is
    `(nodes, edges, pairs, graphs)` of class c. A batch closes when its free nodes drop below the
    class's smallest frame, or when it is the oldest and a new one must open. Returns the item ids
    in batch order, the batch offsets and each batch's class.
    """
    out = array.array("q")
    off = array.array("q", [0])
    bcls = array.array("b")
    lim = [tuple(int(v) for v in row) for row in np.asarray(limits)]
    min_n = [int(v) for v in np.asarray(min_nodes)]
    open_bins: list[list[list]] = [[] for _ in lim]

    def emit(c, b):
        out.extend(b[4])
        off.append(len(out))
        bcls.append(c)

    for ids, nn, ee, pp, cc in chunks:
        for i, n, e, p, c in zip(ids.tolist(), nn.tolist(), ee.tolist(), pp.tolist(), cc.tolist()):
            bins = open_bins[c]
            for k, b in enumerate(bins):
                if n <= b[0] and e <= b[1] and p <= b[2] and b[3]:
                    b[0] -= n
                    b[1] -= e
                    b[2] -= p
                    b[3] -= 1
                    b[4].append(i)
                    if b[0] < min_n[c] or not b[3]:
                        emit(c, bins.pop(k))
                    break
            else:
                ln, le, lp, lg = lim[c]
                if n > ln or e > le or p > lp:
                    raise CapacityError(
                        f"item {i} (beads {n}, edges {e}, pairs {p}) exceeds its bucket limits "
                        f"(nodes {ln}, edges {le}, pairs {lp})"
                    )
                if len(bins) >= n_open:
                    emit(c, bins.pop(0))
                b = [ln - n, le - e, lp - p, lg - 1, [i]]
                if b[0] < min_n[c] or not b[3]:
                    emit(c, b)
                else:
                    bins.append(b)
    # close the rest, oldest first across classes (by their first item's position is not tracked;
    # class order is fine: these are the epoch's last batches)
    for c, bins in enumerate(open_bins):
        for b in bins:
            emit(c, b)
    return (np.frombuffer(out, np.int64).copy(), np.frombuffer(off, np.int64).copy(),
            np.frombuffer(bcls, np.int8).copy())  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Step:
    """One training step of this process: `batches` are batch indices into the epoch plan (-1 =
    an empty padding batch), all in the same size class."""

    index: int
    size_class: int
    batches: tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class EpochPlan(Sequence):
    """One epoch's batches: `plan[i]` is the list of `(protein, frame)` of batch i.

    Stored as flat arrays (scales to tens of millions of frames): `protein[offsets[i]:offsets[i+1]]`
    (indices into `names`) and `frame[...]` are batch i's frames; `size_class[i]` its class.
    """

    seed: int
    epoch: int
    names: tuple[str, ...]
    protein: np.ndarray
    frame: np.ndarray
    offsets: np.ndarray
    size_class: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range ({len(self)} batches)")
        a, b = self.offsets[i], self.offsets[i + 1]
        return [(self.names[p], int(f)) for p, f in zip(self.protein[a:b], self.frame[a:b])]

    def steps(
        self, n_devices: int = 1, process_index: int = 0, process_count: int = 1
    ) -> list[Step]:
        """This process's steps: global steps of `n_devices * process_count` batches of one class
        (in plan order; each class's last step padded with empty batches); process p takes the
        `n_devices` batches `[p * n_devices, (p + 1) * n_devices)` of every global step, so every
        process gets the same number of steps in the same class order, and the shares are
        disjoint."""
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        width = n_devices * process_count
        per_class: dict[int, list[int]] = {}
        for i, c in enumerate(self.size_class.tolist()):
            per_class.setdefault(c, []).append(i)
        glob = []
        for c, ids in per_class.items():
            for s in range(0, len(ids), width):
                chunk = ids[s : s + width]
                glob.append((chunk[0], c, chunk + [-1] * (width - len(chunk))))
        glob.sort()
        lo = process_index * n_devices
        return [Step(k, c, tuple(g[lo : lo + n_devices])) for k, (_, c, g) in enumerate(glob)]


class EpochPlanner:
    """Plans epochs: every selected frame exactly once, packed under the bucket limits.

    **Arguments:**

    - `source`: a `PreparedDataset` or a sequence of `ProteinRecord`s.
    - `frames`: the frame selection (protein → indices), e.g. `split.train`.
    - `buckets`: the `BucketPlan` (from `choose_buckets` on the same selection or a superset).
    - `shuffle`: `"frames"` (uniform) or `"blocks"` (read locality; see the module docstring).
    - `block_frames`, `window_blocks`: the block shuffle's block length and window.
    - `n_open`: open batches of the first-fit packer (more: fuller batches, less randomness).
    """

    def __init__(
        self,
        source: Source,
        frames: Mapping[str, Any] | None,
        buckets: BucketPlan,
        *,
        shuffle: Literal["frames", "blocks"] = "frames",
        block_frames: int = 64,
        window_blocks: int = 16,
        n_open: int = 8,
    ):
        recs = {r.name: r for r in _records(source)}
        sel = _check_selection(recs, frames if frames is not None else select_frames(source))
        if shuffle not in ("frames", "blocks"):
            raise ValueError(f"shuffle must be 'frames' or 'blocks', got {shuffle!r}")
        self.names = tuple(sorted(sel))
        self.records = [recs[n] for n in self.names]
        self.buckets = buckets
        self.shuffle = shuffle
        self.block_frames = int(block_frames)
        self.window_blocks = int(window_blocks)
        self.n_open = int(n_open)
        missing = [n for n in self.names if n not in buckets.estimates]
        if missing:
            raise ValueError(
                f"the bucket plan has no size estimates for {len(missing)} selected proteins "
                f"(e.g. {missing[:3]}); run choose_buckets on this selection"
            )
        counts = np.asarray([len(sel[n]) for n in self.names], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.frame_ids = np.concatenate([sel[n] for n in self.names]).astype(np.int32)
        groups, e_rows, p_rows, gbase = [], [], [], [0]
        for n, rec in zip(self.names, self.records):
            e = buckets.estimates[n]
            groups.append(_frame_groups(rec, sel[n], e) + gbase[-1])
            e_rows += list(e.edges)
            p_rows += list(e.pairs)
            gbase.append(gbase[-1] + len(e.edges))
        self.item_group = np.concatenate(groups).astype(np.int32)
        self.group_edges = np.asarray(e_rows, np.int64)
        self.group_pairs = np.asarray(p_rows, np.int64)
        self.beads = np.asarray([buckets.estimates[n].beads for n in self.names], np.int64)
        self.protein_class = np.asarray([buckets.class_of(int(b)) for b in self.beads], np.int8)
        self.limits = np.asarray(
            [[c.node_limit, c.edge_limit, c.pair_limit, c.graph_limit] for c in buckets.classes]
        )
        self.min_nodes = np.asarray(
            [self.beads[self.protein_class == k].min(initial=c.node_limit)
             for k, c in enumerate(buckets.classes)]
        )  # fmt: skip

    @property
    def n_frames(self) -> int:
        return int(self.offsets[-1])

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        m = self.n_frames
        if self.shuffle == "frames":
            return rng.permutation(m)
        b = self.block_frames
        starts, ends = [], []
        for k in range(len(self.names)):
            st = np.arange(self.offsets[k], self.offsets[k + 1], b)
            starts.append(st)
            ends.append(np.minimum(st + b, self.offsets[k + 1]))
        starts, ends = np.concatenate(starts), np.concatenate(ends)
        perm = rng.permutation(len(starts))
        starts, ends = starts[perm], ends[perm]
        lens = ends - starts
        ids = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(m)
        w = b * self.window_blocks
        full = (m // w) * w
        if full:
            ids[:full] = rng.permuted(ids[:full].reshape(-1, w), axis=1).reshape(-1)
        ids[full:] = rng.permutation(ids[full:])
        return ids

    def plan_epoch(self, seed: int, epoch: int) -> EpochPlan:
        """The batches of one epoch, a pure function of `(seed, epoch)`.

        **Returns:** an `EpochPlan` (a sequence of batches, each a list of `(protein, frame)`).
        """
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0xE90C]))
        order = self._order(rng)

        def chunks(size=1 << 16):
            for s in range(0, len(order), size):
                ids = order[s : s + size]
                prot = np.searchsorted(self.offsets, ids, side="right") - 1
                g = self.item_group[ids]
                yield (ids, self.beads[prot], self.group_edges[g], self.group_pairs[g],
                       self.protein_class[prot])  # fmt: skip

        items, off, cls = _first_fit(chunks(), self.limits, n_open=self.n_open,
                                     min_nodes=self.min_nodes)  # fmt: skip
        prot = (np.searchsorted(self.offsets, items, side="right") - 1).astype(np.int32)
        return EpochPlan(seed=int(seed), epoch=int(epoch), names=self.names, protein=prot,
                         frame=self.frame_ids[items], offsets=off, size_class=cls)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# the loader


@dataclasses.dataclass
class EpochStats:
    """What one epoch's loader produced (this process's share)."""

    epoch: int
    steps: int = 0
    batches: int = 0  # real (non-empty) batches
    empty_batches: int = 0  # padding batches at class ends
    frames: int = 0
    promoted: int = 0  # steps packed into a larger bucket than planned
    plan_seconds: float = 0.0
    build_seconds: float = 0.0
    per_bucket: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)

    def add_batch(self, bucket: int, cap: Capacity, b: Batch) -> None:
        """Counts one real batch packed into `bucket` (capacity `cap`): its real nodes, edges, pairs, graphs."""
        zero = {"batches": 0, "nodes": 0, "edges": 0, "pairs": 0, "graphs": 0}
        d = self.per_bucket.setdefault(bucket, zero | {"capacity": cap._asdict()})
        d["batches"] += 1
        d["nodes"] += int(b.node_mask.sum())
        d["edges"] += int(b.edge_mask.sum())
        d["pairs"] += int(b.pair_mask.sum())
        d["graphs"] += int(b.graph_mask.sum())

    def utilisation(self) -> dict[int, dict[str, float]]:
        """Per bucket: fraction of node / edge / pair / graph slots holding real data."""
        out = {}
        for k, d in self.per_bucket.items():
            c, nb = d["capacity"], d["batches"]
            out[k] = {
                "batches": nb,
                "nodes": d["nodes"] / (nb * c["n_node"]),
                "edges": d["edges"] / (nb * c["n_edge"]),
                "pairs": d["pairs"] / (nb * c["n_pair"]),
                "graphs": d["graphs"] / (nb * c["n_graph"]),
            }
        return out

    def overall(self) -> dict[str, float]:
        """Node and edge slot utilisation over all batches of the epoch."""
        tot = {"nodes": 0, "edges": 0, "node_slots": 0, "edge_slots": 0}
        for d in self.per_bucket.values():
            tot["nodes"] += d["nodes"]
            tot["edges"] += d["edges"]
            tot["node_slots"] += d["batches"] * d["capacity"]["n_node"]
            tot["edge_slots"] += d["batches"] * d["capacity"]["n_edge"]
        return {"nodes": tot["nodes"] / max(tot["node_slots"], 1),
                "edges": tot["edges"] / max(tot["edge_slots"], 1)}  # fmt: skip


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException, where: str):
        self.exc, self.where = exc, where


class BatchLoader:
    """Packed batches of one frame selection, epoch after epoch, built in a background thread.

    Iterating the loader runs the next epoch (0, 1, ...); `loader.epoch(e)` runs a given one. Each
    item is a host `Batch` (NumPy arrays), with a leading axis of `n_devices` when that is set.

    **Arguments:**

    - `source`: a `PreparedDataset` or a sequence of `ProteinRecord`s.
    - `frames`: the frame selection (protein → indices), e.g. `split.train`; default every frame.
    - `cutoff`: radius-graph cutoff in Å.
    - `target_nodes`: node budget per batch (used when `buckets` is not given).
    - `buckets`: a `BucketPlan`; default `choose_buckets` on this selection.
    - `seed`: shuffling seed; epochs are deterministic given `(seed, epoch)`.
    - `pair_min_sep`: minimum sequence separation of non-bonded pairs.
    - `shuffle`, `block_frames`, `window_blocks`, `n_open`: see `EpochPlanner`.
    - `n_devices`: stack this many same-bucket batches along a leading device axis (None: no axis).
    - `process_index`, `process_count`: this process's disjoint share of every epoch.
    - `prefetch`: queue depth of the background thread (0: build in the consumer's thread).
    - `require_forces`: fail clearly when a selected protein has no forces.
    """

    def __init__(
        self,
        source: Source,
        frames: Mapping[str, Any] | None = None,
        *,
        cutoff: float = 10.0,
        target_nodes: int = 2048,
        buckets: BucketPlan | None = None,
        seed: int = 0,
        pair_min_sep: int = 2,
        shuffle: Literal["frames", "blocks"] = "frames",
        block_frames: int = 64,
        window_blocks: int = 16,
        n_open: int = 8,
        n_devices: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
        prefetch: int = 2,
        require_forces: bool = True,
    ):
        if buckets is None:
            buckets = choose_buckets(source, frames, cutoff=cutoff, target_nodes=target_nodes,
                                     pair_min_sep=pair_min_sep, seed=seed)  # fmt: skip
        if abs(buckets.cutoff - cutoff) > 1e-9 or buckets.pair_min_sep != pair_min_sep:
            raise ValueError(
                f"bucket plan was made for cutoff {buckets.cutoff} Å / pair_min_sep "
                f"{buckets.pair_min_sep}, the loader uses {cutoff} Å / {pair_min_sep}"
            )
        if n_devices is not None and n_devices < 1:
            raise ValueError(f"n_devices must be >= 1 or None, got {n_devices}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self.planner = EpochPlanner(source, frames, buckets, shuffle=shuffle,
                                    block_frames=block_frames, window_blocks=window_blocks,
                                    n_open=n_open)  # fmt: skip
        self.buckets = buckets
        self.cutoff = float(cutoff)
        self.pair_min_sep = int(pair_min_sep)
        self.seed = int(seed)
        self.n_devices = n_devices
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.prefetch = int(prefetch)
        self.names = self.planner.names
        self._topo = [_CachedTopology(r.topology) for r in self.planner.records]
        if require_forces:
            nof = [r.name for r in self.planner.records if r.forces is None]
            if nof:
                raise ValueError(
                    f"{len(nof)} selected proteins have no forces (e.g. {nof[:3]}); force matching "
                    "needs forces (pass require_forces=False for coordinate-only uses)"
                )
        self._next_epoch = 0
        self.stats: EpochStats | None = None  # of the last finished epoch
        self._plans: dict[int, EpochPlan] = {}

    # planning ------------------------------------------------------------------------------------
    def plan(self, epoch: int) -> EpochPlan:
        """The (global) plan of an epoch (cached for the last epoch asked)."""
        if epoch not in self._plans:
            self._plans = {epoch: self.planner.plan_epoch(self.seed, epoch)}
        return self._plans[epoch]

    def steps(self, epoch: int) -> list[Step]:
        """This process's steps of an epoch (the same count on every process)."""
        return self.plan(epoch).steps(self.n_devices or 1, self.process_index, self.process_count)

    def __len__(self) -> int:
        """Steps of the next epoch."""
        return len(self.steps(self._next_epoch))

    # building ------------------------------------------------------------------------------------
    def _graphs(self, plan: EpochPlan, batch_ids: Sequence[int]) -> list[list[FrameGraph]]:
        """Frame graphs of the given batches; frames read grouped by protein, one call each."""
        want: dict[int, list[int]] = {}
        for b in batch_ids:
            if b < 0:
                continue
            a, z = plan.offsets[b], plan.offsets[b + 1]
            for p, f in zip(plan.protein[a:z].tolist(), plan.frame[a:z].tolist()):
                want.setdefault(p, []).append(f)
        got: dict[tuple[int, int], tuple[np.ndarray, np.ndarray | None]] = {}
        for p, fs in want.items():
            rec = self.planner.records[p]
            idx = np.unique(np.asarray(fs, np.int64))
            try:
                r, f = rec.frames(idx)
            except Exception as e:
                raise OSError(
                    f"reading frames {idx.tolist()[:8]}... of protein {rec.name}: {e}"
                ) from e
            for k, fi in enumerate(idx.tolist()):
                got[(p, fi)] = (r[k], None if f is None else f[k])
        out = []
        for b in batch_ids:
            if b < 0:
                out.append([])
                continue
            a, z = plan.offsets[b], plan.offsets[b + 1]
            fgs = []
            for p, fi in zip(plan.protein[a:z].tolist(), plan.frame[a:z].tolist()):
                rec = self.planner.records[p]
                x, frc = got[(p, fi)]
                if not np.isfinite(x).all():
                    raise ValueError(f"protein {rec.name} frame {fi}: non-finite positions")
                temp = float(rec.temperature[fi]) if len(rec.temperature) else float("nan")
                fgs.append(frame_graph(
                    x, self._topo[p], self.cutoff, pair_min_sep=self.pair_min_sep, forces=frc,
                    temperature=temp, protein_index=p, frame_index=fi,
                ))  # fmt: skip
            out.append(fgs)
        return out

    def build_step(self, plan: EpochPlan, step: Step, stats: EpochStats | None = None) -> Batch:
        """Reads, builds and packs one step (stacked along a device axis if `n_devices` is set)."""
        graphs = self._graphs(plan, step.batches)
        cls = self.buckets.classes[step.size_class]
        need = [0] * 7
        for fgs in graphs:
            tot = np.sum([f.sizes for f in fgs], axis=0) if fgs else np.zeros(7, np.int64)
            need = [max(a, int(b)) for a, b in zip(need, tot)]
        need = Capacity(*need)
        bucket = cls.bucket
        if not _fits(need, self.buckets.buckets[bucket]):
            fitting = [k for k, c in enumerate(self.buckets.buckets) if _fits(need, c)]
            if not fitting:
                frames = [plan[b] for b in step.batches if b >= 0]
                raise CapacityError(
                    f"step {step.index} of epoch {plan.epoch}: real sizes {need} exceed every "
                    f"bucket ({list(self.buckets.buckets)}); frames {frames}. The edge/pair "
                    "estimates are too low for these frames: re-run choose_buckets with more "
                    "samples or a larger margin/overflow"
                )
            bucket = min(fitting, key=lambda k: (self.buckets.buckets[k].n_edge,
                                                 self.buckets.buckets[k].n_node))  # fmt: skip
            if stats is not None:
                stats.promoted += 1
        cap = self.buckets.buckets[bucket]
        batches = [pack(fgs, cap) for fgs in graphs]
        if stats is not None:
            stats.steps += 1
            for fgs, b in zip(graphs, batches):
                if fgs:
                    stats.batches += 1
                    stats.frames += len(fgs)
                    stats.add_batch(bucket, cap, b)
                else:
                    stats.empty_batches += 1
        if self.n_devices is None:
            return batches[0]
        return stack_batches(batches)

    # iteration -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        e = self._next_epoch
        self._next_epoch += 1
        return self.epoch(e)

    def epoch(self, epoch: int, start: int = 0, describe: bool = False) -> Iterator[Any]:
        """Iterates one epoch's steps; closing the iterator (or breaking out) stops the thread.

        **Arguments:**

        - `epoch`: the epoch (its plan is a pure function of the loader's seed and this).
        - `start`: the first step to build (resuming mid-epoch).
        - `describe`: yield `(batch, description)` pairs naming each step's proteins and frames.
        """
        t0 = time.perf_counter()
        plan = self.plan(epoch)
        steps = self.steps(epoch)[start:]
        stats = EpochStats(epoch=epoch, plan_seconds=time.perf_counter() - t0)
        if self.prefetch <= 0:
            return self._sync(plan, steps, stats, describe)
        return self._threaded(plan, steps, stats, describe)

    def describe_step(self, plan: EpochPlan, step: Step) -> str:
        """A short description of a step's frames (for error messages: which batch went wrong)."""
        frames = [plan[b] for b in step.batches if b >= 0]
        return f"epoch {plan.epoch} step {step.index}, frames " + "; ".join(
            ", ".join(f"{n}:{f}" for n, f in fr[:4]) + (" ..." if len(fr) > 4 else "") for fr in frames
        )

    def _item(self, plan: EpochPlan, step: Step, stats: EpochStats, describe: bool) -> Any:
        t = time.perf_counter()
        b = self.build_step(plan, step, stats)
        stats.build_seconds += time.perf_counter() - t
        return (b, self.describe_step(plan, step)) if describe else b

    def _finish(self, stats: EpochStats) -> None:
        self.stats = stats
        u = stats.overall()
        log.info("epoch %d: %d steps, %d batches, %d frames, node util %.3f, edge util %.3f, "
                 "%d promoted", stats.epoch, stats.steps, stats.batches, stats.frames, u["nodes"],
                 u["edges"], stats.promoted)  # fmt: skip

    def _sync(self, plan, steps, stats, describe) -> Iterator[Any]:
        for s in steps:
            yield self._item(plan, s, stats, describe)
        self._finish(stats)

    def _threaded(self, plan, steps, stats, describe) -> Iterator[Any]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            for s in steps:
                if stop.is_set():
                    return
                try:
                    b = self._item(plan, s, stats, describe)
                except BaseException as e:  # noqa: BLE001  (re-raised in the consumer)
                    put(_Failure(e, f"epoch {plan.epoch} step {s.index} (batches {s.batches})"))
                    return
                if not put(b):
                    return
            put(_DONE)

        th = threading.Thread(target=work, name=f"cameo-batches-e{plan.epoch}", daemon=True)
        th.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failure):
                    msg = f"batch loader failed at {item.where}: {item.exc}"
                    raise RuntimeError(msg) from item.exc
                yield item
            th.join()
            self._finish(stats)
        finally:
            stop.set()
            while th.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    pass
                th.join(timeout=0.05)


def _fits(need: Capacity, cap: Capacity) -> bool:
    return all(a <= b for a, b in zip(need, cap))



# --------------------------------------------------------------------------------------------------
# synthetic data (tests, benchmarks)


def compact_chain(n: int, rng: np.random.Generator, *, bond: float = 3.8,
                  min_dist: float = 4.0) -> np.ndarray:  # fmt: skip
    """A compact protein-like CA chain: a self-avoiding walk with `bond` Å steps inside a sphere of
    radius of gyration `2.2 * n**0.38` Å (folded-protein scaling)."""
    radius = math.sqrt(5.0 / 3.0) * 2.2 * n**0.38
    x = np.zeros((n, 3))
    for i in range(1, n):
        d = rng.normal(size=(64, 3))
        cand = x[i - 1] + bond * d / np.linalg.norm(d, axis=1, keepdims=True)
        inside = np.linalg.norm(cand, axis=1) <= radius
        dmin = np.min(np.linalg.norm(cand[:, None, :] - x[None, : i - 1 or 1, :], axis=-1), axis=1)
        if i == 1:
            dmin[:] = bond
        score = np.where(inside, 0.0, -1e3) + np.minimum(dmin, min_dist)
        x[i] = cand[int(np.argmax(score))]
    return x - x.mean(axis=0)


def synthetic_records(
    sizes: Sequence[int],
    n_frames: int | Sequence[int],
    *,
    seed: int = 0,
    noise: float = 0.5,
    temperatures: Sequence[float] = (320.0, 348.0, 379.0, 413.0, 450.0),
) -> list[ProteinRecord]:
    """In-memory `ProteinRecord`s of compact CA chains (for tests and benchmarks).

    Frame t of a protein is its chain expanded by up to 6% with temperature, plus Gaussian noise of
    `noise` Å, randomly rotated; temperatures cycle through `temperatures` in blocks; forces are
    standard-normal placeholders (kcal/mol/Å).
    """
    rng = np.random.default_rng(seed)
    counts = [n_frames] * len(sizes) if isinstance(n_frames, int) else list(n_frames)
    recs = []
    for k, (n, t) in enumerate(zip(sizes, counts)):
        n = int(n)
        base = compact_chain(n, rng)
        temp = np.asarray(temperatures, np.float32)[
            (np.arange(t) * len(temperatures)) // max(t, 1)
        ]
        scale = 1.0 + 0.06 * (temp - temp.min()) / max(float(np.ptp(temp)), 1.0)
        q = rng.normal(size=(t, 4))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        w, a, b, c = q.T
        rot = np.stack([
            np.stack([1 - 2 * (b * b + c * c), 2 * (a * b - c * w), 2 * (a * c + b * w)], -1),
            np.stack([2 * (a * b + c * w), 1 - 2 * (a * a + c * c), 2 * (b * c - a * w)], -1),
            np.stack([2 * (a * c - b * w), 2 * (b * c + a * w), 1 - 2 * (a * a + b * b)], -1),
        ], 1)  # fmt: skip
        pos = base[None] * scale[:, None, None] + noise * rng.normal(size=(t, n, 3))
        pos = np.einsum("tij,tnj->tni", rot, pos).astype(np.float32)
        aa = rng.integers(0, 20, size=n)
        topo = CGTopology(
            resname=tuple(AMINO_ACIDS[i] for i in aa),
            resid=np.arange(1, n + 1, dtype=np.int32),
            chain=("A",) * n,
            segment=np.zeros(n, np.int32),
            species=aa.astype(np.int32),
        )
        recs.append(ProteinRecord(
            name=f"syn{k:05d}", topology=topo, positions=pos,
            forces=rng.normal(size=(t, n, 3)).astype(np.float32), temperature=temp,
            replica=np.zeros(t, np.int32),
        ))  # fmt: skip
    return recs


def mdcath_like_sizes(n: int, rng: np.random.Generator, *, mean: float = 137.0,
                      lo: int = 50, hi: int = 500) -> np.ndarray:  # fmt: skip
    """Protein sizes like mdCATH: log-normal, clipped to [lo, hi], mean close to `mean`."""
    sigma = 0.55
    mu = math.log(mean) - sigma**2 / 2
    for _ in range(20):
        s = np.clip(np.round(rng.lognormal(mu, sigma, size=n)), lo, hi).astype(np.int64)
        mu += math.log(mean / s.mean())
    return s
