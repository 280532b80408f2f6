"""Frozen dataclass configs for every command. `cli.py` builds its subcommands from them with tyro;
`--config configs/<name>.yaml` supplies defaults and command-line flags override them. The resolved
config is saved beside every output (dataset, run directory, artifact).

Each field's docstring is its `--help` text.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

# Stage configs live beside their stage and are re-exported here: one config system.
from .priors.config import FitPriorsConfig, PriorConfig, RefineConfig  # noqa: F401


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Read mdCATH-layout HDF5 files and write a coarse-grained (C-alpha) training dataset."""

    inputs: tuple[str, ...] = ()
    """mdCATH files: one or more files, directories (all mdcath_dataset_*.h5 inside) or globs."""
    output: Path = Path("prepared")
    """Output directory; the dataset is written to <output>/dataset.h5 (atomically)."""
    force_map: Literal["slice", "basic", "optimal"] = "basic"
    """Force map: 'basic' (constraint-aware uniform, default), 'optimal' (statistically optimal linear map,
    least noisy) or 'slice' (naive C-alpha forces; biased under X-H constraints, comparison only)."""
    optimal_lambda: float | None = None
    """Ridge λ of the optimal map in (kcal/mol/Å)²; None chooses it from `lambda_grid` by the held-out
    mean squared mapped force."""
    lambda_grid: tuple[float, ...] = (1e1, 1e2, 1e3, 1e4)
    """Candidate λ values when `optimal_lambda` is None."""
    optimal_max_frames: int = 4000
    """Frames (pooled over the domain's temperatures and replicas, evenly subsampled) used to fit the optimal map."""
    constraints: Literal["topology", "data"] = "topology"
    """Where constraint groups (bonds to hydrogen) come from: the topology (PSF bonds, or elements + distances)
    or the data (pairs whose distance std over frames is below `constraint_threshold`)."""
    constraint_threshold: float = 8e-3
    """Å; distance std below which a pair counts as constrained (XTC-rounded mdCATH: X-H ≈ 0.004, heavy-atom bonds ≥ 0.024)."""
    check_constraints: bool = True
    """Cross-check topology constraints against the data and warn on disagreement."""
    noise_estimate: bool = True
    """Estimate each domain's mapped-force noise floor on held-out frames (an optimal map fitted on the
    others; the difference of mean squared mapped forces bounds the loss no CG model can beat)."""
    temperatures: tuple[int, ...] | None = None
    """Temperatures (K) to read; None reads all present."""
    replicas: tuple[int, ...] | None = None
    """Replica indices to read; None reads all present."""
    stride: int = 1
    """Keep every stride-th frame."""
    max_frames: int | None = None
    """Cap on frames per trajectory (after stride); None keeps all."""
    species_map: Literal["aa20", "charge4"] = "aa20"
    """Bead species: 20 amino-acid types, or the 4 charge-based groups (apolar, polar, positive, negative)."""
    residue_map: tuple[str, ...] = ()
    """Extra residue-name mappings NAME=STANDARD for non-standard residues, e.g. SEP=SER."""
    max_ca_distance: float = 4.5
    """Å; a larger CA-CA distance between consecutive residues (first frame) starts a new chain segment."""
    require_forces: bool = True
    """Fail on coordinate-only files (forces are needed for force matching); False stores coordinates only."""
    on_error: Literal["raise", "skip"] = "raise"
    """On a bad domain: stop before writing anything ('raise'), or skip it and report it at the end ('skip')."""
    workers: int = 1
    """Domains prepared in parallel processes."""
    compression: Literal["none", "lzf", "gzip"] = "none"
    """HDF5 compression of R and F."""
    chunk_size: int = 512
    """Frames read per slice (bounds memory for large files)."""

    def check_fields(self, where: str = "prepare") -> None:
        """Range checks of single fields (types are checked when the config is read)."""
        check(where, [
            ("stride", self.stride >= 1, ">= 1", self.stride),
            ("max_frames", self.max_frames is None or self.max_frames >= 1, ">= 1 or null", self.max_frames),
            ("workers", self.workers >= 1, ">= 1", self.workers),
            ("chunk_size", self.chunk_size >= 1, ">= 1", self.chunk_size),
            ("optimal_max_frames", self.optimal_max_frames >= 2, ">= 2", self.optimal_max_frames),
            ("optimal_lambda", self.optimal_lambda is None or self.optimal_lambda > 0, "> 0 or null",
             self.optimal_lambda),
            ("lambda_grid", all(x > 0 for x in self.lambda_grid) and len(self.lambda_grid) > 0,
             "one or more values > 0", self.lambda_grid),
            ("constraint_threshold", self.constraint_threshold > 0, "> 0", self.constraint_threshold),
            ("max_ca_distance", self.max_ca_distance > 0, "> 0", self.max_ca_distance),
        ])  # fmt: skip


