"""The `demo` command (`make demo`): the whole pipeline on the bundled demo data.

prepare (data/demo: villin + chignolin, real amber99sbildn forces) → fit-priors → train (a tiny
Allegro + the fitted prior, configs/train_demo.yaml) → evaluate → simulate (a short Langevin run of
the trained model) → analyze (vs the reference frames) → export (chemtrain-deploy artifact + LAMMPS
files). Every stage is the same function the CLI runs; re-running skips stages whose outputs exist.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from .config import load_yaml_defaults
from .data.config import PrepareConfig
from .data.prepare import prepare
from .evaluation.config import EvaluateConfig
from .evaluation.report import evaluate
from .export.chemtrain_deploy import ExportConfig, export
from .simulate import analyze
from .simulate.analysis import verdict_lines
from .simulate.config import AnalyzeConfig, SimulateConfig
from .priors.config import FitPriorsConfig
from .simulate.langevin import simulate
from .training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Run the whole pipeline on the bundled demo data (prepare → fit-priors → train → evaluate →
    simulate → analyze → export) and print where the results are."""

    output: Path = Path("demo_output")
    """Directory for everything the demo writes."""
    inputs: tuple[str, ...] = (str(ROOT / "data" / "demo"),)
    """mdCATH-layout files to prepare (the bundled demo data by default)."""
    train_config: Path = ROOT / "configs" / "train_demo.yaml"
    """Training preset; its dataset/prior/output paths are replaced by the demo's own."""
    max_steps: int | None = None
    """Cap on training steps (None: the preset's epochs)."""
    simulate_steps: int = 5000
    """Langevin steps of the short simulation (2 fs each)."""
    protein: str = "villin"
    """Protein to simulate and export."""
    export: bool = True
    """Write the chemtrain-deploy artifact and LAMMPS files."""


def _stage(name: str) -> float:
    print(f"\n=== demo: {name}", flush=True)
    return time.perf_counter()


def demo(cfg: DemoConfig) -> Path:
    """Runs the demo; returns the output directory."""
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    t = _stage("prepare the bundled all-atom data (basic force map)")
    prepared = out / "prepared"
    prepare(PrepareConfig(inputs=cfg.inputs, output=prepared))
    timings["prepare"] = time.perf_counter() - t

    t = _stage("fit the physics prior (Boltzmann inversion)")
    # lazy: cli.py --help loads DemoConfig, and fit (like the trainer) imports optimistix (~0.35 s)
    from .priors.fit import fit_priors

    priors = out / "priors"
    if not (priors / "prior.yaml").exists():
        fit_priors(FitPriorsConfig(dataset=prepared, output=priors))
    else:
        print(f"{priors / 'prior.yaml'} exists; skipping")
    timings["fit-priors"] = time.perf_counter() - t

    t = _stage("train a small Allegro + prior force field")
    from .training.trainer import train  # lazy: likewise (the trainer imports optax)

    tcfg = load_yaml_defaults(TrainConfig, cfg.train_config, "train")
    tcfg = dataclasses.replace(
        tcfg,
        output=out / "runs",
        data=dataclasses.replace(tcfg.data, dataset=prepared),
        model=dataclasses.replace(tcfg.model, prior=priors / "prior.yaml"),
        max_steps=cfg.max_steps if cfg.max_steps is not None else tcfg.max_steps,
    )
    run = train(tcfg)
    timings["train"] = time.perf_counter() - t

    t = _stage("evaluate on the validation frames")
    report = evaluate(EvaluateConfig(run=run))
    timings["evaluate"] = time.perf_counter() - t

    t = _stage(f"simulate {cfg.protein} with the trained model (Langevin, 2 fs)")

    sim = simulate(SimulateConfig(model=run / "model.eqx", dataset=prepared, protein=cfg.protein,
                                  output=out / "simulation", n_replicas=2, temperature=320.0,
                                  n_steps=cfg.simulate_steps, save_every=50))  # fmt: skip
    timings["simulate"] = time.perf_counter() - t
    t = _stage("analyze the simulation against the reference frames")
    analysis = analyze(AnalyzeConfig(trajectory=sim, dataset=prepared, verbose=False))  # printed at the end
    timings["analyze"] = time.perf_counter() - t

    exported = None
    if cfg.export:
        t = _stage("export to LAMMPS (chemtrain-deploy artifact)")

        exported = export(ExportConfig(model=str(run / "model.eqx"), dataset=str(prepared),
                                       protein=cfg.protein, output=str(out / "lammps"),
                                       platform="cpu"))  # fmt: skip
        timings["export"] = time.perf_counter() - t

    total = time.perf_counter() - t_all
    print("\n=== demo finished in {:.0f} s ({})".format(
        total, ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())))  # fmt: skip
    print(f"  prepared dataset   {prepared / 'dataset.h5'}")
    print(f"  fitted prior       {priors / 'prior.yaml'} (plots in {priors / 'plots'})")
    print(f"  trained model      {run / 'model.eqx'}  (load with cameo_eqx.load)")
    print(f"  TensorBoard logs   tensorboard --logdir {run / 'tb'}")
    print(f"  evaluation report  {report}")
    print(f"  simulation         {sim}")
    print(f"  analysis report    {analysis}")
    if exported is not None:
        print(f"  LAMMPS files       {exported}")


    for line in force_summary(report) + verdict_lines(json.loads(Path(analysis).read_text())):
        print(line)
    return out


def force_summary(report_dir: Path) -> list[str]:
    """The demo's line on force errors: the validation MSE, the noise-floor bracket and the gain over the
    baseline against the lower floor (pessimistic).

    **Arguments:** the evaluation report directory (its `report.json`).

    **Returns:** printable lines.
    """
    r = json.loads((Path(report_dir) / "report.json").read_text())
    nz, ov = r["noise"], r["overall"]

    def f(x, fmt="{:.0f}"):
        return "n/a" if x is None else fmt.format(x)

    base = "the prior alone" if r["gain_baseline"] == "prior" else "zero forces"
    return [f"\n=== forces on {r['n_frames']} validation frames: MSE {f(ov['mse'])} (kcal/mol/Å)², noise floor between "
            f"{f(nz['noise_floor_lower'])} and {f(nz['noise_floor_upper'])}; gain over {base} "
            f"{f(r['gain_vs_lower_floor'], '{:.1%}')} of what the lower floor leaves learnable (pessimistic; "
            + (f"{r['gain_vs_upper_floor']:.1%} against the upper estimate)" if r["gain_vs_upper_floor"] is not None
               else "the baseline is already below the upper estimate)")]  # fmt: skip
