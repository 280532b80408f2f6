"""Energy models: backbones (Allegro, PaiNN, MACE), the force field that combines a backbone with a prior,
and its single-file save/load.

`BACKBONES` maps a name to a backbone class. Every class takes `(n_species, cutoff, *, key, **hyperparameters)`
and has a `PRESETS` dict (preset name → hyperparameter overrides).
"""

from __future__ import annotations

import sys
from typing import Any

import jax
from jaxtyping import PRNGKeyArray

from .allegro import Allegro
from .base import AbstractEnergyModel

BACKBONES: dict[str, type[AbstractEnergyModel]] = {"allegro": Allegro}
"""Registered backbones: name → class (PaiNN and MACE are added when their modules import)."""

try:  # written in parallel; registered when importable
    from .painn import PaiNN

    BACKBONES["painn"] = PaiNN
except ImportError:  # pragma: no cover
    pass
try:
    from .mace import MACE

    BACKBONES["mace"] = MACE
except ImportError:  # pragma: no cover
    pass


def backbone_presets(cls: type) -> dict[str, dict[str, Any]]:
    """A backbone's presets: the class's `PRESETS`, else its module's `PRESETS`, else only "default"."""
    presets = getattr(cls, "PRESETS", None)
    if presets is None:
        presets = getattr(sys.modules.get(cls.__module__), "PRESETS", None)
    return presets if presets is not None else {"default": {}}


def make_backbone(
    name: str,
    n_species: int,
    cutoff: float = 10.0,
    preset: str = "default",
    *,
    key: PRNGKeyArray | None = None,
    **overrides: Any,
) -> AbstractEnergyModel:
    """Builds a registered backbone from a preset plus hyperparameter overrides.

    **Arguments:**

    - `name`: backbone name, one of `BACKBONES` ("allegro", "painn", "mace").
    - `n_species`: number of bead species.
    - `cutoff`: radius-graph cutoff in Å.
    - `preset`: a name in the class's `PRESETS` ("default", ...).
    - `key`: PRNG key for the initial parameters (default `jax.random.PRNGKey(0)`).
    - `overrides`: hyperparameters that replace the preset's values.

    **Returns:** the backbone module.
    """
    try:
        cls = BACKBONES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; registered: {sorted(BACKBONES)}") from None
    presets = backbone_presets(cls)
    if preset not in presets:
        raise ValueError(f"unknown {name} preset {preset!r}; choose one of {sorted(presets)}")
    params = {**presets[preset], **overrides}
    key = jax.random.PRNGKey(0) if key is None else key
    try:
        return cls(n_species, cutoff, key=key, **params)
    except TypeError as err:
        raise ValueError(f"bad hyperparameters for backbone {name!r} ({sorted(params)}): {err}") from err


from .forcefield import ForceField, load, load_config, register_prior, save, trainable_filter  # noqa: E402

__all__ = [
    "AbstractEnergyModel", "Allegro", "BACKBONES", "backbone_presets", "ForceField", "load", "load_config", "make_backbone",
    "register_prior", "save", "trainable_filter",
]  # fmt: skip
