"""Fault injection (issue 14): every failure a new user can cause gives a clear error naming the file,
and nothing already written is lost or silently wrong. Tiny configs and synthetic data (CPU, fast)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

from cameo_eqx.graph import single_frame_batch
from cameo_eqx.modules.forcefield import FORMAT, ForceField, load, load_config, save, skeleton_config
from cameo_eqx.priors.config import PriorConfig
from cameo_eqx.priors.prior import Prior
from cameo_eqx.topology import CGTopology

# ------------------------------------------------------------------- case 3: model files are checksummed


def _prior_ff() -> tuple[ForceField, object]:
    n = 9
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(n, 3)) * 2.2, axis=0).astype(np.float32)
    topo = CGTopology(("ALA",) * n, np.arange(n), ("A",) * n, np.zeros(n, np.int32),
                      rng.integers(0, 20, n).astype(np.int32))  # fmt: skip
    return ForceField(None, Prior.from_prior_config(PriorConfig())), single_frame_batch(x, topo, 7.0).to_device()


def _split(path: Path) -> tuple[bytes, bytes]:
    raw = path.read_bytes()
    i = raw.index(b"\n")
    return raw[: i + 1], raw[i + 1 :]


def test_model_file_flipped_bytes_is_an_error(tmp_path: Path):
    ff, _ = _prior_ff()
    path = save(tmp_path / "model.eqx", ff)
    head, params = _split(path)
    bad = bytearray(params)
    for i in range(len(bad) - 64, len(bad)):  # 64 bytes flipped inside the parameters
        bad[i] ^= 0xFF
    path.write_bytes(head + bytes(bad))
    with pytest.raises(ValueError, match=r"model\.eqx.*checksum mismatch"):
        load(path)
    path.write_bytes(head + params[:-10])  # truncated
    with pytest.raises(ValueError, match=r"model\.eqx.*truncated"):
        load(path)


def test_model_file_without_checksum_still_loads_and_gets_one(tmp_path: Path):
    """A model.eqx written before checksums existed (header without sha256) loads with the same forces;
    saving it again writes the checksum."""
    ff, _ = _prior_ff()
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, ff)
    legacy = tmp_path / "legacy.eqx"
    legacy.write_bytes(json.dumps({"format": FORMAT, "model": skeleton_config(ff), "config": {}}).encode()
                       + b"\n" + buf.getvalue())  # fmt: skip
    ff2 = load(legacy)
    for a, b in zip(jax.tree.leaves(eqx.filter(ff, eqx.is_array)), jax.tree.leaves(eqx.filter(ff2, eqx.is_array))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the same parameters, bit for bit
    path = save(tmp_path / "model.eqx", ff2)
    head = load_config(path)
    assert head["sha256"] == hashlib.sha256(_split(path)[1]).hexdigest()


# ------------------------------------------------------------------- case 7: the small ones


def test_model_header_without_model_is_a_clear_error(tmp_path: Path):
    ff, _ = _prior_ff()
    path = save(tmp_path / "model.eqx", ff)
    head, params = _split(path)
    h = json.loads(head)
    del h["model"]
    path.write_bytes(json.dumps(h).encode() + b"\n" + params)
    with pytest.raises(ValueError, match=r"model\.eqx.*no 'model'"):
        load(path)
    with pytest.raises(ValueError, match=r"model\.eqx.*no 'model'"):
        load_config(path)


def _demo_copy(tmp_path: Path, name: str = "villin") -> Path:
    import shutil

    src = Path(__file__).resolve().parents[1] / "data" / "demo" / f"mdcath_dataset_{name}.h5"
    dst = tmp_path / "in" / src.name
    dst.parent.mkdir(exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(0o644)
    return dst


def test_failed_prepare_leaves_no_temporary(tmp_path: Path):
    import h5py

    from cameo_eqx.data.config import PrepareConfig
    from cameo_eqx.data.prepare import PrepareError, prepare

    bad = _demo_copy(tmp_path)
    with h5py.File(bad, "r+") as h:
        h["villin/348/0/forces"][17, 3, 1] = np.nan
    out = tmp_path / "ds"
    with pytest.raises(PrepareError, match=r"348/0.*17"):
        prepare(PrepareConfig(inputs=(str(bad),), output=out, noise_estimate=False))
    assert not (out / "dataset.h5").exists()
    assert not (out / "dataset.h5.tmp").exists()


@pytest.fixture(scope="module")
def prior_yaml(tmp_path_factory) -> Path:
    return Prior.from_prior_config(PriorConfig()).save(tmp_path_factory.mktemp("prior") / "prior.yaml")


def _sim_cfg(dataset: Path, model: Path, out: Path, **kw):
    from cameo_eqx.simulate import SimulateConfig

    base = dict(model=model, dataset=dataset, protein="villin", output=out, n_replicas=1, temperature=320.0,
                n_steps=20, save_every=10, chunk_frames=5, progress=False)  # fmt: skip
    base.update(kw)
    return SimulateConfig(**base)


def test_refused_resume_keeps_config_and_finished_run_keeps_timing(villin_prepared, prior_yaml, tmp_path,
                                                                    compile_cache):
    import h5py

    from cameo_eqx.simulate import simulate

    out = tmp_path / "sim"
    traj = simulate(_sim_cfg(villin_prepared, prior_yaml, out))
    saved = (out / "simulate_config.json").read_text()
    with h5py.File(traj) as h:
        timing = {k: h.attrs[k] for k in ("wall_s", "compile_s", "steps_per_s", "ns_per_day")}
    with pytest.raises(ValueError, match="temperature"):
        simulate(_sim_cfg(villin_prepared, prior_yaml, out, temperature=350.0))
    assert (out / "simulate_config.json").read_text() == saved  # the refused config is not recorded
    simulate(_sim_cfg(villin_prepared, prior_yaml, out))  # finished: a no-op
    with h5py.File(traj) as h:
        assert h.attrs["status"] == "done"
        assert {k: h.attrs[k] for k in timing} == timing


def test_leftover_checkpoint_folders_are_cleaned(tmp_path: Path):
    import subprocess
    import sys

    import jax.numpy as jnp

    from cameo_eqx.training import checkpoint as ckpt

    root = tmp_path / "checkpoints"
    state = {"w": jnp.arange(3.0)}
    ckpt.save_checkpoint(root, 1, state, {}, keep=5)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    (root / f".step_000000003.tmp{dead}").mkdir()  # killed while writing step 3
    (root / f".step_000000003.tmp{dead}" / "state.eqx").write_bytes(b"")
    ckpt.save_checkpoint(root, 2, state, {}, keep=5)
    # killed between the renames of a re-save of step 2: the old complete copy is the only one
    (root / "step_000000002").rename(root / f".step_000000002.old{dead}")
    assert ckpt.latest_valid(root)[0].name == "step_000000002"  # restored, not lost
    assert sorted(p.name for p in root.iterdir()) == ["step_000000001", "step_000000002"]


# ------------------------------------------------------------------- case 4: config types and ranges


@pytest.mark.parametrize("text, match", [
    ("stages:\n  - {name: a, lr_decay: 0.5}\n", r"train\.stages\[0\]: unknown option\(s\) \['lr_decay'\]"),
    ("stages:\n  - {name: a, epochs: 2.7}\n", r"train\.stages\[0\]\.epochs: expected an integer, got 2\.7"),
    ("stages:\n  - {name: a, epochs: '2'}\n", r"train\.stages\[0\]\.epochs: expected an integer, got '2'"),
    ("log_every: five\n", r"train\.log_every: expected an integer, got 'five'"),
    ("checkpoint_every: -3\n", r"train\.checkpoint_every must be >= 0 \(0: only at the end of each epoch\), got -3"),
    ("data: {val_fraction: 1.5}\n", r"train\.data\.val_fraction must be in \[0, 1\), got 1\.5"),
    ("progress: 'no'\n", r"train\.progress: expected true or false"),
    ("keep: some\n", r"train\.keep: expected one of \['all', 'best'\]"),
])  # fmt: skip
def test_bad_config_values_name_the_file_and_key(tmp_path: Path, text: str, match: str):
    from cameo_eqx.config import ConfigError, load_yaml_defaults
    from cameo_eqx.training.config import TrainConfig

    path = tmp_path / "bad.yaml"
    path.write_text("train:\n" + "".join("  " + line + "\n" for line in text.splitlines()))
    with pytest.raises(ConfigError, match=str(path).replace(".", r"\.") + ":" + match):
        load_yaml_defaults(TrainConfig, path, "train")


def test_config_checks_also_cover_configs_built_in_python():
    import dataclasses

    from cameo_eqx.training.config import StageConfig, TrainConfig

    with pytest.raises(ValueError, match=r"stages\[0\]\.epochs must be an integer, got 2\.7"):
        TrainConfig(stages=(StageConfig(epochs=2.7),))
    with pytest.raises(ValueError, match=r"train\.log_every must be >= 1, got 0"):
        dataclasses.replace(TrainConfig(), log_every=0)


def test_shipped_configs_and_good_values_still_load(tmp_path: Path):
    import yaml

    from cameo_eqx.config import load_yaml_defaults
    from cameo_eqx.data.config import PrepareConfig
    from cameo_eqx.training.config import TrainConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    for p in sorted(root.glob("*.yaml")):
        sections = yaml.safe_load(p.read_text()) or {}
        if "train" in sections or p.name.startswith("train"):
            load_yaml_defaults(TrainConfig, p, "train")
        if "prepare" in sections or p.name == "prepare.yaml":
            load_yaml_defaults(PrepareConfig, p, "prepare")
    path = tmp_path / "ok.yaml"
    path.write_text("stages:\n  - {name: a, epochs: 3.0, lr: 1e-3, clip_norm: null}\nmax_steps: 5\n")
    cfg = load_yaml_defaults(TrainConfig, path, "train")
    assert cfg.stages[0].epochs == 3 and isinstance(cfg.stages[0].epochs, int) and cfg.stages[0].lr == 1e-3


# ------------------------------------------------------------------- cases 1, 2 and 6: run folders


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache for this module's training runs: every `Trainer` jits its own step,
    so each fit would otherwise recompile the same program (about 6 s each on 2 cores, 1 s with it)."""
    import jax

    try:
        from jax._src import compilation_cache as cc
    except ImportError:  # pragma: no cover - private module moved: just slower
        yield
        return
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")  # fmt: skip
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update(keys[0], str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update(keys[1], 0.0)
    jax.config.update(keys[2], -1)
    cc.reset_cache()
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    cc.reset_cache()


@pytest.fixture(scope="module")
def records():
    from cameo_eqx.data.testdata import synthetic_records

    return synthetic_records([9, 12], 8, seed=3, temperatures=(300.0,))


def _train_cfg(prior: Path, out: Path, **kw):
    from cameo_eqx.training.config import DataConfig, ModelConfig, StageConfig, TrainConfig

    base = dict(output=out, name="run", data=DataConfig(cutoff=6.0, target_nodes=24, prefetch=0, split_by="frame"),
                model=ModelConfig(backbone="none", prior=prior),
                stages=(StageConfig(name="a", epochs=4, lr=1e-3),), progress=False, checkpoint_every=2,
                keep_checkpoints=10, log_every=1)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _fit(cfg, records):
    from cameo_eqx.training.datamodule import DataModule
    from cameo_eqx.training.trainer import Trainer

    tr = Trainer(cfg, Path(cfg.output) / cfg.name, datamodule=DataModule(cfg.data, seed=cfg.seed, dataset=records))
    tr.fit()
    return tr


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_run_folder_is_locked_and_a_finished_run_is_never_overwritten(prior_yaml, records, tmp_path,
                                                                       compile_cache):
    import dataclasses
    import os

    from cameo_eqx.fileio import DirLock, LockedError

    cfg = _train_cfg(prior_yaml, tmp_path)
    run = tmp_path / "run"
    with DirLock(run, "train"):  # another train holds the folder
        with pytest.raises(LockedError, match=rf"{run}.*in use by train \(pid {os.getpid()}"):
            _fit(cfg, records)
    assert not (run / "config.json").exists()
    _fit(cfg, records)
    before = _files(run)
    assert "model.eqx" in before and not (run / ".lock").exists()
    # a new run (seed 1) into the finished run's folder: refused by name, nothing touched
    with pytest.raises(ValueError, match=r"another config \(seed differ"):
        _fit(dataclasses.replace(cfg, seed=1), records)
    with pytest.raises(ValueError, match=r"already has checkpoints.*--resume restart"):
        _fit(dataclasses.replace(cfg, seed=1, resume="never"), records)
    assert _files(run) == before
    # asked for explicitly, the old run is discarded and the new one written
    _fit(dataclasses.replace(cfg, seed=1, resume="restart"), records)
    assert json.loads((run / "config.json").read_text())["seed"] == 1


def _metric_steps(run: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"]  # fmt: skip


def test_all_checkpoints_corrupt_stops_and_fallback_never_logs_a_step_twice(prior_yaml, records, tmp_path,
                                                                            compile_cache):
    import dataclasses

    from cameo_eqx.training import checkpoint as ckpt

    cut = _train_cfg(prior_yaml, tmp_path, max_steps=5)
    tr = _fit(cut, records)
    run = tmp_path / "run"
    cks = ckpt.list_checkpoints(run / "checkpoints")
    assert [int(c.name[5:]) for c in cks] == [2, 4, 5] and _metric_steps(run) == [1, 2, 3, 4, 5]
    # the newest checkpoint is corrupt: resume falls back to step 4, and step 5 is logged once
    (cks[-1] / ckpt.STATE_FILE).write_bytes(b"garbage")
    tr = _fit(dataclasses.replace(cut, max_steps=7), records)
    assert tr.global_step == 7 and _metric_steps(run) == [1, 2, 3, 4, 5, 6, 7]
    # every checkpoint corrupt: a clear error, nothing rotated away or restarted
    for c in ckpt.list_checkpoints(run / "checkpoints"):
        (c / ckpt.STATE_FILE).write_bytes(b"garbage")
    before = _files(run)
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"no valid checkpoint.*--resume restart"):
        _fit(cut, records)
    assert _files(run) == before
    _fit(dataclasses.replace(cut, resume="restart"), records)  # only when asked
    assert _metric_steps(run) == [1, 2, 3, 4, 5]


def test_prepare_output_is_locked(tmp_path: Path):
    import os

    from cameo_eqx.data.config import PrepareConfig
    from cameo_eqx.data.prepare import prepare
    from cameo_eqx.fileio import DirLock, LockedError

    src = _demo_copy(tmp_path)
    out = tmp_path / "ds"
    with DirLock(out, "prepare"):  # a prepare with another config is running into the same output
        with pytest.raises(LockedError, match=rf"{out} is in use by prepare \(pid {os.getpid()}"):
            prepare(PrepareConfig(inputs=(str(src),), output=out, noise_estimate=False, stride=2))
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------- case 5: disk full


def _no_zero_byte_or_tmp(d: Path) -> None:
    bad = [p for p in d.rglob("*") if (p.is_file() and p.stat().st_size == 0 and p.name != ".lock")
           or ".tmp" in p.name]  # fmt: skip
    assert not bad, bad


def test_disk_full_in_write_atomic_names_the_file_and_keeps_the_old_one(tmp_path: Path, monkeypatch):
    import errno
    import os

    from cameo_eqx import fileio

    target = fileio.write_atomic(tmp_path / "summary.json", "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(fileio.NoSpaceError, match=rf"no space left on device: {target}"):
        fileio.write_atomic(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_disk_full_in_train_says_so(prior_yaml, records, tmp_path, monkeypatch, compile_cache):
    """equinox wraps the OSError in an opaque TreePathError; the run names ENOSPC and the checkpoint."""
    import errno

    import equinox as eqx

    from cameo_eqx.fileio import NoSpaceError

    real = eqx.tree_serialise_leaves

    class Full(io.RawIOBase):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(eqx, "tree_serialise_leaves", lambda f, tree: real(Full(), tree))
    with pytest.raises(NoSpaceError, match=r"no space left on device: .*checkpoints/step_000000002"):
        _fit(_train_cfg(prior_yaml, tmp_path, max_steps=3), records)
    _no_zero_byte_or_tmp(tmp_path)


def test_disk_full_in_prepare_and_simulate_stops_cleanly(villin_prepared, prior_yaml, tmp_path, monkeypatch,
                                                          compile_cache):
    """HDF5 crashes the process (rc 139) when the disk fills mid-write: both commands check the free space
    first and stop with the path; nothing half-written is left, earlier frames stay readable."""
    import shutil
    from collections import namedtuple

    import h5py

    from cameo_eqx.data.config import PrepareConfig
    from cameo_eqx.data.prepare import prepare
    from cameo_eqx.fileio import NoSpaceError
    from cameo_eqx.simulate import simulate

    src = _demo_copy(tmp_path)
    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "ds"
    with pytest.raises(NoSpaceError, match=rf"no space left on device: {out}/dataset\.h5\.tmp"):
        prepare(PrepareConfig(inputs=(str(src),), output=out, noise_estimate=False))
    assert not out.exists() or not any(out.iterdir())
    # simulate: the first chunk is written, the disk is full for the second
    calls = {"n": 0}

    def filling(p):
        calls["n"] += 1
        return real(p) if calls["n"] == 1 else usage(10**9, 10**9 - 1000, 1000)

    monkeypatch.setattr(shutil, "disk_usage", filling)
    sim = tmp_path / "sim"
    with pytest.raises(NoSpaceError, match=rf"no space left on device: {sim}/trajectory\.h5"):
        simulate(_sim_cfg(villin_prepared, prior_yaml, sim, n_steps=100, chunk_frames=5))
    with h5py.File(sim / "trajectory.h5") as h:
        assert h["positions"].shape[0] == 6 and h.attrs["status"] == "interrupted"
    _no_zero_byte_or_tmp(sim)


# ------------------------------------------------------------------- cases 10 and 11: the export


def test_lammps_masses_are_residue_masses_for_every_type():
    """Types absent from the protein got the protein's mean bead mass; now each gets its residues' mass."""
    from cameo_eqx.export import lammps
    from cameo_eqx.topology import AMINO_ACIDS, CHARGE4_GROUPS, RESIDUE_MASSES, SPECIES_MAPS, CGTopology

    names = ("ALA", "GLY", "LYS", "ALA")
    for smap, n_types in ((SPECIES_MAPS["aa20"], 20), (CHARGE4_GROUPS, 4)):
        species = np.asarray([smap[r] for r in names], np.int32)
        top = CGTopology(names, np.arange(4), ("A",) * 4, np.zeros(4, np.int32), species)
        text = lammps.data_file_text(np.arange(12.0).reshape(4, 3) * 1.3, species, top.masses,
                                     n_types=n_types, resname=names)  # fmt: skip
        lines = text.splitlines()
        got = [float(l.split()[1]) for l in lines[lines.index("Masses") + 2 : lines.index("Masses") + 2 + n_types]]
        if n_types == 20:
            np.testing.assert_allclose(got, [RESIDUE_MASSES[a] for a in AMINO_ACIDS], atol=1e-4)
        else:  # present groups: the protein's beads; absent ones: the mean of their residues
            polar = np.mean([RESIDUE_MASSES[r] for r, g in CHARGE4_GROUPS.items() if g == 1])
            neg = np.mean([RESIDUE_MASSES[r] for r, g in CHARGE4_GROUPS.items() if g == 3])
            np.testing.assert_allclose(got, [np.mean([71.08, 57.05, 71.08]), polar, 128.17, neg], atol=1e-3)


def test_export_says_when_the_backend_follows_the_platform(tmp_path, capsys):
    from cameo_eqx.data.store import ProteinRecord
    from cameo_eqx.export import chemtrain_deploy as cd
    from cameo_eqx.export import lammps, verify

    n = 6
    top = CGTopology(("ALA",) * n, np.arange(n), ("A",) * n, np.zeros(n, np.int32), np.zeros(n, np.int32))
    pos = (np.arange(3 * n, dtype=np.float32).reshape(n, 3) * 1.2).astype(np.float32)
    rec = ProteinRecord(name="toy", topology=top, positions=pos[None], forces=None,
                        temperature=np.array([300.0]), replica=np.zeros(1, np.int32))  # fmt: skip
    model = verify.ToyEnergyModel(n_species=1, cutoff=5.0, layers=1)
    out = cd.export_files(model, rec, tmp_path / "exp", platform="cpu", n_types=1,
                          run=lammps.RunSettings(backend="cuda12"))  # fmt: skip
    assert "lowered for platform 'cpu'" in capsys.readouterr().out
    cfg = json.loads((out / "export_config.json").read_text())
    assert cfg["lowered_for"] == ["cpu"] and cfg["backend"] == "cpu" and cfg["backend_asked"] == "cuda12"


def test_export_builds_one_artifact_per_platform_in_one_call(villin_prepared, tmp_path):
    from cameo_eqx.export import chemtrain_deploy as cd
    from cameo_eqx.export import verify

    ff, _ = _prior_ff()
    save(tmp_path / "model.eqx", ff)
    out = cd.export(cd.ExportConfig(model=str(tmp_path / "model.eqx"), dataset=str(villin_prepared),
                                    protein="villin", output=str(tmp_path / "exp"), platform=("cpu", "cuda"),
                                    capacity_fractions=(1.0,)))  # fmt: skip
    for platform, backend in (("cpu", "cpu"), ("cuda", "cuda12")):
        d = out / platform
        cfg = json.loads((d / "export_config.json").read_text())
        assert cfg["lowered_for"] == [platform] and cfg["backend"] == backend
        assert f"pair_style chemtrain_deploy {backend} 0.9" in (d / "in.lammps").read_text().splitlines()
        assert verify.static_problems((d / "model.ptb").read_bytes()) == []


def test_disk_full_in_the_metrics_log_names_it(tmp_path: Path):
    import errno
    from types import SimpleNamespace

    from cameo_eqx.fileio import NoSpaceError
    from cameo_eqx.training.callbacks import JsonlLogger

    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    log = JsonlLogger(1)
    log.on_fit_start(SimpleNamespace(is_main=True, run_dir=tmp_path))
    log.fh.close()
    log.fh = Full()
    with pytest.raises(NoSpaceError, match=rf"no space left on device: {tmp_path}/metrics\.jsonl"):
        log.on_step_end(None, {"step": 1, "loss": 1.0})


# ------------------------------------------------------------------- cases 8 and 9: the artifact's guards


def test_exported_function_is_nan_on_wrong_order_species_or_list():
    import jax

    from cameo_eqx.export import chemtrain_deploy as cd
    from cameo_eqx.export import verify

    n, cutoff = 14, 7.0
    rng = np.random.default_rng(1)
    steps = rng.normal(size=(n, 3))
    pos = np.cumsum(3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True), axis=0).astype(np.float32)
    species = (np.arange(n) * 3 % 4).astype(np.int32)
    top = CGTopology(("ALA",) * n, np.arange(n), ("A",) * n, np.zeros(n, np.int32), species)
    model = verify.ToyEnergyModel(n_species=4, cutoff=cutoff, layers=1)
    fn = jax.jit(cd.make_connector_function(model, cutoff=cutoff, nbr_order=(1, 2), topology=top))
    e_ref, f_ref = verify.model_forces(model, single_frame_batch(pos, top, cutoff))

    def call(p, spc, nl, *, drop=None, dup=None):
        args = list(verify.connector_arguments(p, spc, nl, n_local=n, n_ghost=0, newton=True, n_atoms=n + 3,
                                               n_buffer=n * n + 4, n_edges=n * n))  # fmt: skip
        k = int(np.sum(nl["numneigh"]))
        snd, rcv = args[5], args[6]
        near = np.nonzero(np.linalg.norm(p[snd[:k]] - p[rcv[:k]], axis=1) < cutoff)[0]
        if drop is not None:  # one entry missing
            i = near[drop]
            snd[i:k - 1], rcv[i:k - 1] = snd[i + 1:k].copy(), rcv[i + 1:k].copy()
            snd[k - 1] = rcv[k - 1] = n + 3
        if dup is not None:  # one entry twice
            snd[k], rcv[k] = snd[near[dup]], rcv[near[dup]]
        f, e, *_ = fn(*args)
        return float(e), np.asarray(f)[:n]

    for half in (True, False):
        nl = verify.neighbor_list(pos, cutoff, half=half)
        e, f = call(pos, species, nl)  # the legitimate call: the model's forces
        np.testing.assert_allclose(e, np.sum(e_ref), rtol=1e-5)
        np.testing.assert_allclose(f, f_ref, atol=1e-4)
        for kw in ({"drop": 0}, {"dup": 0}, {"dup": 3}):  # one bad entry: flagged, not miscounted
            assert np.isnan(call(pos, species, nl, **kw)[0]), (half, kw)
    nl = verify.neighbor_list(pos, cutoff, half=False)
    perm = rng.permutation(n)
    assert np.isnan(call(pos[perm], species[perm], verify.neighbor_list(pos[perm], cutoff, half=False))[0])
    assert np.isnan(call(pos, (species + 1) % 4, nl)[0])  # shifted species
    assert np.isnan(call(pos, np.where(np.arange(n) == 5, 7, species), nl)[0])  # out of range (was clamped)
    same = np.nonzero(species == species[0])[0]
    swap = np.arange(n)
    swap[[same[0], same[-1]]] = swap[[same[-1], same[0]]]  # same species, far apart: a bond breaks
    assert np.isnan(call(pos[swap], species, verify.neighbor_list(pos[swap], cutoff, half=False))[0])
