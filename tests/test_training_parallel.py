"""Data parallelism on CPU: 4 virtual devices give the single-device step on the same global batch, and
two real local processes (jax.distributed, gloo collectives) train like one process with 2 devices.

Each case runs in a subprocess (XLA_FLAGS must be set before JAX starts).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

DP = textwrap.dedent(
    """
    import os, sys, json
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np, optax, equinox as eqx
    from cameo_eqx.data.loader import BatchLoader
    from cameo_eqx.data.testdata import synthetic_records
    from cameo_eqx.modules import make_backbone
    from cameo_eqx.training.task import Task, LossSums
    from cameo_eqx.training.distributed import make_mesh, replicate, shard_leading, to_host
    from cameo_eqx.training.trainer import make_train_step
    assert jax.device_count() == 4
    recs = synthetic_records([7, 13, 22, 30], 6, seed=1)
    loader = BatchLoader(recs, cutoff=6.0, target_nodes=40, n_devices=4, prefetch=0)
    plan = loader.plan(0)
    step0 = [s for s in loader.steps(0) if all(b >= 0 for b in s.batches)][0]
    batch = loader.build_step(plan, step0)                 # (4, ...) host arrays, mixed sizes
    model = make_backbone("painn", 20, 6.0, "small", key=jax.random.PRNGKey(0), n_features=8, n_layers=1,
                          n_radial_basis=4)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.sgd(0.05)
    res = {}
    for name, devs in (("four", jax.devices()), ("one", jax.devices()[:1])):
        mesh = make_mesh(devs)
        step = make_train_step(Task(), opt, mesh)
        p, o, _, out = step(replicate(params, mesh), replicate(static, mesh), replicate(opt.init(params), mesh),
                            None, shard_leading(batch, mesh))
        res[name] = (to_host(p), {k: float(np.asarray(v)) for k, v in to_host(out).items()})
    # reference without shard_map: gradient of the global-batch loss
    task = Task()
    def gl(pp):
        m = eqx.combine(pp, static)
        s = [task.sums(m, jax.tree.map(lambda x: x[i], batch)) for i in range(4)]
        tot = s[0]
        for x in s[1:]: tot = tot + x
        return task.loss_from_sums(tot, tot.n_f, tot.n_e)
    lref, gref = eqx.filter_value_and_grad(gl)(params)
    pref = eqx.apply_updates(params, jax.tree.map(lambda g: -0.05 * g, gref))
    # what a plain pmean of per-device mean losses would give (wrong when devices hold different bead counts)
    naive = float(np.mean([float(task.loss(model, jax.tree.map(lambda x: x[i], batch))) for i in range(4)]))
    diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
                            zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    scale = max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(params))
    print(json.dumps({"loss4": res["four"][1]["loss"], "loss1": res["one"][1]["loss"], "lref": float(lref),
                      "naive": naive, "p41": diff(res["four"][0], res["one"][0]),
                      "p4ref": diff(res["four"][0], pref), "scale": scale,
                      "beads": [int(batch.node_mask[i].sum()) for i in range(4)]}))
    """
)


def _run(code: str, env_extra: dict | None = None, timeout: int = 300, args: tuple = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_four_devices_equal_single_device_step():
    p = _run(DP)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    r = json.loads(out.strip().splitlines()[-1])
    assert len(set(r["beads"])) > 1  # the devices hold different numbers of real beads
    np.testing.assert_allclose(r["loss4"], r["loss1"], rtol=1e-5)
    np.testing.assert_allclose(r["loss4"], r["lref"], rtol=1e-5)
    assert r["p41"] <= 1e-5 * max(1.0, r["scale"])
    assert r["p4ref"] <= 1e-5 * max(1.0, r["scale"])
    assert abs(r["naive"] - r["lref"]) > 1e-4 * r["lref"]  # normalising per device would be wrong


MP = textwrap.dedent(
    """
    import os, sys, json
    mode, out_dir = sys.argv[1], sys.argv[2]
    if mode == "one":
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    import jax, numpy as np, equinox as eqx
    from pathlib import Path
    from cameo_eqx.modules.backbones import BackboneOverrides
    from cameo_eqx.training.config import *
    if mode != "one":
        from cameo_eqx.training.distributed import initialize
        pid = int(mode)
        initialize(DistributedConfig(coordinator_address="127.0.0.1:" + sys.argv[3], num_processes=2, process_id=pid))
        assert jax.process_count() == 2 and jax.device_count() == 2
    from cameo_eqx.data.testdata import synthetic_records
    from cameo_eqx.training.datamodule import DataModule
    from cameo_eqx.training.trainer import Trainer
    recs = synthetic_records([9, 14, 21], 8, seed=3)
    cfg = TrainConfig(output=Path(out_dir), name="run", data=DataConfig(cutoff=6.0, target_nodes=48, prefetch=0,
                                                                         split_by="frame"),  # independent frames
        model=ModelConfig(backbone="painn", preset="small", hyperparameters=BackboneOverrides(
            n_features=8, n_layers=1, n_radial_basis=4)),
        stages=(StageConfig(name="a", epochs=1, lr=3e-3),), progress=False, max_steps=2, checkpoint_every=0)
    dm = DataModule(cfg.data, seed=0, dataset=recs, n_devices=jax.local_device_count(),
                    process_index=jax.process_index(), process_count=jax.process_count())
    tr = Trainer(cfg, Path(out_dir) / "run", datamodule=dm)
    tr.fit()
    leaves = [np.asarray(x) for x in jax.tree.leaves(eqx.filter(tr.model, eqx.is_array))]
    np.savez(Path(out_dir) / f"params_{mode}.npz", *leaves)
    print("done", tr.global_step)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_one_process(tmp_path):
    port = str(_free_port())
    d1, d2 = tmp_path / "one", tmp_path / "two"
    d1.mkdir()
    d2.mkdir()
    procs = [_run(MP, args=(str(i), str(d2), port)) for i in range(2)]
    single = _run(MP, args=("one", str(d1)))
    outs = []
    try:
        for p in procs + [single]:
            out, err = p.communicate(timeout=400)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs + [single]:
            if p.poll() is None:
                p.kill()
    for rc, out, err in outs:
        assert rc == 0, err[-3000:]
        assert "done 2" in out
    a = np.load(d1 / "params_one.npz")
    for pid in ("0", "1"):
        b = np.load(d2 / f"params_{pid}.npz")
        for k in a.files:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6)
