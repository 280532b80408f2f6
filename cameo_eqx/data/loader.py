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

import collections
import dataclasses
import logging
import multiprocessing
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory
from typing import Any, Literal, NamedTuple

import h5py
import numpy as np

from ..graph import Batch, Capacity, FrameGraph, frame_graph, pack, stack_batches
from .buckets import BucketPlan, CapacityError, _CachedTopology, choose_buckets
from .planner import EpochPlan, EpochPlanner, Step
from .splits import Source
from .store import CHUNK_CACHE_BYTES, ProteinRecord

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

    def add_step(self, info: "StepInfo", cap: Capacity) -> None:
        """Counts one built step: its batches (real and empty), frames, promotion and build time."""
        self.steps += 1
        self.promoted += int(info.promoted)
        self.build_seconds += info.seconds
        zero = {"batches": 0, "nodes": 0, "edges": 0, "pairs": 0, "graphs": 0}
        for counts in info.batches:
            if counts is None:
                self.empty_batches += 1
                continue
            self.batches += 1
            self.frames += counts["graphs"]
            d = self.per_bucket.setdefault(info.bucket, zero | {"capacity": cap._asdict()})
            d["batches"] += 1
            for k in ("nodes", "edges", "pairs", "graphs"):
                d[k] += counts[k]

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
    - `workers`: processes that build steps in parallel (0: none, the thread above builds them). A GPU
      trains faster than one core builds graphs (`benchmarks/bench_batching.py`); with `workers` > 0,
      `workers + prefetch` steps are in flight, yielded in order, the same batches as without. The
      processes start with the first epoch (spawned: a few seconds) and live until `close()`. Each holds
      the records: lazy HDF5 records cost little, records in memory are copied into every worker.
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
        workers: int = 0,
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
        if int(workers) < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = int(workers)
        self._executor: ProcessPoolExecutor | None = None
        self.names = self.planner.names
        self._builder = _StepBuilder(self.planner.records, buckets, self.cutoff, self.pair_min_sep, n_devices)
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
    def step_frames(self, plan: EpochPlan, step: Step) -> "StepFrames":
        """What `step` of `plan` reads: per batch, its (protein, frame) indices."""
        batches = []
        for b in step.batches:
            a, z = (plan.offsets[b], plan.offsets[b + 1]) if b >= 0 else (0, 0)
            batches.append((np.asarray(plan.protein[a:z], np.int64), np.asarray(plan.frame[a:z], np.int64)))
        return StepFrames(plan.epoch, step.index, step.size_class, tuple(batches))

    def build_step(self, plan: EpochPlan, step: Step, stats: EpochStats | None = None) -> Batch:
        """Reads, builds and packs one step (stacked along a device axis if `n_devices` is set)."""
        batch, info = self._builder.build(self.step_frames(plan, step))
        if stats is not None:
            stats.add_step(info, self.buckets.buckets[info.bucket])
        return batch

    # iteration -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        e = self._next_epoch
        self._next_epoch += 1
        return self.epoch(e)

    def epoch(self, epoch: int, start: int = 0, describe: bool = False) -> Iterator[Any]:
        """Iterates one epoch's steps; closing the iterator (or breaking out) stops the thread (and
        cancels the steps queued to the worker processes).

        **Arguments:**

        - `epoch`: the epoch (its plan is a pure function of the loader's seed and this).
        - `start`: the first step to build (resuming mid-epoch).
        - `describe`: yield `(batch, description)` pairs naming each step's proteins and frames.
        """
        t0 = time.perf_counter()
        plan = self.plan(epoch)
        steps = self.steps(epoch)[start:]
        stats = EpochStats(epoch=epoch, plan_seconds=time.perf_counter() - t0)
        if self.workers > 0:
            return self._pooled(plan, steps, stats, describe)
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
        b = self.build_step(plan, step, stats)
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

    def close(self) -> None:
        """Stops the worker processes (if any); a later epoch starts new ones."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_start_worker, initargs=(self._builder,))  # fmt: skip
            weakref.finalize(self, self._executor.shutdown, wait=False, cancel_futures=True)
        return self._executor

    def _pooled(self, plan, steps, stats, describe) -> Iterator[Any]:
        pool = self._pool()
        todo = iter(steps)
        pending: collections.deque = collections.deque()

        def submit() -> None:
            s = next(todo, None)
            if s is not None:
                pending.append((s, pool.submit(_build_in_worker, self.step_frames(plan, s))))

        for _ in range(self.workers + self.prefetch):
            submit()
        try:
            while pending:
                s, fut = pending.popleft()
                try:
                    shared, info = fut.result()
                except BaseException as e:  # noqa: BLE001  (the step is named, the cause chained)
                    where = f"epoch {plan.epoch} step {s.index} (batches {s.batches})"
                    raise RuntimeError(f"batch loader failed at {where}: {e}") from e
                b = _from_shared(*shared)
                stats.add_step(info, self.buckets.buckets[info.bucket])
                submit()
                yield (b, self.describe_step(plan, s)) if describe else b
            self._finish(stats)
        finally:
            for _, fut in pending:
                if not fut.cancel():
                    fut.add_done_callback(_discard_shared)

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


class StepFrames(NamedTuple):
    """What one step reads: per batch (a padding batch has none), the protein and frame indices."""

    epoch: int
    index: int
    size_class: int
    batches: tuple[tuple[np.ndarray, np.ndarray], ...]


class StepInfo(NamedTuple):
    """How one step was built: the bucket it went into (`promoted` when not its class's own), per batch
    the real `nodes`, `edges`, `pairs`, `graphs` (None for a padding batch), and the seconds it took."""

    bucket: int
    promoted: bool
    batches: tuple[dict[str, int] | None, ...]
    seconds: float


class _StepBuilder:
    """Reads, builds and packs steps: all a loader's worker process needs, and picklable (records read
    lazily from HDF5 travel as the file and dataset names, and each process opens the file once)."""

    def __init__(self, records: Sequence[ProteinRecord], buckets: BucketPlan, cutoff: float, pair_min_sep: int,
                 n_devices: int | None):  # fmt: skip
        self.records = list(records)
        self.buckets = buckets
        self.cutoff = float(cutoff)
        self.pair_min_sep = int(pair_min_sep)
        self.n_devices = n_devices
        self._topo = [_CachedTopology(r.topology) for r in self.records]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["records"] = [_portable(r) for r in self.records]
        del state["_topo"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.records = [_reopened(r) for r in self.records]
        self._topo = [_CachedTopology(r.topology) for r in self.records]

    def _graphs(self, sf: StepFrames) -> list[list[FrameGraph]]:
        """Frame graphs of the step's batches; frames read grouped by protein, one call each."""
        want: dict[int, list[int]] = {}
        for prot, frame in sf.batches:
            for p, f in zip(prot.tolist(), frame.tolist()):
                want.setdefault(p, []).append(f)
        got: dict[tuple[int, int], tuple[np.ndarray, np.ndarray | None]] = {}
        for p, fs in want.items():
            rec = self.records[p]
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
        for prot, frame in sf.batches:
            fgs = []
            for p, fi in zip(prot.tolist(), frame.tolist()):
                rec = self.records[p]
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

    def build(self, sf: StepFrames) -> tuple[Batch, StepInfo]:
        """One step packed into its class's bucket, or the smallest that holds it (a `CapacityError`
        names the frames when none does)."""
        t0 = time.perf_counter()
        graphs = self._graphs(sf)
        need = [0] * 7
        for fgs in graphs:
            tot = np.sum([f.sizes for f in fgs], axis=0) if fgs else np.zeros(7, np.int64)
            need = [max(a, int(b)) for a, b in zip(need, tot)]
        need = Capacity(*need)
        caps = self.buckets.buckets
        bucket = self.buckets.classes[sf.size_class].bucket
        promoted = not _fits(need, caps[bucket])
        if promoted:
            fitting = [k for k, c in enumerate(caps) if _fits(need, c)]
            if not fitting:
                frames = [[(self.records[p].name, f) for p, f in zip(prot.tolist(), frame.tolist())]
                          for prot, frame in sf.batches if len(prot)]  # fmt: skip
                raise CapacityError(
                    f"step {sf.index} of epoch {sf.epoch}: real sizes {need} exceed every "
                    f"bucket ({list(caps)}); frames {frames}. The edge/pair "
                    "estimates are too low for these frames: re-run choose_buckets with more "
                    "samples or a larger margin/overflow"
                )
            bucket = min(fitting, key=lambda k: (caps[k].n_edge, caps[k].n_node))
        batches = [pack(fgs, caps[bucket]) for fgs in graphs]
        counts = tuple(
            {"nodes": int(b.node_mask.sum()), "edges": int(b.edge_mask.sum()), "pairs": int(b.pair_mask.sum()),
             "graphs": int(b.graph_mask.sum())} if fgs else None
            for fgs, b in zip(graphs, batches)
        )  # fmt: skip
        out = batches[0] if self.n_devices is None else stack_batches(batches)
        return out, StepInfo(bucket, promoted, counts, time.perf_counter() - t0)


