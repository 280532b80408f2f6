"""The force field: a backbone (ML) plus a prior (physics), or either alone; single-file save/load.

One pytree holds every learnable parameter (backbone and prior); `trainable_filter` picks what trains.

**Prior protocol** (what a prior class provides to plug in here):

- it is an `AbstractEnergyModel` (`node_energies(batch)`), learnable parameters as array fields;
- save/load: `to_config() -> dict` (JSON-serialisable, enough to rebuild a skeleton with the same array
  shapes) and a classmethod `from_config(config) -> prior`; the class is found again at load time through
  `register_prior(cls)` or, for classes inside `cameo_eqx`, by its module path;
- per-term forces: an `AbstractPrior` reports them (`term_forces`); any other energy model is one term
  named "prior".

**File format** (`save`/`load`): one UTF-8 JSON line (format tag, the skeleton description, the user's
config, `sha256` and `size` of the parameter bytes), a newline, then `eqx.tree_serialise_leaves` bytes.
Written to a temporary file and renamed. `load` verifies the checksum (a flipped byte in the parameters
is an error, not a silently wrong model); files written before the checksum existed still load.

**Format versions** (the number after the slash of the format tag, `FORMAT_VERSION` now): a header of an
older version is converted step by step on reading (`HEADER_UPGRADES`), so old model files keep loading;
a newer version than this code knows is an error naming the file and the version.

- 1 → 2: Allegro's hyperparameters `num_layers` and `n_radial` were renamed `n_layers` and
  `n_radial_basis` (the names PaiNN and MACE use).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..fileio import write_atomic
from ..graph import Batch, frame_graph, pack
from ..topology import CGTopology
from ..energy import AbstractBackbone, AbstractEnergyModel, AbstractPrior
from ..energy import energy_and_forces as _energy_and_forces
from .backbones import BACKBONES, make_backbone

FORMAT_NAME = "cameo_eqx.forcefield"
FORMAT_VERSION = 2
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
"""The format tag that `save` writes (see the module docstring for the versions)."""


class ForceField(AbstractEnergyModel):
    """Backbone + prior energy model: total energies, per-bead energies, forces, per-term forces.

    **Arguments (constructor):**

    - `backbone`: the ML energy model, or `None` (prior only).
    - `prior`: the physics prior (an `AbstractEnergyModel`), or `None` (pure ML).
    - `cutoff`: radius-graph cutoff (Å) used when this object builds graphs itself (`forces`); default
      the backbone's `cutoff`, else the prior's `cutoff` attribute, else 10 Å.
    - `pair_min_sep`: minimum sequence separation of non-bonded pairs when building graphs.
    """

    backbone: AbstractBackbone | None
    prior: AbstractEnergyModel | None
    cutoff: float = eqx.field(static=True)
    pair_min_sep: int = eqx.field(static=True)

    def __init__(
        self,
        backbone: AbstractBackbone | None,
        prior: AbstractEnergyModel | None = None,
        *,
        cutoff: float | None = None,
        pair_min_sep: int = 2,
    ):
        if backbone is None and prior is None:
            raise ValueError("ForceField needs a backbone, a prior, or both; got neither")
        for what, m, cls in (("backbone", backbone, AbstractBackbone), ("prior", prior, AbstractEnergyModel)):
            if m is not None and not isinstance(m, cls):
                raise TypeError(f"ForceField {what} must be an {cls.__name__}, got {type(m)}")
        if cutoff is None:
            cutoff = next((m.cutoff for m in (backbone, prior) if m is not None and m.cutoff), 10.0)
        self.backbone, self.prior = backbone, prior
        self.cutoff, self.pair_min_sep = float(cutoff), int(pair_min_sep)

    @property
    def n_message_passing_layers(self) -> int:
        """Receptive field in graph hops: the larger of the backbone's and the prior's."""
        return max(m.n_message_passing_layers for m in (self.backbone, self.prior) if m is not None)

    def node_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        """Per-bead energies (kcal/mol), backbone + prior, zero on padded beads."""
        e = jnp.zeros(batch.positions.shape[:1], batch.positions.dtype)
        for m in (self.backbone, self.prior):
            if m is not None:
                e = e + m.node_energies(batch)
        return jnp.where(batch.node_mask, e, 0.0)

    def energy(self, batch: Batch) -> Float[Array, " n_graph"]:
        """Total energy of every frame (kcal/mol), zero for padded frames: the backbone's and the
        prior's `energy` (so the prior's fast analytic-force path is used)."""
        return sum(m.energy(batch) for m in (self.backbone, self.prior) if m is not None)

    def energy_and_forces(
        self, batch: Batch
    ) -> tuple[Float[Array, " n_graph"], Float[Array, "n_node 3"]]:
        """Energies per frame and forces -∂E/∂R (kcal/mol/Å), zero on padded beads."""
        return _energy_and_forces(self, batch)

    def term_forces(self, batch: Batch) -> dict[str, Float[Array, "n_node 3"]]:
        """Forces of each term: "ml" (the backbone) and each prior component (see the module docstring).

        **Returns:** a dict name → `(n_node, 3)` forces, zero on padded beads.
        """
        out = {}
        if self.backbone is not None:
            out["ml"] = _energy_and_forces(self.backbone, batch)[1]
        if isinstance(self.prior, AbstractPrior):
            out.update(self.prior.term_forces(batch))
        elif self.prior is not None:
            out["prior"] = _energy_and_forces(self.prior, batch)[1]
        return out

    def batch_for(
        self,
        positions: Float[np.ndarray, "n 3"] | Float[np.ndarray, "t n 3"],
        species_or_topology: Int[np.ndarray, " n"] | CGTopology,
        topology: CGTopology | None = None,
    ) -> Batch:
        """An unpadded batch of one protein (one or several frames), graphs built at `self.cutoff`."""
        pos = np.asarray(positions, dtype=np.float32)
        if pos.ndim == 2:
            pos = pos[None]
        if pos.ndim != 3 or pos.shape[-1] != 3:
            raise ValueError(f"positions must have shape (n, 3) or (frames, n, 3), got {np.shape(positions)}")
        n = pos.shape[1]
        if isinstance(species_or_topology, CGTopology):
            topology = species_or_topology
        else:
            species = np.asarray(species_or_topology, dtype=np.int32)
            if species.shape != (n,):
                raise ValueError(f"species must have shape ({n},) to match positions, got {species.shape}")
            if topology is None:  # one unbroken chain
                topology = CGTopology(resname=("UNK",) * n, resid=np.arange(n), chain=("A",) * n,
                                      segment=np.zeros(n, np.int32), species=species)  # fmt: skip
            else:
                topology = dataclasses.replace(topology, species=species)
        if topology.n_beads != n:
            raise ValueError(f"topology has {topology.n_beads} beads but positions have {n}")
        check_species(self, topology.species)
        frames = [frame_graph(p, topology, self.cutoff, pair_min_sep=self.pair_min_sep) for p in pos]
        sizes = [f.sizes for f in frames]
        cap = type(sizes[0])(*(sum(s[k] for s in sizes) for k in range(len(sizes[0]))))
        return pack(frames, cap).to_device()

    def forces(
        self,
        positions: Float[np.ndarray, "n 3"] | Float[np.ndarray, "t n 3"],
        species_or_topology: Int[np.ndarray, " n"] | CGTopology,
        topology: CGTopology | None = None,
    ) -> Float[np.ndarray, "n 3"] | Float[np.ndarray, "t n 3"]:
        """Forces (kcal/mol/Å) on one unpadded protein, for notebooks (builds the graph on the host).

        **Arguments:**

        - `positions`: bead positions in Å, `(n, 3)` or `(frames, n, 3)`.
        - `species_or_topology`: bead species `(n,)` or a `CGTopology` (gives species and bonded terms).
        - `topology`: the topology when species are given separately (its species are replaced);
          without one the beads form one unbroken chain.

        **Returns:** NumPy forces with the shape of `positions`.
        """
        batch = self.batch_for(positions, species_or_topology, topology)
        f = np.asarray(_jit_energy_and_forces(self, batch)[1])
        return f.reshape(np.shape(positions))


_jit_energy_and_forces = eqx.filter_jit(_energy_and_forces)


def check_species(model: AbstractEnergyModel, species: Int[np.ndarray, " n"]) -> None:
    """Raises ValueError when a species index is too large for the embedding of `model`'s backbone (a
    `ForceField`'s, or the model itself when it is one); models without a backbone take any index.

    **Arguments:** the model and the protein's bead species.
    """
    backbone = model.backbone if isinstance(model, ForceField) else model
    if isinstance(backbone, AbstractBackbone) and len(species) and int(np.max(species)) >= backbone.n_species:
        raise ValueError(f"species index {int(np.max(species))} of the protein is out of range for a model "
                         f"with {backbone.n_species} species")  # fmt: skip




def trainable_filter(ff: ForceField, train_backbone: bool = True, train_prior: bool = True) -> Any:
    """Filter spec (a pytree of bools like `ff`) for `eqx.partition`: which arrays train.

    **Arguments:**

    - `ff`: the force field.
    - `train_backbone`, `train_prior`: whether that part's floating-point arrays train.

    **Returns:** the spec; `params, static = eqx.partition(ff, spec)`.
    """
    spec = jax.tree.map(eqx.is_inexact_array, ff)
    for part, on in (("backbone", train_backbone), ("prior", train_prior)):
        sub = getattr(ff, part)
        if sub is not None and not on:
            spec = eqx.tree_at(lambda f, part=part: getattr(f, part), spec,
                               jax.tree.map(lambda _: False, getattr(spec, part)))  # fmt: skip
    return spec


# --------------------------------------------------------------------------------------------- save / load

PRIOR_REGISTRY: dict[str, type] = {}
"""Prior classes that `load` may rebuild, by "module:qualname" (see `register_prior`)."""


def register_prior(cls: type) -> type:
    """Class decorator: lets `load` rebuild priors of this class (needs `to_config`/`from_config`)."""
    if not (hasattr(cls, "from_config") and hasattr(cls, "to_config")):
        raise TypeError(f"{cls.__qualname__} must define to_config() and a classmethod from_config()")
    PRIOR_REGISTRY[f"{cls.__module__}:{cls.__qualname__}"] = cls
    return cls


def _prior_class(name: str) -> type:
    if name in PRIOR_REGISTRY:
        return PRIOR_REGISTRY[name]
    module, _, qual = name.partition(":")
    if not module.startswith("cameo_eqx"):
        raise ValueError(f"prior class {name!r} is not registered (call register_prior on it before load)")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    if isinstance(v, dict):
        return {k: _tuplify(x) for k, x in v.items()}
    return v


def backbone_config(backbone: AbstractBackbone) -> dict:
    """JSON description that rebuilds a registered backbone's skeleton through `make_backbone`."""
    names = [n for n, c in BACKBONES.items() if type(backbone) is c]
    if not names:
        raise ValueError(f"backbone class {type(backbone).__qualname__} is not in BACKBONES; cannot save it")
    hp = dict(backbone.hyperparameters())
    hp = {k: v for k, v in hp.items() if k not in ("n_species", "cutoff", "key")}
    bad = [k for k, v in hp.items() if not _jsonable(v)]
    if bad:
        raise ValueError(f"backbone hyperparameters {bad} are not JSON-serialisable")
    return {"name": names[0], "n_species": int(backbone.n_species), "cutoff": float(backbone.cutoff),
            "hyperparameters": hp}  # fmt: skip


