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

from ..data.loader import BatchLoader
from ..data.splits import select_frames, split_frames, subsample_frames
from ..data.store import PreparedDataset
from ..fileio import write_atomic
from ..modules import load
from ..precision import DEFAULT_PRECISION, matmul_precision
from . import metrics as M, plots
from .config import EvaluateConfig


def _frames(cfg: EvaluateConfig, run_cfg: dict[str, Any], ds) -> dict[str, np.ndarray]:
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
    return subsample_frames(sel, cfg.max_frames)


def evaluate(cfg: EvaluateConfig) -> Path:
    """Evaluates `<run>/<model_file>` on the run's validation (or chosen) frames, with true float32
    matrix products (`cameo_eqx.precision`) whatever the model was trained with.

    **Arguments:**

    - `cfg`: the evaluation config.

    **Returns:** the report directory.
    """
    with matmul_precision(DEFAULT_PRECISION):
        return _evaluate(cfg)


def _evaluate(cfg: EvaluateConfig) -> Path:
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
    cutoff = float(d.get("cutoff", model.cutoff))
    sel = _frames(cfg, run_cfg, ds)
    loader = BatchLoader(ds, sel, cutoff=cutoff, target_nodes=cfg.target_nodes,
                         pair_min_sep=int(d.get("pair_min_sep", 2)), prefetch=2)  # fmt: skip
    names = loader.names
    preds = M.collect(model, iter(loader), names)
    res = M.grouped_errors(preds)
    weights = {n: float(np.sum(preds.protein == k)) for k, n in enumerate(names)}
    recs = {n: ds.record(n) for n in names}
    upper = None
    if cfg.noise_upper_frames > 0:
        upper = {n: M.nearest_neighbour_floor(r, max_rmsd=cfg.noise_upper_max_rmsd, max_frames=cfg.noise_upper_frames)
                 for n, r in recs.items()}  # fmt: skip
    truth = M.against_truth(preds, recs)
    nf = M.noise_floor(list(recs.values()), weights, upper, {n: t["noise_floor_true"] for n, t in truth.items()})
    ov = res["overall"]
    prior = res["per_term"].get("prior")
    res["noise"] = nf
    # the baseline the gain is measured from: the prior-only model when there is one, else zero forces
    res["gain_baseline"] = "prior" if prior is not None else "zero_force"
    base = prior["rmse_alone"] ** 2 if prior is not None else ov["msq_target"]
    ov["mse_baseline"] = base
    for which in ("lower", "upper", "true"):
        res[f"gain_vs_{which}_floor"] = M.gain_fraction(base, ov["mse"], nf[f"noise_floor_{which}"])
    if truth:
        tw = sum(weights[n] for n in truth)
        ov["mse_vs_true"] = sum(weights[n] * t["mse_vs_true"] for n, t in truth.items()) / tw
    for name, e in res["per_protein"].items():
        fl = nf["per_protein"].get(name, {})
        b = e.get("mse_prior", e["msq_target"])
        for which in ("lower", "upper", "true"):
            e[f"noise_floor_{which}"] = fl.get(f"noise_floor_{which}")
            e[f"gain_vs_{which}_floor"] = M.gain_fraction(b, e["mse"], fl.get(f"noise_floor_{which}"))
        if name in truth:
            e["mse_vs_true"] = truth[name]["mse_vs_true"]
        if upper is not None:
            e["upper_median_rmsd"] = fl.get("upper_median_rmsd")
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
        lc = plots.loss_curves(run, out / "loss_curves.png", nf["noise_floor_lower"])
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


def _median_rmsd(res: dict[str, Any]) -> float | None:
    v = [e["upper_median_rmsd"] for e in res["per_protein"].values() if e.get("upper_median_rmsd") is not None]
    return float(np.median(v)) if v else None


def _f(x, fmt="{:.3f}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def render_markdown(res: dict[str, Any]) -> str:
    """The human-readable summary of `report.json`."""
    ov, nz = res["overall"], res["noise"]
    lo, up, tr = nz["noise_floor_lower"], nz["noise_floor_upper"], nz["noise_floor_true"]
    base = "the prior-only model" if res["gain_baseline"] == "prior" else "the zero-force model"
    pct = "{:.1%}"
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
        f"| noise floor, lower bound (msq_basic − msq_optimal) | {_f(lo)} |",
        f"| noise floor, upper estimate (nearest neighbours) | {_f(up)} |",
    ]
    if tr is not None:
        lines += [f"| true noise floor, mean (F − F_true)² | {_f(tr)} |",
                  f"| force MSE against F_true | {_f(ov.get('mse_vs_true'))} |"]  # fmt: skip
    lines += [
        f"| mean squared target force (zero-force model MSE) | {_f(ov['msq_target'])} |",
        f"| MSE of {base} (MSE_base) | {_f(ov['mse_baseline'])} |",
        f"| gain over {base}, (MSE_base − MSE) / (MSE_base − lower floor) | {_f(res['gain_vs_lower_floor'], pct)} |",
        f"| same with the upper floor estimate | {_f(res['gain_vs_upper_floor'], pct)}"
        f"{' (MSE_base is below the upper estimate)' if res['gain_vs_upper_floor'] is None and up is not None else ''} |",
    ]
    if tr is not None:
        lines.append(f"| same with the true floor | {_f(res['gain_vs_true_floor'], pct)} |")
    lines += ["", "The force MSE no CG model can beat (the noise floor: the variance of the mapped force at a fixed "
              "CG configuration) lies between the lower bound and the upper estimate. The lower bound counts "
              "only the noise the optimal force map removes, so the gain against it is pessimistic: it is not a "
              "quality score, and a model can be better than it says. The upper estimate is half the mean squared "
              "force difference of nearly coinciding configurations (median RMSD "
              f"{_f(_median_rmsd(res), '{:.2f}')} Å), inflated by their mean-force difference; close to MSE₀ it "
              "only says the data holds no close pairs. Rank models by their simulated ensembles, not by these "
              "numbers."]  # fmt: skip
    lines += ["", "## Per protein", "",
              "| protein | beads×frames | RMSE | MAE | floor RMSE, lower–upper | gain vs lower floor |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for n, e in res["per_protein"].items():
        fl, fu = e.get("noise_floor_lower"), e.get("noise_floor_upper")
        lines.append(f"| {n} | {e['n_beads']} | {_f(e['rmse'])} | {_f(e['mae'])} | "
                     f"{_f(math.sqrt(fl) if fl is not None else None)}–{_f(math.sqrt(fu) if fu is not None else None)} "
                     f"| {_f(e.get('gain_vs_lower_floor'), pct)} |")  # fmt: skip
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
