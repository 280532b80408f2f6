"""The quickstart notebook runs top to bottom (nbclient) on the bundled demo data with a tiny model, so it
cannot rot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for key in ("CAMEO_MODEL", "CAMEO_DATASET"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CAMEO_ROOT", str(ROOT))
    monkeypatch.setenv("CAMEO_STEPS", "1000")
    monkeypatch.setenv("CAMEO_REPLICAS", "2")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "examples")}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # forces, RMSD/Q, free-energy surface
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "Jensen-Shannon" in text and "force RMSE" in text
