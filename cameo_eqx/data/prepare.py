"""The `prepare` command: mdCATH files → coarse-grained (C-alpha) frames with mapped forces → one HDF5.

Per domain: validate the whole file first (NaN/inf, shapes, units, residues) so nothing is written for
bad input; select one bead per residue; find constraint groups (bonds to hydrogen); build the force map
(the optimal one pooled over all temperatures and replicas); map every frame in chunks; write the
protein group. Domains can run in parallel worker processes; the main process alone writes the file
(`<output>/dataset.h5.tmp`, renamed into place at the end). Re-running with the same inputs and config
is a no-op; an interrupted run resumes from the complete protein groups of its temporary file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..fileio import DirLock, check_free_space, reporting_no_space, write_atomic
from ..config import to_dict
from ..topology import SPECIES_MAPS
from . import forcemap as fm
from . import mdcath
from .config import PrepareConfig
from .store import DATASET_FILE, FORMAT, ProteinRecord, finalise, open_for_writing, write_record

log = logging.getLogger("cameo_eqx.prepare")


class PrepareError(RuntimeError):
    """A domain that cannot be prepared (the message names file, domain and cause)."""


def _residue_map(cfg: PrepareConfig) -> dict[str, str]:
    out = {}
    for item in cfg.residue_map:
        if "=" not in item:
            raise ValueError(f"--residue-map entries are NAME=STANDARD, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().upper()] = v.strip().upper()
    return out


def fingerprint(path: Path) -> str:
    """Identity of an input file for no-op re-runs: absolute path, size and modification time."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _constraint_pairs(f: mdcath.MDCATHFile, first_frame: np.ndarray, cfg: PrepareConfig,
                      sample: np.ndarray | None) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """Constrained atom pairs of a domain, and warnings from the topology/data cross-check."""
    atoms = f.atoms
    warns: list[str] = []
    if cfg.constraints == "data":
        if sample is None:
            raise PrepareError(f"{f.path}: constraints from data need frames, none were read")
        return fm.constraint_pairs_from_data(sample, threshold=cfg.constraint_threshold), warns
    if f.psf_text:
        bonds = fm.psf_bond_pairs(f.psf_text, len(atoms.element))
        pairs = fm.hydrogen_pairs_from_bonds(bonds, atoms.element)
    else:
        pairs = fm.hydrogen_bond_pairs(atoms.element, first_frame)
    if cfg.check_constraints and sample is not None and len(sample) >= 5:
        data_pairs = fm.constraint_pairs_from_data(sample, threshold=cfg.constraint_threshold)
        report = fm.check_constraints(pairs, data_pairs)
        if report:
            warns.append(f"{f.path.name}: constraint cross-check: {report}")
    return pairs, warns


