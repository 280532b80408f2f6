"""`make demo` end to end (slow tier): every stage runs on the bundled data and leaves its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_pipeline(tmp_path: Path):
    from cameo_eqx.demo import DemoConfig, demo

    out = demo(DemoConfig(output=tmp_path / "demo", max_steps=40, simulate_steps=400))
    assert (out / "prepared" / "dataset.h5").exists()
    assert (out / "priors" / "prior.yaml").exists()
    run = out / "runs" / "demo"
    assert (run / "model.eqx").exists() and any((run / "tb").iterdir())
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert report  # the evaluation wrote its numbers
    assert any((out / "simulation").iterdir())
    assert (out / "lammps" / "model.ptb").exists() and (out / "lammps" / "in.lammps").exists()
