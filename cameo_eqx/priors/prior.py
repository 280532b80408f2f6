"""The physics prior: a weighted sum of prior terms, saved and loaded as YAML or JSON.

Weights multiply each term's energy. The defaults (bond 0.5, angle 0.25, dihedral 0.25, repulsion 1.0):
Boltzmann-inverted terms double-count correlations between bonds, angles and
dihedrals, so the prior keeps only a fraction of each (the network learns the rest), while the
repulsion, which only keeps beads apart, counts fully. `fit_priors` stores the Boltzmann-inverted
parameters themselves, so a fitted prior's bond energy is `weight_bond · U_BI(r)`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import yaml
from jaxtyping import Array, Float

from ..energy import AbstractPrior, energy_and_forces
from ..fileio import write_atomic
from ..graph import Batch
from .config import PriorConfig
from .terms import (
    TERM_CLASSES,
    AbstractPriorTerm,
    FourierAngle,
    HarmonicBond,
    PeriodicDihedral,
    SoftSphereRepulsion,
    n_types,
    prior_frame_energies,
)

FORMAT = "cameo_eqx.prior/1"

_PARAMS: dict[str, tuple[str, ...]] = {name: cls.param_names for name, cls in TERM_CLASSES.items()}
"""Each term's parameter tables (its `param_names`)."""
_STATIC: dict[str, tuple[str, ...]] = {
    name: tuple(f.name for f in dataclasses.fields(cls)
                if f.metadata.get("static", False) and f.name not in ("per_species", "n_species"))
    for name, cls in TERM_CLASSES.items()
}  # fmt: skip
"""Each term's static hyperparameters besides the species layout (written to and read from the file)."""
DEFAULT_WEIGHTS: dict[str, float] = {"bond": 0.5, "angle": 0.25, "dihedral": 0.25, "repulsion": 1.0}
"""Default term weights (module docstring: why the bonded terms keep only a fraction)."""


