"""The backbone registry: `BACKBONES` (name → class) and `make_backbone` (preset + overrides → module).

Every backbone is an `AbstractBackbone` that takes `(n_species, cutoff, *, key, **hyperparameters)` and
has a `PRESETS` class variable (preset name → hyperparameter values); presets are resolved here only.
"""

from __future__ import annotations

from typing import Any

import jax
from jaxtyping import PRNGKeyArray

from ..energy import AbstractBackbone
from .allegro import Allegro
from .mace import MACE
from .painn import PaiNN

BACKBONES: dict[str, type[AbstractBackbone]] = {"allegro": Allegro, "painn": PaiNN, "mace": MACE}
"""Registered backbones: name → class."""

DEFAULT_PRESETS: dict[str, str] = {"allegro": "default", "painn": "small", "mace": "small"}
"""Each backbone's default size preset, what `make_backbone(preset=None)` (and so `ModelConfig.preset`'s
default, None) builds: one every backbone has, since Allegro has no 'small'."""


def backbone_presets(cls: type[AbstractBackbone]) -> dict[str, dict[str, Any]]:
    """A backbone class's presets (its `PRESETS`): preset name → hyperparameter values."""
    return cls.PRESETS


def make_backbone(
    name: str,
    n_species: int,
    cutoff: float = 10.0,
    preset: str | None = None,
    *,
    key: PRNGKeyArray | None = None,
    **overrides: Any,
) -> AbstractBackbone:
    """Builds a registered backbone from a preset plus hyperparameter overrides.

    **Arguments:**

    - `name`: backbone name, one of `BACKBONES` ("allegro", "painn", "mace").
    - `n_species`: number of bead species.
    - `cutoff`: radius-graph cutoff in Å.
    - `preset`: a name in the class's `PRESETS` ("default", ...); None: the backbone's
      `DEFAULT_PRESETS` entry.
    - `key`: PRNG key for the initial parameters (default `jax.random.PRNGKey(0)`).
    - `overrides`: hyperparameters that replace the preset's values.

    **Returns:** the backbone module.
    """
    try:
        cls = BACKBONES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; registered: {sorted(BACKBONES)}") from None
    presets = backbone_presets(cls)
    if preset is None:
        preset = DEFAULT_PRESETS[name.lower()]
    if preset not in presets:
        raise ValueError(f"unknown {name} preset {preset!r}; choose one of {sorted(presets)}")
    params = {**presets[preset], **overrides}
    key = jax.random.PRNGKey(0) if key is None else key
    try:
        return cls(n_species, cutoff, key=key, **params)
    except TypeError as err:
        raise ValueError(f"bad hyperparameters for backbone {name!r} ({sorted(params)}): {err}") from err
