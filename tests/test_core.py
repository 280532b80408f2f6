"""Topology, radius graph, packing and config: the pieces every stage shares."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from cameo_eqx.config import from_dict, load_yaml_defaults
from cameo_eqx.data.config import InspectConfig, PrepareConfig
from cameo_eqx.graph import Capacity, check_paired, frame_graph, graph_sum, pack, paired_edges, single_frame_batch
from cameo_eqx.neighbors import radius_graph, radius_pairs
from cameo_eqx.topology import (
    SEPARATION_NONBONDED,
    CGTopology,
    UnknownResidueError,
    chain_segments,
    normalise_resname,
    species_of,
)


def chain(n: int, seed: int = 0) -> np.ndarray:
    """A self-avoiding-ish random CA chain with 3.8 Å bonds."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(n, 3))
    steps = 3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True)
    return np.cumsum(steps, axis=0)


def topo(n: int, segment: np.ndarray | None = None, species: np.ndarray | None = None) -> CGTopology:
    seg = np.zeros(n, np.int32) if segment is None else np.asarray(segment, np.int32)
    spc = np.zeros(n, np.int32) if species is None else np.asarray(species, np.int32)
    return CGTopology(("ALA",) * n, np.arange(n, dtype=np.int32), ("A",) * n, seg, spc)


def test_resname_normalisation():
    assert normalise_resname("HSD") == "HIS"
    assert normalise_resname(b"HSE ") == "HIS"
    assert normalise_resname("cyx") == "CYS"
    assert normalise_resname("SEP", {"SEP": "SER"}) == "SER"
    with pytest.raises(UnknownResidueError, match="XYZ.*file.h5:dom residue 7"):
        normalise_resname("XYZ", where="file.h5:dom residue 7")
    assert species_of(["ALA", "VAL"], "aa20").tolist() == [0, 19]
    assert species_of(["ASP", "LYS", "SER", "ALA"], "charge4").tolist() == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="unknown species map"):
        species_of(["ALA"], "nope")


def test_chain_segments_break_on_chain_resid_and_distance():
    x = chain(8)
    seg = chain_segments(["A"] * 8, np.arange(8), x)
    assert seg.tolist() == [0] * 8
    resid = np.array([1, 2, 3, 7, 8, 9, 10, 11])  # a numbering gap
    assert chain_segments(["A"] * 8, resid, x).tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    chains = ["A"] * 5 + ["B"] * 3
    assert chain_segments(chains, np.arange(8), x).tolist() == [0] * 5 + [1] * 3
    y = x.copy()
    y[6:] += 10.0  # a spatial break between residues 5 and 6
    assert chain_segments(["A"] * 8, np.arange(8), y).tolist() == [0] * 6 + [1] * 2


def test_bonded_terms_never_cross_segments():
    t = topo(7, segment=[0, 0, 0, 0, 1, 1, 1])
    assert t.bonds.tolist() == [[0, 1], [1, 2], [2, 3], [4, 5], [5, 6]]
    assert t.angles.tolist() == [[0, 1, 2], [1, 2, 3], [4, 5, 6]]
    assert t.dihedrals.tolist() == [[0, 1, 2, 3]]
    sep = t.sequence_separation(np.array([0, 0, 3]), np.array([3, 4, 6]))
    assert sep.tolist() == [3, SEPARATION_NONBONDED, SEPARATION_NONBONDED]


def test_radius_graph_matches_brute_force():
    x = chain(60, seed=3)
    s, r = radius_graph(x, 7.5)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    want = {(i, j) for i in range(60) for j in range(60) if i != j and d[i, j] < 7.5}
    assert set(zip(s.tolist(), r.tolist())) == want
    assert len(s) == len(want)


def test_radius_pairs_are_the_paired_layout_of_the_radius_graph():
    """The k-d tree pairs the loader uses are matscipy's radius graph in the paired layout, exactly: on a
    compact chain, a random cloud (ties in i), two beads and one; a pair exactly at the cutoff is out."""
    rng = np.random.default_rng(0)
    for x, c in ((chain(120, seed=4), 10.0), (rng.uniform(0, 30, (300, 3)).astype(np.float32), 10.0),
                 (chain(2, seed=1), 7.5), (chain(1, seed=1), 7.5)):  # fmt: skip
        i, j = radius_pairs(x, c)
        assert i.dtype == j.dtype == np.int32
        want = paired_edges(*radius_graph(x, c))
        h = len(want[0]) // 2
        np.testing.assert_array_equal(i, want[0][:h])
        np.testing.assert_array_equal(j, want[1][:h])
    x = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, np.nextafter(10.0, 0.0), 0.0]])
    assert [radius_pairs(x, 10.0)[k].tolist() for k in (0, 1)] == [[0], [2]]


