"""Exporter tier 1 (fast, in process): the protobuf codec, static checks of the artifact, and the
connector function itself against the model evaluated directly (padding, newton, half/full lists,
capacity overflow, ghosts, guard, units), plus the LAMMPS files and the export command."""

from __future__ import annotations

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cameo_eqx.export import chemtrain_deploy as cd
from cameo_eqx.export import lammps, ptb, verify
from cameo_eqx.graph import single_frame_batch
from cameo_eqx.topology import CGTopology
from cameo_eqx.units import KCAL_PER_MOL_TO_EV

N_BEADS = 14
CUTOFF = 7.0


def toy_protein(n=N_BEADS, seed=0, broken_at=9):
    """A random-walk chain with ~3.8 Å steps and a chain break (two segments)."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(n, 3))
    steps = 3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True)
    pos = np.cumsum(steps, axis=0).astype(np.float32)
    seg = np.zeros(n, np.int32)
    seg[broken_at:] = 1
    top = CGTopology(resname=("ALA", "GLY", "LYS", "ASP") * (n // 4) + ("ALA",) * (n % 4),
                     resid=np.arange(n), chain=("A",) * n, segment=seg,
                     species=(np.arange(n) * 3 % 4).astype(np.int32))  # fmt: skip
    return pos, top


@pytest.fixture(scope="module")
def toy():
    pos, top = toy_protein()
    model = verify.ToyEnergyModel(n_species=4, cutoff=CUTOFF, layers=2)
    batch = single_frame_batch(pos, top, CUTOFF)
    e_ref, f_ref = verify.model_forces(model, batch)
    return pos, top, model, e_ref, f_ref


@pytest.fixture(scope="module")
def artifact(toy):
    pos, top, model, *_ = toy
    return cd.export_model(model, topology=top, platform="cpu")


@pytest.fixture(scope="module")
def connector_fn(toy):
    _, top, model, *_ = toy
    return jax.jit(cd.make_connector_function(model, cutoff=CUTOFF, nbr_order=(2, 4), topology=top))


# ----------------------------------------------------------------------------------------- codec


def test_ptb_roundtrip_and_wire_format():
    data = ptb.encode_model("module {}", cutoff=7.3, nbr_order=(2, 4), unit_style="real")
    m = ptb.decode_model(data)
    assert m.mlir_module == "module {}" and m.type == 0 and m.nbr_order == (2, 4)
    assert m.cutoff == struct.unpack("<f", struct.pack("<f", 7.3))[0] != 7.3  # float32 on the wire
    assert m.half_list is True and m.unit_style == "real"
    # neighbor_list submessage starts with type written explicitly: 08 00
    nl = data[data.index(b"module {}") + len(b"module {}") :]
    assert nl[0] == 0x22 and nl[2:4] == b"\x08\x00"
    with pytest.raises(ValueError, match="nbr_order"):
        ptb.encode_model("m", cutoff=1.0, nbr_order=(1,))
    with pytest.raises(ValueError, match="required"):
        ptb.decode_model(data[: data.index(b"\x22")])  # neighbor_list cut off


def test_ptb_byte_identical_to_protobuf():
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="chemsim_test.proto", package="chemsim", syntax="proto2")
    msg = fdp.message_type.add(name="Model")
    msg.field.add(name="mlir_module", number=1, type=F.TYPE_STRING, label=F.LABEL_REQUIRED)
    msg.field.add(name="neighbor_list", number=4, type=F.TYPE_MESSAGE, label=F.LABEL_REQUIRED,
                  type_name=".chemsim.Model.NeighborList")  # fmt: skip
    msg.field.add(name="unit_style", number=5, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    enum = msg.enum_type.add(name="NeighborListType")
    for i, name in enumerate(["SIMPLE_SPARSE", "DEVICE_SPARSE", "SIMPLE_DENSE"]):
        enum.value.add(name=name, number=i)
    nl = msg.nested_type.add(name="NeighborList")
    nl.field.add(name="type", number=1, type=F.TYPE_ENUM, label=F.LABEL_REQUIRED,
                 type_name=".chemsim.Model.NeighborListType")  # fmt: skip
    nl.field.add(name="cutoff", number=2, type=F.TYPE_FLOAT, label=F.LABEL_REQUIRED)
    nl.field.add(name="nbr_order", number=3, type=F.TYPE_INT32, label=F.LABEL_REPEATED)
    nl.field.add(name="half_list", number=4, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    Model = message_factory.GetMessageClass(pool.FindMessageTypeByName("chemsim.Model"))
    ref = Model(mlir_module="module @x {}", unit_style="real")
    ref.neighbor_list.type = 0
    ref.neighbor_list.cutoff = 7.0
    ref.neighbor_list.nbr_order.extend([2, 4])
    ref.neighbor_list.half_list = True
    ours = ptb.encode_model("module @x {}", cutoff=7.0, nbr_order=(2, 4), unit_style="real")
    assert ours == ref.SerializeToString()
    back = Model.FromString(ours)
    assert back.neighbor_list.HasField("type") and list(back.neighbor_list.nbr_order) == [2, 4]


# ---------------------------------------------------------------------------------------- static


def test_artifact_passes_static_checks(artifact):
    assert verify.static_problems(artifact.ptb) == []
    m = verify.check_artifact(artifact.ptb)
    assert m.nbr_order == (2, 4) and m.unit_style == "real" and m.type == 0
    assert m.cutoff == np.float32(CUTOFF)
    text = m.mlir_module
    assert "loc(" not in text and "composite" not in text
    assert "jax.uses_shape_polymorphism = true" in text
    ops, targets = verify._ops_and_custom_calls(text)
    assert targets == {"shape_assertion"}  # no sort, no dynamic reduce_window / top_k shims
    assert "stablehlo.sort" not in ops
    assert "@main(%arg0: tensor<?x3xf32>, %arg1: tensor<?xi32>, %arg2: tensor<i32>, %arg3: tensor<i32>, " \
           "%arg4: tensor<i1>, %arg5: tensor<?xi32>, %arg6: tensor<?xi32>, %arg7: tensor<?xi1>)" in text


def test_composites_really_removed():
    """jax emits stablehlo.composite for erf/acos; the legacy transform inlines their decompositions
    and the result computes the same values."""
    from jax import export as jax_export

    def f(x):
        return jnp.arccos(x) + jax.scipy.special.erf(x)

    exp = jax_export.export(jax.jit(f), platforms=["cpu"])(jax.ShapeDtypeStruct((4,), jnp.float32))
    raw = exp.mlir_module()
    assert "stablehlo.composite" in raw and "loc(" in raw  # the test is not vacuous
    text = cd.legacy_stablehlo_text(raw)
    assert "composite" not in text and "loc(" not in text
    ops, _ = verify._ops_and_custom_calls(text)
    assert "stablehlo.composite" not in ops and "func.call" not in ops


def test_static_checks_catch_bad_artifacts(artifact):
    text = ptb.decode_model(artifact.ptb).mlir_module
    enc = lambda t, **kw: ptb.encode_model(t, cutoff=CUTOFF, nbr_order=(2, 4), **kw)  # noqa: E731
    assert any("loc" in p for p in verify.static_problems(enc(text + '\n#loc1 = loc("x.py":1:2)\n')))
    assert any("composite" in p for p in verify.static_problems(enc(text.replace("module @", "// composite\nmodule @"))))
    no_poly = text.replace("jax.uses_shape_polymorphism = true, ", "")
    assert any("uses_shape_polymorphism" in p for p in verify.static_problems(enc(no_poly)))
    bad_ret = text.replace("-> (tensor<?x3xf32> {", "-> (tensor<?x3xf64> {", 1)
    assert any("results" in p or "parse" in p for p in verify.static_problems(enc(bad_ret)))
    # a two-platform export gains a platform-index argument
    from jax import export as jax_export

    exp = jax_export.export(jax.jit(lambda x: x * 2.0), platforms=["cpu", "cuda"])(
        jax.ShapeDtypeStruct((3,), jnp.float32))  # fmt: skip
    multi = cd.legacy_stablehlo_text(exp.mlir_module())
    assert any("platform" in p or "arguments" in p for p in verify.static_problems(enc(multi)))


# ------------------------------------------------------------------------------ the function itself


def _call(fn, pos, top, nl, *, newton, n_atoms, n_buffer, n_edges, n_local=None, n_ghost=0):
    n = len(pos)
    args = verify.connector_arguments(pos, top.species, nl, n_local=n if n_local is None else n_local,
                                      n_ghost=n_ghost, newton=newton, n_atoms=n_atoms, n_buffer=n_buffer,
                                      n_edges=n_edges)  # fmt: skip
    return [np.asarray(o) for o in fn(*args)]


@pytest.mark.parametrize("half", [True, False])
@pytest.mark.parametrize("newton", [True, False])
@pytest.mark.parametrize("pad", [(0, 0, 0), (5, 40, 7)])
def test_function_matches_model(toy, connector_fn, half, newton, pad):
    pos, top, model, e_ref, f_ref = toy
    nl = verify.neighbor_list(pos, CUTOFF, half=half)
    n_pairs = int(nl["numneigh"].sum())
    f, e, n_valid, n_cut = _call(connector_fn, pos, top, nl, newton=newton, n_atoms=N_BEADS + pad[0],
                                 n_buffer=n_pairs + pad[1], n_edges=2 * n_pairs + pad[2])  # fmt: skip
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    n_true = int(((d < CUTOFF) & ~np.eye(N_BEADS, dtype=bool)).sum())
    assert n_valid == n_true and n_cut == (n_true // 2 if half else n_true)
    assert f.dtype == np.float32 and e.dtype == np.float32
    assert f.shape == (N_BEADS + pad[0], 3) and np.all(f[N_BEADS:] == 0)
    np.testing.assert_allclose(f[:N_BEADS], f_ref, rtol=0, atol=1e-5 * np.abs(f_ref).max())
    np.testing.assert_allclose(e, e_ref.sum(), rtol=1e-5)


def test_capacity_overflow_reports_count(toy, connector_fn):
    pos, top, *_ , f_ref = toy
    nl = verify.neighbor_list(pos, CUTOFF, half=True)
    b = int(nl["numneigh"].sum())
    _, _, n_valid, _ = _call(connector_fn, pos, top, nl, newton=True, n_atoms=N_BEADS, n_buffer=b, n_edges=1)
    assert n_valid > 1  # the connector grows M and reruns
    f, *_ = _call(connector_fn, pos, top, nl, newton=True, n_atoms=N_BEADS, n_buffer=b, n_edges=int(n_valid))
    np.testing.assert_allclose(f[:N_BEADS], f_ref, atol=1e-5 * np.abs(f_ref).max())


def test_guard_nan_on_misuse(toy, connector_fn):
    pos, top, *_ = toy
    nl = verify.neighbor_list(pos, CUTOFF, half=True)
    b = int(nl["numneigh"].sum())
    kw = dict(newton=True, n_atoms=N_BEADS + 2, n_buffer=b, n_edges=2 * b)
    f, e, *_ = _call(connector_fn, pos, top, nl, n_local=N_BEADS - 2, n_ghost=2, **kw)
    assert np.isnan(e) and np.all(np.isnan(f))
    pos2 = np.concatenate([pos, pos[:1] + 30.0])
    top2 = CGTopology(top.resname + ("ALA",), np.arange(N_BEADS + 1), top.chain + ("A",),
                      np.concatenate([top.segment, [2]]), np.concatenate([top.species, [0]]))  # fmt: skip
    nl2 = verify.neighbor_list(pos2, CUTOFF, half=True)
    f, e, *_ = _call(connector_fn, pos2, top2, nl2, **kw)
    assert np.isnan(e) and np.all(np.isnan(f))


@pytest.mark.parametrize("ghost_rows", [True, False])
def test_ghosts_and_hop_pruning_two_ranks(ghost_rows):
    """Without baked topology: a two-'rank' split (each rank's ghosts = all other atoms) gives the full
    forces (newton on: local + ghost rows summed; newton off: local rows), although the K-hop pruning
    drops edges far from the local atoms. With ghost rows (a ghost list: ghost-ghost pairs present) a
    K = 2 model is exact; with local rows only (LAMMPS's default lists: a full list then holds local ->
    ghost edges once, a half list has no ghost-ghost pairs) a pair-additive K = 1 model is."""
    pos, top = toy_protein(n=30, seed=3)
    # no baked topology = no bonded terms and every pair non-bonded: one segment per bead
    unbonded = CGTopology(top.resname, top.resid, top.chain, np.arange(30, dtype=np.int32), top.species)
    layers = 2 if ghost_rows else 1
    model = verify.ToyEnergyModel(n_species=4, cutoff=5.0, layers=layers)
    e_ref, f_ref = verify.model_forces(model, single_frame_batch(pos, unbonded, 5.0))
    fn = jax.jit(cd.make_connector_function(model, cutoff=5.0, nbr_order=(layers, 2 * layers), topology=None))
    order = np.argsort(pos[:, 0])
    parts = [order[:15], order[15:]]
    for newton in (True, False):
        total_f = np.zeros_like(f_ref)
        total_e = 0.0
        valid_counts = []
        for local in parts:
            ghost = np.setdiff1d(np.arange(30), local)
            perm = np.concatenate([local, ghost])
            p = pos[perm]
            nl = verify.neighbor_list(p, 5.0, half=not newton, rows=None if ghost_rows else 15)
            b = int(nl["numneigh"].sum())
            args = verify.connector_arguments(p, top.species[perm], nl, n_local=15, n_ghost=15, newton=newton,
                                              n_atoms=33, n_buffer=b + 3, n_edges=2 * b)  # fmt: skip
            f, e, n_valid, _ = (np.asarray(o) for o in fn(*args))
            valid_counts.append(int(n_valid))
            rows = 30 if newton else 15
            np.add.at(total_f, perm[:rows], f[:rows])
            total_e += float(e)
        np.testing.assert_allclose(total_f, f_ref, atol=1e-5 * np.abs(f_ref).max())
        np.testing.assert_allclose(total_e, e_ref.sum(), rtol=1e-5)
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        all_edges = int(((d < 5.0) & ~np.eye(30, dtype=bool)).sum())
        if newton:
            assert max(valid_counts) < all_edges  # pruning really dropped far edges


def test_prefix_sum_any_length():
    rng = np.random.default_rng(0)
    for length in (1, 2, 63, 64, 65, 1000, 5003):
        x = rng.integers(0, 3, length).astype(np.int32)
        np.testing.assert_array_equal(np.asarray(jax.jit(cd.prefix_sum)(jnp.asarray(x))), np.cumsum(x))


def _neighbour_lists(rows: int | None, shuffle: bool = False):
    """LAMMPS-like neighbour lists of one 30-atom configuration: yields `(kind, truth, s, r)` for a
    half list (lower index first, as binned newton-on lists), a half list in an arbitrary acyclic
    orientation, and a full list; `rows` local atoms own rows (the rest are ghosts without a ghost
    list: ghost-ghost pairs unlisted, a pair with a ghost in the local atom's row); `truth` is every
    directed edge within the cutoff; `shuffle` permutes the list order."""
    pos, _ = toy_protein(n=30, seed=5)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    truth = (d < CUTOFF) & ~np.eye(30, dtype=bool)
    if rows is not None:
        truth[rows:, rows:] = False
    rank = np.empty(30, int)
    rank[np.random.default_rng(1).permutation(30)] = np.arange(30)
    for kind in ("half", "half-permuted", "full"):
        near = truth.copy()
        if kind == "half":
            near &= np.triu(np.ones((30, 30), bool), 1)
        elif kind == "half-permuted":
            near &= rank[:, None] < rank[None, :]
        if rows is not None:
            near[rows:] = False
            if kind != "full":
                near[:rows, rows:] = truth[:rows, rows:]
        s, r = np.nonzero(near)
        if shuffle:
            perm = np.random.default_rng(3).permutation(len(s))
            s, r = s[perm], r[perm]
        yield kind, truth, s, r


@pytest.mark.parametrize("rows", [None, 20])
def test_mirror_mask_each_directed_edge_once(rows):
    """Half lists are mirrored, full lists kept except edges into atoms without a row (ghosts without a
    ghost list): the union holds each directed edge within the cutoff exactly once. A half list in
    any acyclic orientation (not only lower index first, as LAMMPS's binned newton-on lists) too."""
    for kind, truth, s, r in _neighbour_lists(rows):
        ok = jnp.ones(len(s), bool)
        mirror = np.asarray(cd.mirror_mask(ok, jnp.asarray(s, jnp.int32), jnp.asarray(r, jnp.int32),
                                           jnp.int32(30 if rows is None else rows)))
        got = np.zeros((30, 30), int)
        np.add.at(got, (s, r), 1)
        np.add.at(got, (r[mirror], s[mirror]), 1)
        np.testing.assert_array_equal(got, truth.astype(int), err_msg=kind)


def test_compaction_sources_any_length():
    """The binary search finds the j-th selected element for every slot (len when there is none)."""
    rng = np.random.default_rng(2)
    for length, size in ((1, 1), (2, 3), (63, 10), (64, 64), (65, 40), (1000, 700), (5003, 100)):
        sel = (rng.random(length) < 0.4).astype(np.int32)
        search = jax.jit(cd.compaction_sources, static_argnums=1)
        got = np.asarray(search(jnp.asarray(np.cumsum(sel), jnp.int32), size))
        where = np.nonzero(sel)[0]
        want = np.full(size, length)
        k = min(size, len(where))
        want[:k] = where[:k]
        np.testing.assert_array_equal(got, want, err_msg=f"length {length}, size {size}")


@pytest.mark.parametrize("rows", [None, 20])
def test_undirected_mask_each_pair_once(rows):
    """The representative edges hold each listed pair exactly once, for half lists in any acyclic
    orientation and for full lists (with and without ghost rows), in any list order: both
    orientations of them are each directed edge within the cutoff exactly once, as the model is
    handed them."""
    for kind, truth, s, r in _neighbour_lists(rows, shuffle=True):
        und = np.asarray(cd.undirected_mask(jnp.ones(len(s), bool), jnp.asarray(s, jnp.int32),
                                            jnp.asarray(r, jnp.int32), jnp.int32(30 if rows is None else rows)))
        got = np.zeros((30, 30), int)
        np.add.at(got, (s[und], r[und]), 1)
        np.add.at(got, (r[und], s[und]), 1)
        np.testing.assert_array_equal(got, truth.astype(int), err_msg=kind)


def test_half_and_full_list_same_forces(toy, connector_fn):
    """The same configuration handed as a half and as a full list (shuffled rows) gives the same
    forces, energy and directed edge count (at an odd and an even capacity)."""
    pos, top, *_ = toy
    outs = []
    for half in (True, False):
        nl = verify.neighbor_list(pos, CUTOFF, half=half)
        b = int(nl["numneigh"].sum())
        m = 2 * b + (1 if half else 2)  # an odd and an even capacity
        outs.append(_call(connector_fn, pos, top, nl, newton=True, n_atoms=N_BEADS + 3, n_buffer=b + 5, n_edges=m))
    f0, e0, n0, _ = outs[0]
    for f, e, n, _ in outs[1:]:
        np.testing.assert_allclose(f, f0, rtol=0, atol=1e-6 * np.abs(f0).max())
        np.testing.assert_allclose(e, e0, rtol=1e-6)
        assert int(n) == int(n0)


def test_capacity_fractions_same_forces(toy):
    """Evaluating the model on the smallest capacity fraction that holds the kept edges gives the
    forces of evaluating all M slots, at capacities that select each fraction (and just overflow)."""
    pos, top, model, e_ref, f_ref = toy
    nl = verify.neighbor_list(pos, CUTOFF, half=True)
    b = int(nl["numneigh"].sum())
    fn = jax.jit(cd.make_connector_function(model, cutoff=CUTOFF, nbr_order=(2, 4), topology=top,
                                            capacity_fractions=(0.5, 0.75, 1.0)))  # fmt: skip
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    n_true = int(((d < CUTOFF) & ~np.eye(N_BEADS, dtype=bool)).sum())
    # slots per fraction of ceil(M/2): 0.5 holds all pairs at M = 2 n_true + 2, 0.75 at
    # M = 1.5 n_true, only 1.0 at M = n_true; M = n_true - 1 overflows
    for m in (n_true, (3 * n_true) // 2, 2 * n_true + 2, n_true - 1):
        f, e, n_valid, _ = _call(fn, pos, top, nl, newton=True, n_atoms=N_BEADS + 1, n_buffer=max(b, n_true) + 2,
                                 n_edges=m)  # fmt: skip (M <= 2B)
        assert int(n_valid) == n_true
        if m < n_true:
            continue  # overflow: the connector reruns with a larger M
        np.testing.assert_allclose(f[:N_BEADS], f_ref, rtol=0, atol=1e-5 * np.abs(f_ref).max(), err_msg=f"M={m}")
        np.testing.assert_allclose(e, e_ref.sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="capacity_fractions"):
        cd.make_connector_function(model, cutoff=CUTOFF, nbr_order=(2, 4), capacity_fractions=(0.0, 1.0))


def test_metal_units_convert_inside(toy):
    pos, top, model, e_ref, f_ref = toy
    fn = jax.jit(cd.make_connector_function(model, cutoff=CUTOFF, nbr_order=(2, 4), topology=top,
                                            unit_style="metal"))  # fmt: skip
    nl = verify.neighbor_list(pos, CUTOFF, half=True)
    b = int(nl["numneigh"].sum())
    f, e, *_ = _call(fn, pos, top, nl, newton=True, n_atoms=N_BEADS, n_buffer=b, n_edges=2 * b)
    np.testing.assert_allclose(e, e_ref.sum() * KCAL_PER_MOL_TO_EV, rtol=1e-5)
    np.testing.assert_allclose(f, f_ref * KCAL_PER_MOL_TO_EV, atol=1e-5 * np.abs(f_ref).max())


def test_receptive_field():
    assert cd.receptive_field(verify.ToyEnergyModel(layers=3)) == (3, 6)
    assert cd.receptive_field(verify.ToyEnergyModel(layers=1)) == (1, 2)
    assert cd.receptive_field(verify.ToyEnergyModel(layers=3), (1, 1)) == (1, 1)

    class NoHops:
        cutoff = 5.0

        def node_energies(self, batch):
            return batch.positions[:, 0]

    with pytest.raises(ValueError, match="nbr_order"):
        cd.receptive_field(NoHops())
    # Allegro is strictly local whatever its depth: it says so itself (no class-name detection)
    from cameo_eqx.modules import ForceField, make_backbone

    allegro = make_backbone("allegro", 4, 5.0, key=jax.random.PRNGKey(0), n_layers=3, n_radial_basis=4,
                            n_tensor_features=2, latent_dim=8, embed_dim=4)  # fmt: skip
    assert allegro.n_message_passing_layers == 1
    assert cd.receptive_field(allegro) == (1, 2)
    assert cd.receptive_field(ForceField(allegro, verify.ToyEnergyModel(layers=3))) == (3, 6)
    with pytest.raises(ValueError, match="two positive"):
        cd.receptive_field(NoHops(), (1,))


# ---------------------------------------------------------------------------------- LAMMPS files


def test_lammps_files(toy):
    pos, top, *_ = toy
    text = lammps.data_file_text(pos, top.species, top.masses, n_types=20)
    lines = text.splitlines()
    assert f"{N_BEADS} atoms" in lines and "20 atom types" in lines
    atoms = lines[lines.index("Atoms # atomic") + 2 :]
    assert len(atoms) == N_BEADS
    cols = np.array([a.split() for a in atoms], float)
    np.testing.assert_array_equal(cols[:, 0], np.arange(1, N_BEADS + 1))
    np.testing.assert_array_equal(cols[:, 1], top.species + 1)  # types = species + 1
    np.testing.assert_allclose(cols[:, 2:], pos, atol=1e-5)
    masses = lines[lines.index("Masses") + 2 : lines.index("Masses") + 22]
    assert float(masses[top.species[0]].split()[1]) == pytest.approx(top.masses[top.species == top.species[0]].mean(), abs=1e-3)
    script = lammps.input_script_text(data_file="protein.data", model_file="model.ptb", cutoff=CUTOFF,
                                      nbr_order=(2, 4))  # fmt: skip
    for line in ("units real", "atom_style atomic", "atom_modify sort 0 0.0", "boundary s s s",
                 "processors 1 1 1", "pair_coeff * * model.ptb 1.2 1.2", "read_data protein.data"):
        assert line in script.splitlines(), line
    comm = float(next(l for l in script.splitlines() if l.startswith("comm_modify")).split()[-1])
    assert comm >= 4 * CUTOFF + 2.0
    nh = lammps.input_script_text(data_file="d", model_file="m", cutoff=5.0, nbr_order=(1, 2),
                                  run=lammps.RunSettings(thermostat="nose-hoover"))  # fmt: skip
    assert "fix integrate all nvt temp 300.0 300.0 100.0" in nh
    with pytest.raises(ValueError, match="species"):
        lammps.data_file_text(pos, top.species + 20, top.masses, n_types=20)


def test_export_files(toy, tmp_path):
    from cameo_eqx.data.store import ProteinRecord

    pos, top, model, *_ = toy
    rec = ProteinRecord(name="toy", topology=top, positions=np.stack([pos, pos + 1.0]), forces=None,
                        temperature=np.array([300.0, 300.0]), replica=np.zeros(2, np.int32))  # fmt: skip
    out = cd.export_files(model, rec, tmp_path / "exp", frame=1, platform="cpu", n_types=4)
    assert sorted(p.name for p in out.iterdir()) == ["export_config.json", "in.lammps", "model.ptb", "protein.data"]
    cfg = json.loads((out / "export_config.json").read_text())
    assert cfg["nbr_order"] == [2, 4] and cfg["n_beads"] == N_BEADS and cfg["platform"] == "cpu"
    assert verify.static_problems((out / "model.ptb").read_bytes()) == []
    data = (out / "protein.data").read_text().splitlines()
    first = data[data.index("Atoms # atomic") + 2].split()
    np.testing.assert_allclose([float(v) for v in first[2:]], pos[0] + 1.0, atol=1e-5)  # frame 1
    with pytest.raises(IndexError, match="frames"):
        cd.export_files(model, rec, tmp_path / "bad", frame=5, platform="cpu")
    with pytest.raises(ValueError, match="protein"):
        cd.export(cd.ExportConfig(protein=""))


# ------------------------------------------------------------------------------ the export command


def test_export_command_end_to_end(tmp_path):
    """`export(cfg)` on a saved tiny Allegro + prior ForceField and a dataset prepared from the bundled
    demo data: the files are complete and consistent, and the artifact's own module (run in process)
    gives the force field's forces on the data file's structure, for a half (newton off) and a full
    (newton on) list with padding."""
    from pathlib import Path

    from cameo_eqx.data.config import PrepareConfig
    from cameo_eqx.data.prepare import prepare
    from cameo_eqx.data.store import PreparedDataset
    from cameo_eqx.modules import ForceField, make_backbone
    from cameo_eqx.modules.forcefield import save
    from cameo_eqx.priors.config import PriorConfig
    from cameo_eqx.priors.prior import Prior

    demo = Path(__file__).resolve().parents[1] / "data" / "demo"
    prepare(PrepareConfig(inputs=(str(demo),), output=tmp_path / "prep", max_frames=5, noise_estimate=False))
    with PreparedDataset(tmp_path / "prep") as ds:
        n_species = ds.n_species
        record = ds.record("villin").load()
    top = record.topology
    cutoff = 8.0
    backbone = make_backbone("allegro", n_species, cutoff, key=jax.random.PRNGKey(0), n_layers=1, n_radial_basis=4,
                             n_tensor_features=2, latent_dim=8, two_body_hidden=(8,), latent_hidden=(8,),
                             edge_energy_hidden=(8,), embed_dim=4)  # fmt: skip
    ff = ForceField(backbone, Prior.from_prior_config(PriorConfig()), cutoff=cutoff)
    save(tmp_path / "model.eqx", ff)
    out = cd.export(cd.ExportConfig(model=str(tmp_path / "model.eqx"), dataset=str(tmp_path / "prep"),
                                    protein="villin", platform="cpu", output=str(tmp_path / "out")))  # fmt: skip

    # the artifact: decodes, passes the static checks, Allegro + prior are strictly local -> [1, 2]
    data = (out / "model.ptb").read_bytes()
    m = verify.check_artifact(data)
    assert m.nbr_order == (1, 2) and m.unit_style == "real" and m.cutoff == np.float32(cutoff)
    cfg = json.loads((out / "export_config.json").read_text())
    assert cfg["n_beads"] == top.n_beads and cfg["n_types"] == n_species and cfg["platform"] == "cpu"

    # the data file: atom count, types = species + 1, per-type masses, frame 0 positions
    lines = (out / "protein.data").read_text().splitlines()
    assert f"{top.n_beads} atoms" in lines and f"{n_species} atom types" in lines
    masses = lines[lines.index("Masses") + 2 : lines.index("Masses") + 2 + n_species]
    np.testing.assert_allclose([float(l.split()[1]) for l in masses],
                               lammps.type_masses(top.species, top.masses, n_species, top.resname), atol=1e-4)  # fmt: skip
    atoms = np.array([l.split() for l in lines[lines.index("Atoms # atomic") + 2 :]], float)
    assert len(atoms) == top.n_beads
    np.testing.assert_array_equal(atoms[:, 0], np.arange(1, top.n_beads + 1))
    np.testing.assert_array_equal(atoms[:, 1].astype(int), top.species + 1)
    pos = atoms[:, 2:].astype(np.float32)
    frame0, _ = record.frames(np.asarray([0]))
    np.testing.assert_allclose(pos, frame0[0], atol=1e-5)

    # the input script runs the artifact as exported
    script = (out / "in.lammps").read_text().splitlines()
    for line in ("units real", "atom_style atomic", "atom_modify sort 0 0.0", "boundary s s s",
                 "pair_style chemtrain_deploy cpu 0.9", "pair_coeff * * model.ptb 1.2 1.2",
                 "read_data protein.data"):  # fmt: skip
        assert line in script, line
    comm = float(next(l for l in script if l.startswith("comm_modify cutoff")).split()[-1])
    skin = float(next(l for l in script if l.startswith("neighbor ")).split()[1])
    assert comm >= max(m.nbr_order) * cutoff + skin

    # in process: the file's own module on connector buffers built from the data file = ff forces
    e_ref, f_ref = verify.model_forces(ff, single_frame_batch(pos, top, cutoff, pair_min_sep=ff.pair_min_sep))
    call = jax.jit(verify.exported_from_ptb(data).call)
    n = top.n_beads
    b = int(verify.neighbor_list(pos, cutoff, half=False)["numneigh"].sum())  # one padded shape for both
    for half, newton in ((True, False), (False, True)):
        nl = verify.neighbor_list(pos, cutoff, half=half)
        args = verify.connector_arguments(pos, atoms[:, 1].astype(np.int32) - 1, nl, n_local=n, n_ghost=0,
                                          newton=newton, n_atoms=n + 7, n_buffer=b + 11, n_edges=b + 5)  # fmt: skip
        f, e, n_valid, _ = (np.asarray(o) for o in call(*args))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        assert n_valid == int(((d < cutoff) & ~np.eye(n, dtype=bool)).sum())
        np.testing.assert_allclose(f[:n], f_ref, rtol=0, atol=1e-5 * np.abs(f_ref).max())
        assert np.all(f[n:] == 0)
        np.testing.assert_allclose(e, e_ref.sum(), rtol=1e-5, atol=1e-4)
