"""Epoch planning: every selected frame exactly once per epoch, packed under the bucket limits.

`EpochPlanner.plan_epoch(seed, epoch)` shuffles every selected frame and packs them greedily (first fit
over a few open batches) under the limits of a `BucketPlan` (`cameo_eqx.data.buckets`). The plan is a
pure function of (seed, epoch); `EpochPlan.steps` deals its batches to devices and processes.

Shuffling. `shuffle="frames"` is a uniform permutation of all selected frames (random h5py reads,
one call per protein per step). `shuffle="blocks"` trades randomness for read locality: each
protein's frames are cut into blocks of `block_frames` consecutive frames (match the HDF5 chunk
length), blocks are permuted, and frames are permuted inside windows of `window_blocks`
consecutive blocks, so nearby steps read the same chunks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from .buckets import BucketPlan, _first_fit, _frame_groups
from .splits import Source, _check_selection, _records, select_frames

__all__ = ["EpochPlan", "EpochPlanner", "Step"]


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

