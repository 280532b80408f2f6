"""A transferable teacher potential: a coarse-grained protein model whose right answer is known.

Synthetic data simulated with this model (see `generate.py`) lets one measure whether force matching
recovers an ensemble when the data suffices: the student is trained on its forces and compared with the
teacher's own simulations, free of force-map noise and of a finite, native-only reference.

The energy depends only on species and geometry (transferable), on the same `Batch` as any model:

    U = U_local + U_contact + U_burial

- `U_local`: bonds, Fourier angles, periodic dihedrals and a soft-sphere repulsion (a `Prior`). The
  parameters are the Boltzmann inversion of the bundled demo data (villin HP35 + CLN025, `fit-priors`
  defaults, 690 frames), with weights bond 1, angle 0.5, dihedral 0.25, repulsion 1: a realistic CA
  chain whose secondary structure is not locked in (at full angle weight the chain is so stiff that
  its size barely changes with temperature).
- `U_contact`: a species-pair attraction on non-bonded pairs with sequence separation ≥ 3,
  -ε_ab · g(r), g(r) = 1 / (1 + exp((r - r_c) / w)) · S(r) (S: the C² switch to zero between 8 and
  10 Å). ε_ab = ε_polar + (ε_apolar - ε_polar) · h_a h_b, with h the Kyte-Doolittle hydropathy
  (Kyte & Doolittle, J. Mol. Biol. 157, 105-132 (1982)) rescaled to [0, 1]: two isoleucines attract
  most, two arginines least.
- `U_burial`: many-body. Bead i's smooth coordination number c_i = Σ_j s(r_ij) over all other beads
  within the cutoff (s: a sigmoid at `burial_r` Å), and U_i = -b_i / (1 + exp(-(c_i - c_half) / c_w)).
  b_i = b_polar + (b_apolar - b_polar) · h_i: hydrophobic beads gain energy when buried, charged ones
  lose it. A sigmoid of a sum of pair terms is not a sum of pair terms, so no pairwise prior can express
  it.

The defaults were chosen by simulation (`benchmarks/calibrate_teacher.py`, Rg against temperature for
20-80-bead random sequences): compact at 300 K, both compact and expanded chains populated near
380 K, expanding towards 450 K. The collapse is gradual, not a sharp two-state transition; the
README's "How good is a trained model?" gives the measured numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..energy import AbstractEnergyModel
from ..fileio import write_atomic
from ..graph import Batch, graph_sum
from .prior import Prior
from .terms import smooth_switch
from ..topology import AMINO_ACIDS

FORMAT = "cameo_eqx.teacher/1"

KYTE_DOOLITTLE: dict[str, float] = {
    "ILE": 4.5, "VAL": 4.2, "LEU": 3.8, "PHE": 2.8, "CYS": 2.5, "MET": 1.9, "ALA": 1.8,
    "GLY": -0.4, "THR": -0.7, "SER": -0.8, "TRP": -0.9, "TYR": -1.3, "PRO": -1.6, "HIS": -3.2,
    "GLU": -3.5, "GLN": -3.5, "ASP": -3.5, "ASN": -3.5, "LYS": -3.9, "ARG": -4.5,
}  # fmt: skip
"""Kyte-Doolittle hydropathy index (Kyte & Doolittle 1982, Table 2)."""


def hydropathy01() -> Float[np.ndarray, " 20"]:
    """Kyte-Doolittle hydropathy of the 20 amino acids (aa20 species order) rescaled to [0, 1]."""
    h = np.asarray([KYTE_DOOLITTLE[a] for a in AMINO_ACIDS])
    return (h - h.min()) / (h.max() - h.min())


# The local terms: `fit-priors` (defaults, global parameters) on the bundled demo data, rounded.
LOCAL_PRIOR: dict[str, Any] = {
    "format": "cameo_eqx.prior/1",
    "terms": {
        "bond": {"weight": 1.0, "per_species": False, "n_species": 20, "params": {"r0": 3.869, "k": 189.7}},
        "angle": {"weight": 0.5, "per_species": False, "n_species": 20, "order": 6, "params": {
            "a": [38.823, 16.048, 3.1976, -2.0982, -1.8283, -6.2666],
            "b": [-43.325, 9.992, -0.82014, 6.4623, -8.3644, -2.2357]}},
        "dihedral": {"weight": 0.25, "per_species": False, "n_species": 20, "order": 6, "params": {
            "k": [0.3807, 1.0016, 0.22417, 0.21563, 0.34135, 0.19436],
            "gamma": [-0.5269, -1.2433, -0.90698, 0.95111, 1.0876, 1.8065]}},
        "repulsion": {"weight": 1.0, "per_species": False, "n_species": 20, "exponent": 4, "min_sep": 2,
                      "cutoff": 10.0, "switch": "smooth", "switch_on": 8.0, "r_floor": 0.1,
                      "params": {"epsilon": 1.0, "sigma": 4.75}},
    },
    "provenance": {"source": "fit-priors on data/demo (villin HP35, CLN025), rounded; teacher weights"},
}  # fmt: skip


class TeacherPotential(AbstractEnergyModel):
    """The teacher: local prior + hydropathy-scaled contacts + a many-body burial term.

    **Fields:** `local` (a `Prior`), the scale parameters (kcal/mol) `eps_apolar`, `eps_polar`,
    `burial_apolar`, `burial_polar`, and static shape parameters (Å, counts). Build the default with
    `TeacherPotential.default()`; `save`/`load` write JSON (format `cameo_eqx.teacher/1`).
    """

    local: Prior
    eps_apolar: Float[Array, ""]
    eps_polar: Float[Array, ""]
    burial_apolar: Float[Array, ""]
    burial_polar: Float[Array, ""]
    contact_r: float = eqx.field(static=True, default=6.5)
    contact_width: float = eqx.field(static=True, default=0.5)
    contact_min_sep: int = eqx.field(static=True, default=3)
    burial_r: float = eqx.field(static=True, default=7.5)
    burial_width: float = eqx.field(static=True, default=0.5)
    burial_half: float = eqx.field(static=True, default=6.0)
    burial_steep: float = eqx.field(static=True, default=1.0)
    switch_on: float = eqx.field(static=True, default=8.0)
    cutoff: float = eqx.field(static=True, default=10.0)
    pair_min_sep: ClassVar[int] = 2
    n_message_passing_layers: ClassVar[int] = 1  # a bead's burial reads its neighbours within the cutoff

    _SCALARS: ClassVar[tuple[str, ...]] = ("eps_apolar", "eps_polar", "burial_apolar", "burial_polar")
    _STATIC: ClassVar[tuple[str, ...]] = ("contact_r", "contact_width", "contact_min_sep", "burial_r",
                                          "burial_width", "burial_half", "burial_steep", "switch_on", "cutoff")  # fmt: skip

    @classmethod
    def default(cls, local_weights: dict[str, float] | None = None, **overrides: float) -> "TeacherPotential":
        """The documented teacher; `local_weights` (term name → weight) and keyword overrides for any
        scale or shape parameter change it."""
        values: dict[str, Any] = {"eps_apolar": 1.8, "eps_polar": 0.225, "burial_apolar": 2.25,
                                  "burial_polar": -0.75}  # fmt: skip
        values.update(overrides)
        unknown = set(values) - set(cls._SCALARS) - set(cls._STATIC)
        if unknown:
            raise ValueError(f"TeacherPotential: unknown parameters {sorted(unknown)}")
        local = json.loads(json.dumps(LOCAL_PRIOR))
        for name, w in (local_weights or {}).items():
            if name not in local["terms"]:
                raise ValueError(f"TeacherPotential: no local term {name!r} (has {sorted(local['terms'])})")
            local["terms"][name]["weight"] = float(w)
        scal = {k: jnp.asarray(float(values.pop(k)), jnp.float32) for k in cls._SCALARS}
        return cls(Prior.from_config(local, where="teacher local prior"), **scal, **values)

    # ------------------------------------------------------------------------------------ energies
    def _species_table(self, apolar, polar) -> Float[Array, " 20"]:
        h = jnp.asarray(hydropathy01(), jnp.float32)
        return polar + (apolar - polar) * h

    def contact_energies(self, batch: Batch) -> Float[Array, " n_pair"]:
        """-ε_ab g(r) of every non-bonded pair (zero on masked pairs and |i - j| < contact_min_sep)."""
        i, j = batch.pairs[:, 0], batch.pairs[:, 1]
        mask = batch.pair_mask & (batch.pair_sep >= self.contact_min_sep)
        d = jnp.take(batch.positions, j, axis=0, mode="clip") - jnp.take(batch.positions, i, axis=0, mode="clip")
        r2 = jnp.where(mask, jnp.sum(d * d, axis=-1), 1.0)
        r = jnp.sqrt(r2)
        h = jnp.asarray(hydropathy01(), jnp.float32)
        hi = jnp.take(h, jnp.take(batch.species, i, mode="clip"), mode="clip")
        hj = jnp.take(h, jnp.take(batch.species, j, mode="clip"), mode="clip")
        eps = self.eps_polar + (self.eps_apolar - self.eps_polar) * hi * hj
        g = jax.nn.sigmoid((self.contact_r - r) / self.contact_width) * smooth_switch(r, self.switch_on, self.cutoff)
        return jnp.where(mask & (r < self.cutoff), -eps * g, 0.0)

    def coordination(self, batch: Batch) -> Float[Array, " n_node"]:
        """Smooth coordination number of every bead: Σ over its radius-graph neighbours of s(r)."""
        s, r = batch.senders, batch.receivers
        d = jnp.take(batch.positions, s, axis=0, mode="clip") - jnp.take(batch.positions, r, axis=0, mode="clip")
        dist = jnp.sqrt(jnp.where(batch.edge_mask, jnp.sum(d * d, axis=-1), 1.0))
        w = jax.nn.sigmoid((self.burial_r - dist) / self.burial_width) * smooth_switch(dist, self.switch_on, self.cutoff)
        w = jnp.where(batch.edge_mask & (dist < self.cutoff), w, 0.0)
        return jax.ops.segment_sum(w, r, num_segments=batch.n_node)

    def burial_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        """-b_i σ((c_i - c_half) / c_w) per bead (zero on padding)."""
        c = self.coordination(batch)
        b = jnp.take(self._species_table(self.burial_apolar, self.burial_polar), batch.species, mode="clip")
        e = -b * jax.nn.sigmoid((c - self.burial_half) / self.burial_steep)
        return jnp.where(batch.node_mask, e, 0.0)

    def contact_node_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        """Half of every contact energy to each of its two beads."""
        half = 0.5 * self.contact_energies(batch)
        e = jnp.zeros(batch.n_node, batch.positions.dtype)
        e = e.at[batch.pairs[:, 0]].add(half, mode="drop").at[batch.pairs[:, 1]].add(half, mode="drop")
        return jnp.where(batch.node_mask, e, 0.0)

    def node_energies(self, batch: Batch) -> Float[Array, " n_node"]:
        """Per-bead energies (kcal/mol): local shares, half of every contact, the bead's burial."""
        return self.local.node_energies(batch) + self.contact_node_energies(batch) + self.burial_energies(batch)

    def energy(self, batch: Batch) -> Float[Array, " n_graph"]:
        """Per-frame energies; the local part through the prior's analytic-force path."""
        return self.local.energy(batch) + graph_sum(self.contact_node_energies(batch) + self.burial_energies(batch),
                                                    batch)  # fmt: skip

    def components(self, batch: Batch) -> dict[str, Float[Array, " n_graph"]]:
        """Per-frame local, contact and burial energies (kcal/mol)."""
        return {"local": self.local.energy(batch), "contact": graph_sum(self.contact_node_energies(batch), batch),
                "burial": graph_sum(self.burial_energies(batch), batch)}  # fmt: skip

    # ------------------------------------------------------------------------------- persistence
    def to_config(self) -> dict[str, Any]:
        """All parameters as plain data (JSON-serialisable)."""
        return {"format": FORMAT, "local": self.local.to_config(),
                **{k: float(getattr(self, k)) for k in self._SCALARS},
                **{k: getattr(self, k) for k in self._STATIC}}  # fmt: skip

    @classmethod
    def from_config(cls, cfg: dict[str, Any], where: str = "teacher config") -> "TeacherPotential":
        if cfg.get("format") != FORMAT:
            raise ValueError(f"{where}: format {cfg.get('format')!r}, expected {FORMAT!r}")
        missing = [k for k in cls._SCALARS + cls._STATIC if k not in cfg]
        if missing:
            raise ValueError(f"{where}: missing teacher parameters {missing}")
        return cls(Prior.from_config(cfg["local"], where=f"{where}: local"),
                   **{k: jnp.asarray(float(cfg[k]), jnp.float32) for k in cls._SCALARS},
                   **{k: cfg[k] for k in cls._STATIC})  # fmt: skip

    def save(self, path: str | os.PathLike) -> Path:
        return write_atomic(Path(path), json.dumps(self.to_config(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TeacherPotential":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no teacher file at {path}")
        return cls.from_config(json.loads(path.read_text()), where=str(path))
