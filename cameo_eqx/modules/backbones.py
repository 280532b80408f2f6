"""The backbone registry: `BACKBONES` (name → class), `make_backbone` (preset + overrides → module) and
`BackboneOverrides` (the typed overrides of a training config).

Every backbone is an `AbstractBackbone` constructed as `(n_species, cutoff, *, key, <hyperparameters>)`,
its hyperparameters explicit keywords with defaults, spelled the same where they mean the same
(`n_layers`, `n_radial_basis`, `l_max`, `envelope_p`, `avg_num_neighbors`, `readout_hidden`); its
`PRESETS` class variable maps a preset name to some of their values. Presets are resolved here only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
from jaxtyping import PRNGKeyArray

from ..energy import AbstractBackbone
from .allegro import Allegro
from .mace import MACE
from .painn import PaiNN
from .radial import hyperparameter_names

BACKBONES: dict[str, type[AbstractBackbone]] = {"allegro": Allegro, "painn": PaiNN, "mace": MACE}
"""Registered backbones: name → class."""

DEFAULT_PRESETS: dict[str, str] = {"allegro": "default", "painn": "small", "mace": "small"}
"""Each backbone's default size preset, what `make_backbone(preset=None)` (and so `ModelConfig.preset`'s
default, None) builds: one every backbone has, since Allegro has no 'small'."""


@dataclasses.dataclass(frozen=True)
class BackboneOverrides:
    """Backbone hyperparameters that replace the preset's values; None (the default) keeps the preset's
    value (or the backbone's default). Setting one the chosen backbone does not have is an error."""

    n_layers: int | None = None
    """Message-passing (PaiNN, MACE) or tensor-product (Allegro) layers."""
    n_radial_basis: int | None = None
    """Bessel radial basis functions."""
    l_max: int | None = None
    """Largest spherical-harmonic order (Allegro, MACE)."""
    envelope_p: int | None = None
    """Exponent of the polynomial cutoff envelope."""
    avg_num_neighbors: float | None = None
    """Neighbour sums are divided by this."""
    readout_hidden: int | None = None
    """Hidden width of the per-bead readout MLP (PaiNN: 0 means n_features // 2; MACE)."""
    n_features: int | None = None
    """PaiNN: width of the scalar and vector features."""
    envelope: Literal["cosine", "polynomial"] | None = None
    """PaiNN: cutoff function."""
    hidden_irreps: str | None = None
    """MACE: node-feature irreps, one multiplicity for all, e.g. '32x0e + 32x1o'."""
    correlation: int | None = None
    """MACE: body order of the B-basis minus one."""
    radial_hidden: tuple[int, ...] | None = None
    """MACE: hidden widths of the radial MLP."""
    parity: bool | None = None
    """Allegro: track both parities of every l (False: natural parity only)."""
    n_tensor_features: int | None = None
    """Allegro: channels of the tensor track."""
    latent_dim: int | None = None
    """Allegro: width of the scalar edge latent."""
    two_body_hidden: tuple[int, ...] | None = None
    """Allegro: hidden widths of the two-body MLP."""
    latent_hidden: tuple[int, ...] | None = None
    """Allegro: hidden widths of the latent MLP of every layer."""
    edge_energy_hidden: tuple[int, ...] | None = None
    """Allegro: hidden widths of the edge-energy MLP."""
    embed_dim: int | None = None
    """Allegro: width of the species embedding."""

    def as_dict(self) -> dict[str, Any]:
        """The hyperparameters that are set (not None), as `make_backbone` keywords."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


def backbone_presets(cls: type[AbstractBackbone]) -> dict[str, dict[str, Any]]:
    """A backbone class's presets (its `PRESETS`): preset name → hyperparameter values."""
    return cls.PRESETS


def backbone_class(name: str) -> type[AbstractBackbone]:
    """The registered backbone class called `name` (case-insensitive); ValueError naming the registered
    ones when there is none."""
    try:
        return BACKBONES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; registered: {sorted(BACKBONES)}") from None


def check_hyperparameters(name: str, names: Any) -> None:
    """Raises ValueError naming the backbone and the keys when `names` holds a hyperparameter that the
    backbone `name` does not have (its constructor keywords, `radial.hyperparameter_names`).

    **Arguments:** the backbone name (one of `BACKBONES`) and the hyperparameter names to check.
    """
    valid = hyperparameter_names(backbone_class(name))
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ValueError(f"backbone {name!r} has no hyperparameter(s) {unknown}; its hyperparameters are "
                         f"{sorted(valid)}")  # fmt: skip


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
    - `overrides`: hyperparameters (constructor keywords) that replace the preset's values; one the
      backbone does not have is a ValueError naming it.

    **Returns:** the backbone module.
    """
    cls = backbone_class(name)
    presets = backbone_presets(cls)
    if preset is None:
        preset = DEFAULT_PRESETS[name.lower()]
    if preset not in presets:
        raise ValueError(f"unknown {name} preset {preset!r}; choose one of {sorted(presets)}")
    check_hyperparameters(name, overrides)
    params = {**presets[preset], **overrides}
    key = jax.random.PRNGKey(0) if key is None else key
    return cls(n_species, cutoff, key=key, **params)
