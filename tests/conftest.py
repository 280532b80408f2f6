"""Shared fixtures. Tests that need `../shared/data` skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite is mostly XLA compiles of small graphs: LLVM at -O0 compiles them ~40% faster. The HLO passes
# (fusion, layout) are the same; the CPU code differs in rounding only (multiply-adds fused differently):
# forces and force-loss parameter gradients of the three backbones with the prior agree with -O2 to
# 3.6e-6 of their largest value, within every tolerance here. Set before JAX starts its backend.
_FLAG = "--xla_backend_optimization_level=0"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TEST_DATA = ROOT / "tests" / "data"
DEMO_DATA = ROOT / "data" / "demo"


def shared_file(name: str) -> Path:
    """Path of a file in ../shared/data, or skip the test with a clear reason."""
    p = SHARED_DATA / name
    if not p.exists():
        pytest.skip(f"reference data {p} is absent (a user's clone has no ../shared/); skipping")
    return p


@pytest.fixture
def villin_h5() -> Path:
    return shared_file("mdcath_dataset_villinHP35.h5")


@pytest.fixture
def cln025_h5() -> Path:
    return shared_file("mdcath_dataset_cln025.h5")


@pytest.fixture
def ntl9_coords_h5() -> Path:
    return shared_file("mdcath_dataset_2hbaA00_coordsonly.h5")


@pytest.fixture(scope="module")
def villin_prepared(tmp_path_factory) -> Path:
    """The bundled demo villin (data/demo) prepared with the default basic map (no noise estimate);
    one per test module."""
    from cameo_eqx.data.config import PrepareConfig
    from cameo_eqx.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(PrepareConfig(inputs=(str(DEMO_DATA / "mdcath_dataset_villin.h5"),), output=out, noise_estimate=False))
    return out
