"""Frame selection and train / validation splits of a prepared dataset.

`split_frames` selects frames (optionally by temperature) and splits them into train and validation:
by protein (whole proteins held out: transferability), by (temperature, replica) trajectory, by time
block (contiguous blocks with a gap), or by frame (leaks: for comparison). `select_frames` and
`subsample_frames` are the selection steps on their own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from jaxtyping import Int

from .store import PreparedDataset, ProteinRecord

log = logging.getLogger(__name__)

__all__ = ["SPLITS", "Split", "select_frames", "split_frames", "subsample_frames"]

Source = PreparedDataset | Sequence[ProteinRecord]
TEMPERATURE_TOL = 0.5  # K; frames whose temperature is within this of a requested one are selected


def _records(source: Source) -> list[ProteinRecord]:
    if isinstance(source, PreparedDataset):
        return [source.record(n) for n in source.names]
    recs = list(source)
    names = [r.name for r in recs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate protein names among the records: {dup}")
    return recs


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


_Parts = tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]
"""A split being built: (train, val, dropped) frame indices per protein name."""


def _check_split_args(by: str, val_fraction: float, gap: int, n_blocks: int) -> None:
    """Rejects a `val_fraction` outside [0, 1), an unknown `by`, a negative `gap` or `n_blocks` < 1."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if by not in SPLITS:
        raise ValueError(f"split by must be one of {SPLITS}, got {by!r}")
    if gap < 0 or n_blocks < 1:
        raise ValueError(f"split gap must be >= 0 and n_blocks >= 1, got gap {gap}, n_blocks {n_blocks}")


def _put(out: _Parts, sel: Mapping[str, np.ndarray], name: str, tr: np.ndarray, va: np.ndarray) -> None:
    """Records one protein's training and validation frames; its selected frames in neither are dropped."""
    train, val, dropped = out
    tr, va = np.sort(np.asarray(tr, np.int64)), np.sort(np.asarray(va, np.int64))
    drop = np.setdiff1d(sel[name], np.concatenate([tr, va]))
    for d, v in ((train, tr), (val, va), (dropped, drop)):
        if len(v):
            d[name] = v


def _hold_out_proteins(sel: Mapping[str, np.ndarray], val_fraction: float, rng: np.random.Generator,
                       out: _Parts) -> None:  # fmt: skip
    """Split by "protein": whole proteins are validation (at least one, at most all but one)."""
    train, val, _ = out
    names = sorted(sel)
    n_val = round(val_fraction * len(names))
    if val_fraction > 0 and len(names) >= 2:
        n_val = min(max(n_val, 1), len(names) - 1)
    held = set(rng.permutation(len(names))[:n_val].tolist())
    for k, n in enumerate(names):
        (val if k in held else train)[n] = sel[n]


def _hold_out_frames(sel: Mapping[str, np.ndarray], val_fraction: float, rng: np.random.Generator,
                     out: _Parts) -> None:  # fmt: skip
    """Split by "frame": `round(val_fraction · n)` random frames of every protein are validation."""
    for n in sorted(sel):
        idx = sel[n]
        k = round(val_fraction * len(idx))
        pick = np.zeros(len(idx), bool)
        pick[rng.permutation(len(idx))[:k]] = True
        _put(out, sel, n, idx[~pick], idx[pick])


def _hold_out_in_time(recs: Mapping[str, ProteinRecord], sel: Mapping[str, np.ndarray], by: str,
                      val_fraction: float, gap: int, n_blocks: int, rng: np.random.Generator,
                      out: _Parts) -> None:  # fmt: skip
    """Split by "trajectory" (whole trajectories; time blocks for a protein with one) or "time_block"."""
    for n in sorted(sel):
        trajs = _trajectories(recs[n], sel[n])
        if by == "trajectory" and len(trajs) >= 2:
            k = round(val_fraction * len(trajs))
            if val_fraction > 0:
                k = min(max(k, 1), len(trajs) - 1)
            held = set(rng.permutation(len(trajs))[:k].tolist())
            _put(out, sel, n, np.concatenate([t for i, t in enumerate(trajs) if i not in held] or [sel[n][:0]]),
                 np.concatenate([t for i, t in enumerate(trajs) if i in held] or [sel[n][:0]]))  # fmt: skip
            continue
        if by == "trajectory" and val_fraction > 0:
            log.warning("split by trajectory: protein %s has a single (temperature, replica) trajectory; "
                        "splitting it into time blocks instead", n)  # fmt: skip
        parts = [_time_blocks(t, val_fraction, n_blocks, gap, rng) for t in trajs]
        _put(out, sel, n, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _check_dropped(by: str, sel: Mapping[str, np.ndarray], recs: Mapping[str, ProteinRecord], out: _Parts,
                   gap: int, n_blocks: int) -> None:  # fmt: skip
    """Fails when the gaps leave no training frame; warns when they drop over a fifth of the selection."""
    train, _, dropped = out
    n_drop, n_sel = sum(len(v) for v in dropped.values()), sum(len(v) for v in sel.values())
    if n_drop and not train:
        raise ValueError(f"split by {by} leaves no training frames: the gaps of split_gap {gap} frames around the "
                         f"validation blocks cover every trajectory (the shortest has "
                         f"{min(len(t) for n in sorted(sel) for t in _trajectories(recs[n], sel[n]))} frames); "
                         "use a smaller split_gap, fewer split_blocks, or split_by trajectory")  # fmt: skip
    if n_drop > 0.2 * n_sel:
        log.warning("split by %s drops %d of %d frames in the gaps between training and validation blocks: "
                    "the trajectories are short for split_gap %d and split_blocks %d (use fewer blocks, a "
                    "smaller gap, or split_by trajectory)", by, n_drop, n_sel, gap, n_blocks)  # fmt: skip


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
    _check_split_args(by, val_fraction, gap, n_blocks)
    sel = select_frames(source, temperatures)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    out: _Parts = ({}, {}, {})
    recs: dict[str, ProteinRecord] = {}
    if by == "protein":
        _hold_out_proteins(sel, val_fraction, rng, out)
    elif by == "frame":
        _hold_out_frames(sel, val_fraction, rng, out)
    else:
        recs = {r.name: r for r in _records(source)}
        _hold_out_in_time(recs, sel, by, val_fraction, gap, n_blocks, rng, out)
    _check_dropped(by, sel, recs, out, gap, n_blocks)
    train, val, dropped = out
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


