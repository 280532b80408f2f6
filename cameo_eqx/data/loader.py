"""The prefetching batch loader: packed `Batch`es of a frame selection, epoch after epoch.

`BatchLoader` plans each epoch with an `EpochPlanner` (`cameo_eqx.data.planner`), reads each step's frames
grouped by protein (one sorted h5py read per protein per step), builds the frame graphs (`neighbors.radius_pairs`) and
packs them (see `cameo_eqx.graph` for the batch layout) in a background thread, optionally with a leading
device axis and sharded across processes.

Overflow policy. The planner fills a batch up to the bucket's capacity divided by `1 + margin`
using the estimates; the real sizes are only known once a frame is read. A step whose real sizes
exceed its bucket is packed into the smallest bucket that holds it (each size class has an
"overflow" bucket with `1 + overflow` times the edges and pairs), counted in `EpochStats.promoted`.
Nothing is dropped or truncated: if no bucket holds the step, a `CapacityError` names the frames
and sizes. (In a multi-process run a promotion changes that step's shapes on one process only;
the default margins make it rare, and the stats count it.)
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ..graph import Batch, Capacity, FrameGraph, frame_graph, pack, stack_batches
from .buckets import BucketPlan, CapacityError, _CachedTopology, choose_buckets
from .planner import EpochPlan, EpochPlanner, Step
from .splits import Source

log = logging.getLogger(__name__)

__all__ = ["BatchLoader", "EpochStats"]


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
