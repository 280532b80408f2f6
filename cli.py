#!/usr/bin/env python
"""cameo_eqx command line: `python cli.py <command> [--config configs/x.yaml] [--option value ...]`.

Every command is built from a frozen dataclass in its package's config module (`COMMANDS` below names
each: `cameo_eqx/data/config.py`, `cameo_eqx/priors/config.py`, ...); `--config FILE.yaml` supplies defaults
(its `<command>:` section, or a flat file), and flags override them. `python cli.py <command> --help`
explains every option.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> (config class, function that runs it); imported lazily so `--help` is quick and
# data preparation never imports JAX.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("cameo_eqx.data.config:PrepareConfig", "cameo_eqx.data.prepare:prepare"),
    "inspect": ("cameo_eqx.data.config:InspectConfig", "cameo_eqx.data.inspect:inspect"),
    "fit-priors": ("cameo_eqx.priors.config:FitPriorsConfig", "cameo_eqx.priors.fit:fit_priors"),
    "train": ("cameo_eqx.training.config:TrainConfig", "cameo_eqx.training.trainer:train"),
    "evaluate": ("cameo_eqx.evaluation.config:EvaluateConfig", "cameo_eqx.evaluation.report:evaluate"),
    "simulate": ("cameo_eqx.simulate.config:SimulateConfig", "cameo_eqx.simulate.langevin:simulate"),
    "analyze": ("cameo_eqx.simulate.config:AnalyzeConfig", "cameo_eqx.simulate:analyze"),
    "synthesize": ("cameo_eqx.synthetic.generate:SynthesizeConfig", "cameo_eqx.synthetic.generate:synthesize"),
    "export": ("cameo_eqx.export.chemtrain_deploy:ExportConfig", "cameo_eqx.export.chemtrain_deploy:export"),
    "demo": ("cameo_eqx.demo:DemoConfig", "cameo_eqx.demo:demo"),
}


def _load(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _pop_config(args: list[str]) -> tuple[str | None, list[str]]:
    """Removes `--config PATH` / `--config=PATH` from the arguments."""
    out, path, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a == "--config":
            if i + 1 >= len(args):
                raise SystemExit("error: --config needs a YAML file path")
            path, i = args[i + 1], i + 2
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return path, out


def _usage() -> str:
    lines = [__doc__.strip(), "", "commands:"]
    for name, (cls_spec, _) in COMMANDS.items():
        doc = (_load(cls_spec).__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {name:<12} {doc}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> object:
    """Runs one command; returns what the command returns (used by tests)."""
    import tyro

    from cameo_eqx.config import load_yaml_defaults

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return None
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        raise SystemExit(f"error: unknown command {command!r}\n\n{_usage()}")
    cls_spec, fn_spec = COMMANDS[command]
    cls = _load(cls_spec)
    path, rest = _pop_config(rest)
    default = load_yaml_defaults(cls, path, command) if path else cls()
    description = (cls.__doc__ or "").strip() + (
        "\n\nDefaults may come from --config FILE.yaml (its "
        f"'{command}:' section or a flat file); flags override them."
    )
    cfg = tyro.cli(cls, default=default, args=rest, prog=f"cli.py {command}",
                   description=description)  # fmt: skip
    return _load(fn_spec)(cfg)


if __name__ == "__main__":
    import os

    try:
        main()
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        if os.environ.get("CAMEO_DEBUG"):
            raise
        # bad input: a clear message, no traceback (CAMEO_DEBUG=1 shows it)
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
