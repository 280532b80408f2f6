"""Matmul precision is explicit (issue 15): float32 products by default, TF32 only as a checked option.

On CPU every precision gives the same arithmetic, so these tests check the plumbing (the lowered dot
products carry the requested precision; without it they carry DEFAULT, which a GPU runs as TF32) and
the refusal logic (with a stand-in whose forces depend on the precision).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cameo_eqx.precision import (
    PRECISIONS,
    PrecisionError,
    check_precision,
    dot_precisions,
    matmul_precision,
    relative_force_error,
)


def test_names():
    assert PRECISIONS == ("float32", "tensorfloat32")
    with pytest.raises(ValueError, match="matmul_precision must be one of"):
        matmul_precision("bfloat16")


def test_context_sets_dot_precision():
    x = jnp.ones((4, 4), jnp.float32)
    f = jax.jit(lambda a: jnp.sum(jnp.tanh(a @ a) @ a))
    assert dot_precisions(f.lower(x).as_text()) == {"DEFAULT"}  # JAX's default: TF32 on recent GPUs
    with matmul_precision("float32"):
        assert dot_precisions(f.lower(x).as_text()) == {"HIGHEST"}
        # derivatives inherit the precision of the primal products
        assert dot_precisions(jax.jit(jax.grad(f)).lower(x).as_text()) == {"HIGHEST"}
    with matmul_precision("tensorfloat32"):
        assert dot_precisions(f.lower(x).as_text()) == {"HIGH"}


def test_relative_force_error():
    ref = np.array([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0], [9.0, 9.0, 9.0]])
    red = ref + np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.05], [1.0, 0.0, 0.0]])
    mask = np.array([True, True, False])  # the third bead is padding
    assert relative_force_error(red, ref, mask) == pytest.approx(0.05 / 5.0)
    assert relative_force_error(ref, ref) == 0.0
    assert relative_force_error(np.zeros((2, 3)), np.zeros((2, 3))) == 0.0
    assert relative_force_error(np.ones((2, 3)), np.zeros((2, 3))) == float("inf")


def _stand_in(delta: float):
    """Forces that move by `delta` relative when traced under a reduced precision (what a GPU does)."""
    base = jnp.asarray(np.random.default_rng(0).normal(size=(10, 3)), jnp.float32)

    def forces():
        reduced = jax.config.jax_default_matmul_precision not in (None, "float32")
        return base * (1.0 + (delta if reduced else 0.0))

    return forces


def test_check_precision_accepts_and_refuses():
    assert check_precision(_stand_in(0.5), "float32") == 0.0  # the reference: nothing evaluated
    assert check_precision(_stand_in(2e-4), "tensorfloat32") == pytest.approx(2e-4, rel=1e-3)
    with pytest.raises(PrecisionError, match=r"tensorfloat32.*first batch.*5\.00e-03.*tolerance 1e-03"):
        check_precision(_stand_in(5e-3), "tensorfloat32", where="the first batch")
    with pytest.raises(PrecisionError):
        check_precision(_stand_in(float("nan")), "tensorfloat32")


def test_model_forces_traced_at_float32():
    """A real force field's energy and forces: every dot product at HIGHEST under the default, DEFAULT
    without it (so the check can fail)."""
    from cameo_eqx.energy import energy_and_forces
    from cameo_eqx.modules import ForceField, make_backbone
    from cameo_eqx.precision import DEFAULT_PRECISION
    from cameo_eqx.topology import CGTopology

    n = 12
    rng = np.random.default_rng(1)
    x = (np.cumsum(rng.normal(size=(n, 3)), axis=0) * 2.5).astype(np.float32)
    topo = CGTopology(resname=("ALA",) * n, resid=np.arange(n), chain=("A",) * n,
                      segment=np.zeros(n, np.int32), species=np.zeros(n, np.int32))  # fmt: skip
    ff = ForceField(make_backbone("painn", 1, 6.0, "small"), None, cutoff=6.0)
    batch = ff.batch_for(x, topo)
    f = jax.jit(energy_and_forces)
    assert dot_precisions(f.lower(ff, batch).as_text()) == {"DEFAULT"}
    with matmul_precision(DEFAULT_PRECISION):
        assert dot_precisions(f.lower(ff, batch).as_text()) == {"HIGHEST"}
        e32, f32 = f(ff, batch)
    e, forces = f(ff, batch)  # on CPU the arithmetic is the same
    np.testing.assert_array_equal(np.asarray(forces), np.asarray(f32))


def test_export_artifact_carries_precision():
    """The LAMMPS artifact's dot products say HIGHEST, so the pair style on a GPU computes float32
    products; 'tensorfloat32' is written only when asked for."""
    from typing import ClassVar

    import equinox as eqx

    from cameo_eqx.energy import AbstractEnergyModel
    from cameo_eqx.export.chemtrain_deploy import export_model
    from cameo_eqx.geometry import safe_norm

    class MatmulModel(AbstractEnergyModel):
        weight: jax.Array
        cutoff: float = eqx.field(static=True, default=5.0)
        n_message_passing_layers: ClassVar[int] = 1
        pair_min_sep: ClassVar[int] = 2

        def node_energies(self, batch):
            s, r, m = batch.senders, batch.receivers, batch.edge_mask
            d = safe_norm(batch.positions[r] - batch.positions[s], m)
            feats = jnp.stack([d, d * d], axis=-1) @ self.weight  # the dot product under test
            e = jax.ops.segment_sum(jnp.where(m, jnp.sum(feats, -1), 0.0), r, num_segments=batch.n_node)
            return jnp.where(batch.node_mask, e, 0.0)

    model = MatmulModel(jnp.ones((2, 4), jnp.float32) * 0.01)
    text = export_model(model, platform="cpu").mlir_module
    assert dot_precisions(text) == {"HIGHEST"}
    text = export_model(model, platform="cpu", matmul_precision="tensorfloat32").mlir_module
    assert "HIGH" in dot_precisions(text)


# ------------------------------------------------------------------------ the stages that trace models

from tests.test_training import _cfg, _fit, records  # noqa: E402,F401  (the tiny PaiNN and its frames)


def _record_precision(monkeypatch):
    """Records the matmul precision in force whenever a PaiNN is traced."""
    from cameo_eqx.modules.painn import PaiNN

    seen: list = []
    original = PaiNN.node_energies

    def node_energies(self, batch):
        seen.append(jax.config.jax_default_matmul_precision)
        return original(self, batch)

    monkeypatch.setattr(PaiNN, "node_energies", node_energies)
    return seen


@pytest.mark.parametrize("name", ["float32", "tensorfloat32"])
def test_training_traces_at_the_configured_precision(tmp_path, records, monkeypatch, capsys, name):
    from cameo_eqx.training.config import StageConfig

    seen = _record_precision(monkeypatch)
    cfg = _cfg(tmp_path, stages=(StageConfig(name="a", epochs=1, lr=1e-3),), max_steps=2, matmul_precision=name)
    _fit(cfg, records)
    if name == "tensorfloat32":  # the check traces its float32 reference first
        assert seen[0] == "float32"
        seen = seen[1:]
    assert seen and set(seen) == {name}
    checked = "differ from float32 by 0.00e+00" in capsys.readouterr().out  # CPU: the same arithmetic
    assert checked == (name == "tensorfloat32")


def test_simulator_traces_at_its_precision(monkeypatch, capsys):
    from cameo_eqx.modules import make_backbone
    from cameo_eqx.simulate import Simulator
    from cameo_eqx.topology import CGTopology

    seen = _record_precision(monkeypatch)
    n = 8
    x = (np.arange(n)[:, None] * np.array([[3.8, 0.0, 0.0]])).astype(np.float32)
    topo = CGTopology(resname=("ALA",) * n, resid=np.arange(n), chain=("A",) * n,
                      segment=np.zeros(n, np.int32), species=np.zeros(n, np.int32))  # fmt: skip
    model = make_backbone("painn", 1, 6.0, "small", n_features=8, n_layers=1, n_radial_basis=4)
    with pytest.raises(ValueError, match="matmul_precision must be one of"):
        Simulator(model, topo, matmul_precision="bf16")
    sim = Simulator(model, topo, matmul_precision="tensorfloat32")
    res = sim.run(sim.init(x), 1, 2)
    assert res.blowup is None
    assert "starting structure differ from float32" in capsys.readouterr().out
    assert seen[0] == "float32" and set(seen[1:]) == {"tensorfloat32"}  # the check's reference first
    seen.clear()
    sim = Simulator(model, topo)
    sim.run(sim.init(x), 1, 2)
    assert set(seen) == {"float32"}


def test_old_run_config_hyperparameters_upgrade():
    """A config.json written when hyperparameters were KEY=VALUE strings reads as the typed mapping, so
    `--resume auto` of such a run sees the same config."""
    from cameo_eqx.training.trainer import _upgrade_config

    old = {"model": {"backbone": "allegro", "hyperparameters": ["num_layers=2", "latent_hidden=[32, 32]"]}}
    new = _upgrade_config(old)
    assert new["model"]["hyperparameters"] == {"n_layers": 2, "latent_hidden": [32, 32]}
    assert old["model"]["hyperparameters"] == ["num_layers=2", "latent_hidden=[32, 32]"]  # not modified
    typed = {"model": {"backbone": "painn", "hyperparameters": {"n_layers": 2}}}
    assert _upgrade_config(typed) is typed
