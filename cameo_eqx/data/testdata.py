"""Synthetic proteins for tests and benchmarks: compact CA chains, in-memory records, mdCATH-like sizes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..topology import AMINO_ACIDS, CGTopology
from .store import ProteinRecord

__all__ = ["compact_chain", "mdcath_like_sizes", "synthetic_records"]


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