def prepare_domain(path: Path, cfg: PrepareConfig) -> dict[str, Any]:
    """Reads, validates and maps one mdCATH file; returns the arrays to store (no file is written).

    **Arguments:**

    - `path`: an mdCATH-layout HDF5 file (one domain).
    - `cfg`: the prepare config.

    **Returns:** a dict with the `ProteinRecord`, source frame indices, the force map and statistics.
    """
    t0 = time.perf_counter()
    with mdcath.MDCATHFile(path) as f:
        need_forces = cfg.require_forces
        has_forces = all(f.has_forces(t, r) for t, r, _ in f.trajectories)
        if need_forces and not has_forces:
            raise mdcath.MDCATHError(
                f"{path}: domain {f.domain} is coordinate-only (no 'forces' dataset) but forces are "
                "needed for force matching; pass --no-require-forces to store coordinates only"
            )
        use_forces = has_forces and (need_forces or cfg.force_map != "slice")
        sel_kw = dict(temperatures=cfg.temperatures, replicas=cfg.replicas, stride=cfg.stride,
                      max_frames=cfg.max_frames)  # fmt: skip
        f.validate(forces=use_forces, **sel_kw)  # whole-file check before any output
        where = f"{path.name}:{f.domain}"
        beads = mdcath.select_beads(f.atoms, residue_map=_residue_map(cfg), where=where)
        chunks = f.iter_chunks(chunk_size=cfg.chunk_size, forces=use_forces, **sel_kw)
        first = next(iter(f.iter_chunks(chunk_size=1, forces=False, max_frames=1, **{
            k: v for k, v in sel_kw.items() if k != "max_frames"})))  # fmt: skip
        first_frame = first.coords[0]
        topo = mdcath.cg_topology(beads, first_frame[beads.ca_index], species_map=cfg.species_map,
                                  max_ca_distance=cfg.max_ca_distance)  # fmt: skip
        n_atoms = len(f.atoms.element)
        # frames for constraint detection, the optimal map and the noise estimate: evenly
        # subsampled over all selected trajectories, pooled
        need_sample = use_forces and (cfg.force_map == "optimal" or cfg.noise_estimate)
        need_sample |= cfg.constraints == "data" or cfg.check_constraints
        coords_s, forces_s = (f.sample_frames(cfg.optimal_max_frames, forces=use_forces, **sel_kw)
                              if need_sample else (None, None))  # fmt: skip
        pairs, warns = _constraint_pairs(f, first_frame, cfg, coords_s)
        groups = fm.constraint_groups(n_atoms, pairs)
        fmap, noise = build_force_map(cfg, beads.ca_index, n_atoms, groups, forces_s, where)
        sites = beads.ca_index
        R, F, T, rep, frame = [], [], [], [], []
        for ch in chunks:
            R.append(ch.coords[:, sites])
            if use_forces:
                F.append(fmap.apply(ch.forces))
            T.append(np.full(len(ch.frames), ch.temperature, np.float32))
            rep.append(np.full(len(ch.frames), ch.replica, np.int32))
            frame.append(np.asarray(ch.frames, np.int32))
        if not R:
            raise PrepareError(f"{where}: no frames selected")
        positions = np.concatenate(R).astype(np.float32)
        forces = np.concatenate(F).astype(np.float32) if use_forces else None
        stats = {"n_frames": len(positions), "seconds": time.perf_counter() - t0}
        if forces is not None:
            stats["force_rms"] = float(np.sqrt(np.mean(forces.astype(np.float64) ** 2)))
            stats["mapped_force_msq"] = float(np.mean(forces.astype(np.float64) ** 2))
        stats.update(noise)
        attrs = {
            "source_file": str(path.resolve()),
            "domain": f.domain,
            "n_atoms": n_atoms,
            "fingerprint": fingerprint(path),
            "force_map_kind": cfg.force_map,
            "n_constraints": len(pairs),
            "stats": json.dumps(stats),
        }
        if fmap.lam is not None:
            attrs["force_map_lambda"] = float(fmap.lam)
        rec = ProteinRecord(name=f.domain, topology=topo, positions=positions, forces=forces,
                            temperature=np.concatenate(T), replica=np.concatenate(rep),
                            attrs=attrs)  # fmt: skip
        return {"record": rec, "frame": np.concatenate(frame), "force_map": fmap.matrix,
                "warnings": warns, "stats": stats}  # fmt: skip


