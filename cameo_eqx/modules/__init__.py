"""Energy models: backbones (Allegro, PaiNN, MACE), the force field that combines a backbone with a prior,
and its single-file save/load.

`BACKBONES` maps a name to a backbone class (`backbones.py`); the contracts (`AbstractEnergyModel`,
`AbstractBackbone`, `AbstractPrior`) live in the core module `cameo_eqx.energy`.
"""

from __future__ import annotations

from ..energy import AbstractBackbone, AbstractEnergyModel, AbstractPrior
from .allegro import Allegro
from .backbones import BACKBONES, BackboneOverrides, backbone_presets, make_backbone
from .forcefield import ForceField, load, load_config, register_prior, save, trainable_filter
from .mace import MACE
from .painn import PaiNN

__all__ = [
    "AbstractBackbone", "AbstractEnergyModel", "AbstractPrior", "Allegro", "BACKBONES", "BackboneOverrides",
    "backbone_presets", "ForceField", "MACE", "PaiNN", "load", "load_config", "make_backbone", "register_prior",
    "save", "trainable_filter",
]  # fmt: skip
