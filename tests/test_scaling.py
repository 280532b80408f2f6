"""The scaling benchmark (benchmarks/bench_scaling.py): the Amdahl / Gustafson fits recover known serial
fractions, the HLO communication check tells gradient all-reduces from batch gathers, the sweep runs on 1,
2 and 4 virtual CPU devices (and on 2 local jax.distributed processes), and `analyze` merges per-run files.

No timing is asserted: CPU virtual devices share the same cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_scaling as bs  # noqa: E402

TINY = ["--tiny", "--steps", "2", "--repeats", "1", "--nodes-per-device", "32", "--proteins", "4",
        "--mean-size", "22", "--min-size", "12", "--max-size", "30", "--cutoff", "6"]  # fmt: skip


def _noisy(law, s, n, x1=1000.0, rel=0.02, reps=3, seed=0):
    rng = np.random.default_rng(seed)
    nn = np.repeat(np.asarray(n, float), reps)
    x = x1 * law(nn, s) * (1.0 + rel * rng.standard_normal(nn.size))
    return nn, x


@pytest.mark.parametrize("s", [0.02, 0.08, 0.3])
def test_amdahl_fit_recovers_serial_fraction(s):
    n, x = _noisy(bs.amdahl, s, [1, 2, 4, 8, 16, 32], seed=int(s * 100))
    f = bs.fit_law("strong", n, x)
    assert f["law"] == "amdahl" and f["dof"] == n.size - 2
    assert f["s_err"] is not None and 0 < f["s_err"] < 0.05
    assert abs(f["s"] - s) < max(4 * f["s_err"], 0.01)
    assert abs(f["x1"] - 1000.0) < 50.0
    # the fitted law's efficiency at 24 devices
    assert bs.predicted_efficiency(f, "strong", 24) == pytest.approx(1 / (24 * f["s"] + 1 - f["s"]))


@pytest.mark.parametrize("s", [0.05, 0.2])
def test_gustafson_fit_recovers_serial_fraction(s):
    n, x = _noisy(bs.gustafson, s, [1, 2, 4, 8, 16, 32], rel=0.01, reps=4, seed=int(s * 100) + 7)
    f = bs.fit_law("weak", n, x)
    assert f["law"] == "gustafson"
    assert f["s_err"] is not None and 0 < f["s_err"] < 0.05
    assert abs(f["s"] - s) < max(4 * f["s_err"], 0.01)


def test_fit_two_points_and_errors():
    f = bs.fit_law("strong", [1, 4], [100.0, 100 * bs.amdahl(4, 0.1)])
    assert f["s"] == pytest.approx(0.1, abs=1e-6) and f["x1"] == 100.0 and f["s_err"] is None  # no dof left
    with pytest.raises(ValueError, match="distinct device counts"):
        bs.fit_law("strong", [2, 2, 2], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="mode"):
        bs.fit_law("diagonal", [1, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        bs.fit_law("weak", [1, 2], [1.0, -2.0])


HLO = """
  %psum.1 = f32[] all-reduce(%x), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  %all-reduce.1 = (f32[20,8]{1,0}, f32[4]{0}, /*index=2*/f32[]) all-reduce(%a, %b, %c), channel_id=2
  %gte = f32[20,8]{1,0} get-tuple-element(%all-reduce.1), index=0
