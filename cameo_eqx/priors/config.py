"""Frozen config dataclasses of the physics priors: what the prior is made of (`PriorConfig`) and how it
is fitted from a prepared dataset (`FitPriorsConfig`, the `fit-priors` command).

Each field's docstring is its `--help` text.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from ..config import check

# Fixed parameters of a prior that is not fitted (`Prior.from_prior_config`, `HarmonicBond.init`); fitting
# replaces them with Boltzmann-inverted values.
OLD_BOND_R0: float = 3.84
"""Å, harmonic bond rest length of an unfitted prior: the C-alpha-C-alpha distance of a trans peptide."""
OLD_BOND_K: float = 154.5
"""kcal/mol/Å², harmonic bond force constant of an unfitted prior (energy 0.5·k·(r - r0)²; thermal
fluctuation sqrt(kT/k) ≈ 0.06 Å at 300 K)."""
OLD_REPULSION_EPSILON: float = 1.0
"""kcal/mol, soft-sphere repulsion strength of an unfitted prior."""
OLD_REPULSION_SIGMA: float = 3.0
"""Å, soft-sphere repulsion radius of an unfitted prior (fitting sets σ from the non-bonded distances)."""
OLD_REPULSION_MIN_SEP: int = 6
"""Sequence separation from which repulsion acts with `old_min_sep_6`: ≥ 6, so beads 2..5 apart are not
repelled and can overlap (the default, `repulsion_min_sep` 2, repels them)."""


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """The terms of the physics prior, their parametrisation and their weights.

    Weights multiply each term's energy. The defaults (bond 0.5, angle 0.25, dihedral 0.25, repulsion
    1.0) keep a fraction of each Boltzmann-inverted bonded term: fitting stores the inverted potentials
    themselves, and the prior keeps this fraction of each (inverted bonded terms double-count their correlations; the network
    learns the rest). Set all weights to 1 for the full Boltzmann-inverted prior.
    """

    bond: bool = True
    """Harmonic bond 0.5·k·(r - r0)² on consecutive beads of a chain segment."""
    angle: bool = True
    """Fourier angle Σ_n a_n cos(nθ) + b_n sin(nθ) on bead triplets."""
    dihedral: bool = True
    """Periodic dihedral Σ_n k_n (1 + cos(nφ - γ_n)) on bead quadruplets."""
    repulsion: bool = True
    """Soft-sphere repulsion ε (σ/r)^p on non-bonded pairs."""
    n_species: int = 20
    """Number of bead species (20 for the aa20 map, 4 for charge4); sizes the per-species tables."""
    bond_per_species: bool = False
    """Bond parameters per unordered species pair (a, b) == (b, a) instead of global."""
    angle_per_species: bool = False
    """Angle parameters per triplet type: centre species x unordered end pair, (a, b, c) == (c, b, a)."""
    dihedral_per_species: bool = False
    """Dihedral parameters per quadruplet type, (a, b, c, d) == (d, c, b, a) (S^4 table, canonical order)."""
    repulsion_per_species: bool = False
    """Repulsion ε, σ per unordered species pair instead of global."""
    angle_order: int = 3
    """Fourier order of an unfitted angle term (fitting picks its own order, up to max_fourier_order)."""
    dihedral_order: int = 3
    """Fourier order of an unfitted dihedral term (fitting picks its own, up to max_fourier_order)."""
    repulsion_exponent: int = 4
    """p of ε (σ/r)^p."""
    repulsion_min_sep: int = 2
    """Minimum sequence separation of a repelled pair (2: every pair that is not bonded, so no two beads
    can overlap; pairs in other segments or chains always count)."""
    old_min_sep_6: bool = False
    """Repel only pairs at sequence separation ≥ 6 (beads 2..5 apart may then overlap), for comparison
    with priors built that way; overrides repulsion_min_sep."""
    repulsion_cutoff: float = 10.0
    """Å; the radius-graph cutoff the pairs come from (repulsion is truncated there)."""
    repulsion_switch: Literal["smooth", "shift", "none"] = "smooth"
    """How the truncated repulsion goes to zero at the cutoff: 'smooth' multiplies by a C² switch from
    switch_on to the cutoff (energy and force continuous, so MD conserves energy; default), 'shift'
    subtracts U(cutoff) (energy continuous, force jumps by p·U(rc)/rc), 'none' truncates (U jumps at the cutoff)."""
    switch_on: float = 8.0
    """Å; where the smooth switch starts (with σ = 3 Å the switch changes U by < 0.02 kcal/mol)."""
    weight_bond: float = 0.5
    """Weight of the bond term (old default 0.5)."""
    weight_angle: float = 0.25
    """Weight of the angle term (old default 0.25)."""
    weight_dihedral: float = 0.25
    """Weight of the dihedral term (old default 0.25)."""
    weight_repulsion: float = 1.0
    """Weight of the repulsion term (old default 1.0)."""
    bond_r0: float = OLD_BOND_R0
    """Å, initial (unfitted) bond rest length."""
    bond_k: float = OLD_BOND_K
    """kcal/mol/Å², initial (unfitted) bond force constant."""
    repulsion_epsilon: float = OLD_REPULSION_EPSILON
    """kcal/mol, initial repulsion ε (not fitted by Boltzmann inversion: only ε·σ^p matters)."""
    repulsion_sigma: float = OLD_REPULSION_SIGMA
    """Å, initial (unfitted) repulsion σ."""

    @property
    def min_sep(self) -> int:
        """The effective minimum sequence separation of repelled pairs."""
        return OLD_REPULSION_MIN_SEP if self.old_min_sep_6 else self.repulsion_min_sep

    def __post_init__(self) -> None:
        """Range checks (an invalid config cannot be constructed); a `ConfigError` names `prior.key`."""
        check("prior", [
            ("n_species", self.n_species >= 1, ">= 1", self.n_species),
            ("angle_order", self.angle_order >= 1, ">= 1", self.angle_order),
            ("dihedral_order", self.dihedral_order >= 1, ">= 1", self.dihedral_order),
            ("repulsion_exponent", self.repulsion_exponent >= 1, ">= 1", self.repulsion_exponent),
            ("repulsion_min_sep", self.repulsion_min_sep >= 2, ">= 2 (1 is a bond)", self.repulsion_min_sep),
            ("repulsion_switch", self.repulsion_switch in ("smooth", "shift", "none"), "smooth|shift|none",
             self.repulsion_switch),
            ("switch_on", self.repulsion_switch != "smooth" or 0 < self.switch_on < self.repulsion_cutoff,
             f"in (0, repulsion_cutoff={self.repulsion_cutoff})", self.switch_on),
        ])  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Force matching of the prior parameters alone (quasi-Newton: dense BFGS up to 2,000 parameters, which
    covers every global prior, LBFGS above)."""

    enabled: bool = False
    """Refine the Boltzmann-inverted prior by force matching (needs forces in the dataset)."""
    n_frames: int = 256
    """Frames drawn at random (over all proteins) for refinement."""
    frames_per_batch: int = 32
    """Frames packed into one batch."""
    max_steps: int = 200
    """Quasi-Newton (BFGS/LBFGS) iterations at most."""
    rtol: float = 1e-6
    """Relative tolerance of the BFGS/LBFGS stopping test."""
    atol: float = 1e-6
    """Absolute tolerance of the BFGS/LBFGS stopping test."""
    refine_sigma: bool = False
    """Also refine the repulsion σ (degenerate with ε: only ε·σ^p matters, so off by default)."""
    seed: int = 0
    """Seed of the frame subsample."""


