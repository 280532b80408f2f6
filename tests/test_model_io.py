"""Every registered backbone survives save/load inside a ForceField with a prior (bit-identical forces)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from cameo_eqx.graph import single_frame_batch
from cameo_eqx.modules import make_backbone
from cameo_eqx.modules.forcefield import ForceField, load, save
from cameo_eqx.priors.config import PriorConfig
from cameo_eqx.priors.prior import Prior
from cameo_eqx.topology import CGTopology

SMALL = {
    "allegro": dict(num_layers=1, n_radial=4, l_max=1, n_tensor_features=4, latent_dim=8,
                    two_body_hidden=[8], latent_hidden=[8], edge_energy_hidden=[8], embed_dim=4),
    "painn": dict(preset="small", n_features=8, n_layers=1, n_radial_basis=4),
    "mace": dict(preset="small", hidden_irreps="4x0e + 4x1o", l_max=1, correlation=2, n_layers=1,
                 radial_hidden=[8]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SMALL))
def test_save_load_round_trip(name: str, tmp_path: Path):
    n = 9
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(n, 3)) * 2.2, axis=0).astype(np.float32)
    topo = CGTopology(("ALA",) * n, np.arange(n), ("A",) * n, np.zeros(n, np.int32),
                      rng.integers(0, 20, n).astype(np.int32))  # fmt: skip
    kw = dict(SMALL[name])
    preset = kw.pop("preset", "default")
    bb = make_backbone(name, 20, cutoff=7.0, preset=preset, key=jax.random.key(1), **kw)
    ff = ForceField(bb, Prior.from_prior_config(PriorConfig()))
    batch = single_frame_batch(x, topo, 7.0).to_device()
    e0, f0 = ff.energy_and_forces(batch)
    path = save(tmp_path / "model.eqx", ff)
    ff2 = load(path)
    e1, f1 = ff2.energy_and_forces(batch)
    np.testing.assert_array_equal(np.asarray(e0), np.asarray(e1))
    np.testing.assert_array_equal(np.asarray(f0), np.asarray(f1))
    assert np.abs(np.asarray(f0)).max() > 0
