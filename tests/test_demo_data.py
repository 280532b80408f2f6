"""The bundled demo files follow the mdCATH layout and read through the project's reader."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import DEMO_DATA

from cameo_eqx.data.mdcath import MDCATHFile

FILES = {"mdcath_dataset_villin.h5": ("villin", 582, 35), "mdcath_dataset_cln025.h5": ("cln025", 175, 10)}


@pytest.mark.parametrize("name", sorted(FILES))
def test_demo_file_layout(name: str):
    domain, n_atoms, n_beads = FILES[name]
    path = DEMO_DATA / name
    with h5py.File(path, "r") as h:
        assert h.attrs["layout"] == "mdcath-only-protein-v1.0"
        assert "NOT mdCATH" in h.attrs["note"] or "not mdCATH" in h.attrs["note"]
        g = h[domain]
        assert int(g.attrs["numProteinAtoms"]) == n_atoms
        for T in ("320", "348", "413"):
            for r in ("0", "1"):
                tr = g[T][r]
                nf = int(tr.attrs["numFrames"])
                assert tr["coords"].shape == (nf, n_atoms, 3) and tr["coords"].dtype == np.float32
                assert tr["forces"].shape == (nf, n_atoms, 3)
                assert tr["coords"].attrs["unit"] == "Angstrom"
                assert tr["forces"].attrs["unit"] == "kcal/mol/Angstrom"
                f = tr["forces"][()]
                assert np.isfinite(f).all() and 10 < np.sqrt(np.mean(f**2)) < 60
        # every constraint joins a hydrogen to a heavy atom
        el = np.array([e.decode() if isinstance(e, bytes) else e for e in g["element"][()]])
        pairs = g["hbond_constraints_ground_truth"][()]
        assert ((el[pairs] == "H").sum(axis=1) == 1).all()
    with MDCATHFile(path) as f:
        assert f.domain == domain and f.beads().n_beads == n_beads and f.all_have_forces
