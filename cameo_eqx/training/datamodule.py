"""The DataModule: a prepared dataset → split → train / validation batch streams (Lightning analogue).

Wraps `cameo_eqx.data.splits` and `cameo_eqx.data.loader`: the split (`split_by`: protein, trajectory,
time_block or frame; seeded by `split_seed`, the same for every ensemble member), the train loader plans
every epoch deterministically from `(seed, epoch)` and gives each process a disjoint share; batches carry a
leading axis of this process's device count.
`train_batches(epoch, start)` can start mid-epoch (resume) and prefetches in a background thread (and,
with `workers`, builds in worker processes that `close()` stops).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..data.loader import BatchLoader
from ..data.splits import Split, split_frames, subsample_frames
from ..data.store import PreparedDataset
from ..graph import Batch
from .config import DataConfig


class DataModule:
    """Train / validation batches of a prepared dataset.

    **Arguments:**

    - `cfg`: the data config (dataset path, split, cutoff, packing).
    - `seed`: data-order seed (epochs are a pure function of `(seed, epoch)`).
    - `n_devices`: this process's devices (the leading batch axis).
    - `process_index`, `process_count`: this process's share of every epoch.
    - `dataset`: an open `PreparedDataset` or a list of `ProteinRecord`s (default: open `cfg.dataset`).
    """

    def __init__(self, cfg: DataConfig, *, seed: int = 0, n_devices: int = 1, process_index: int = 0,
                 process_count: int = 1, dataset: Any | None = None):  # fmt: skip
        self.cfg = cfg
        self.dataset = dataset if dataset is not None else PreparedDataset(cfg.dataset)
        self.split: Split = split_frames(self.dataset, cfg.split_by, cfg.val_fraction, cfg.split_seed,
                                         temperatures=cfg.temperatures, gap=cfg.split_gap,
                                         n_blocks=cfg.split_blocks)  # fmt: skip
        if self.split.n_train == 0:
            raise ValueError(f"dataset {cfg.dataset}: the split leaves no training frames")
        common = dict(cutoff=cfg.cutoff, target_nodes=cfg.target_nodes, pair_min_sep=cfg.pair_min_sep,
                      n_devices=n_devices, process_index=process_index, process_count=process_count,
                      prefetch=int(cfg.prefetch), workers=int(cfg.workers))  # fmt: skip
        self.train = BatchLoader(self.dataset, self.split.train, seed=seed, shuffle=cfg.shuffle, **common)
        val = subsample_frames(self.split.val, cfg.max_val_frames)
        self.val = BatchLoader(self.dataset, val, seed=0, **common) if val else None

    @property
    def n_species(self) -> int:
        if isinstance(self.dataset, PreparedDataset):
            return self.dataset.n_species
        return int(max(int(np.max(r.topology.species)) for r in self.dataset)) + 1

    @property
    def n_buckets(self) -> int:
        return len(self.train.buckets.buckets)

    def steps_per_epoch(self, epoch: int) -> int:
        return len(self.train.steps(epoch))

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Batch, str]]:
        """`(batch, description)` of epoch `epoch` from step `start` on (prefetched)."""
        return self._stream(self.train, epoch, start)

    def val_batches(self) -> Iterator[tuple[Batch, str]]:
        """The validation batches (always the same order)."""
        if self.val is None:
            return iter(())
        return self._stream(self.val, 0, 0)

    def close(self) -> None:
        """Stops the loaders' worker processes (if any)."""
        for loader in (self.train, self.val):
            if loader is not None:
                loader.close()

    def _stream(self, loader: BatchLoader, epoch: int, start: int):
        return loader.epoch(epoch, start=start, describe=True)
