"""cameo_eqx: transferable coarse-grained protein force fields in JAX + equinox.

The public API for notebooks (imported lazily, so `import cameo_eqx` is quick and data preparation
never loads JAX):

```python
import cameo_eqx
ff = cameo_eqx.load("run/model.eqx")                     # a trained ForceField
forces = ff.forces(positions, topology)                  # one protein, kcal/mol/Å
ds = cameo_eqx.PreparedDataset("prepared")               # a prepared dataset
```
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # models
    "ForceField": "cameo_eqx.modules.forcefield",
    "load": "cameo_eqx.modules.forcefield",
    "save": "cameo_eqx.modules.forcefield",
    "trainable_filter": "cameo_eqx.modules.forcefield",
    "make_backbone": "cameo_eqx.modules",
    "AbstractEnergyModel": "cameo_eqx.energy",
    "AbstractBackbone": "cameo_eqx.energy",
    "AbstractPrior": "cameo_eqx.energy",
    "Prior": "cameo_eqx.priors.prior",
    # data
    "Batch": "cameo_eqx.graph",
    "Capacity": "cameo_eqx.graph",
    "frame_graph": "cameo_eqx.graph",
    "pack": "cameo_eqx.graph",
    "single_frame_batch": "cameo_eqx.graph",
    "graph_sum": "cameo_eqx.graph",
    "CGTopology": "cameo_eqx.topology",
    "MDCATHFile": "cameo_eqx.data.mdcath",
    "PreparedDataset": "cameo_eqx.data.store",
    "ProteinRecord": "cameo_eqx.data.store",
    "BatchLoader": "cameo_eqx.data.loader",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cameo_eqx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
