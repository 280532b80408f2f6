"""Reader for mdCATH-layout HDF5 files (one CATH domain per file), lazy and chunked.

Layout (see `specs/mdcath_layout.md`): `/<domain>/` holds per-atom datasets (`z`, `element`,
`resname`, `resid`, `chain`), the protein-only PDB text `pdbProteinAtoms` (atom names, same atom order
as the coordinates), optionally `psf`/`pdb`, and one group per temperature (`"320"`, ...) with one
group per replica (`"0"`, ...) holding `coords` (F, N, 3) and, in the published dataset, `forces`.
Real files are 0.3-1.3 GB, so frames are only ever read in slices.

Units out of this module: Å and kcal/mol/Å, float32. Files that say nm or kJ/mol/nm in their `unit`
attribute are converted; unknown units are an error. Every read is checked for NaN/inf.

Also here: one bead per residue at its C-alpha (`select_beads`) and the coarse-grained topology of
the selection (`cg_topology`).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
from jaxtyping import Float, Int

from .. import topology
from ..units import KJ_PER_KCAL, NM_TO_ANGSTROM

__all__ = [
    "AtomTable",
    "BeadSelection",
    "FrameChunk",
    "MDCATHError",
    "MDCATHFile",
    "Trajectory",
    "cg_topology",
    "find_inputs",
    "select_beads",
]

FILE_PATTERN = "mdcath_dataset_*.h5"
"""File names picked up when a directory is given as input."""

REQUIRED_ATOM_DATASETS: tuple[str, ...] = ("z", "element", "resname", "resid", "chain")

_COORD_UNITS: dict[str, float] = {
    "angstrom": 1.0, "angstroms": 1.0, "a": 1.0, "ang": 1.0, "å": 1.0,
    "nm": NM_TO_ANGSTROM, "nanometer": NM_TO_ANGSTROM, "nanometers": NM_TO_ANGSTROM,
}  # fmt: skip
_KJNM = 1.0 / (KJ_PER_KCAL * NM_TO_ANGSTROM)
_FORCE_UNITS: dict[str, float] = {
    "kcal/mol/angstrom": 1.0, "kcal/mol/a": 1.0, "kcal/mol/å": 1.0, "kcal/(mol*angstrom)": 1.0,
    "kcal/(mol*a)": 1.0, "kcal/mol*angstrom^-1": 1.0,
    "kj/mol/nm": _KJNM, "kj/(mol*nm)": _KJNM, "kj/mol/nanometer": _KJNM, "kj/mol*nm^-1": _KJNM,
}  # fmt: skip


class MDCATHError(RuntimeError):
    """A problem with an mdCATH input file; the message names the file, domain, group and dataset."""


class Trajectory(NamedTuple):
    """One (temperature, replica) trajectory present in a file."""

    temperature: int
    replica: int
    n_frames: int


@dataclasses.dataclass(frozen=True)
class AtomTable:
    """Per-atom metadata of a domain, in the atom order of `coords`/`forces`.

    All string fields are decoded `str` arrays; `name` comes from the `pdbProteinAtoms` text.
    """

    name: np.ndarray  # (N,) str, atom names (PDB columns 13-16, stripped)
    element: np.ndarray  # (N,) str
    z: Int[np.ndarray, " N"]
    resname: np.ndarray  # (N,) str, as stored (force-field names, e.g. HSD)
    resid: Int[np.ndarray, " N"]
    chain: np.ndarray  # (N,) str

    @property
    def n_atoms(self) -> int:
        return len(self.z)

    def residue_starts(self) -> Int[np.ndarray, " R"]:
        """Index of the first atom of every residue (a residue = a run of equal chain, resid, resname)."""
        n = self.n_atoms
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        new = (
            (self.chain[1:] != self.chain[:-1])
            | (self.resid[1:] != self.resid[:-1])
            | (self.resname[1:] != self.resname[:-1])
        )
        return np.concatenate([[0], np.flatnonzero(new) + 1]).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class FrameChunk:
    """A slice of frames of one trajectory, as yielded by `MDCATHFile.iter_chunks`."""

    temperature: int
    replica: int
    frames: Int[np.ndarray, " k"]  # frame indices inside the trajectory
    coords: Float[np.ndarray, "k N 3"]  # Å, float32
    forces: Float[np.ndarray, "k N 3"] | None  # kcal/mol/Å, float32


@dataclasses.dataclass(frozen=True)
class BeadSelection:
    """One bead per (non-cap) residue, at its C-alpha atom."""

    ca_index: Int[np.ndarray, " n"]  # atom index of each bead's CA
    resname: tuple[str, ...]  # normalised (one of the 20 standard names)
    resid: Int[np.ndarray, " n"]
    chain: tuple[str, ...]
    source_resname: tuple[str, ...]  # as stored in the file (e.g. HSD)

    @property
    def n_beads(self) -> int:
        return len(self.ca_index)


# --------------------------------------------------------------------------------------------- inputs


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def find_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expands input specifications into a sorted, de-duplicated list of mdCATH files.

    **Arguments:**

    - `inputs`: one path or a sequence of them; each is a file, a directory (all
      `mdcath_dataset_*.h5` directly inside it) or a glob pattern (`**` recurses).

    **Returns:** absolute paths (symlinks kept as given, so file names stay meaningful), sorted;
    the same file reached twice (also through different links) is listed once.

    **Raises:** `FileNotFoundError` naming the path, directory or pattern that matched nothing.
    """
    items: list[str | Path] = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise FileNotFoundError("no mdCATH inputs given (expected files, directories or globs)")
    found: list[Path] = []
    for item in items:
        s = os.fspath(item)
        p = Path(s).expanduser()
        if p.is_dir():
            hits = sorted(p.glob(FILE_PATTERN))
            hits = [h for h in hits if h.is_file()]
            if not hits:
                raise FileNotFoundError(f"directory {p} contains no {FILE_PATTERN} files")
            found.extend(hits)
        elif p.is_file():
            found.append(p)
        elif _is_glob(s):
            hits = []
            for h in sorted(glob.glob(os.path.expanduser(s), recursive=True)):
                hp = Path(h)
                if hp.is_dir():
                    hits.extend(x for x in sorted(hp.glob(FILE_PATTERN)) if x.is_file())
                elif hp.is_file():
                    hits.append(hp)
            if not hits:
                raise FileNotFoundError(f"pattern {s!r} matches no mdCATH files")
            found.extend(hits)
        else:
            raise FileNotFoundError(f"mdCATH input {s!r} does not exist")
    out: dict[Path, Path] = {}
    seen: set[tuple[int, int]] = set()
    for p in found:
        a = Path(os.path.abspath(p))
        st = a.stat()
        key = (st.st_dev, st.st_ino)
        if a in out or key in seen:
            continue
        seen.add(key)
        out[a] = a
    return sorted(out)