def skeleton_config(ff: ForceField) -> dict:
    """The JSON description of `ff` that `load` rebuilds (parameters excluded)."""
    out: dict[str, Any] = {"cutoff": ff.cutoff, "pair_min_sep": ff.pair_min_sep, "backbone": None,
                           "prior": None}  # fmt: skip
    if ff.backbone is not None:
        out["backbone"] = backbone_config(ff.backbone)
    if ff.prior is not None:
        cls = type(ff.prior)
        if not hasattr(ff.prior, "to_config"):
            raise ValueError(f"prior class {cls.__qualname__} has no to_config(); cannot save it")
        out["prior"] = {"class": f"{cls.__module__}:{cls.__qualname__}", "config": ff.prior.to_config()}
    return out


def save(path: str | os.PathLike, ff: ForceField, config: Mapping[str, Any] | None = None) -> Path:
    """Writes `ff` (skeleton description + parameters) and `config` to one file, atomically.

    **Arguments:**

    - `path`: output file (conventionally `model.eqx`); its directory must exist.
    - `ff`: the force field.
    - `config`: extra JSON-serialisable metadata stored alongside (e.g. the training config).

    **Returns:** the path written.
    """
    path = Path(path)
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, ff)
    params = buf.getvalue()
    header = {"format": FORMAT, "model": skeleton_config(ff), "config": dict(config or {}),
              "sha256": hashlib.sha256(params).hexdigest(), "size": len(params)}  # fmt: skip
    try:
        line = json.dumps(header)
    except TypeError as err:
        raise ValueError(f"save {path}: config is not JSON-serialisable: {err}") from err
    return write_atomic(path, line.encode() + b"\n" + params)


