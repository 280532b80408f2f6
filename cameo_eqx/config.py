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


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Converts a YAML value to the field type (tuples, paths, nested dataclasses, optionals)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(non_none[0], value, where)
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is Path:
        return Path(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        elem = args[0] if args else Any
        return tuple(_coerce(elem, v, where) for v in value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Builds a config dataclass from a dict, with a clear error on unknown keys."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{where}: unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(names)}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_yaml_defaults(cls: type, path: str | Path, command: str) -> Any:
    """Defaults for `command` from a YAML file: its `<command>:` section if present, else the top level."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {p} not found")
    with open(p) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping at the top level")
    if command in data:
        section = data[command]
    elif any(isinstance(v, dict) for v in data.values()):
        section = {}  # a file of per-command sections with none for this command
    else:
        section = data  # a flat file for this one command
    return from_dict(cls, section or {}, f"{p}:{command}")
