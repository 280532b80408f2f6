"""The prepared dataset on disk: one HDF5 file, one group per protein (domain).

Layout of `<dir>/dataset.h5` (format `cameo_eqx.prepared/1`):

```
/  attrs: format, species_map_name, species_map (JSON), config (JSON, the resolved prepare config)
/<protein>/
    R            (T, N, 3) float32   bead positions, Å
    F            (T, N, 3) float32   mapped bead forces, kcal/mol/Å (absent for coordinate-only inputs)
    F_true       (T, N, 3) float32   noise-free forces (synthetic data only: `synthesize`), kcal/mol/Å
    species      (N,) int32          under the file's species map
    resname      (N,) bytes          normalised residue names
    resid        (N,) int32          residue numbers as in the source
    chain        (N,) bytes          chain ids as in the source
    segment      (N,) int32          chain-segment index (bonded terms never cross a segment break)
    temperature  (T,) float32        K, of each frame's simulation
    replica      (T,) int32          replica index of each frame
    frame        (T,) int32          frame index inside its source trajectory
    force_map/   rows, cols, vals (COO, float64), attrs shape, kind (slice | basic | optimal), lambda
    attrs: source_file, domain, n_atoms, has_forces, fingerprint, complete
```
Frames are stored in source order (temperature, replica, frame). Readers slice frames lazily, so a
dataset much larger than memory is fine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from jaxtyping import Float, Int

from ..topology import CGTopology

FORMAT = "cameo_eqx.prepared/1"
DATASET_FILE = "dataset.h5"
CHUNK_CACHE_BYTES = 1 << 18


@dataclasses.dataclass
class ProteinRecord:
    """One protein's prepared frames. `positions`/`forces` may be h5py datasets (lazy) or arrays."""

    name: str
    topology: CGTopology
    positions: Any  # (T, N, 3) float32, Å
    forces: Any | None  # (T, N, 3) float32, kcal/mol/Å, or None for coordinate-only data
    temperature: Float[np.ndarray, " T"]
    replica: Int[np.ndarray, " T"]
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    forces_true: Any | None = None  # (T, N, 3) noise-free forces of synthetic data, or None

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_beads(self) -> int:
        return self.topology.n_beads

    def frames(
        self, index: Int[np.ndarray, " k"] | slice
    ) -> tuple[Float[np.ndarray, "k N 3"], Float[np.ndarray, "k N 3"] | None]:
        """Positions and forces of the selected frames as float32 arrays (reads only those frames)."""
        if isinstance(index, slice):
            r = np.asarray(self.positions[index], dtype=np.float32)
            f = None if self.forces is None else np.asarray(self.forces[index], dtype=np.float32)
            return r, f
        uniq, inverse = np.unique(np.asarray(index), return_inverse=True)
        r = _rows(self.positions, uniq)[inverse.reshape(-1)]
        f = None if self.forces is None else _rows(self.forces, uniq)[inverse.reshape(-1)]
        return r, f

    def true_forces(self, index: Int[np.ndarray, " k"]) -> Float[np.ndarray, "k N 3"] | None:
        """Noise-free forces of the selected frames (synthetic data), None where the data has none."""
        if self.forces_true is None:
            return None
        uniq, inverse = np.unique(np.asarray(index), return_inverse=True)
        return _rows(self.forces_true, uniq)[inverse.reshape(-1)]

    def load(self) -> "ProteinRecord":
        """A copy with all frames read into memory."""
        r, f = self.frames(slice(None))
        ft = None if self.forces_true is None else np.asarray(self.forces_true[()], np.float32)
        return dataclasses.replace(self, positions=r, forces=f, forces_true=ft)


def _rows(a: Any, index: Int[np.ndarray, " k"]) -> Float[np.ndarray, "k ..."]:
    """Rows `index` (sorted, unique) of an array or an h5py dataset, as float32. A dataset is read one slice
    per run of consecutive rows: h5py's list selection costs ~30 µs per row (~7 µs for a slice on a
    64-frame chunk), and the batch loader reads a step's frames of each protein in one call."""
    if not isinstance(a, h5py.Dataset):
        return np.asarray(a[index], dtype=np.float32)
    if len(index) == 0:
        return np.zeros((0, *a.shape[1:]), np.float32)
    cuts = np.flatnonzero(np.diff(index) != 1) + 1
    runs = zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(index)].tolist())
    return np.concatenate([np.asarray(a[index[i] : index[j - 1] + 1], dtype=np.float32) for i, j in runs])


