"""Reading and writing the command configs: YAML defaults (`load_yaml_defaults`), checked conversion of
YAML values (`from_dict`), range checks (`check`, `ConfigError`) and JSON (`to_dict`, `to_json`).

Each command's frozen config dataclass lives in its package (`data/config.py`, `priors/config.py`,
`training/config.py`, `evaluation/config.py`, `simulate/config.py`, ...). `cli.py` builds its subcommands
from them with tyro; `--config configs/<name>.yaml` supplies defaults and command-line flags override
them. The resolved config is saved beside every output (dataset, run directory, artifact).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml


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
    """A config value of the wrong type or out of range, or options that contradict each other; the
    message names the key, and the file and section when the config was read from one.

    Errors raised while a config is constructed carry the `key` (relative to that config, e.g.
    `stages[0].lr`; None for the config as a whole) and the `reason`, so that `from_dict` can re-address
    them to the file and section it reads (`ConfigError.under`)."""

    def __init__(self, message: str, key: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.key = key
        self.reason = reason

    @classmethod
    def at(cls, where: str, key: str | None, reason: str) -> ConfigError:
        """The error `<where>.<key> <reason>` (`<where>: <reason>` when `key` is None).

        **Arguments:** `where` (the config: a command or section name, or file:section), `key` (the
        option, relative to that config) and `reason` (what is wrong, e.g. "must be >= 1, got 0").

        **Returns:** the `ConfigError` (to raise).
        """
        return cls(f"{where}.{key} {reason}" if key else f"{where}: {reason}", key, reason)

    def under(self, where: str, parent: str | None = None) -> ConfigError:
        """This error re-addressed to the config at `where`, its key nested under `parent`.

        **Arguments:** `where` (e.g. `configs/x.yaml:train`) and `parent` (the option that holds the
        config that raised, e.g. `stages[0]`; None: the config itself).

        **Returns:** the new `ConfigError` (to raise).
        """
        if self.reason is None:
            return ConfigError(f"{where}{'.' + parent if parent else ''}: {self}")
        key = ".".join(k for k in (parent, self.key) if k) or None
        return ConfigError.at(where, key, self.reason)


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
    """Range checks of a config, run by its `__post_init__` (so an invalid config cannot be constructed,
    from YAML, the command line or Python).

    **Arguments:** `where` (the config's name, e.g. "prepare"; `from_dict` re-addresses the error to the
    file and section) and `rules`, each `(key, ok, what it must be, value)`.

    **Raises:** a `ConfigError` `<where>.<key> must be <what>, got <value>` for the first rule not ok.
    """
    for key, ok, expected, value in rules:
        if not ok:
            raise ConfigError.at(where, key, f"must be {expected}, got {value!r}")


def check_integers(where: str, cfg: Any, keys: Sequence[str]) -> None:
    """Counts set in Python must be integers too (YAML values are converted by `from_dict`, command-line
    values by tyro, but `Config(epochs=2.7)` is not).

    **Arguments:** `where` (the config's name), `cfg` (the config) and `keys` (its integer options; None
    passes).

    **Raises:** a `ConfigError` `<where>.<key> must be an integer, got <value> (<type>)` for the first
    that is not.
    """
    for key in keys:
        value = getattr(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError.at(where, key, f"must be an integer, got {_describe(value)}")


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Builds a config dataclass from a dict.

    **Arguments:** `cls` (the config class), `data` (its options, e.g. a YAML section) and `where` (the
    name errors give it, e.g. `configs/x.yaml:train`).

    **Returns:** the config.

    **Raises:** a `ConfigError` naming `where.key` for an unknown key, a value of the wrong type, or a
    value the config's own checks (its `__post_init__`) reject.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.under(where) from None


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