# -------------------------------------------------------------------------------------------- helpers


def _decode_strings(data: Any) -> np.ndarray:
    arr = np.asarray(data)
    flat = [x.decode() if isinstance(x, (bytes, np.bytes_)) else str(x) for x in arr.ravel()]
    return np.asarray(flat, dtype=str).reshape(arr.shape)


def _text(ds: h5py.Dataset) -> str:
    v = ds[()]
    if isinstance(v, np.ndarray):
        if v.size != 1:
            return "".join(_decode_strings(v).ravel())
        v = v.ravel()[0]
    return v.decode() if isinstance(v, (bytes, np.bytes_)) else str(v)


def _atom_names_from_pdb(text: str) -> np.ndarray:
    names = []
    for line in text.splitlines():
        if line.startswith(("ATOM", "HETATM")):
            names.append(line[12:16].strip())
    return np.asarray(names, dtype=str)


def _unit_key(u: Any) -> str:
    if isinstance(u, (bytes, np.bytes_)):
        u = u.decode()
    return str(u).strip().lower().replace(" ", "").replace("ångström", "angstrom")


def _as_int(x: Any) -> int:
    return int(np.asarray(x).ravel()[0])


# ----------------------------------------------------------------------------------------------- file


class MDCATHFile:
    """One mdCATH-layout HDF5 file, opened read-only; use as a context manager.

    **Arguments:**

    - `path`: the `.h5` file (one domain).

    Opening validates the layout and reads the (small) per-atom metadata; frames are read lazily with
    `read`, `iter_chunks` or `sample_frames`. A replica group without `numFrames` or `coords` is
    skipped with a warning.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except (OSError, ValueError) as e:
            raise MDCATHError(f"{self.path}: cannot open as HDF5 (corrupt or truncated?): {e}") from e
        try:
            self._open()
        except MDCATHError:
            self._h5.close()
            raise
        except (OSError, KeyError, ValueError) as e:
            self._h5.close()
            raise MDCATHError(f"{self.path}: cannot read the mdCATH metadata: {e}") from e
        self._units: dict[tuple[str, str], float] = {}

    # ---- opening and validation of the layout
    def _open(self) -> None:
        h = self._h5
        layout = h.attrs.get("layout")
        if layout is not None:
            lay = layout.decode() if isinstance(layout, bytes) else str(layout)
            if not lay.startswith("mdcath"):
                raise MDCATHError(
                    f"{self.path}: root attribute layout={lay!r}; expected an mdCATH layout "
                    "('mdcath-only-protein-v1.0')"
                )
        groups = [k for k in h.keys() if isinstance(h.get(k, getlink=False), h5py.Group)]
        if len(groups) != 1:
            raise MDCATHError(
                f"{self.path}: expected exactly one domain group at the root, found {len(groups)}"
                f" ({groups[:5]})"
            )
        self.domain: str = groups[0]
        g = h[self.domain]
        self._g = g
        missing = [k for k in (*REQUIRED_ATOM_DATASETS, "pdbProteinAtoms") if k not in g]
        if missing:
            raise MDCATHError(
                f"{self.path}: domain {self.domain} lacks required dataset(s) {missing}"
            )
        z = np.asarray(g["z"][()], dtype=np.int64).ravel()
        n = len(z)
        element = _decode_strings(g["element"][()]).ravel()
        resname = _decode_strings(g["resname"][()]).ravel()
        resid = np.asarray(g["resid"][()]).ravel()
        if not np.issubdtype(resid.dtype, np.integer):
            raise MDCATHError(
                f"{self.path}: {self.domain}/resid has dtype {resid.dtype}; expected integers"
            )
        resid = resid.astype(np.int64)
        chain = _decode_strings(g["chain"][()]).ravel()
        for key, arr in (("element", element), ("resname", resname), ("resid", resid),
                         ("chain", chain)):  # fmt: skip
            if len(arr) != n:
                raise MDCATHError(
                    f"{self.path}: {self.domain}/{key} has {len(arr)} entries but z has {n}"
                )
        if "numProteinAtoms" in g.attrs:
            n_attr = _as_int(g.attrs["numProteinAtoms"])
            if n_attr != n:
                raise MDCATHError(
                    f"{self.path}: {self.domain} attribute numProteinAtoms={n_attr} but the "
                    f"per-atom datasets have {n} atoms"
                )
        names = _atom_names_from_pdb(_text(g["pdbProteinAtoms"]))
        if len(names) != n:
            raise MDCATHError(
                f"{self.path}: {self.domain}/pdbProteinAtoms has {len(names)} ATOM/HETATM lines "
                f"but the per-atom datasets have {n} atoms"
            )
        self.atoms = AtomTable(name=names, element=element, z=z, resname=resname, resid=resid,
                               chain=chain)  # fmt: skip
        self.psf_text: str | None = _text(g["psf"]) if "psf" in g else None
        self.trajectories: list[Trajectory] = self._find_trajectories()

    def _find_trajectories(self) -> list[Trajectory]:
        out = []
        for tk, tg in self._g.items():
            if not isinstance(tg, h5py.Group):
                continue
            try:
                t = int(tk)
            except ValueError:
                warnings.warn(f"{self.path.name}: ignoring group {self.domain}/{tk} "
                              "(not a temperature)", stacklevel=3)  # fmt: skip
                continue
            for rk, rg in tg.items():
                if not isinstance(rg, h5py.Group):
                    continue
                try:
                    r = int(rk)
                except ValueError:
                    warnings.warn(f"{self.path.name}: ignoring group {self.domain}/{tk}/{rk} "
                                  "(not a replica)", stacklevel=3)  # fmt: skip
                    continue
                if "numFrames" not in rg.attrs or "coords" not in rg:
                    lack = "numFrames" if "numFrames" not in rg.attrs else "coords"
                    warnings.warn(
                        f"{self.path.name}: skipping group {self.domain}/{tk}/{rk}: it has no "
                        f"{lack}", stacklevel=3,
                    )  # fmt: skip
                    continue
                out.append(Trajectory(t, r, _as_int(rg.attrs["numFrames"])))
        return sorted(out)

    # ---- context manager
    def close(self) -> None:
        """Closes the HDF5 file."""
        self._h5.close()

    def __enter__(self) -> MDCATHFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MDCATHFile({self.path.name!r}, domain={self.domain!r}, "
                f"n_atoms={self.n_atoms}, trajectories={len(self.trajectories)})")  # fmt: skip

    @property
    def n_atoms(self) -> int:
        return self.atoms.n_atoms

    @property
    def temperatures(self) -> list[int]:
        """Temperatures (K) with at least one readable replica."""
        return sorted({t.temperature for t in self.trajectories})

    def _traj(self, temperature: int, replica: int) -> Trajectory:
        for t in self.trajectories:
            if t.temperature == int(temperature) and t.replica == int(replica):
                return t
        raise MDCATHError(
            f"{self.path}: domain {self.domain} has no trajectory {temperature}/{replica}; present: "
            f"{[f'{t.temperature}/{t.replica}' for t in self.trajectories]}"
        )

    def _group_name(self, temperature: int, replica: int) -> str:
        return f"{int(temperature)}/{int(replica)}"

    def _group(self, temperature: int, replica: int) -> h5py.Group:
        tg = self._g[str(int(temperature))]
        return tg[str(int(replica))]

    def has_forces(self, temperature: int, replica: int) -> bool:
        """Whether trajectory (temperature, replica) has a `forces` dataset."""
        self._traj(temperature, replica)
        return "forces" in self._group(temperature, replica)

    @property
    def all_have_forces(self) -> bool:
        """Whether every trajectory has forces (False for coordinate-only files)."""
        return bool(self.trajectories) and all(
            self.has_forces(t.temperature, t.replica) for t in self.trajectories
        )

    # ---- datasets
    def _where(self, temperature: int, replica: int, name: str) -> str:
        return (f"{self.path}: domain {self.domain}, group "
                f"{self._group_name(temperature, replica)}, dataset {name}")  # fmt: skip

    def _dataset(self, temperature: int, replica: int, name: str) -> tuple[h5py.Dataset, float]:
        """The dataset, checked for shape, and its factor to Å or kcal/mol/Å."""
        traj = self._traj(temperature, replica)
        grp = self._group(temperature, replica)
        if name not in grp:
            if name == "forces":
                raise MDCATHError(
                    f"{self.path}: domain {self.domain}, group "
                    f"{self._group_name(temperature, replica)} has no 'forces' dataset: the file is "
                    "coordinate-only, but forces are needed for force matching"
                )
            raise MDCATHError(f"{self._where(temperature, replica, name)}: missing")
        ds = grp[name]
        want = (traj.n_frames, self.n_atoms, 3)
        if ds.ndim != 3 or ds.shape[1:] != want[1:] or ds.shape[0] < traj.n_frames:
            raise MDCATHError(
                f"{self._where(temperature, replica, name)}: shape {ds.shape}; expected "
                f"(F, N, 3) = {want} (numFrames={traj.n_frames}, numProteinAtoms={self.n_atoms})"
            )
        if not np.issubdtype(ds.dtype, np.floating):
            raise MDCATHError(
                f"{self._where(temperature, replica, name)}: dtype {ds.dtype}; expected float"
            )
        key = (self._group_name(temperature, replica), name)
        if key not in self._units:
            table = _COORD_UNITS if name == "coords" else _FORCE_UNITS
            expected = "Angstrom" if name == "coords" else "kcal/mol/Angstrom"
            if "unit" in ds.attrs:
                u = _unit_key(ds.attrs["unit"])
                if u not in table:
                    raise MDCATHError(
                        f"{self._where(temperature, replica, name)}: unknown unit "
                        f"{ds.attrs['unit']!r}; expected {expected!r}"
                        + (" or 'nm'" if name == "coords" else " or 'kJ/mol/nm'")
                    )
                self._units[key] = table[u]
            else:
                self._units[key] = 1.0  # mdCATH convention
        return ds, self._units[key]

    def _read_ds(self, temperature: int, replica: int, name: str,
                 sel: slice | np.ndarray, idx: np.ndarray) -> np.ndarray:  # fmt: skip
        ds, factor = self._dataset(temperature, replica, name)
        n = self.n_atoms
        try:
            if len(idx) == 0:
                data = np.zeros((0, n, 3), dtype=np.float32)
            elif isinstance(sel, slice):
                data = ds[sel]
            else:
                u, inv = np.unique(idx, return_inverse=True)
                span = int(u[-1] - u[0] + 1)
                if span <= 4 * len(u) + 16:  # dense enough: one contiguous read
                    data = ds[int(u[0]) : int(u[-1]) + 1][u - u[0]]
                else:
                    data = ds[u]
                data = data[inv.ravel()]
        except OSError as e:
            raise MDCATHError(
                f"{self._where(temperature, replica, name)}: read failed (corrupt or truncated "
                f"file?): {e}"
            ) from e
        data = np.asarray(data, dtype=np.float32)
        if factor != 1.0:
            data = data * np.float32(factor)
        bad = ~np.isfinite(data)
        if bad.any():
            fb, ab = np.argwhere(bad.any(axis=-1))[0]
            raise MDCATHError(
                f"{self._where(temperature, replica, name)}: non-finite value (NaN/inf) at frame "
                f"{int(idx[fb])}, atom {int(ab)}"
            )
        return data

    def _frame_selection(self, traj: Trajectory,
                         frames: slice | int | Sequence[int] | np.ndarray) -> tuple[Any, np.ndarray]:  # fmt: skip
        nf = traj.n_frames
        where = f"{self.path}: domain {self.domain}, group {traj.temperature}/{traj.replica}"
        if isinstance(frames, slice):
            start, stop, step = frames.indices(nf)
            idx = np.arange(start, stop, step, dtype=np.int64)
            if step > 0:
                return slice(start, stop, step), idx
            return idx, idx
        idx = np.asarray(frames)
        if idx.dtype == bool:
            if idx.shape != (nf,):
                raise MDCATHError(f"{where}: boolean frame mask of shape {idx.shape}, expected ({nf},)")
            idx = np.flatnonzero(idx)
        if idx.ndim == 0:
            idx = idx[None]
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise MDCATHError(f"{where}: frames must be a slice or 1-D integer indices, got {frames!r}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -nf or idx.max() >= nf):
            raise MDCATHError(f"{where}: frame index out of range for {nf} frames")
        idx = np.where(idx < 0, idx + nf, idx)
        return idx, idx

    def read(self, temperature: int, replica: int,
             frames: slice | int | Sequence[int] | np.ndarray = slice(None),
             forces: bool = True) -> tuple[Float[np.ndarray, "k N 3"], Float[np.ndarray, "k N 3"] | None]:  # fmt: skip
        """Reads frames of one trajectory (only those frames are loaded).

        **Arguments:**

        - `temperature`, `replica`: the trajectory (e.g. 348, 0).
        - `frames`: a slice, or an index array (any order, repeats allowed; negative indices wrap).
        - `forces`: also read forces (an `MDCATHError` if the trajectory has none).

        **Returns:** `(coords, forces)`, float32 in Å and kcal/mol/Å; `forces` is None if not asked.

        **Raises:** `MDCATHError` for a wrong shape, unknown unit, NaN/inf (naming the first bad frame
        and atom), missing forces, or an HDF5 read failure.
        """
        traj = self._traj(temperature, replica)
        if forces:
            self._dataset(temperature, replica, "forces")  # fail early if coordinate-only
        sel, idx = self._frame_selection(traj, frames)
        coords = self._read_ds(temperature, replica, "coords", sel, idx)
        f = self._read_ds(temperature, replica, "forces", sel, idx) if forces else None
        return coords, f

    # ---- selection and chunked iteration
    def select(self, temperatures: Sequence[int] | int | None = None,
               replicas: Sequence[int] | int | None = None) -> list[Trajectory]:  # fmt: skip
        """The trajectories matching a selection; requested ones that do not exist are warned about.

        **Raises:** `MDCATHError` if nothing is selected.
        """
        def as_set(x: Any) -> set[int] | None:
            if x is None:
                return None
            if isinstance(x, (int, np.integer, str)):
                return {int(x)}
            return {int(v) for v in x}

        ts, rs = as_set(temperatures), as_set(replicas)
        present_t = {t.temperature for t in self.trajectories}
        if ts is not None:
            missing = sorted(ts - present_t)
            if missing:
                warnings.warn(f"{self.path.name}: domain {self.domain} has no temperature(s) "
                              f"{missing} (present: {sorted(present_t)}); skipping them",
                              stacklevel=3)  # fmt: skip
        chosen_t = sorted(present_t if ts is None else ts & present_t)
        if rs is not None:
            have = {(t.temperature, t.replica) for t in self.trajectories}
            missing_g = [f"{t}/{r}" for t in chosen_t for r in sorted(rs) if (t, r) not in have]
            if missing_g:
                warnings.warn(f"{self.path.name}: domain {self.domain} has no trajectory group(s) "
                              f"{missing_g}; skipping them", stacklevel=3)  # fmt: skip
        out = [
            t for t in self.trajectories
            if t.temperature in chosen_t and (rs is None or t.replica in rs)
        ]  # fmt: skip
        if not out:
            raise MDCATHError(
                f"{self.path}: domain {self.domain}: no trajectories selected (temperatures="
                f"{temperatures}, replicas={replicas}; present: "
                f"{[f'{t.temperature}/{t.replica}' for t in self.trajectories]})"
            )
        return out

    @staticmethod
    def _frame_plan(traj: Trajectory, stride: int, max_frames: int | None) -> tuple[int, int]:
        """(number of selected frames, stop index) for a stride and cap."""
        k = len(range(0, traj.n_frames, stride))
        if max_frames is not None:
            k = min(k, int(max_frames))
        return k, (k - 1) * stride + 1 if k else 0

    def iter_chunks(self, temperatures: Sequence[int] | int | None = None,
                    replicas: Sequence[int] | int | None = None, stride: int = 1,
                    max_frames: int | None = None, chunk_size: int = 256,
                    forces: bool = True) -> Iterator[FrameChunk]:  # fmt: skip
        """Yields frames chunk by chunk in (temperature, replica, frame) order.

        **Arguments:**

        - `temperatures`, `replicas`: selection (None = all present; absent ones warn and are skipped).
        - `stride`: keep every stride-th frame; `max_frames`: cap per trajectory, after the stride.
        - `chunk_size`: frames per chunk (bounds memory: one chunk of coords and forces).
        - `forces`: read forces too (every selected trajectory must have them).

        **Returns:** an iterator of `FrameChunk`.
        """
        if stride < 1 or chunk_size < 1 or (max_frames is not None and max_frames < 0):
            raise ValueError(f"need stride >= 1, chunk_size >= 1, max_frames >= 0; got {stride}, "
                             f"{chunk_size}, {max_frames}")  # fmt: skip
        trajs = self.select(temperatures, replicas)
        if forces:
            for t in trajs:
                self._dataset(t.temperature, t.replica, "forces")
        return self._iter(trajs, stride, max_frames, chunk_size, forces)

    def _iter(self, trajs: list[Trajectory], stride: int, max_frames: int | None,
              chunk_size: int, forces: bool) -> Iterator[FrameChunk]:  # fmt: skip
        for t in trajs:
            k, _ = self._frame_plan(t, stride, max_frames)
            for c0 in range(0, k, chunk_size):
                c1 = min(k, c0 + chunk_size)
                sl = slice(c0 * stride, (c1 - 1) * stride + 1, stride)
                coords, f = self.read(t.temperature, t.replica, sl, forces=forces)
                yield FrameChunk(t.temperature, t.replica, np.arange(c0, c1) * stride, coords, f)

    def n_selected_frames(self, temperatures: Sequence[int] | int | None = None,
                          replicas: Sequence[int] | int | None = None, stride: int = 1,
                          max_frames: int | None = None) -> int:  # fmt: skip
        """Total frames `iter_chunks` would yield for this selection."""
        return sum(self._frame_plan(t, stride, max_frames)[0]
                   for t in self.select(temperatures, replicas))  # fmt: skip

    def validate(self, forces: bool = True, temperatures: Sequence[int] | int | None = None,
                 replicas: Sequence[int] | int | None = None, stride: int = 1,
                 max_frames: int | None = None, chunk_size: int = 256) -> int:  # fmt: skip
        """One chunked pass over the selected frames: shapes, units, NaN/inf, missing forces.

        Meant to run before any output is written. **Returns:** the number of frames checked.

        **Raises:** `MDCATHError` naming file, domain, group, dataset and the first bad frame/atom.
        """
        n = 0
        for ch in self.iter_chunks(temperatures, replicas, stride, max_frames, chunk_size, forces):
            n += len(ch.frames)
        return n

    def sample_frames(self, n: int, forces: bool = True,
                      temperatures: Sequence[int] | int | None = None,
                      replicas: Sequence[int] | int | None = None, stride: int = 1,
                      max_frames: int | None = None) -> tuple[Float[np.ndarray, "k N 3"], Float[np.ndarray, "k N 3"] | None]:  # fmt: skip
        """At most `n` frames evenly spread over all selected frames (pooled over trajectories).

        **Returns:** `(coords, forces)` in (temperature, replica, frame) order; forces None if not asked.
        """
        trajs = self.select(temperatures, replicas)
        plans = [(t, self._frame_plan(t, stride, max_frames)[0]) for t in trajs]
        total = sum(k for _, k in plans)
        if n <= 0 or total == 0:
            e = np.zeros((0, self.n_atoms, 3), np.float32)
            return e, (e.copy() if forces else None)
        pick = (np.arange(total) if total <= n
                else np.unique(np.round(np.linspace(0, total - 1, n)).astype(np.int64)))  # fmt: skip
        cs, fs = [], []
        off = 0
        for t, k in plans:
            local = pick[(pick >= off) & (pick < off + k)] - off
            off += k
            if len(local) == 0:
                continue
            c, f = self.read(t.temperature, t.replica, local * stride, forces=forces)
            cs.append(c)
            if forces:
                fs.append(f)
        return np.concatenate(cs), (np.concatenate(fs) if forces else None)

    def beads(self, residue_map: Mapping[str, str] | None = None) -> BeadSelection:
        """`select_beads` on this file's atoms, with the file and domain named in errors."""
        return select_beads(self.atoms, residue_map=residue_map,
                            where=f"{self.path.name}:{self.domain}")  # fmt: skip


