"""`evaluate(cfg)`: the evaluation report of a trained run (`cli.py evaluate`).

Writes `<report>/report.json` (every number), `<report>/report.md` (the summary a user reads),
`parity.png`, `force_histograms.png`, `loss_curves.png`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import write_atomic
from ..training.config import EvaluateConfig
from . import metrics as M
from . import plots


def _frames(cfg: EvaluateConfig, run_cfg: dict[str, Any], ds) -> dict[str, np.ndarray]:
    from ..data.batching import select_frames, split_frames
    from ..training.datamodule import _subsample

    d = run_cfg.get("data", {})
    temps = d.get("temperatures")
    if cfg.split == "all":
        sel = select_frames(ds, temps)
    else:
        # the run's own split (config.json holds every field; runs older than split_gap used "frame")
        sp = split_frames(ds, d.get("split_by", "frame"), float(d.get("val_fraction", 0.1)),
                          int(d.get("split_seed", 0)), temperatures=temps, gap=int(d.get("split_gap", 5)),
                          n_blocks=int(d.get("split_blocks", 10)))  # fmt: skip
        sel = sp.val if cfg.split == "val" else sp.train
        if not sel:
            raise ValueError(f"run {cfg.run}: the {cfg.split!r} split is empty (val_fraction "
                             f"{d.get('val_fraction')}); use --split all")  # fmt: skip
    return _subsample(sel, cfg.max_frames)


def evaluate(cfg: EvaluateConfig) -> Path:
    """Evaluates `<run>/<model_file>` on the run's validation (or chosen) frames.

    **Arguments:**

    - `cfg`: the evaluation config.

    **Returns:** the report directory.
    """
    from ..data.batching import BatchLoader
    from ..data.store import PreparedDataset
    from ..modules import load

    run = Path(cfg.run)
    mfile = run / cfg.model_file
    if not mfile.exists():
        raise FileNotFoundError(f"no model at {mfile} (train first, or pass --model-file)")
    cfg_file = run / "config.json"
    run_cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    dpath = cfg.dataset or Path(run_cfg.get("data", {}).get("dataset", "prepared"))
    ds = PreparedDataset(dpath)
    model = load(mfile)
    d = run_cfg.get("data", {})
    cutoff = float(d.get("cutoff", getattr(model, "cutoff", 10.0)))
    sel = _frames(cfg, run_cfg, ds)
    loader = BatchLoader(ds, sel, cutoff=cutoff, target_nodes=cfg.target_nodes,
                         pair_min_sep=int(d.get("pair_min_sep", 2)), prefetch=2)  # fmt: skip
    names = loader.names
    preds = M.collect(model, iter(loader), names)
    res = M.grouped_errors(preds)
    weights = {n: float(np.sum(preds.protein == k)) for k, n in enumerate(names)}
    nf = M.noise_floor([ds.record(n) for n in names], weights)
    ov = res["overall"]
    prior_mse = res["per_term"].get("prior", {}).get("rmse_alone")
    res["noise"] = nf
    res["captured_fraction"] = M.captured_fraction(ov["msq_target"], ov["mse"], nf["noise_floor"])
    if prior_mse is not None and nf["noise_floor"] is not None:
        pm = prior_mse**2
        res["captured_fraction_beyond_prior"] = (pm - ov["mse"]) / (pm - nf["noise_floor"]) if pm > nf["noise_floor"] else None
    for name, e in res["per_protein"].items():
        fl = nf["per_protein"].get(name, {}).get("noise_floor")
        e["noise_floor"] = fl
        e["captured_fraction"] = M.captured_fraction(e["msq_target"], e["mse"], fl)
    res["n_frames"] = preds.n_frames
    res["split"] = cfg.split
    res["model"] = str(mfile)
    res["dataset"] = str(ds.path)
    out = Path(cfg.output) if cfg.output is not None else run / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    figs = {}
    if cfg.plots:
        figs["parity"] = plots.parity(preds, out / "parity.png").name
        figs["histograms"] = plots.histograms(preds, out / "force_histograms.png").name
        lc = plots.loss_curves(run, out / "loss_curves.png", nf["noise_floor"])
        if lc is not None:
            figs["loss_curves"] = lc.name
    res["figures"] = figs
    write_atomic(out / "report.json", json.dumps(res, indent=1, default=float))
    md = render_markdown(res)
    write_atomic(out / "report.md", md)
    print(md, flush=True)
    print(f"report: {out}", flush=True)
    ds.close()
    return out


def _f(x, fmt="{:.3f}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def render_markdown(res: dict[str, Any]) -> str:
    """The human-readable summary of `report.json`."""
    ov, nf = res["overall"], res["noise"]["noise_floor"]
    lines = [
        f"# Evaluation of {res['model']}",
        "",
        f"{res['n_frames']} frames ({res['split']} split) of {res['dataset']}. Errors are per force component "
        "over real beads (kcal/mol/Å; MSE in (kcal/mol/Å)²).",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| force RMSE | {_f(ov['rmse'])} |",
        f"| force MAE | {_f(ov['mae'])} |",
        f"| force MSE | {_f(ov['mse'])} |",
        f"| noise floor (MSE no CG model can beat) | {_f(nf)} |",
        f"| noise-floor RMSE | {_f(math.sqrt(nf) if nf is not None else None)} |",
        f"| mean squared target force (zero-force model MSE) | {_f(ov['msq_target'])} |",
        f"| learnable part captured, (MSE₀ − MSE) / (MSE₀ − floor) | {_f(res.get('captured_fraction'), '{:.1%}')} |",
    ]
    if res.get("captured_fraction_beyond_prior") is not None:
        lines.append(f"| learnable part beyond the prior captured | {_f(res['captured_fraction_beyond_prior'], '{:.1%}')} |")
    lines += ["", "## Per protein", "", "| protein | beads×frames | RMSE | MAE | noise floor RMSE | captured |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for n, e in res["per_protein"].items():
        fl = e.get("noise_floor")
        lines.append(f"| {n} | {e['n_beads']} | {_f(e['rmse'])} | {_f(e['mae'])} | "
                     f"{_f(math.sqrt(fl) if fl is not None else None)} | {_f(e.get('captured_fraction'), '{:.1%}')} |")
    lines += ["", "## Per temperature", "", "| T (K) | RMSE | MAE |", "|---|---|---|"]
    for t, e in res["per_temperature"].items():
        lines.append(f"| {t} | {_f(e['rmse'])} | {_f(e['mae'])} |")
    lines += ["", "## Per term", "", "RMS of each term's force, and the RMSE of that term alone against the target "
              "('prior' = all prior terms together, the prior-only model).", "",
              "| term | RMS force | RMSE alone | MAE alone |", "|---|---|---|---|"]  # fmt: skip
    for t, e in res["per_term"].items():
        lines.append(f"| {t} | {_f(e['rms'])} | {_f(e['rmse_alone'])} | {_f(e['mae_alone'])} |")
    if res.get("figures"):
        lines += ["", "Figures: " + ", ".join(res["figures"].values())]
    return "\n".join(lines) + "\n"
