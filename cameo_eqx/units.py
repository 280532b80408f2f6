"""Units. Internally everything is Å, kcal/mol, kcal/mol/Å, K, fs (LAMMPS `units real`).

Conversions happen only at I/O boundaries (readers, exporters), with the factors below.
"""

KB_KCAL_PER_MOL_K: float = 0.0019872042586408316
"""Boltzmann constant in kcal/mol/K."""

KCAL_PER_MOL_TO_EV: float = 0.0433641043
"""1 kcal/mol in eV (for LAMMPS `units metal`)."""

KJ_PER_KCAL: float = 4.184
NM_TO_ANGSTROM: float = 10.0


def kT(temperature_kelvin: float) -> float:
    """Thermal energy in kcal/mol at the given temperature in K."""
    return KB_KCAL_PER_MOL_K * float(temperature_kelvin)