RENAMED_1_TO_2: dict[str, dict[str, str]] = {"allegro": {"num_layers": "n_layers", "n_radial": "n_radial_basis"}}
"""Backbone name → {old hyperparameter name: shared name} of format 1 → 2."""


def upgrade_hyperparameters(backbone: str, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters written before format 2 (model files, run configs) under the shared names.

    **Arguments:** the backbone's registry name and its hyperparameters (name → value).

    **Returns:** a new dict with Allegro's `num_layers`/`n_radial` renamed `n_layers`/`n_radial_basis`.
    """
    renames = RENAMED_1_TO_2.get(backbone, {})
    return {renames.get(k, k): v for k, v in hyperparameters.items()}


def _upgrade_1_to_2(header: dict) -> dict:
    """Renames Allegro's `num_layers`/`n_radial` to the shared `n_layers`/`n_radial_basis`."""
    backbone = (header.get("model") or {}).get("backbone")
    if isinstance(backbone, dict):
        backbone["hyperparameters"] = upgrade_hyperparameters(str(backbone.get("name")),
                                                              backbone.get("hyperparameters") or {})
    return header


HEADER_UPGRADES: dict[int, Callable[[dict], dict]] = {1: _upgrade_1_to_2}
"""Format version v → the function that converts a header of version v to version v + 1 (in place)."""


def _format_version(tag: Any, path) -> int:
    """The version number of a format tag `cameo_eqx.forcefield/<n>`; ValueError for another tag or a
    version newer than `FORMAT_VERSION`."""
    name, _, version = str(tag).partition("/")
    if name != FORMAT_NAME or not version.isdigit():
        raise ValueError(f"{path}: format {tag!r}, expected {FORMAT!r}")
    if int(version) > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {int(version)} is newer than this cameo_eqx reads "
                         f"({FORMAT_VERSION}); update cameo_eqx to load it")  # fmt: skip
    return int(version)