def _portable(rec: ProteinRecord) -> ProteinRecord:
    """What a worker needs of `rec` (to cross a process boundary): its HDF5 datasets as `(file, dataset)`
    names, without the per-frame replica indices and the attributes, which building never reads."""
    def ref(a):
        return ("h5", str(a.file.filename), a.name) if isinstance(a, h5py.Dataset) else a

    return dataclasses.replace(rec, positions=ref(rec.positions), forces=ref(rec.forces),
                               forces_true=ref(rec.forces_true), replica=np.zeros(0, np.int32), attrs={})  # fmt: skip


_OPEN_FILES: dict[str, h5py.File] = {}


def _reopened(rec: ProteinRecord) -> ProteinRecord:
    """The inverse of `_portable`, in this process: each file opened read-only once."""
    def open_ref(a):
        if not (isinstance(a, tuple) and len(a) == 3 and a[0] == "h5"):
            return a
        _, path, name = a
        if path not in _OPEN_FILES:
            _OPEN_FILES[path] = h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
        return _OPEN_FILES[path][name]

    return dataclasses.replace(rec, positions=open_ref(rec.positions), forces=open_ref(rec.forces),
                               forces_true=open_ref(rec.forces_true))  # fmt: skip


_WORKER_BUILDER: _StepBuilder | None = None