def test_paired_edges_layout_and_refusals():
    """paired_edges lays out a symmetric list as sorted pairs then their reverses, and refuses lists
    that are not symmetric; check_paired catches a batch that claims the layout falsely."""
    x = chain(30, seed=5)
    s, r = radius_graph(x, 7.5)
    ps, pr = paired_edges(s, r)
    h = len(s) // 2
    assert set(zip(ps.tolist(), pr.tolist())) == set(zip(s.tolist(), r.tolist())) and len(ps) == len(s)
    np.testing.assert_array_equal(ps[h:], pr[:h])
    np.testing.assert_array_equal(pr[h:], ps[:h])
    assert (ps[:h] < pr[:h]).all() and (np.diff(ps[:h] * 30 + pr[:h]) > 0).all()
    assert paired_edges(s[1:], r[1:]) is None  # odd: one edge without its reverse
    drop = np.flatnonzero(s < r)[0]
    keep = np.ones(len(s), bool)
    keep[drop] = False
    other = np.flatnonzero((s > r) & ~((r == s[drop]) & (s == r[drop])))[0]
    keep[other] = False  # even count, but two unmatched edges of different pairs
    assert paired_edges(s[keep], r[keep]) is None
    assert paired_edges(np.r_[s, 0, 1], np.r_[r, 1, 0]) is None  # a repeated pair
    b = pack([frame_graph(x, topo(30), 7.5)], Capacity(30, len(s) + 8, 1, 40, 40, 40, 400))
    check_paired(b)
    bad = b.senders.copy()
    bad[0] = b.receivers[0]
    with pytest.raises(ValueError, match="not each other's reverse"):
        check_paired(dataclasses.replace(b, senders=bad))


def test_pack_padding_conventions_and_exact_content():
    t1, t2 = topo(10, species=np.arange(10) % 3), topo(6, segment=[0, 0, 0, 1, 1, 1])
    f1 = frame_graph(chain(10, 1), t1, 8.0, forces=np.ones((10, 3)), protein_index=0)
    f2 = frame_graph(chain(6, 2), t2, 8.0, forces=2 * np.ones((6, 3)), protein_index=1)
    cap = Capacity(20, 200, 3, 20, 20, 20, 100)
    b = pack([f1, f2], cap)
    assert b.capacity == cap
    assert b.node_mask.sum() == 16 and b.graph_mask.tolist() == [True, True, False]
    assert (b.graph_index[16:] == 3).all() and (b.senders[~b.edge_mask] == 20).all()
    assert (b.bonds[~b.bond_mask] == 20).all() and (b.pairs[~b.pair_mask] == 20).all()
    ne = len(f1.senders) + len(f2.senders)
    assert b.edge_mask.sum() == ne
    # paired edges: the frames' pairs (i < j) first, padding, then the same pairs reversed
    assert b.edges_paired and f1.senders.size and f2.senders.size
    check_paired(b)
    h1, h2, h = len(f1.senders) // 2, len(f2.senders) // 2, cap.n_edge // 2
    np.testing.assert_array_equal(b.senders[:h1], f1.senders[:h1])
    np.testing.assert_array_equal(b.senders[h1 : h1 + h2], f2.senders[:h2] + 10)
    np.testing.assert_array_equal(b.receivers[h : h + h1], f1.senders[:h1])
    assert b.edge_mask[: h1 + h2].all() and not b.edge_mask[h1 + h2 : h].any()
    assert (b.senders[: h1 + h2] < b.receivers[: h1 + h2]).all()
    # an odd edge capacity cannot hold the layout: the frames' own order, still correct
    odd = pack([f1, f2], cap._replace(n_edge=201))
    assert not odd.edges_paired and odd.edge_mask[:ne].all() and not odd.edge_mask[ne:].any()
    np.testing.assert_array_equal(odd.senders[len(f1.senders) : ne], f2.senders + 10)
    assert b.bond_mask.sum() == 9 + 4  # the second protein has a segment break
    # pairs: i < j, separation >= 2 inside a segment, all pairs across segments
    p = b.pairs[b.pair_mask]
    assert (p[:, 0] < p[:, 1]).all()
    sep = b.pair_sep[b.pair_mask]
    assert (sep >= 2).all()
    energies = graph_sum(jnp.ones(20), b.to_device())
    assert energies.tolist() == [10.0, 6.0, 0.0]
    with pytest.raises(ValueError, match="capacity overflow"):
        pack([f1, f2], cap._replace(n_node=15))


def test_single_frame_batch_is_unpadded():
    b = single_frame_batch(chain(12), topo(12), 9.0)
    assert b.node_mask.all() and b.edge_mask.all() and b.pair_mask.all() and b.graph_mask.all()
    assert np.isnan(b.forces).all()  # no targets given: any use as a target is loud


def test_config_yaml_and_unknown_keys(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("prepare:\n  force_map: optimal\n  temperatures: [320, 348]\n  output: out\n"
                 "inspect:\n  noise: false\n")  # fmt: skip
    cfg = load_yaml_defaults(PrepareConfig, p, "prepare")
    assert cfg.force_map == "optimal" and cfg.temperatures == (320, 348)
    assert cfg.output == Path("out")
    assert load_yaml_defaults(InspectConfig, p, "inspect").noise is False
    with pytest.raises(ValueError, match="unknown option.*forcemap"):
        from_dict(PrepareConfig, {"forcemap": "basic"})
    flat = tmp_path / "flat.yaml"
    flat.write_text("stride: 5\n")
    assert load_yaml_defaults(PrepareConfig, flat, "prepare").stride == 5


def test_cli_flags_override_yaml(tmp_path: Path, monkeypatch):
    import cli

    seen = {}
    monkeypatch.setitem(cli.COMMANDS, "prepare", ("cameo_eqx.data.config:PrepareConfig", "test_core:_capture"))
    p = tmp_path / "c.yaml"
    p.write_text("prepare:\n  stride: 4\n  force_map: optimal\n")
    cfg = cli.main(["prepare", "--config", str(p), "--stride", "2"])
    assert cfg.stride == 2 and cfg.force_map == "optimal"
    assert dataclasses.is_dataclass(cfg)
    del seen


def _capture(cfg):
    return cfg