class Prior(AbstractPrior):
    """Weighted sum of prior terms; an `AbstractPrior` (per-bead energies sum to the total; forces per term).

    **Arguments:**

    - `terms`: the terms (at most one per name: bond, angle, dihedral, repulsion).
    - `weights`: one weight per term (default: `DEFAULT_WEIGHTS` by name).
    - `provenance`: JSON-serialisable record of where the parameters came from (saved with them).
    """

    terms: tuple[AbstractPriorTerm, ...]
    weights: tuple[float, ...] = eqx.field(static=True)
    provenance_json: str = eqx.field(static=True)
    n_message_passing_layers: ClassVar[int] = 1
    pair_min_sep: ClassVar[int] = 2

    def __init__(self, terms, weights=None, provenance: dict[str, Any] | None = None):
        terms = tuple(terms)
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"Prior: duplicate terms {names}")
        if weights is None:
            weights = [DEFAULT_WEIGHTS[n] for n in names]
        weights = tuple(float(w) for w in weights)
        if len(weights) != len(terms):
            raise ValueError(f"Prior: {len(weights)} weights for {len(terms)} terms")
        self.terms = terms
        self.weights = weights
        self.provenance_json = json.dumps(provenance or {}, sort_keys=True)

    # ---------------------------------------------------------------------------------------- access
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)

    @property
    def cutoff(self) -> float | None:
        """The largest cutoff (Å) of the terms that read the radius graph (repulsion), or None."""
        cutoffs = [t.cutoff for t in self.terms if t.cutoff is not None]
        return max(cutoffs) if cutoffs else None

    @property
    def provenance(self) -> dict[str, Any]:
        return json.loads(self.provenance_json)

    def term(self, name: str) -> AbstractPriorTerm:
        """The term called `name` (KeyError naming the present terms otherwise)."""
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(f"prior has no term {name!r} (has {list(self.names)})")

    def weight(self, name: str) -> float:
        return self.weights[self.names.index(name)]

    # ------------------------------------------------------------------------------------ energies
    def node_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        """Σ_terms weight · per-bead energy (kcal/mol), zero on padded beads."""
        e = jnp.zeros(batch.n_node, batch.positions.dtype)
        for w, t in zip(self.weights, self.terms):
            e = e + w * t.node_energies(batch)
        return e

    def energy(self, batch: Batch) -> Float[Array, " n_graph"]:
        """Per-frame prior energies (kcal/mol), zero for padded frames.

        Equal to `graph_sum(node_energies)` up to rounding, computed by `terms.prior_frame_energies`:
        analytic per-tuple forces of all terms accumulated by 4-wide scatter-adds in a custom VJP, which makes
        `energy_and_forces` several times faster than differentiating `node_energies`.
        """
        return prior_frame_energies(self.terms, self.weights, batch)

    def energy_and_forces(self, batch: Batch) -> tuple[Float[Array, " n_graph"], Float[Array, "n_node 3"]]:
        """Per-frame energies and per-bead forces -∂E/∂R (kcal/mol/Å; zero on padded beads)."""
        return energy_and_forces(self, batch)

    def components(self, batch: Batch) -> dict[str, tuple[Float[Array, " n_graph"], Float[Array, "n_node 3"]]]:
        """Each term's weighted contribution.

        **Arguments:**

        - `batch`: a packed batch.

        **Returns:** dict name → (per-frame energies `(n_graph,)`, forces `(n_node, 3)`), both including
        the term's weight; they sum to `energy_and_forces`.
        """
        out = {}
        for w, t in zip(self.weights, self.terms):
            out[t.name] = energy_and_forces(Prior([t], [w]), batch)
        return out

    def term_forces(self, batch: Batch) -> dict[str, Float[Array, "n_node 3"]]:
        """Each term's weighted forces (kcal/mol/Å), by term name; they sum to the prior's forces."""
        return {name: f for name, (_, f) in self.components(batch).items()}

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_prior_config(cls, cfg: PriorConfig, provenance: dict[str, Any] | None = None) -> "Prior":
        """An unfitted prior with the config's terms, parametrisation, weights and initial values
        (bond r0/k and repulsion ε/σ from the config; angle and dihedral coefficients zero)."""
        terms, weights = [], []
        s = cfg.n_species
        if cfg.bond:
            terms.append(HarmonicBond.init(cfg.bond_r0, cfg.bond_k, per_species=cfg.bond_per_species,
                                           n_species=s))  # fmt: skip
            weights.append(cfg.weight_bond)
        if cfg.angle:
            terms.append(FourierAngle.init(cfg.angle_order, per_species=cfg.angle_per_species, n_species=s))
            weights.append(cfg.weight_angle)
        if cfg.dihedral:
            terms.append(PeriodicDihedral.init(cfg.dihedral_order, per_species=cfg.dihedral_per_species,
                                               n_species=s))  # fmt: skip
            weights.append(cfg.weight_dihedral)
        if cfg.repulsion:
            terms.append(SoftSphereRepulsion.init(
                cfg.repulsion_epsilon, cfg.repulsion_sigma, exponent=cfg.repulsion_exponent,
                min_sep=cfg.min_sep, cutoff=cfg.repulsion_cutoff, switch=cfg.repulsion_switch,
                switch_on=cfg.switch_on, per_species=cfg.repulsion_per_species, n_species=s))  # fmt: skip
            weights.append(cfg.weight_repulsion)
        return cls(terms, weights, provenance)

    def replace_term(self, term: AbstractPriorTerm) -> "Prior":
        """A copy with the term of the same name replaced."""
        i = self.names.index(term.name)
        return eqx.tree_at(lambda p: p.terms[i], self, term)

    def with_provenance(self, provenance: dict[str, Any]) -> "Prior":
        return Prior(self.terms, self.weights, provenance)

    # ------------------------------------------------------------------------------ serialisation
    def to_config(self) -> dict[str, Any]:
        """Every parameter, hyperparameter, weight and the provenance as plain Python data.

        Per-species tables are written as `{"default": row, "rows": {type: row}}`, listing only rows that
        differ from the most common one (type indices as in `terms.pair_type` & co.).
        """
        terms = {}
        for w, t in zip(self.weights, self.terms):
            d: dict[str, Any] = {"weight": w, "per_species": t.per_species, "n_species": t.n_species}
            if hasattr(t, "order"):
                d["order"] = t.order
            for f in _STATIC[t.name]:
                d[f] = getattr(t, f)
            d["params"] = {f: _encode_table(np.asarray(getattr(t, f)), t.per_species) for f in _PARAMS[t.name]}
            terms[t.name] = d
        return {"format": FORMAT, "terms": terms, "provenance": self.provenance}

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str = "prior config") -> "Prior":
        """Inverse of `to_config` (errors name the term and field that is wrong)."""
        if config.get("format") != FORMAT:
            raise ValueError(f"{where}: format {config.get('format')!r}, expected {FORMAT!r}")
        terms, weights = [], []
        for name, d in config.get("terms", {}).items():
            if name not in TERM_CLASSES:
                raise ValueError(f"{where}: unknown term {name!r} (known: {sorted(TERM_CLASSES)})")
            cls_t = TERM_CLASSES[name]
            per, s = bool(d["per_species"]), int(d["n_species"])

            rows = n_types(cls_t.type_kind, s) if per else 1  # type: ignore[arg-type]
            width = d.get("order")
            params = []
            for f in _PARAMS[name]:
                try:
                    arr = _decode_table(d["params"][f], rows, width)
                except (KeyError, ValueError, TypeError) as e:
                    raise ValueError(f"{where}: term {name!r} parameter {f!r}: {e}") from e
                params.append(jnp.asarray(arr))
            if name == "repulsion":
                term = cls_t(*params, int(d["exponent"]), int(d["min_sep"]), float(d["cutoff"]),
                             str(d["switch"]), float(d["switch_on"]), float(d.get("r_floor", 0.1)), per, s)  # fmt: skip
            else:
                term = cls_t(*params, per, s)
            terms.append(term)
            weights.append(float(d["weight"]))
        return cls(terms, weights, config.get("provenance", {}))

    def save(self, path: str | os.PathLike) -> Path:
        """Writes `to_config()` as YAML (`.yaml`/`.yml`) or JSON (otherwise), atomically."""
        path = Path(path)
        cfg = self.to_config()
        if path.suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=120)
        else:
            text = json.dumps(cfg, indent=1)
        return write_atomic(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Prior":
        """Reads a prior written by `save` (YAML or JSON by suffix)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no prior file at {path} (run `cli.py fit-priors` first)")
        with open(path) as fh:
            if path.suffix in (".yaml", ".yml"):
                cfg = yaml.safe_load(fh)
            else:
                cfg = json.load(fh)
        return cls.from_config(cfg, where=str(path))


def _py(x: np.ndarray) -> Any:
    return [float(v) for v in x] if x.ndim else float(x)


def _encode_table(table: np.ndarray, per_species: bool) -> Any:
    if not per_species:
        return _py(table[0])
    flat = table.reshape(len(table), -1)
    uniq, inv, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    mode = int(np.argmax(counts))
    rows = {int(i): _py(table[i]) for i in np.flatnonzero(inv != mode)}
    return {"default": _py(table[np.flatnonzero(inv == mode)[0]]), "rows": rows}


def _decode_table(value: Any, n_rows: int, width: int | None) -> np.ndarray:
    shape = (n_rows,) if width is None else (n_rows, width)
    if isinstance(value, dict):
        out = np.empty(shape, np.float32)
        out[...] = np.asarray(value["default"], np.float32)
        for k, row in (value.get("rows") or {}).items():
            i = int(k)
            if not 0 <= i < n_rows:
                raise ValueError(f"type index {i} outside [0, {n_rows})")
            out[i] = np.asarray(row, np.float32)
        return out
    row = np.asarray(value, np.float32)
    if row.shape != shape[1:]:
        raise ValueError(f"expected shape {shape[1:]}, got {row.shape}")
    return np.broadcast_to(row, shape).copy()
