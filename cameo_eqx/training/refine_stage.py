"""The optional first stage: quasi-Newton (BFGS or LBFGS) force matching of the prior parameters with the
network frozen.

Reuses `cameo_eqx.priors.refine.quasi_newton_force_match` (optimistix BFGS or LBFGS) on the whole force field with a filter spec that
selects only the prior's parameters (the repulsion σ stays fixed unless `refine_sigma`), on a
subsample of TRAINING frames only.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ..fileio import write_atomic
from ..modules import trainable_filter
from ..priors.refine import make_batches, prior_filter_spec, quasi_newton_force_match


def _train_subsample(dm, n_frames: int, seed: int) -> list:
    """In-memory records holding only a random subsample of the training split's frames."""
    pool = [(n, int(f)) for n, idx in sorted(dm.split.train.items()) for f in idx]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(pool), size=min(n_frames, len(pool)), replace=False).tolist())
    by: dict[str, list[int]] = {}
    for i in pick:
        n, f = pool[i]
        by.setdefault(n, []).append(f)
    recs = []
    if hasattr(dm.dataset, "record"):
        get = dm.dataset.record
    else:
        get = {r.name: r for r in dm.dataset}.__getitem__
    for n, fs in by.items():
        rec = get(n)
        idx = np.asarray(fs, np.int64)
        r, f = rec.frames(idx)
        recs.append(dataclasses.replace(rec, positions=r, forces=f,
                                        temperature=np.asarray(rec.temperature)[idx],
                                        replica=np.asarray(rec.replica)[idx]))  # fmt: skip
    return recs


def refine_prior_stage(trainer: Any, model: Any) -> Any:
    """Refines `model.prior` by quasi-Newton force matching of the full model's forces (network frozen).

    **Returns:** the model with refined prior parameters; the report goes to `<run>/refine.json`.
    """
    cfg = trainer.cfg
    rc = cfg.refine
    if model.prior is None:
        raise ValueError("refine stage: the model has no prior")
    recs = _train_subsample(trainer.dm, rc.n_frames, rc.seed)
    batches = make_batches(recs, n_frames=rc.n_frames, frames_per_batch=rc.frames_per_batch,
                           cutoff=cfg.data.cutoff, min_sep=cfg.data.pair_min_sep, seed=rc.seed)  # fmt: skip
    spec = trainable_filter(model, train_backbone=False, train_prior=True)
    spec = eqx.tree_at(lambda s: s.prior, spec, prior_filter_spec(model.prior, rc.refine_sigma))
    new, info = quasi_newton_force_match(model, spec, batches, max_steps=rc.max_steps, rtol=rc.rtol,
                                         atol=rc.atol)  # fmt: skip
    print(f"prior refinement ({info['solver'].upper()}, network frozen): force RMSE {info['rmse_before']:.4g} -> "
          f"{info['rmse_after']:.4g} kcal/mol/Å in {info['steps']} steps", flush=True)  # fmt: skip
    if trainer.is_main:
        write_atomic(trainer.run_dir / "refine.json", json.dumps(info, indent=1))
    return jax.tree.map(lambda x: x, new)