def split_blocks(n: int, block: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Alternating blocks of frames (train, held out): neighbouring frames are correlated, so
    held-out frames are kept in blocks rather than interleaved one by one."""
    idx = np.arange(n)
    held = (idx // block) % 2 == 1
    if not held.any() or held.all():
        held = idx >= n // 2
    return idx[~held], idx[held]


def build_force_map(
    cfg: PrepareConfig, sites: np.ndarray, n_atoms: int, groups: fm.ConstraintGroups,
    forces: np.ndarray | None, where: str,
) -> tuple[fm.ForceMap, dict[str, float]]:  # fmt: skip
    """The configured force map and, with forces, a held-out noise estimate.

    The estimate (all (kcal/mol/Å)², on held-out frames): `msq_<kind>` mean squared mapped force of
    the chosen map, `msq_optimal` of an optimal map fitted on the other frames, and `noise_floor`
    = their difference, a lower bound on the force MSE no CG model can beat with this map's forces.
    """
    noise: dict[str, float] = {}
    lam = cfg.optimal_lambda
    if cfg.force_map == "optimal" or (forces is not None and cfg.noise_estimate):
        if forces is None or len(forces) < 4:
            raise PrepareError(f"{where}: the optimal map needs forces of at least 4 frames")
        train, held = split_blocks(len(forces))
        if lam is None:
            lam = fm.select_lambda(sites, forces[train], forces[held], groups,
                                   lams=cfg.lambda_grid)  # fmt: skip
        opt_train = fm.optimal_map(sites, forces[train], groups, lam=lam)
    if cfg.force_map == "slice":
        fmap = fm.slice_map(sites, n_atoms)
    elif cfg.force_map == "basic":
        fmap = fm.basic_map(sites, n_atoms, groups)
    else:
        fmap = fm.optimal_map(sites, forces, groups, lam=lam)  # final map: all sampled frames
    if forces is not None and cfg.noise_estimate:
        chosen = fmap if cfg.force_map != "optimal" else opt_train
        noise[f"msq_{cfg.force_map}"] = fm.mapped_force_variance(chosen, forces[held])
        noise["msq_optimal"] = fm.mapped_force_variance(opt_train, forces[held])
        noise["noise_floor"] = max(0.0, noise[f"msq_{cfg.force_map}"] - noise["msq_optimal"])
        noise["optimal_lambda"] = float(lam)
    return fmap, noise


def _job(args: tuple[Path, PrepareConfig]) -> tuple[Path, dict[str, Any] | None, str | None]:
    path, cfg = args
    try:
        return path, prepare_domain(path, cfg), None
    except (mdcath.MDCATHError, PrepareError, ValueError, KeyError, OSError) as e:
        return path, None, f"{type(e).__name__}: {e}"


def preflight(paths: list[Path], cfg: PrepareConfig) -> list[str]:
    """Cheap checks of every input before any work (layout, residues, forces present, selection).

    **Returns:** the error messages (empty when every file passes).
    """
    errors = []
    rmap = _residue_map(cfg)
    for p in paths:
        try:
            with mdcath.MDCATHFile(p) as f:
                mdcath.select_beads(f.atoms, residue_map=rmap, where=f"{p.name}:{f.domain}")
                sel = f.select(cfg.temperatures, cfg.replicas)
                if not sel:
                    raise PrepareError(f"no trajectory matches temperatures={cfg.temperatures} "
                                       f"replicas={cfg.replicas}")  # fmt: skip
                if cfg.require_forces and not all(f.has_forces(t.temperature, t.replica) for t in sel):
                    raise mdcath.MDCATHError(
                        f"domain {f.domain} is coordinate-only (no 'forces' dataset) but forces are "
                        "needed for force matching; pass --no-require-forces to store coordinates only"
                    )
        except (mdcath.MDCATHError, PrepareError, ValueError, KeyError, OSError) as e:
            errors.append(f"{p}: {type(e).__name__}: {e}")
    return errors


def _identity(cfg: PrepareConfig) -> dict[str, Any]:
    """The parts of the config that determine the output (not workers, not output paths)."""
    d = to_dict(cfg)
    for k in ("workers", "output", "inputs", "on_error"):
        d.pop(k, None)
    return d


def _drop_if_empty(tmp: Path) -> None:
    """Removes a temporary dataset that holds no complete protein group (nothing a rerun could reuse), so
    that a run stopped by bad input leaves nothing behind."""
    try:
        with h5py.File(tmp, "r") as h:
            useful = any(h[k].attrs.get("complete", False) for k in h)
    except OSError:  # unreadable (e.g. cut short by a full disk): nothing to resume from
        useful = False
    if not useful:
        tmp.unlink(missing_ok=True)


def prepare(cfg: PrepareConfig) -> Path:
    """Runs `prepare` (see the module docstring); returns the dataset file path.

    The output directory is locked (`<output>/.lock`) for the whole run: a second `prepare` into the same
    output refuses, naming the running one's pid, instead of mixing two datasets.
    """
    if not cfg.inputs:
        raise SystemExit("error: prepare needs --inputs (mdCATH files, directories or globs)")
    paths = mdcath.find_inputs(cfg.inputs)
    out = Path(cfg.output)
    created = not out.exists()
    try:
        with DirLock(out, "prepare"):
            return _prepare(cfg, paths, out)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run stopped by bad input leaves nothing behind, not even its folder
        raise


def _prepare(cfg: PrepareConfig, paths: list[Path], out: Path) -> Path:
    """`prepare` under the output's lock: skip an up-to-date dataset, check, write the domains, finalise."""
    final = out / DATASET_FILE
    ident = _identity(cfg)
    prints = {p.name: fingerprint(p) for p in paths}
    if final.exists() and _up_to_date(final, ident, prints):
        print(f"{final} is up to date ({len(paths)} domains); nothing to do")
        return final
    bad = preflight(paths, cfg)
    if bad and cfg.on_error == "raise":
        raise PrepareError("input check failed, nothing was written:\n  " + "\n  ".join(bad))
    h5, tmp, final = _open_output(out, cfg, ident)
    errors: list[str] = []
    warnings_: list[str] = []
    names: list[str] = []
    try:
        _write_domains(cfg, paths, prints, h5, tmp, names, errors, warnings_)
        if not names:
            raise PrepareError("no domain could be prepared:\n  " + "\n  ".join(errors))
        h5.attrs["inputs"] = json.dumps(prints, sort_keys=True)
        h5.attrs["errors"] = json.dumps(errors)
    except BaseException:
        h5.close()  # the temporary file keeps complete groups for a resumed run
        _drop_if_empty(tmp)
        raise
    with reporting_no_space(tmp, "the domains written so far are kept; free some space and rerun to resume"):
        finalise(h5, tmp, final, keep=names)
    write_atomic(out / "prepare_config.json", json.dumps(to_dict(cfg), indent=2, sort_keys=True))
    _report(final, names, errors, warnings_)
    return final


def _up_to_date(final: Path, ident: dict, prints: dict[str, Any]) -> bool:
    """Whether the existing dataset was written by this format and config from these exact inputs."""
    try:
        with h5py.File(final, "r") as h:
            return (h.attrs.get("format") == FORMAT
                    and h.attrs.get("config") == json.dumps(ident, sort_keys=True)
                    and h.attrs.get("inputs") == json.dumps(prints, sort_keys=True))  # fmt: skip
    except OSError:
        return False


def _open_output(out: Path, cfg: PrepareConfig, ident: dict):
    """The temporary dataset to write (reusing complete groups of an interrupted run): (h5, tmp, final)."""
    smap = SPECIES_MAPS[cfg.species_map]
    tmp_path = out / (DATASET_FILE + ".tmp")
    try:
        with reporting_no_space(tmp_path, "nothing was written; free some space and rerun"):
            return open_for_writing(out, species_map_name=cfg.species_map, species_map=smap, config=ident)
    except BaseException:
        if tmp_path.exists():
            _drop_if_empty(tmp_path)
        raise


def _write_domains(cfg: PrepareConfig, paths: list[Path], prints: dict[str, Any], h5, tmp: Path,
                   names: list[str], errors: list[str], warnings_: list[str]) -> None:  # fmt: skip
    """Prepares the inputs without a complete group (in worker processes when asked) and writes each record;
    fills `names`, `errors` and `warnings_`."""
    from tqdm.auto import tqdm  # lazy: only for the progress bar (tqdm.auto probes for Jupyter)

    todo = []
    for p in paths:  # skip unchanged proteins
        done = [k for k in h5 if h5[k].attrs.get("complete", False)
                and h5[k].attrs.get("fingerprint") == prints[p.name]]  # fmt: skip
        if done:
            names.extend(done)
        else:
            todo.append(p)
    jobs = [(p, cfg) for p in todo]
    if cfg.workers > 1 and len(jobs) > 1:
        pool = ProcessPoolExecutor(max_workers=cfg.workers, mp_context=get_context("spawn"))
        results = pool.map(_job, jobs)
    else:
        pool = None
        results = map(_job, jobs)
    bar = tqdm(results, total=len(jobs), desc="prepare", unit="domain")
    compression = None if cfg.compression == "none" else cfg.compression
    for path, res, err in bar:
        if err is not None:
            if cfg.on_error == "raise":
                raise PrepareError(f"{path}: {err}") from None
            errors.append(f"{path}: {err}")
            continue
        rec = res["record"]
        if rec.name in names:
            raise PrepareError(f"{path}: domain {rec.name!r} appears in more than one input file")
        _write_result(h5, tmp, res, compression)
        names.append(rec.name)
        warnings_.extend(res["warnings"])
        bar.set_postfix(domain=rec.name, frames=res["stats"]["n_frames"])
    if pool is not None:
        pool.shutdown()


def _write_result(h5, tmp: Path, res: dict[str, Any], compression) -> None:
    """Writes one prepared domain's group (checking the free space first) and flushes."""
    rec = res["record"]
    # HDF5 can crash the process when the disk fills mid-write: check first, then report any
    # ENOSPC that still gets through by name (the complete groups written so far are kept)
    hint = "the domains written so far are kept; free some space and rerun to resume"
    need = 2 * (np.asarray(rec.positions).nbytes * (1 + (rec.forces is not None))) + (1 << 20)
    check_free_space(tmp, need, hint)
    with reporting_no_space(tmp, hint):
        write_record(h5, rec, frame=res["frame"], force_map=res["force_map"], compression=compression)
        h5.flush()


def _report(final: Path, names: list[str], errors: list[str], warnings_: list[str]) -> None:
    """Logs and prints the warnings, the skipped domains and what was written."""
    for w in warnings_:
        log.warning(w)
        print(f"warning: {w}")
    if errors:
        print(f"skipped {len(errors)} domain(s):")
        for e in errors:
            print(f"  {e}")
    print(f"wrote {final} ({len(names)} domains)")