def _start_worker(builder: _StepBuilder) -> None:
    """A loader worker process: JAX kept off any accelerator (it only packs NumPy arrays), the builder kept."""
    global _WORKER_BUILDER
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_platforms", "cpu")
    _WORKER_BUILDER = builder


def _build_in_worker(sf: StepFrames) -> tuple[tuple[str, dict[str, Any]], StepInfo]:
    assert _WORKER_BUILDER is not None, "loader worker not started"
    batch, info = _WORKER_BUILDER.build(sf)
    return _to_shared(batch), info


def _to_shared(batch: Batch) -> tuple[str, dict[str, Any]]:
    """`batch`'s arrays copied into one new shared-memory block: its name and the layout. A pipe moves a
    batch (~3 MB for 8,192 beads) at ~0.3 GB/s here, which capped the workers at ~6,700 frames/s; shared
    memory costs the parent one copy."""
    layout: dict[str, Any] = {}
    size = 0
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, np.ndarray):
            layout[f.name] = ("array", v.dtype.str, v.shape, size)
            size += -(-v.nbytes // 64) * 64
        else:
            layout[f.name] = ("value", v)
    shm = shared_memory.SharedMemory(create=True, size=max(size, 1))
    try:
        for name, item in layout.items():
            if item[0] == "array":
                _, dtype, shape, offset = item
                np.ndarray(shape, dtype, buffer=shm.buf, offset=offset)[...] = getattr(batch, name)
    finally:
        shm.close()
    return shm.name, layout


def _from_shared(name: str, layout: dict[str, Any]) -> Batch:
    """The batch `_to_shared` wrote, copied out; the block is freed."""
    shm = shared_memory.SharedMemory(name=name)
    try:
        fields = {k: (np.ndarray(item[2], item[1], buffer=shm.buf, offset=item[3]).copy() if item[0] == "array"
                      else item[1]) for k, item in layout.items()}  # fmt: skip
    finally:
        shm.close()
        shm.unlink()
    return Batch(**fields)


def _discard_shared(fut) -> None:
    """Frees the shared block of a worker's result nobody will read (an epoch left early)."""
    if not fut.cancelled() and fut.exception() is None:
        _from_shared(*fut.result()[0])


def _fits(need: Capacity, cap: Capacity) -> bool:
    return all(a <= b for a, b in zip(need, cap))
