"""Residues → beads: residue-name normalisation, species maps, chain segments, bonded index arrays.

One bead per residue at its C-alpha. Caps (ACE/NME and friends, which have no CA) get no bead; the
CHARMM terminal patches of mdCATH live inside the first/last residue and need no special handling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from jaxtyping import Float, Int

AMINO_ACIDS: tuple[str, ...] = (
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
    "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL",
)  # fmt: skip
"""The 20 standard amino acids; species index = position in this tuple for the `aa20` map."""

RESNAME_ALIASES: dict[str, str] = {
    # histidine protonation states (CHARMM, Amber)
    "HSD": "HIS", "HSE": "HIS", "HSP": "HIS", "HID": "HIS", "HIE": "HIS", "HIP": "HIS", "HIN": "HIS",
    # cysteine (disulfide, deprotonated)
    "CYX": "CYS", "CYM": "CYS", "CYF": "CYS",
    # protonated acids, neutral lysine
    "ASH": "ASP", "GLH": "GLU", "LYN": "LYS",
    # common CHARMM/Amber variants
    "MSE": "MET", "HSO": "HIS",
}  # fmt: skip
"""Force-field residue variants and their standard residue."""

CAPS: frozenset[str] = frozenset({"ACE", "NME", "NMA", "NH2", "NHE", "CT3", "FOR"})
"""Terminal caps as separate residues: no CA, no bead."""

CHARGE4_GROUPS: dict[str, int] = {
    **{aa: 0 for aa in ("ALA", "VAL", "LEU", "ILE", "MET", "PHE", "PRO", "GLY", "TRP")},  # apolar
    **{aa: 1 for aa in ("SER", "THR", "ASN", "GLN", "CYS", "TYR")},  # polar, uncharged
    **{aa: 2 for aa in ("ARG", "LYS", "HIS")},  # positive
    **{aa: 3 for aa in ("ASP", "GLU")},  # negative
}
"""The `charge4` species map: 4 groups by side-chain charge, 0 apolar, 1 polar, 2 positive, 3 negative."""

SPECIES_MAPS: dict[str, dict[str, int]] = {
    "aa20": {aa: i for i, aa in enumerate(AMINO_ACIDS)},
    "charge4": CHARGE4_GROUPS,
}
"""Named residue → species maps; the name and the map are stored with every prepared dataset."""

RESIDUE_MASSES: dict[str, float] = {
    "ALA": 71.08, "ARG": 156.19, "ASN": 114.10, "ASP": 115.09, "CYS": 103.14,
    "GLN": 128.13, "GLU": 129.12, "GLY": 57.05, "HIS": 137.14, "ILE": 113.16,
    "LEU": 113.16, "LYS": 128.17, "MET": 131.19, "PHE": 147.18, "PRO": 97.12,
    "SER": 87.08, "THR": 101.10, "TRP": 186.21, "TYR": 163.18, "VAL": 99.13,
}  # fmt: skip
"""Residue (in-chain) masses in g/mol, for bead masses in simulation and LAMMPS data files."""

SEPARATION_NONBONDED: int = 1 << 30
"""Sequence separation of beads in different chain segments (or frames): never bonded."""

MAX_CA_CA_DISTANCE: float = 4.5
"""Å; a larger CA-CA distance between consecutive residues starts a new chain segment."""


class UnknownResidueError(ValueError):
    """A residue name that is neither standard, a known variant, nor mapped by the user."""


def normalise_resname(
    name: str | bytes, extra: Mapping[str, str] | None = None, *, where: str = ""
) -> str:
    """Maps a force-field residue name to one of the 20 standard amino acids.

    **Arguments:**

    - `name`: residue name as read (bytes are decoded; case and whitespace are ignored).
    - `extra`: user mapping for non-standard residues (e.g. `{"SEP": "SER"}`), checked first.
    - `where`: context for the error message (file, domain, residue index).

    **Returns:** the standard three-letter name.
    """
    if isinstance(name, bytes):
        name = name.decode()
    key = name.strip().upper()
    if extra and key in extra:
        key = extra[key].strip().upper()
    key = RESNAME_ALIASES.get(key, key)
    if key not in SPECIES_MAPS["aa20"]:
        raise UnknownResidueError(
            f"unknown residue name {name!r}{' at ' + where if where else ''}: not one of the 20 "
            "standard amino acids or their force-field variants; map it explicitly "
            "(e.g. --residue-map SEP=SER)"
        )
    return key


def species_of(resnames: Sequence[str], species_map: str = "aa20") -> Int[np.ndarray, " n"]:
    """Species indices of normalised residue names under a named species map."""
    try:
        table = SPECIES_MAPS[species_map]
    except KeyError:
        raise ValueError(
            f"unknown species map {species_map!r}; choose one of {sorted(SPECIES_MAPS)}"
        ) from None
    return np.asarray([table[r] for r in resnames], dtype=np.int32)


def chain_segments(
    chain: Sequence[str],
    resid: Int[np.ndarray, " n"],
    ca_positions: Float[np.ndarray, "n 3"],
    max_ca_distance: float = MAX_CA_CA_DISTANCE,
) -> Int[np.ndarray, " n"]:
    """Chain-segment index of every bead (0, 1, ...; consecutive beads share it unless broken).

    A new segment starts where the chain id changes, where residue numbers jump by anything but +1,
    or where the CA-CA distance (in the given frame, normally the first) exceeds `max_ca_distance`.
    """
    n = len(resid)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    chain = np.asarray([str(c) for c in chain])
    resid = np.asarray(resid)
    d = np.linalg.norm(np.diff(np.asarray(ca_positions, dtype=np.float64), axis=0), axis=-1)
    brk = (chain[1:] != chain[:-1]) | (np.diff(resid) != 1) | (d > max_ca_distance)
    return np.concatenate([[0], np.cumsum(brk)]).astype(np.int32)


def _runs(segment: Int[np.ndarray, " n"], k: int) -> Int[np.ndarray, "m k"]:
    """All windows of k consecutive beads that lie in one segment."""
    n = len(segment)
    if n < k:
        return np.zeros((0, k), dtype=np.int32)
    start = np.arange(n - k + 1)
    ok = segment[start] == segment[start + k - 1]  # segments are contiguous runs
    start = start[ok]
    return (start[:, None] + np.arange(k)[None, :]).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class CGTopology:
    """The coarse-grained topology of one protein (one bead per residue).

    Bonded terms never cross a segment break; `sequence_separation` is |i - j| inside a segment and
    `SEPARATION_NONBONDED` across segments.
    """

    resname: tuple[str, ...]
    resid: Int[np.ndarray, " n"]
    chain: tuple[str, ...]
    segment: Int[np.ndarray, " n"]
    species: Int[np.ndarray, " n"]

    @property
    def n_beads(self) -> int:
        return len(self.resname)

    @property
    def bonds(self) -> Int[np.ndarray, "n_bond 2"]:
        return _runs(self.segment, 2)

    @property
    def angles(self) -> Int[np.ndarray, "n_angle 3"]:
        return _runs(self.segment, 3)

    @property
    def dihedrals(self) -> Int[np.ndarray, "n_dih 4"]:
        return _runs(self.segment, 4)

    @property
    def masses(self) -> Float[np.ndarray, " n"]:
        return np.asarray([RESIDUE_MASSES[r] for r in self.resname], dtype=np.float64)

    def sequence_separation(
        self, i: Int[np.ndarray, " m"], j: Int[np.ndarray, " m"]
    ) -> Int[np.ndarray, " m"]:
        """|i - j| for beads in one segment, `SEPARATION_NONBONDED` otherwise."""
        same = self.segment[i] == self.segment[j]
        return np.where(same, np.abs(i - j), SEPARATION_NONBONDED).astype(np.int32)
