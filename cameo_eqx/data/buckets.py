"""Size estimates and capacity buckets.

`choose_buckets` derives a few `Capacity` buckets from the dataset: beads and bonded terms per frame are
exact (topology); radius-graph edges and non-bonded pairs are estimated from a few sampled frames per
(protein, temperature) and recorded in the returned `BucketPlan`. Make one plan on the whole dataset and
give it to the train and validation loaders: they share buckets, hence compiled steps.

Each size class has a normal bucket (the planning limits times `1 + margin`) and an "overflow" bucket
with `1 + overflow` times the edges and pairs, for steps whose real sizes exceed the estimates (see
`cameo_eqx.data.loader`). `_first_fit` is the greedy packer that both the limit choice here and the epoch
planner (`cameo_eqx.data.planner`) run.
"""

from __future__ import annotations

import array
import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import write_atomic
from ..graph import Capacity, frame_graph
from .splits import Source, _check_selection, _records, select_frames
from .store import ProteinRecord

__all__ = ["BucketClass", "BucketPlan", "CapacityError", "SizeEstimate", "choose_buckets", "estimate_sizes"]


class CapacityError(ValueError):
    """A frame or step does not fit any planned capacity bucket."""


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
    """`x` rounded up to a multiple of `m` (at least `m`)."""
    return int(math.ceil(max(x, 1) / m) * m)


def _estimates(recs: Mapping[str, ProteinRecord], sel: Mapping[str, np.ndarray],
               estimates: Mapping[str, SizeEstimate] | None, *, cutoff: float, pair_min_sep: int,
               samples: int) -> dict[str, SizeEstimate]:  # fmt: skip
    """The size estimate of every selected protein (in name order), reused from `estimates` where given."""
    est: dict[str, SizeEstimate] = {}
    for n in sorted(sel):
        if estimates is not None and n in estimates:
            est[n] = estimates[n]
        else:
            est[n] = estimate_sizes(recs[n], sel[n], cutoff=cutoff, pair_min_sep=pair_min_sep,
                                    samples=samples)  # fmt: skip
    return est


def _sample_sizes(recs: Mapping[str, ProteinRecord], sel: Mapping[str, np.ndarray],
                  est: Mapping[str, SizeEstimate], seed: int) -> np.ndarray:  # fmt: skip
    """Estimated (beads, edges, pairs) of a frame-weighted sample of up to 20000 frames, for the limit choice."""
    names = sorted(sel)
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
    return np.asarray(grp_rows, np.int64).reshape(-1, 3)


def _class_bounds(beads: np.ndarray, target_nodes: int) -> list[int]:
    """The largest bead count of each size class: `target_nodes`, then the largest protein if it is larger."""
    classes_beads = [int(target_nodes)] if beads.min() <= target_nodes else []
    if beads.max() > target_nodes:
        classes_beads.append(int(beads.max()))
    return classes_beads


def _edge_pair_limits(s: np.ndarray, cb: int, n_node: int, graph_limit: int, min_beads: int, max_e: int,
                      max_p: int) -> tuple[int, int]:  # fmt: skip
    """The edge and pair limits whose simulated packing of the sample `s` fills node and edge slots best."""
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
    return el, pl


def _size_class(cb: int, s: np.ndarray, members: list[SizeEstimate], bucket: int, *, margin: float,
                overflow: float) -> tuple[BucketClass, Capacity, Capacity]:  # fmt: skip
    """One size class (proteins `members`, sampled sizes `s`) and its normal and overflow buckets."""
    n_node = _round_up(cb)
    min_beads = int(min(e.beads for e in members))
    graph_limit = max(1, n_node // max(min_beads, 1))
    max_e = max(max(e.edges) for e in members)
    max_p = max(max(e.pairs) for e in members)
    el, pl = _edge_pair_limits(s, cb, n_node, graph_limit, min_beads, max_e, max_p)
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
    cls = BucketClass(max_beads=cb, bucket=bucket, overflow=bucket + 1, node_limit=n_node, edge_limit=el,
                      pair_limit=pl, graph_limit=graph_limit)  # fmt: skip
    return cls, normal, over


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
    est = _estimates(recs, sel, estimates, cutoff=cutoff, pair_min_sep=pair_min_sep, samples=samples)
    beads = np.asarray([est[n].beads for n in names])
    if target_nodes < 1:
        raise ValueError(f"target_nodes must be positive, got {target_nodes}")
    sample = _sample_sizes(recs, sel, est, seed)
    buckets: list[Capacity] = []
    classes: list[BucketClass] = []
    lo = 0
    for cb in _class_bounds(beads, target_nodes):
        member = (beads > lo) & (beads <= cb)
        s = sample[(sample[:, 0] > lo) & (sample[:, 0] <= cb)]
        cls, normal, over = _size_class(cb, s, [est[n] for n, m in zip(names, member) if m], len(buckets),
                                        margin=margin, overflow=overflow)  # fmt: skip
        buckets += [normal, over]
        classes.append(cls)
        lo = cb
    return BucketPlan(buckets=tuple(buckets), classes=tuple(classes), estimates=est, cutoff=cutoff,
                      pair_min_sep=pair_min_sep, target_nodes=int(target_nodes), margin=margin,
                      overflow=overflow)  # fmt: skip


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