def dataset_file(path: str | os.PathLike) -> Path:
    """The HDF5 file of a prepared dataset given its directory or the file itself."""
    p = Path(path)
    return p / DATASET_FILE if p.is_dir() else p


class PreparedDataset:
    """Read access to a prepared dataset (lazy: frames are read on demand).

    **Arguments:**

    - `path`: the dataset directory written by `prepare` (or its `dataset.h5`).
    - `in_memory`: read every protein's frames into memory at once (small datasets, tests).
    """

    def __init__(self, path: str | os.PathLike, in_memory: bool = False):
        self.path = dataset_file(path)
        if not self.path.exists():
            raise FileNotFoundError(
                f"no prepared dataset at {path}: expected {self.path} (run `cli.py prepare` first)"
            )
        try:
            # a small per-dataset chunk cache: a training epoch touches every protein's R and F, and
            # h5py's default (1 MiB each) would grow to ~10 GB over the 5,398 mdCATH domains
            self._h5 = h5py.File(self.path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
        except OSError as e:
            raise OSError(f"cannot open prepared dataset {self.path}: {e}") from e
        fmt = self._h5.attrs.get("format")
        if fmt != FORMAT:
            raise ValueError(f"{self.path} is not a cameo_eqx prepared dataset (format {fmt!r})")
        self.species_map_name: str = str(self._h5.attrs["species_map_name"])
        self.species_map: dict[str, int] = json.loads(self._h5.attrs["species_map"])
        self.config: dict[str, Any] = json.loads(self._h5.attrs.get("config", "{}"))
        self.names: list[str] = sorted(
            k for k in self._h5.keys() if self._h5[k].attrs.get("complete", False)
        )
        self._in_memory = in_memory
        self._cache: dict[str, ProteinRecord] = {}

    @property
    def n_species(self) -> int:
        return max(self.species_map.values()) + 1

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[ProteinRecord]:
        return (self.record(n) for n in self.names)

    def record(self, name: str) -> ProteinRecord:
        """The record of one protein (lazy h5py datasets unless the dataset is in memory)."""
        if name in self._cache:
            return self._cache[name]
        if name not in self._h5:
            raise KeyError(f"protein {name!r} not in {self.path} (has {len(self.names)} proteins)")
        rec = read_record(self._h5[name])
        if self._in_memory:
            rec = rec.load()
            self._cache[name] = rec
        return rec

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "PreparedDataset":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _strs(ds: h5py.Dataset) -> tuple[str, ...]:
    return tuple(x.decode() if isinstance(x, bytes) else str(x) for x in ds[()])


def read_record(g: h5py.Group) -> ProteinRecord:
    """A lazy `ProteinRecord` from one protein group."""
    topo = CGTopology(
        resname=_strs(g["resname"]),
        resid=np.asarray(g["resid"][()], dtype=np.int32),
        chain=_strs(g["chain"]),
        segment=np.asarray(g["segment"][()], dtype=np.int32),
        species=np.asarray(g["species"][()], dtype=np.int32),
    )
    return ProteinRecord(
        name=g.name.strip("/"),
        topology=topo,
        positions=g["R"],
        forces=g["F"] if "F" in g else None,
        forces_true=g["F_true"] if "F_true" in g else None,
        temperature=np.asarray(g["temperature"][()], dtype=np.float32),
        replica=np.asarray(g["replica"][()], dtype=np.int32),
        attrs=dict(g.attrs),
    )


def write_record(
    h5: h5py.File,
    rec: ProteinRecord,
    *,
    frame: Int[np.ndarray, " T"],
    force_map: Any | None = None,
    compression: str | None = None,
) -> None:
    """Writes one protein group (replacing an incomplete one); marks it complete last.

    **Arguments:**

    - `h5`: the open (temporary) dataset file.
    - `rec`: the record with in-memory `positions`/`forces`.
    - `frame`: source frame index of every frame.
    - `force_map`: a scipy sparse or dense (N, n_atoms) matrix, stored as COO.
    - `compression`: h5py compression filter (`None`, "lzf", "gzip").
    """
    if rec.name in h5:
        del h5[rec.name]
    g = h5.create_group(rec.name)
    t, n = rec.positions.shape[:2]
    chunks = (max(1, min(t, 64)), n, 3) if t else None
    g.create_dataset("R", data=np.asarray(rec.positions, np.float32), chunks=chunks,
                     compression=compression)  # fmt: skip
    if rec.forces is not None:
        g.create_dataset("F", data=np.asarray(rec.forces, np.float32), chunks=chunks,
                         compression=compression)  # fmt: skip
    if rec.forces_true is not None:
        g.create_dataset("F_true", data=np.asarray(rec.forces_true, np.float32), chunks=chunks,
                         compression=compression)  # fmt: skip
    topo = rec.topology
    g["species"] = np.asarray(topo.species, np.int32)
    g["resname"] = np.asarray([s.encode() for s in topo.resname], dtype="S4")
    g["resid"] = np.asarray(topo.resid, np.int32)
    g["chain"] = np.asarray([s.encode() for s in topo.chain], dtype="S8")
    g["segment"] = np.asarray(topo.segment, np.int32)
    g["temperature"] = np.asarray(rec.temperature, np.float32)
    g["replica"] = np.asarray(rec.replica, np.int32)
    g["frame"] = np.asarray(frame, np.int32)
    if force_map is not None:
        import scipy.sparse as sp  # lazy: force maps only; `import cameo_eqx.data.store` stays scipy-free (~0.2 s)

        coo = sp.coo_matrix(force_map)
        fm = g.create_group("force_map")
        fm["rows"] = coo.row.astype(np.int32)
        fm["cols"] = coo.col.astype(np.int32)
        fm["vals"] = coo.data.astype(np.float64)
        fm.attrs["shape"] = np.asarray(coo.shape, np.int64)
    for k, v in rec.attrs.items():
        g.attrs[k] = v
    g.attrs["has_forces"] = rec.forces is not None
    g.attrs["complete"] = True  # written last: a crash leaves the group incomplete, then rewritten


def read_force_map(g: h5py.Group) -> Any:
    """The stored force map of one protein group as a scipy sparse CSR matrix."""
    import scipy.sparse as sp  # lazy: force maps only; `import cameo_eqx.data.store` stays scipy-free (~0.2 s)

    fm = g["force_map"]
    return sp.coo_matrix(
        (fm["vals"][()], (fm["rows"][()], fm["cols"][()])), shape=tuple(fm.attrs["shape"])
    ).tocsr()


def open_for_writing(
    out_dir: str | os.PathLike, *, species_map_name: str, species_map: dict[str, int],
    config: dict[str, Any],
) -> tuple[h5py.File, Path, Path]:  # fmt: skip
    """Opens `<out>/dataset.h5.tmp` for (resumed) writing; `finalise` renames it into place.

    A temporary file left by an interrupted run with the same config is reused (its complete protein
    groups are kept); one with a different config is discarded.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / DATASET_FILE
    tmp = out / (DATASET_FILE + ".tmp")
    cfg = json.dumps(config, sort_keys=True)
    if tmp.exists():
        try:
            with h5py.File(tmp, "r") as h:
                same = h.attrs.get("config") == cfg and h.attrs.get("format") == FORMAT
        except OSError:
            same = False
        if not same:
            tmp.unlink()
    if not tmp.exists() and final.exists():
        # start from the finished dataset so unchanged proteins are kept, not recomputed

        try:
            with h5py.File(final, "r") as h:
                same = h.attrs.get("config") == cfg and h.attrs.get("format") == FORMAT
        except OSError:
            same = False
        if same:
            shutil.copyfile(final, tmp)
    h5 = h5py.File(tmp, "a")
    h5.attrs["format"] = FORMAT
    h5.attrs["species_map_name"] = species_map_name
    h5.attrs["species_map"] = json.dumps(species_map, sort_keys=True)
    h5.attrs["config"] = cfg
    return h5, tmp, final


def finalise(h5: h5py.File, tmp: Path, final: Path, keep: Sequence[str] | None = None) -> None:
    """Drops groups not in `keep` (stale proteins), closes and atomically renames the file into place."""
    if keep is not None:
        for name in list(h5.keys()):
            if name not in set(keep):
                del h5[name]
    h5.flush()
    h5.close()
    os.replace(tmp, final)