# --------------------------------------------------------------------------------------- beads / topology


def select_beads(atoms: AtomTable, *, residue_map: Mapping[str, str] | None = None,
                 where: str = "") -> BeadSelection:  # fmt: skip
    """One bead per residue at its CA atom; caps (`topology.CAPS`) get none.

    **Arguments:**

    - `atoms`: the atom table of a domain.
    - `residue_map`: extra residue-name mappings for non-standard residues (e.g. `{"SEP": "SER"}`).
    - `where`: context for error messages (e.g. "file.h5:domain").

    **Returns:** a `BeadSelection` (CA atom indices, normalised residue names, resids, chains).

    **Raises:** `topology.UnknownResidueError` for an unknown residue name; `MDCATHError` for a
    residue without a CA or with more than one.
    """
    extra = {k.strip().upper(): v for k, v in (residue_map or {}).items()}
    starts = atoms.residue_starts()
    ends = np.append(starts[1:], atoms.n_atoms)
    ca, names, src, resid, chain = [], [], [], [], []
    ctx = f"{where}: " if where else ""
    for i, (s, e) in enumerate(zip(starts, ends)):
        rn = str(atoms.resname[s])
        rid = int(atoms.resid[s])
        key = rn.strip().upper()
        if key in topology.CAPS and key not in extra:
            continue
        std = topology.normalise_resname(
            rn, extra, where=f"{where + ' ' if where else ''}residue index {i} (resid {rid}, "
            f"chain {atoms.chain[s]!r})"
        )  # fmt: skip
        hits = s + np.flatnonzero(atoms.name[s:e] == "CA")
        if len(hits) != 1:
            raise MDCATHError(
                f"{ctx}residue {rn} {rid} (index {i}, chain {atoms.chain[s]!r}) has {len(hits)} "
                "atoms named CA; expected exactly one (caps without CA must be one of "
                f"{sorted(topology.CAPS)})"
            )
        ca.append(int(hits[0]))
        names.append(std)
        src.append(rn)
        resid.append(rid)
        chain.append(str(atoms.chain[s]))
    if not ca:
        raise MDCATHError(f"{ctx}no residue with a CA atom: nothing to coarse-grain")
    return BeadSelection(
        ca_index=np.asarray(ca, dtype=np.int64), resname=tuple(names),
        resid=np.asarray(resid, dtype=np.int64), chain=tuple(chain), source_resname=tuple(src),
    )  # fmt: skip