def _read_header(f, path) -> dict:
    line = f.readline()
    try:
        header = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: not a cameo_eqx force-field file (no JSON header line)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a cameo_eqx force-field file (the header line is not a JSON object)")
    version = _format_version(header.get("format"), path)
    model = header.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{path}: the header has no 'model' description (damaged or not written by save())")
    missing = [k for k in ("backbone", "prior", "cutoff", "pair_min_sep") if k not in model]
    if missing:
        raise ValueError(f"{path}: the header's 'model' lacks {missing} (damaged or not written by save())")
    for v in range(version, FORMAT_VERSION):
        header = HEADER_UPGRADES[v](header)
    header["format"] = FORMAT
    return header


def load_config(path: str | os.PathLike) -> dict:
    """The JSON header of a saved force field: `{"format", "model", "config", "sha256", "size"}` (files
    written before checksums existed have no `sha256`/`size`), converted to the current format version."""
    with open(path, "rb") as f:
        return _read_header(f, path)


def load(path: str | os.PathLike) -> ForceField:
    """Rebuilds a `ForceField` saved by `save` (skeleton from the JSON header, then the parameters)."""
    with open(path, "rb") as f:
        header = _read_header(f, path)
        model = header["model"]
        backbone = prior = None
        if model["backbone"] is not None:
            b = model["backbone"]
            hp = {k: _tuplify(v) for k, v in b["hyperparameters"].items()}
            backbone = make_backbone(b["name"], b["n_species"], b["cutoff"], **hp)
        if model["prior"] is not None:
            prior = _prior_class(model["prior"]["class"]).from_config(model["prior"]["config"])
        skeleton = ForceField(backbone, prior, cutoff=model["cutoff"], pair_min_sep=model["pair_min_sep"])
        params = f.read()
    if "sha256" in header:  # files saved before checksums existed have none and load as before
        if len(params) != header.get("size", len(params)):
            raise ValueError(f"{path}: parameters are {len(params)} bytes, the header says {header['size']} "
                             "(truncated or damaged file)")  # fmt: skip
        if hashlib.sha256(params).hexdigest() != header["sha256"]:
            raise ValueError(f"{path}: parameter checksum mismatch (the file is corrupt; retrain or restore it)")
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(params), skeleton)
    except Exception as err:
        raise ValueError(f"{path}: parameters do not match the saved skeleton: {err}") from err