"""
PARAM_BYTES = (20 * 8 + 4) * 4


def test_comm_check_on_hlo_text():
    ok = bs.comm_check(HLO, PARAM_BYTES, 2)
    assert ok["ok"] is True and ok["allreduce_bytes"] == PARAM_BYTES + 8 and ok["allreduce_scalar_bytes"] == 8
    gathered = bs.comm_check(HLO + "  %ag = f32[2,64,3]{2,1,0} all-gather(%pos), dimensions={0}\n", PARAM_BYTES, 2)
    assert gathered["ok"] is False and "all-gather" in gathered["verdict"]
    missing = bs.comm_check(HLO, PARAM_BYTES + 4096, 2)  # a gradient that is not all-reduced
    assert missing["ok"] is False and "gradients not combined" in missing["verdict"]
    host = bs.comm_check(HLO + '  %cc = f32[] custom-call(%x), custom_call_target="xla_python_cpu_callback"\n',
                         PARAM_BYTES, 2)  # fmt: skip
    assert host["ok"] is False and host["host_transfers"]
    assert bs.comm_check("", PARAM_BYTES, 1)["ok"] is None  # one device: nothing to check


def _env(n: int | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    if n is not None:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    return env


def test_run_on_2_virtual_devices_allreduce_equals_parameter_bytes(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scaling.py"), "run", "--devices", "2",
                        "--modes", "weak", "--out-dir", str(tmp_path), *TINY], cwd=ROOT, env=_env(2),
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "prove only the machinery" in p.stdout
    r = json.loads((tmp_path / "scaling_weak_n2_p1.json").read_text())
    assert r["devices"] == 2 and r["data"]["nodes_per_device"] == 32 and r["frames_per_s"] > 0
    assert r["step_s_host_sync"] > 0 and r["allreduce_s"] > 0
    c = r["comm_check"]
    assert c["ok"] is True, c["verdict"]
    assert c["param_bytes"] == r["model"]["param_bytes"] > 0
    # the gradient all-reduce moves exactly the parameter bytes; the rest are the psummed loss scalars
    assert c["allreduce_bytes"] - c["allreduce_scalar_bytes"] == c["param_bytes"]
    assert 0 < c["extra_allreduce_bytes"] == c["allreduce_scalar_bytes"] <= 64
    assert not c["other_collectives"] and not c["host_transfers"]


@pytest.mark.slow  # 75-130 s on 2 shared cores: three subprocesses, one compile each
def test_sweep_on_1_2_4_virtual_devices(tmp_path):
    out = tmp_path / "sweep"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scaling.py"), "sweep", "--devices", "1,2,4",
                        "--modes", "strong", "--out-dir", str(out), *TINY], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "prove only the machinery" in p.stdout
    runs = {r["devices"]: r for r in bs.load_runs(out)}
    assert sorted(runs) == [1, 2, 4]
    for n, r in runs.items():
        assert r["mode"] == "strong" and r["platform"] == "cpu" and r["frames_per_s"] > 0
        assert r["data"]["global_nodes"] == 128  # strong: the global batch does not change with N
        assert r["data"]["nodes_per_device"] == 128 // n
    # communication: on 2 (and 4) devices the all-reduce moves exactly the parameter bytes plus loss scalars
    for n in (2, 4):
        c = runs[n]["comm_check"]
        assert c["ok"] is True, c["verdict"]
        assert c["param_bytes"] == runs[n]["model"]["param_bytes"] > 0
        assert c["allreduce_bytes"] - c["allreduce_scalar_bytes"] == c["param_bytes"]
        assert 0 < c["extra_allreduce_bytes"] <= 64 and not c["other_collectives"] and not c["host_transfers"]
    assert runs[1]["comm_check"]["ok"] is None
    merged = json.loads((out / "scaling.json").read_text())
    assert merged["modes"]["strong"]["fit"]["law"] == "amdahl" and merged["comm_ok"] is True
    assert (out / "scaling.png").stat().st_size > 1000


def _fake_run(mode, n, procs, fps, param_bytes=400):
    c = {"ok": None if n == 1 else True, "allreduce_bytes": 0 if n == 1 else param_bytes + 8, "param_bytes": param_bytes,
         "extra_allreduce_bytes": -param_bytes if n == 1 else 8, "other_collectives": {}, "host_transfers": [],
         "allreduce_scalar_bytes": 0 if n == 1 else 8, "verdict": "x"}  # fmt: skip
    return {"kind": bs.RUN_KIND, "mode": mode, "devices": n, "processes": procs, "platform": "gpu",
            "frames_per_s": fps, "step_s": 100.0 / fps, "step_s_std": 0.0, "allreduce_s": 0.001, "compute_s": 0.01,
            "comm_check": c}  # fmt: skip


def test_analyze_merges_per_run_files(tmp_path):
    # per-run files as a SLURM sweep leaves them: one directory per job, one file per (mode, N)
    s_true, g_true = 0.1, 0.2
    for nodes, gpus in ((1, 1), (1, 2), (1, 4), (2, 4), (4, 4)):
        d = tmp_path / f"n{nodes}_g{gpus}"
        d.mkdir()
        n = nodes * gpus
        for mode, law, s in (("strong", bs.amdahl, s_true), ("weak", bs.gustafson, g_true)):
            r = _fake_run(mode, n, nodes, 500.0 * float(law(n, s)))
            (d / bs._run_name(r)).write_text(json.dumps(r))
    (tmp_path / "notes.json").write_text(json.dumps({"something": "else"}))  # ignored: not a run file
    summary = bs.main(["analyze", str(tmp_path), "--out-json", str(tmp_path / "merged.json")])
    assert len(summary["modes"]["strong"]["points"]) == 5
    assert summary["modes"]["strong"]["fit"]["s"] == pytest.approx(s_true, abs=1e-6)
    assert summary["modes"]["weak"]["fit"]["s"] == pytest.approx(g_true, abs=1e-6)
    assert summary["modes"]["strong"]["fit"]["efficiency_at"]["24"] == pytest.approx(1 / (24 * 0.1 + 0.9), rel=1e-5)
    assert json.loads((tmp_path / "merged.json").read_text())["runs"] == 10
    assert (tmp_path / "merged.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="no per-run"):
        bs.main(["analyze", str(tmp_path / "n1_g1" / "missing")])


def test_analyze_refuses_runs_of_different_setups(tmp_path):
    for n, hp in ((1, {"n_features": 16}), (2, {"n_features": 16}), (4, {"n_features": 64})):
        r = _fake_run("strong", n, 1, 100.0 * n) | {"model": {"backbone": "painn", "hyperparameters": hp},
                                                   "data": {"global_nodes": 2048, "cutoff": 8.0}}  # fmt: skip
        (tmp_path / bs._run_name(r)).write_text(json.dumps(r))
    with pytest.raises(SystemExit, match="do not share one setup"):
        bs.main(["analyze", str(tmp_path), "--no-plot"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 30-90 s on 2 shared cores
def test_run_as_two_local_processes(tmp_path):
    port = str(_free_port())
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_scaling.py"), "run", "--modes", "weak",
           "--out-dir", str(tmp_path), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", *TINY]  # fmt: skip
    procs = [subprocess.Popen([*cmd, "--process-id", str(i)], cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    outs = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=500)
            outs.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rc, o, e in outs:
        assert rc == 0, e[-3000:]
    files = sorted(tmp_path.glob("scaling_*.json"))
    assert [f.name for f in files] == ["scaling_weak_n2_p2.json"]  # written once, by process 0
    r = json.loads(files[0].read_text())
    assert r["processes"] == 2 and r["devices"] == 2 and r["local_devices"] == 1
    assert r["comm_check"]["ok"] is True, r["comm_check"]["verdict"]
    assert r["comm_check"]["allreduce_bytes"] - r["comm_check"]["allreduce_scalar_bytes"] == r["model"]["param_bytes"]