def cg_topology(selection: BeadSelection, first_frame_ca_positions: Float[np.ndarray, "n 3"],
                species_map: str = "aa20",
                max_ca_distance: float = topology.MAX_CA_CA_DISTANCE) -> topology.CGTopology:  # fmt: skip
    """The coarse-grained topology of a bead selection.

    **Arguments:**

    - `selection`: from `select_beads`.
    - `first_frame_ca_positions`: CA positions (Å) in one frame (normally the first), shape (n, 3).
    - `species_map`: a name in `topology.SPECIES_MAPS` ("aa20" or "charge4").
    - `max_ca_distance`: Å; a longer consecutive CA-CA distance starts a new chain segment.

    **Returns:** a `topology.CGTopology` (segments break at chain changes, resid jumps, long CA-CA).
    """
    pos = np.asarray(first_frame_ca_positions, dtype=np.float64)
    if pos.shape != (selection.n_beads, 3):
        raise ValueError(
            f"CA positions have shape {pos.shape}; expected ({selection.n_beads}, 3)"
        )
    if not np.isfinite(pos).all():
        raise ValueError("CA positions contain NaN/inf")
    segment = topology.chain_segments(selection.chain, selection.resid, pos, max_ca_distance)
    return topology.CGTopology(
        resname=selection.resname,
        resid=np.asarray(selection.resid, dtype=np.int32),
        chain=selection.chain,
        segment=segment,
        species=topology.species_of(selection.resname, species_map),
    )
