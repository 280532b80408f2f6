"""Evaluation plots (matplotlib, Agg backend, PNG): parity, force-component histograms, loss curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .metrics import Predictions


def _plt():
    import matplotlib  # lazy: only for the plots (matplotlib.pyplot imports in ~1 s)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _sub(n: int, cap: int, seed: int = 0) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def parity(p: Predictions, path: Path, max_points: int = 20000) -> Path:
    """Predicted vs reference force components: the model, and each term alone (one panel each)."""
    plt = _plt()
    panels = [("total", p.pred)] + [(k, v) for k, v in p.terms.items() if k != "total"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    idx = _sub(len(p.ref), max_points)
    ref = p.ref[idx].ravel()
    lim = float(np.percentile(np.abs(ref), 99.5)) * 1.1 if len(ref) else 1.0
    for ax, (name, f) in zip(axes[0], panels):
        y = f[idx].ravel()
        ax.hexbin(ref, y, gridsize=60, bins="log", extent=(-lim, lim, -lim, lim), mincnt=1)
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        rmse = float(np.sqrt(np.mean((f - p.ref) ** 2)))
        ax.set_title(f"{name}: RMSE {rmse:.2f}")
        ax.set_xlabel("reference force component (kcal/mol/Å)")
        ax.set_ylabel("predicted (kcal/mol/Å)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def histograms(p: Predictions, path: Path) -> Path:
    """Distributions of reference, predicted and residual force components, and of each term."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ref = p.ref.ravel()
    lim = float(np.percentile(np.abs(ref), 99.5)) * 1.2 if len(ref) else 1.0
    bins = np.linspace(-lim, lim, 101)
    for name, v in (("reference", ref), ("predicted", p.pred.ravel()), ("residual", (p.pred - p.ref).ravel())):
        axes[0].hist(v, bins=bins, histtype="step", density=True, label=name)
    axes[0].set_xlabel("force component (kcal/mol/Å)")
    axes[0].set_ylabel("density")
    axes[0].legend()
    for name, v in p.terms.items():
        axes[1].hist(v.ravel(), bins=bins, histtype="step", density=True, label=name)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("term force component (kcal/mol/Å)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_log(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """Train and validation records of a run's `metrics.jsonl` (empty lists if absent)."""
    f = Path(run_dir) / "metrics.jsonl"
    train, val = [], []
    if f.exists():
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            (val if r.get("kind") == "val" else train).append(r)
    return train, val


def loss_curves(run_dir: Path, path: Path, noise_floor: float | None = None) -> Path | None:
    """Force MSE (train and validation) against the step, with the noise floor as a line."""
    train, val = read_log(run_dir)
    if not train and not val:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot([r["step"] for r in train], [r["force_rmse"] ** 2 for r in train], lw=0.8, label="train force MSE")
    val = [r for r in val if "force_mse" in r]  # a run without validation frames logs only sim_* metrics
    if val:
        ax.plot([r["step"] for r in val], [r["force_mse"] for r in val], "o-", label="validation force MSE")
    if noise_floor is not None:
        ax.axhline(noise_floor, color="k", ls="--", label="noise floor, lower bound")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("(kcal/mol/Å)²")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