@dataclasses.dataclass(frozen=True)
class InspectConfig:
    """Print a summary of a raw mdCATH file or a prepared dataset."""

    path: Path = Path(".")
    """A raw mdCATH .h5 file, or a prepared dataset directory / dataset.h5."""
    noise: bool = True
    """Estimate the mapped-force noise (optimal-map held-out variance) for raw files with forces (slower)."""
    max_frames: int = 2000
    """Frames per domain used for the noise estimate."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (paths and tuples made plain)."""

    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, Path):
            return str(x)
        if isinstance(x, (tuple, list)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return plain(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True, indent=2)


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message names the file and the key."""


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Converts a YAML value to the field type `tp`, checking it on the way (one checker for every config,
    driven by the dataclass annotations): ints, floats, bools, strings, paths, `Literal`s, optionals,
    unions, tuples and nested dataclasses. A wrong type is a `ConfigError` naming `where` (file:key)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if value is None:
        if tp is type(None) or (origin in (typing.Union, types.UnionType) and type(None) in args):
            return None
        raise ConfigError(f"{where}: a value is required (null is not allowed here)")
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e).removeprefix(f"{where}: "))
        raise ConfigError(f"{where}: {'; or '.join(errors)}")
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected one of {list(args)}, got {_describe(value)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
            return tuple(_coerce(args[0], v, f"{where}[{k}]") for k, v in enumerate(value))
        if args:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[{k}]") for k, (a, v) in enumerate(zip(args, value)))
        return tuple(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {_describe(value)} (quote it in YAML)")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {_describe(value)}")
    return value


def check(where: str, rules: list[tuple[str, bool, str, Any]]) -> None:
    """Range checks of a config: `(key, ok, what it must be, value)` each; the first failure is a
    `ConfigError` naming `where.key`. Configs call this from `check_fields(where)`."""
    for key, ok, expected, value in rules:
        if not ok:
            raise ConfigError(f"{where}.{key} must be {expected}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Builds a config dataclass from a dict: unknown keys, wrong types and (through the class's
    `check_fields(where)`, when it has one) out-of-range values are `ConfigError`s naming `where.key`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    if hasattr(obj, "check_fields"):
        obj.check_fields(where)
    return obj


def load_yaml_defaults(cls: type, path: str | Path, command: str) -> Any:
    """Defaults for `command` from a YAML file: its `<command>:` section, or the whole file when it is
    flat (every top-level key an option of `cls`).

    A file of per-command sections with none for `command` is a `ConfigError` naming the command and the
    sections the file has: reading it as empty would silently run with the built-in defaults (e.g.
    `train --config configs/mdcath.yaml`, whose only section is `prepare:`). A top-level key counts as a
    section when it is not an option of `cls` and holds a mapping; options that hold mappings (`model:`,
    `data:` of a flat training file) stay options."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {p} not found")
    with open(p) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping at the top level")
    if command in data:
        section = data[command]
    else:
        options = {f.name for f in dataclasses.fields(cls)}
        sections = [str(k) for k, v in data.items() if k not in options and isinstance(v, dict)]
        if sections:
            raise ConfigError(
                f"{p}: no '{command}:' section for the {command} command; the file's sections are "
                f"{sections} (add a '{command}:' section, or use a config written for {command})"
            )
        section = data  # a flat file for this one command
    return from_dict(cls, section or {}, f"{p}:{command}")
