"""Every registered backbone survives save/load inside a ForceField with a prior (bit-identical forces); model
files of an older header format still load."""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

from cameo_eqx.graph import single_frame_batch
from cameo_eqx.modules import make_backbone
from cameo_eqx.modules.forcefield import FORMAT, FORMAT_VERSION, ForceField, load, load_config, save
from cameo_eqx.priors.config import PriorConfig
from cameo_eqx.priors.prior import Prior
from cameo_eqx.topology import CGTopology

SMALL = {
    "allegro": dict(n_layers=1, n_radial_basis=4, l_max=1, n_tensor_features=4, latent_dim=8,
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
    energy_and_forces = eqx.filter_jit(ForceField.energy_and_forces)  # one compile serves both models
    e0, f0 = energy_and_forces(ff, batch)
    path = save(tmp_path / "model.eqx", ff)
    ff2 = load(path)
    e1, f1 = energy_and_forces(ff2, batch)
    np.testing.assert_array_equal(np.asarray(e0), np.asarray(e1))
    np.testing.assert_array_equal(np.asarray(f0), np.asarray(f1))
    assert np.abs(np.asarray(f0)).max() > 0


def _rewrite_header(path: Path, edit) -> None:
    """Rewrites the JSON header line of a model file in place (`edit(header)`), keeping the parameters."""
    head, params = path.read_bytes().split(b"\n", 1)
    header = json.loads(head)
    edit(header)
    path.write_bytes(json.dumps(header).encode() + b"\n" + params)


def test_old_header_format_loads_and_newer_is_refused(tmp_path: Path):
    """A format-1 file (Allegro's `num_layers`/`n_radial`, before the shared names) loads as the same model;
    a format version newer than this code is an error naming the file and the version."""
    bb = make_backbone("allegro", 20, cutoff=7.0, key=jax.random.key(1), **SMALL["allegro"])
    ff = ForceField(bb)
    path = save(tmp_path / "old.eqx", ff)

    def to_version_1(header):
        header["format"] = "cameo_eqx.forcefield/1"
        hp = header["model"]["backbone"]["hyperparameters"]
        hp["num_layers"], hp["n_radial"] = hp.pop("n_layers"), hp.pop("n_radial_basis")

    _rewrite_header(path, to_version_1)
    assert "num_layers" in json.loads(path.read_bytes().split(b"\n", 1)[0])["model"]["backbone"]["hyperparameters"]
    header = load_config(path)
    assert header["format"] == FORMAT
    assert header["model"]["backbone"]["hyperparameters"]["n_layers"] == 1
    ff2 = load(path)
    assert (ff2.backbone.n_layers, ff2.backbone.n_radial_basis) == (1, 4)
    for a, b in zip(jax.tree.leaves(ff), jax.tree.leaves(ff2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    _rewrite_header(path, lambda h: h.update(format=f"cameo_eqx.forcefield/{FORMAT_VERSION + 1}"))
    with pytest.raises(ValueError, match=rf"old\.eqx: format version {FORMAT_VERSION + 1} is newer"):
        load(path)
