"""The mdCATH reader: inputs, layout validation, lazy chunked reads, units, NaN checks, beads, segments."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from cameo_eqx import topology
from cameo_eqx.data import mdcath
from cameo_eqx.data.mdcath import MDCATHError, MDCATHFile

# ----------------------------------------------------------------------------------------- helpers


def write_like(src: Path, dst: Path, n_frames: int = 6, trajs=((320, 0), (348, 0)),
               edit: Callable[[h5py.Group], None] | None = None) -> Path:  # fmt: skip
    """A small mdCATH-layout copy of `src` (first `n_frames` frames of `trajs`), then `edit(domain)`."""
    with h5py.File(src, "r") as s, h5py.File(dst, "w") as d:
        d.attrs["layout"] = "mdcath-only-protein-v1.0"
        dom = next(iter(s.keys()))
        sg = s[dom]
        g = d.create_group(dom)
        for k, v in sg.attrs.items():
            g.attrs[k] = v
        for k in ("z", "element", "resname", "resid", "chain", "pdbProteinAtoms"):
            s.copy(sg[k], g, name=k)
        for t, r in trajs:
            sr = sg[f"{t}/{r}"]
            dg = g.create_group(f"{t}/{r}")
            dg.attrs["numFrames"] = n_frames
            for name in ("coords", "forces"):
                if name in sr:
                    ds = dg.create_dataset(name, data=sr[name][:n_frames])
                    ds.attrs["unit"] = sr[name].attrs["unit"]
        if edit is not None:
            edit(g)
    return dst


def direct(path: Path, t: int, r: int, name: str = "coords") -> np.ndarray:
    with h5py.File(path, "r") as h:
        return h[next(iter(h.keys()))][f"{t}/{r}/{name}"][()]


# ------------------------------------------------------------------------------------------ inputs


def test_find_inputs_variants(tmp_path, villin_h5, cln025_h5, ntl9_coords_h5):
    def absolute(p):  # what find_inputs returns: absolute, symlinks kept (../shared may itself be a link)
        return Path(os.path.abspath(p))

    data = villin_h5.parent
    one = mdcath.find_inputs(villin_h5)
    assert one == [absolute(villin_h5)]
    assert mdcath.find_inputs(str(villin_h5)) == one
    all3 = sorted(absolute(p) for p in (villin_h5, cln025_h5, ntl9_coords_h5))
    got_dir = mdcath.find_inputs(data)
    assert set(all3) <= set(got_dir)
    assert all(p.name.startswith("mdcath_dataset_") and p.suffix == ".h5" for p in got_dir)
    assert got_dir == sorted(got_dir)
    assert mdcath.find_inputs(str(data / "mdcath_dataset_*.h5")) == got_dir
    # a list with duplicates (same file given twice, and through a symlink) is de-duplicated
    link = tmp_path / "mdcath_dataset_link.h5"
    link.symlink_to(villin_h5)
    lst = mdcath.find_inputs([cln025_h5, villin_h5, str(villin_h5), link])
    assert lst == sorted([absolute(villin_h5), absolute(cln025_h5)])


def test_find_inputs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist.h5"):
        mdcath.find_inputs(tmp_path / "does_not_exist.h5")
    with pytest.raises(FileNotFoundError, match="contains no mdcath_dataset"):
        mdcath.find_inputs(tmp_path)
    with pytest.raises(FileNotFoundError, match="matches no"):
        mdcath.find_inputs(str(tmp_path / "nothing_*.h5"))
    with pytest.raises(FileNotFoundError, match="no mdCATH inputs"):
        mdcath.find_inputs([])


# -------------------------------------------------------------------------------------- real files

REAL = {
    # fixture: domain, atoms, trajectories, beads, forces
    "villin_h5": ("villinHP35", 582, [(320, 0, 200), (348, 0, 200)], 35, True),
    "cln025_h5": ("cln025", 175, [(348, 0, 2000)], 10, True),
    "ntl9_coords_h5": ("2hbaA00", 834, [(320, 0, 500)], 52, False),
}


@pytest.mark.parametrize("fixture", sorted(REAL))
def test_real_files(fixture, request):
    path = request.getfixturevalue(fixture)
    domain, n_atoms, trajs, n_beads, forces = REAL[fixture]
    with MDCATHFile(path) as f:
        assert f.domain == domain
        assert f.n_atoms == n_atoms == len(f.atoms.name) == len(f.atoms.element)
        assert [tuple(t) for t in f.trajectories] == trajs
        assert f.all_have_forces == forces
        assert all(f.has_forces(t, r) == forces for t, r, _ in f.trajectories)
        assert f.atoms.element.dtype.kind == "U" and f.atoms.resname.dtype.kind == "U"
        # elements agree with atomic numbers
        zmap = {"H": 1, "C": 6, "N": 7, "O": 8, "S": 16}
        assert all(zmap[e] == z for e, z in zip(f.atoms.element, f.atoms.z))
        beads = f.beads()
        assert beads.n_beads == n_beads
        assert (f.atoms.name[beads.ca_index] == "CA").all()
        assert len(set(beads.resid.tolist())) == n_beads  # one bead per residue
        assert all(r in topology.AMINO_ACIDS for r in beads.resname)
        coords, frc = f.read(trajs[0][0], 0, slice(0, 1), forces=False)
        assert frc is None and coords.dtype == np.float32 and coords.shape == (1, n_atoms, 3)
        topo = mdcath.cg_topology(beads, coords[0, beads.ca_index])
        assert topo.n_beads == n_beads
        assert (topo.segment == 0).all()  # one unbroken chain in all three files
        ca = coords[0, beads.ca_index]
        d = np.linalg.norm(np.diff(ca, axis=0), axis=-1)
        assert 3.6 < d.min() and d.max() < 4.0  # trans peptide CA-CA ≈ 3.8 Å: Å, not nm
        assert f.psf_text is None


def test_cln025_caps_dropped(cln025_h5):
    with MDCATHFile(cln025_h5) as f:
        assert "ACE" in set(f.atoms.resname) and "NME" in set(f.atoms.resname)
        b = f.beads()
    assert b.resname == ("TYR", "TYR", "ASP", "PRO", "GLU", "THR", "GLY", "THR", "TRP", "TYR")
    assert b.resid.tolist() == list(range(2, 12))


def test_ntl9_charmm_termini_inside_residues(ntl9_coords_h5):
    with MDCATHFile(ntl9_coords_h5) as f:
        first = f.atoms.name[f.atoms.resid == f.atoms.resid.min()]
        last = f.atoms.name[f.atoms.resid == f.atoms.resid.max()]
        assert {"CAY", "CY", "OY"} <= set(first) and {"NT", "CAT"} <= set(last)
        assert f.beads().n_beads == 52


# ----------------------------------------------------------------------------------- frame reading


def test_chunks_equal_direct_read(villin_h5):
    with MDCATHFile(villin_h5) as f:
        chunks = list(f.iter_chunks(chunk_size=37))
        assert [(c.temperature, c.replica) for c in chunks][0] == (320, 0)
        assert all(len(c.frames) <= 37 for c in chunks)
        for t in (320, 348):
            cs = [c for c in chunks if c.temperature == t]
            np.testing.assert_array_equal(np.concatenate([c.frames for c in cs]), np.arange(200))
            np.testing.assert_array_equal(np.concatenate([c.coords for c in cs]), direct(villin_h5, t, 0))
            np.testing.assert_array_equal(
                np.concatenate([c.forces for c in cs]), direct(villin_h5, t, 0, "forces")
            )
        # index arrays: any order, repeats, negative indices
        idx = np.array([150, 3, 3, 7, -1])
        c, fr = f.read(348, 0, idx)
        ref = direct(villin_h5, 348, 0)
        np.testing.assert_array_equal(c, ref[[150, 3, 3, 7, 199]])
        np.testing.assert_array_equal(fr, direct(villin_h5, 348, 0, "forces")[[150, 3, 3, 7, 199]])
        c2, _ = f.read(348, 0, [0, 190], forces=False)  # sparse: point selection path
        np.testing.assert_array_equal(c2, ref[[0, 190]])
        c3, _ = f.read(348, 0, slice(None, None, -50), forces=False)
        np.testing.assert_array_equal(c3, ref[::-50])
        with pytest.raises(MDCATHError, match="out of range"):
            f.read(348, 0, [200])


def test_stride_and_max_frames(villin_h5, ntl9_coords_h5):
    with MDCATHFile(villin_h5) as f:
        chunks = list(f.iter_chunks(temperatures=[348], stride=7, max_frames=10, chunk_size=4))
        frames = np.concatenate([c.frames for c in chunks])
        np.testing.assert_array_equal(frames, np.arange(10) * 7)
        assert [len(c.frames) for c in chunks] == [4, 4, 2]
        ref = direct(villin_h5, 348, 0)
        np.testing.assert_array_equal(np.concatenate([c.coords for c in chunks]), ref[frames])
        assert f.n_selected_frames(stride=7, max_frames=10) == 20
        assert f.n_selected_frames(stride=3) == 2 * 67
        assert f.validate(forces=True, stride=3) == 2 * 67
        c, fr = f.sample_frames(50, forces=True)
        assert c.shape == fr.shape == (50, 582, 3)
        np.testing.assert_array_equal(c[0], direct(villin_h5, 320, 0)[0])
        np.testing.assert_array_equal(c[-1], ref[-1])
    with MDCATHFile(ntl9_coords_h5) as f:
        chunks = list(f.iter_chunks(stride=100, chunk_size=2, forces=False))
        assert np.concatenate([c.frames for c in chunks]).tolist() == [0, 100, 200, 300, 400]
        assert all(c.forces is None for c in chunks)
        np.testing.assert_array_equal(chunks[1].coords[1], direct(ntl9_coords_h5, 320, 0)[300])


def test_forces_on_coordinate_only_file(ntl9_coords_h5):
    with MDCATHFile(ntl9_coords_h5) as f:
        assert not f.has_forces(320, 0)
        for call in (lambda: f.read(320, 0, slice(0, 2)),
                     lambda: f.iter_chunks(forces=True),
                     lambda: f.validate(forces=True)):  # fmt: skip
            with pytest.raises(MDCATHError) as e:
                call()
            msg = str(e.value)
            assert ntl9_coords_h5.name in msg and "coordinate-only" in msg
            assert "force matching" in msg
        assert f.validate(forces=False) == 500


@pytest.mark.parametrize("name,bad", [("coords", np.nan), ("forces", np.inf)])
def test_nonfinite_names_group_and_frame(tmp_path, villin_h5, name, bad):
    def edit(g):
        ds = g[f"348/0/{name}"]
        a = ds[()]
        a[4, 17, 1] = bad
        ds[...] = a

    p = write_like(villin_h5, tmp_path / "mdcath_dataset_bad.h5", edit=edit)
    with MDCATHFile(p) as f:
        f.read(348, 0, slice(0, 4))  # frames before the bad one are fine
        for call in (lambda: f.validate(forces=True, chunk_size=2),
                     lambda: f.read(348, 0, [5, 4])):  # fmt: skip
            with pytest.raises(MDCATHError) as e:
                call()
            msg = str(e.value)
            assert "mdcath_dataset_bad.h5" in msg and "villinHP35" in msg and "348/0" in msg
            assert name in msg and "frame 4" in msg and "atom 17" in msg
        # the bad value is in the other dataset only: coords-only reads of forces-bad data pass
        if name == "forces":
            assert f.validate(forces=False) == 12


def test_missing_groups_warn_and_skip(tmp_path, villin_h5):
    def edit(g):
        g.create_group("348/1")  # no numFrames, no coords
        g2 = g.create_group("348/2")
        g2.create_dataset("coords", data=g["348/0/coords"][()])  # coords but no numFrames
        g3 = g.create_group("348/3")
        g3.attrs["numFrames"] = 6  # numFrames but no coords

    p = write_like(villin_h5, tmp_path / "mdcath_dataset_gaps.h5", edit=edit)
    with pytest.warns(UserWarning) as rec:
        f = MDCATHFile(p)
    msgs = " | ".join(str(w.message) for w in rec)
    for grp in ("348/1", "348/2", "348/3"):
        assert f"villinHP35/{grp}" in msgs
    assert "mdcath_dataset_gaps.h5" in msgs
    with f:
        assert [tuple(t) for t in f.trajectories] == [(320, 0, 6), (348, 0, 6)]
        with pytest.warns(UserWarning, match=r"temperature\(s\) \[379\]"):
            chunks = list(f.iter_chunks(temperatures=[348, 379]))
        assert [(c.temperature, c.replica) for c in chunks] == [(348, 0)]
        with pytest.warns(UserWarning, match="348/1"):
            assert f.n_selected_frames(replicas=[0, 1]) == 12
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(MDCATHError, match="no trajectories selected"):
                f.validate(temperatures=[450])


def test_units_converted_and_unknown_rejected(tmp_path, villin_h5):
    def to_nm(g):
        for name, factor, unit in (("coords", 0.1, "nm"), ("forces", 41.84, "kJ/mol/nm")):
            ds = g[f"320/0/{name}"]
            ds[...] = (ds[()].astype(np.float64) * factor).astype(np.float32)
            ds.attrs["unit"] = unit

    p = write_like(villin_h5, tmp_path / "mdcath_dataset_nm.h5", edit=to_nm)
    with MDCATHFile(p) as f:
        c, fr = f.read(320, 0)
        c48, _ = f.read(348, 0)  # untouched group stays in Å
    ref_c = direct(villin_h5, 320, 0)[:6]
    np.testing.assert_allclose(c, ref_c, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(fr, direct(villin_h5, 320, 0, "forces")[:6], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(c48, direct(villin_h5, 348, 0)[:6])

    def weird(g):
        g["320/0/coords"].attrs["unit"] = "bohr"

    p = write_like(villin_h5, tmp_path / "mdcath_dataset_bohr.h5", edit=weird)
    with MDCATHFile(p) as f, pytest.raises(MDCATHError, match="unknown unit 'bohr'.*320/0|320/0.*unknown unit 'bohr'"):
        f.validate(forces=False)


def test_truncated_and_garbage_files(tmp_path, villin_h5):
    garbage = tmp_path / "mdcath_dataset_garbage.h5"
    garbage.write_bytes(b"this is not an HDF5 file" * 100)
    with pytest.raises(MDCATHError, match="mdcath_dataset_garbage.h5"):
        MDCATHFile(garbage)
    src = write_like(villin_h5, tmp_path / "mdcath_dataset_full.h5", n_frames=50)
    trunc = tmp_path / "mdcath_dataset_trunc.h5"
    data = src.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(MDCATHError, match="mdcath_dataset_trunc.h5"):
        with MDCATHFile(trunc) as f:
            f.validate(forces=True)


def test_layout_errors(tmp_path, villin_h5):
    cases = {
        "natoms": (lambda g: g.attrs.__setitem__("numProteinAtoms", 581), "numProteinAtoms=581"),
        "pdb": (lambda g: (g.__delitem__("pdbProteinAtoms"),
                           g.create_dataset("pdbProteinAtoms", data="ATOM      1  N   LEU A   1\n")),
                "1 ATOM/HETATM lines"),  # fmt: skip
        "missing": (lambda g: g.__delitem__("element"), "element"),
        "two": (lambda g: g.file.create_group("other"), "exactly one domain group"),
        "layout": (lambda g: g.file.attrs.__setitem__("layout", "something-else"), "layout"),
    }
    for key, (edit, match) in cases.items():
        p = write_like(villin_h5, tmp_path / f"mdcath_dataset_{key}.h5", edit=edit)
        with pytest.raises(MDCATHError, match=match) as e:
            MDCATHFile(p)
        assert p.name in str(e.value)

    def short(g):
        del g["320/0/forces"]
        g["320/0"].create_dataset("forces", data=np.zeros((6, 10, 3), np.float32))

    p = write_like(villin_h5, tmp_path / "mdcath_dataset_shape.h5", edit=short)
    with MDCATHFile(p) as f, pytest.raises(MDCATHError, match=r"320/0, dataset forces: shape \(6, 10, 3\)"):
        f.validate(forces=True)


def test_string_datasets_bytes_or_str(tmp_path, villin_h5):
    def fixed(g):
        for k in ("element", "chain"):
            a = np.asarray(g[k][()]).astype("S4")
            del g[k]
            g.create_dataset(k, data=a)
        rn = [x.decode() for x in g["resname"][()]]
        del g["resname"]
        g.create_dataset("resname", data=rn, dtype=h5py.string_dtype("utf-8"))

    p = write_like(villin_h5, tmp_path / "mdcath_dataset_str.h5", edit=fixed)
    with MDCATHFile(p) as a, MDCATHFile(villin_h5) as b:
        for k in ("name", "element", "resname", "chain"):
            np.testing.assert_array_equal(getattr(a.atoms, k), getattr(b.atoms, k))
            assert getattr(a.atoms, k).dtype.kind == "U"


# ------------------------------------------------------------------------------------ beads, topology


def _rename(resid_to_name: dict[int, str]):
    def edit(g):
        rn = np.asarray([x.decode() for x in g["resname"][()]], dtype=object)
        rid = g["resid"][()]
        for r, name in resid_to_name.items():
            rn[rid == r] = name
        del g["resname"]
        g.create_dataset("resname", data=rn.astype(str).astype(object), dtype=h5py.string_dtype())

    return edit


def test_histidine_variants_normalise(tmp_path, villin_h5):
    with MDCATHFile(villin_h5) as f:
        his = [int(r) for r, n in zip(f.beads().resid, f.beads().resname) if n == "HIS"]
    assert his  # villin HP35 has histidines
    names = ["HSD", "HSE", "HIP", "HSP"]
    p = write_like(villin_h5, tmp_path / "mdcath_dataset_hsd.h5",
                   edit=_rename({r: names[i % 4] for i, r in enumerate(his)}))  # fmt: skip
    with MDCATHFile(p) as f, MDCATHFile(villin_h5) as ref:
        b, b0 = f.beads(), ref.beads()
        assert b.resname == b0.resname
        assert {b.source_resname[i] for i in range(b.n_beads) if b.resid[i] in his} <= set(names)
        topo = mdcath.cg_topology(b, f.read(320, 0, [0], forces=False)[0][0, b.ca_index])
        assert topo.species[list(b.resid).index(his[0])] == topology.AMINO_ACIDS.index("HIS")


def test_unknown_residue_named(tmp_path, villin_h5):
    p = write_like(villin_h5, tmp_path / "mdcath_dataset_sep.h5", edit=_rename({5: "SEP"}))
    with MDCATHFile(p) as f:
        with pytest.raises(topology.UnknownResidueError) as e:
            f.beads()
        msg = str(e.value)
        assert "SEP" in msg and "mdcath_dataset_sep.h5" in msg and "villinHP35" in msg
        assert "resid 5" in msg and "residue index 4" in msg
        b = f.beads(residue_map={"SEP": "SER"})
        assert b.resname[4] == "SER" and b.source_resname[4] == "SEP"


def test_residue_without_or_with_two_ca(tmp_path, villin_h5):
    def rename_atom(old: str, new: str, resid: int):
        def edit(g):
            text = g["pdbProteinAtoms"][()].decode()
            lines = text.splitlines()
            for i, ln in enumerate(lines):
                if ln.startswith("ATOM") and int(ln[22:26]) == resid and ln[12:16].strip() == old:
                    lines[i] = ln[:12] + f" {new:<3}" + ln[16:]
                    break
            del g["pdbProteinAtoms"]
            g.create_dataset("pdbProteinAtoms", data="\n".join(lines))

        return edit

    p = write_like(villin_h5, tmp_path / "mdcath_dataset_noca.h5", edit=rename_atom("CA", "CX", 7))
    with MDCATHFile(p) as f, pytest.raises(MDCATHError, match=r"residue LYS 7 \(index 6.*0 atoms named CA"):
        f.beads()
    p = write_like(villin_h5, tmp_path / "mdcath_dataset_twoca.h5", edit=rename_atom("CB", "CA", 7))
    with MDCATHFile(p) as f, pytest.raises(MDCATHError, match=r"residue LYS 7 \(index 6.*2 atoms named CA"):
        f.beads()


def test_resid_gap_and_long_ca_distance_break_segments(tmp_path, villin_h5):
    def gap(g):
        rid = g["resid"][()]
        g["resid"][...] = np.where(rid >= 18, rid + 100, rid)

    p = write_like(villin_h5, tmp_path / "mdcath_dataset_gap.h5", edit=gap)
    with MDCATHFile(p) as f:
        b = f.beads()
        ca = f.read(320, 0, [0], forces=False)[0][0, b.ca_index]
    topo = mdcath.cg_topology(b, ca)
    assert topo.segment.tolist() == [0] * 17 + [1] * 18
    assert len(topo.bonds) == 33 and not ((topo.bonds[:, 0] == 16) & (topo.bonds[:, 1] == 17)).any()
    assert topo.sequence_separation(np.array([16]), np.array([17]))[0] == topology.SEPARATION_NONBONDED
    # the same break from geometry: move the C-terminal half 3 Å away (resids contiguous)
    with MDCATHFile(villin_h5) as f:
        b = f.beads()
        ca = f.read(320, 0, [0], forces=False)[0][0, b.ca_index].copy()
    ca[20:] += np.array([3.0, 0.0, 0.0], np.float32) * 3
    assert mdcath.cg_topology(b, ca).segment.max() == 1
    assert mdcath.cg_topology(b, ca, max_ca_distance=100.0).segment.max() == 0
    with pytest.raises(ValueError, match="shape"):
        mdcath.cg_topology(b, ca[:-1])
    assert mdcath.cg_topology(b, ca, species_map="charge4").species.max() <= 3


def test_chunks_are_lazy(villin_h5, monkeypatch):
    """iter_chunks reads one chunk at a time (nothing before the first next())."""
    with MDCATHFile(villin_h5) as f:
        calls = []
        orig = f._read_ds
        monkeypatch.setattr(f, "_read_ds", lambda *a: calls.append(a[-1].size) or orig(*a))
        it = f.iter_chunks(chunk_size=50)
        assert calls == []
        next(it)
        assert calls == [50, 50]  # coords + forces of one chunk


def test_corrupt_chunk_read_error(tmp_path, villin_h5):
    """A damaged data chunk (checksum failure inside h5py) becomes an MDCATHError naming the group."""

    def checksummed(g):
        a = g["348/0/coords"][()]
        del g["348/0/coords"]
        ds = g["348/0"].create_dataset("coords", data=a, chunks=(2, 582, 3), fletcher32=True)
        ds.attrs["unit"] = "Angstrom"

    p = write_like(villin_h5, tmp_path / "mdcath_dataset_chk.h5", edit=checksummed)
    with h5py.File(p, "r") as h:
        info = h["villinHP35/348/0/coords"].id.get_chunk_info(1)  # frames 2-3
    raw = bytearray(p.read_bytes())
    raw[info.byte_offset + 100 : info.byte_offset + 108] = b"\xff" * 8
    p.write_bytes(bytes(raw))
    with MDCATHFile(p) as f:
        f.read(348, 0, slice(0, 2), forces=False)  # an intact chunk still reads
        with pytest.raises(MDCATHError, match=r"mdcath_dataset_chk.h5.*348/0, dataset coords: read failed"):
            f.validate(forces=False)