@dataclasses.dataclass(frozen=True)
class FitPriorsConfig:
    """Fit the physics prior by Boltzmann inversion on a prepared dataset (optionally refine it by force matching)."""

    dataset: Path = Path("prepared")
    """Prepared dataset directory (or its dataset.h5)."""
    output: Path = Path("priors")
    """Output directory: prior.yaml (the final prior), fit_priors_config.json, plots/*.png."""
    prior: PriorConfig = PriorConfig()
    """Terms, parametrisation and weights of the prior."""
    temperatures: tuple[float, ...] | None = None
    """Temperatures (K) to use; None pools all, each frame inverted at its own temperature."""
    proteins: tuple[str, ...] | None = None
    """Proteins to use; None uses all."""
    frame_stride: int = 1
    """Use every frame_stride-th frame of every protein."""
    chunk_frames: int = 256
    """Frames read at once (bounds memory)."""
    bond_bins: int = 80
    """Histogram bins of bond lengths over bond_range."""
    bond_range: tuple[float, float] = (2.8, 4.8)
    """Å; range of the bond-length histogram (CA-CA bonds are 3.8 Å, cis-prolines 2.9 Å); samples outside are
    counted and reported, and an error if they exceed 1 %."""
    angle_bins: int = 90
    """Histogram bins of angles over [0, π]."""
    dihedral_bins: int = 72
    """Histogram bins of dihedrals over [-π, π)."""
    max_fourier_order: int = 6
    """Largest Fourier order tried for angles and dihedrals."""
    criterion: Literal["aic", "bic"] = "bic"
    """Information criterion that picks the Fourier order (p = the ridge fit's effective dof)."""
    fourier_tau: float = 10.0
    """kcal/mol; ridge scale of the Fourier fits: penalty Σ_n n² (a_n² + b_n²) / τ² added to χ² (a Gaussian
    prior of std τ/n on the coefficients). It keeps coefficients modest where the data leave them
    undetermined (partly sampled angles) and is negligible where the histogram fixes them."""
    repulsion_percentile: float = 1.0
    """σ of the repulsion = this percentile (in %) of non-bonded distances at separation ≥ min_sep."""
    min_count: int = 1000
    """Per-species fits: types with fewer samples fall back to the global fit (listed in provenance)."""
    plots: bool = True
    """Write PNG diagnostics (histogram vs fitted Boltzmann density for every term)."""
    max_panels: int = 24
    """Per-species plots show at most this many types per term (the most populated)."""
    refine: RefineConfig = RefineConfig()
    """Force-matching refinement of the fitted prior."""

    def __post_init__(self) -> None:
        """Range checks (an invalid config cannot be constructed); a `ConfigError` names `fit-priors.key`."""
        check("fit-priors", [("fourier_tau", self.fourier_tau > 0, "> 0 kcal/mol", self.fourier_tau)])
