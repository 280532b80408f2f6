"""Splits, buckets, epoch plans and the batch loader: exact coverage, padding, determinism,
sharding."""

from __future__ import annotations

import collections
import dataclasses
import threading

import h5py
import jax
import numpy as np
import pytest

from cameo_eqx.data.buckets import BucketPlan, CapacityError, SizeEstimate, choose_buckets
from cameo_eqx.data.loader import BatchLoader
from cameo_eqx.data.planner import EpochPlanner
from cameo_eqx.data.splits import select_frames, split_frames
from cameo_eqx.data.store import (
    PreparedDataset,
    ProteinRecord,
    finalise,
    open_for_writing,
    write_record,
)
from cameo_eqx.data.testdata import mdcath_like_sizes, synthetic_records
from cameo_eqx.graph import check_paired, frame_graph
from cameo_eqx.topology import CGTopology, chain_segments, normalise_resname, species_of

CUTOFF = 9.0


@pytest.fixture(scope="module")
def recs() -> list[ProteinRecord]:
    # a size mix with a two-segment protein (bonded terms must not cross the break)
    r = synthetic_records([12, 30, 21, 45, 8, 26], [17, 9, 23, 11, 30, 14], seed=3)
    t = r[3].topology
    seg = np.where(np.arange(t.n_beads) < 20, 0, 1).astype(np.int32)
    r[3] = dataclasses.replace(r[3], topology=dataclasses.replace(t, segment=seg))
    return r


def _flat(b):
    """Host batch (or device-stacked batch) → list of single batches."""
    if b.node_mask.ndim == 1:
        return [b]
    return [jax.tree.map(lambda a: a[k], b) for k in range(b.node_mask.shape[0])]


def check_batch_and_collect(b, records, cutoff, seen):
    """Checks padding conventions and compares every real frame with its own frame_graph."""
    n, g_cap = b.n_node, b.n_graph
    nm = b.node_mask
    k = int(nm.sum())
    assert nm[:k].all() and not nm[k:].any(), "real nodes first, padding at the end"
    assert (b.graph_index[k:] == g_cap).all() and (b.graph_index[:k] < g_cap).all()
    # edges in the paired layout: each half is real-first, the second the first's reverse
    assert b.edges_paired
    check_paired(b)
    h = b.edge_mask.shape[0] // 2
    for idx, mask in [(b.senders[:h], b.edge_mask[:h]), (b.receivers[h:], b.edge_mask[h:]),
                      (b.bonds, b.bond_mask), (b.angles, b.angle_mask), (b.dihedrals, b.dihedral_mask),
                      (b.pairs, b.pair_mask)]:  # fmt: skip
        m = int(mask.sum())
        assert mask[:m].all() and not mask[m:].any()
        assert (idx[~mask] == n).all(), "padding indices are out of range"
        assert (idx[mask] < k).all()
    assert (b.positions[~nm] == 0).all() and (b.forces[~nm] == 0).all()
    ng = int(b.graph_mask.sum())
    assert b.graph_mask[:ng].all() and not b.graph_mask[ng:].any()
    assert (b.protein_index[ng:] == -1).all()
    counted = collections.Counter()
    for g in range(ng):
        nodes = np.flatnonzero(b.graph_index == g)
        a, z = nodes[0], nodes[-1] + 1
        assert len(nodes) == z - a, "a frame's nodes are contiguous"
        rec = records[int(b.protein_index[g])]
        f = int(b.frame_index[g])
        seen[(rec.name, f)] += 1
        np.testing.assert_array_equal(b.positions[a:z], np.asarray(rec.positions[f]))
        np.testing.assert_array_equal(b.forces[a:z], np.asarray(rec.forces[f]))
        np.testing.assert_array_equal(b.species[a:z], rec.topology.species)
        assert b.temperature[g] == rec.temperature[f]
        ref = frame_graph(np.asarray(rec.positions[f]), rec.topology, cutoff)
        inside = b.edge_mask & (b.senders >= a) & (b.senders < z)
        assert ((b.receivers[inside] >= a) & (b.receivers[inside] < z)).all()
        got = sorted(zip((b.senders[inside] - a).tolist(), (b.receivers[inside] - a).tolist()))
        assert got == sorted(zip(ref.senders.tolist(), ref.receivers.tolist()))
        terms = [(b.bonds, b.bond_mask, ref.bonds), (b.angles, b.angle_mask, ref.angles),
                 (b.dihedrals, b.dihedral_mask, ref.dihedrals), (b.pairs, b.pair_mask, ref.pairs)]
        for arr, mask, want in terms:
            sel = mask & (arr[:, 0] >= a) & (arr[:, 0] < z)
            np.testing.assert_array_equal(arr[sel] - a, want)
            counted[id(arr)] += int(sel.sum())
        sel = b.pair_mask & (b.pairs[:, 0] >= a) & (b.pairs[:, 0] < z)
        np.testing.assert_array_equal(b.pair_sep[sel], ref.pair_sep)
        counted["edges"] += int(inside.sum())
    # nothing real belongs to no frame
    assert counted["edges"] == int(b.edge_mask.sum())
    for arr, mask in [(b.bonds, b.bond_mask), (b.angles, b.angle_mask),
                      (b.dihedrals, b.dihedral_mask), (b.pairs, b.pair_mask)]:  # fmt: skip
        assert counted[id(arr)] == int(mask.sum())


def run_epoch(loader, epoch, records):
    by_name = {r.name: r for r in records}
    recs = [by_name[n] for n in loader.names]
    seen = collections.Counter()
    steps = 0
    for b in loader.epoch(epoch):
        steps += 1
        for s in _flat(b):
            check_batch_and_collect(s, recs, loader.cutoff, seen)
    return seen, steps


def test_epoch_covers_every_frame_exactly_once(recs):
    loader = BatchLoader(recs, cutoff=CUTOFF, target_nodes=64, seed=1, prefetch=2)
    assert len(loader.buckets.buckets) <= 4
    seen, steps = run_epoch(loader, 0, recs)
    want = {(r.name, f) for r in recs for f in range(r.n_frames)}
    assert set(seen) == want and set(seen.values()) == {1}
    st = loader.stats
    assert st.steps == steps and st.frames == len(want) and st.empty_batches == 0
    u = st.overall()
    assert 0 < u["nodes"] <= 1 and 0 < u["edges"] <= 1


def test_plan_deterministic_and_epochs_differ(recs):
    bp = choose_buckets(recs, cutoff=CUTOFF, target_nodes=64)
    a = EpochPlanner(recs, None, bp).plan_epoch(seed=5, epoch=0)
    b = EpochPlanner(recs, None, bp).plan_epoch(seed=5, epoch=0)
    c = EpochPlanner(recs, None, bp).plan_epoch(seed=5, epoch=1)
    d = EpochPlanner(recs, None, bp).plan_epoch(seed=6, epoch=0)
    assert list(a) == list(b)
    assert list(a) != list(c) and list(a) != list(d)
    for p in (a, c, d):
        items = [it for batch in p for it in batch]
        assert len(items) == len(set(items)) == sum(r.n_frames for r in recs)
    # the loader's batches follow the plan exactly
    loader = BatchLoader(recs, cutoff=CUTOFF, buckets=bp, seed=5, prefetch=0)
    got = [[(loader.names[p], f) for p, f, m in zip(x.protein_index, x.frame_index, x.graph_mask)
            if m] for x in loader.epoch(0)]  # fmt: skip
    assert sorted(map(tuple, got)) == sorted(map(tuple, a))


def test_block_shuffle_covers_and_is_deterministic(recs):
    bp = choose_buckets(recs, cutoff=CUTOFF, target_nodes=64)
    pl = EpochPlanner(recs, None, bp, shuffle="blocks", block_frames=4, window_blocks=3)
    a, b = pl.plan_epoch(0, 3), pl.plan_epoch(0, 3)
    assert list(a) == list(b) and list(a) != list(pl.plan_epoch(0, 4))
    items = [it for batch in a for it in batch]
    assert sorted(items) == sorted((r.name, f) for r in recs for f in range(r.n_frames))


def test_splits(recs):
    s = split_frames(recs, by="protein", val_fraction=0.34, seed=0)
    assert not set(s.train) & set(s.val) and len(s.val) == 2
    assert set(s.train) | set(s.val) == {r.name for r in recs}
    assert s.n_train + s.n_val == sum(r.n_frames for r in recs)
    assert split_frames(recs, by="protein", val_fraction=0.34, seed=0).val.keys() == s.val.keys()
    f = split_frames(recs, by="frame", val_fraction=0.25, seed=2)
    for r in recs:
        tr, va = f.train[r.name], f.val.get(r.name, np.zeros(0, int))
        assert not set(tr) & set(va) and len(tr) + len(va) == r.n_frames
        assert len(va) == round(0.25 * r.n_frames)
    hot = split_frames(recs, by="frame", val_fraction=0.0, temperatures=[450.0])
    for r in recs:
        assert (r.temperature[hot.train[r.name]] == 450.0).all()
        assert len(hot.train[r.name]) == int((r.temperature == 450.0).sum())
    with pytest.raises(ValueError, match="split by"):
        split_frames(recs, by="residue")
    # a loader on a split only serves its frames
    loader = BatchLoader(recs, s.train, cutoff=CUTOFF, target_nodes=64, prefetch=0)
    seen, _ = run_epoch(loader, 0, recs)
    assert set(seen) == {(n, int(i)) for n, idx in s.train.items() for i in idx}


def test_device_axis_and_process_shards(recs):
    bp = choose_buckets(recs, cutoff=CUTOFF, target_nodes=48)
    kw = dict(cutoff=CUTOFF, buckets=bp, seed=3, n_devices=2, process_count=3, prefetch=1)
    shards = [BatchLoader(recs, process_index=p, **kw) for p in range(3)]
    n_steps = {len(s.steps(0)) for s in shards}
    assert len(n_steps) == 1, "every process has the same number of steps"
    caps = [[s.buckets.buckets[s.buckets.classes[st.size_class].bucket] for st in s.steps(0)]
            for s in shards]  # fmt: skip
    assert caps[0] == caps[1] == caps[2], "every process uses the same bucket at each step"
    total = collections.Counter()
    empty = 0
    for s in shards:
        for b in s.epoch(0):
            assert b.node_mask.shape == (2, b.capacity.n_node)
            assert b.senders.shape == (2, b.capacity.n_edge) and b.bonds.shape[0] == 2
            assert b.positions.shape == (2, b.capacity.n_node, 3)
            for x in _flat(b):
                if not x.graph_mask.any():
                    empty += 1
                    assert not (x.node_mask.any() or x.edge_mask.any() or x.pair_mask.any())
                    assert (x.senders == x.n_node).all() and (x.graph_index == x.n_graph).all()
        seen, _ = run_epoch(s, 0, recs)
        assert not set(seen) & set(total), "process shards are disjoint"
        total.update(seen)
    assert set(total) == {(r.name, f) for r in recs for f in range(r.n_frames)}
    assert set(total.values()) == {1}
    assert empty == sum(s.stats.empty_batches for s in shards)


def test_large_protein_gets_its_own_bucket_and_unplanned_is_an_error(recs):
    bp = choose_buckets(recs, cutoff=CUTOFF, target_nodes=32)  # the 45-bead protein is larger
    assert len(bp.buckets) == 4 and len(bp.classes) == 2
    assert bp.buckets[bp.classes[1].bucket].n_node >= 45
    loader = BatchLoader(recs, cutoff=CUTOFF, buckets=bp, prefetch=0)
    seen, _ = run_epoch(loader, 0, recs)
    assert sum(seen.values()) == sum(r.n_frames for r in recs)
    big = dataclasses.replace(synthetic_records([60], 3, seed=9)[0], name="big")
    small = choose_buckets(recs[:3], cutoff=CUTOFF, target_nodes=32)
    est = dict(small.estimates)
    est[big.name] = dataclasses.replace(est[recs[0].name], name=big.name, beads=60)
    with pytest.raises(CapacityError, match="60 beads is larger than every planned bucket"):
        EpochPlanner([*recs[:3], big], None, dataclasses.replace(small, estimates=est))


def test_underestimated_sizes_are_promoted_never_dropped(recs):
    bp = choose_buckets(recs, cutoff=CUTOFF, target_nodes=64)
    low = {n: dataclasses.replace(e, edges=tuple(int(0.85 * x) for x in e.edges))
           for n, e in bp.estimates.items()}  # fmt: skip
    bp_low = choose_buckets(recs, cutoff=CUTOFF, target_nodes=64, estimates=low, overflow=0.5)
    loader = BatchLoader(recs, cutoff=CUTOFF, buckets=bp_low, prefetch=0)
    seen, _ = run_epoch(loader, 0, recs)
    assert loader.stats.promoted > 0
    assert set(seen.values()) == {1} and len(seen) == sum(r.n_frames for r in recs)
    tiny = {n: dataclasses.replace(e, edges=tuple(int(0.3 * x) for x in e.edges))
            for n, e in bp.estimates.items()}  # fmt: skip
    bp_tiny = choose_buckets(recs, cutoff=CUTOFF, target_nodes=64, estimates=tiny, overflow=0.1)
    loader = BatchLoader(recs, cutoff=CUTOFF, buckets=bp_tiny, prefetch=2)
    with pytest.raises(RuntimeError, match="batch loader failed at epoch 0 step") as e:
        for _ in loader.epoch(0):
            pass
    assert isinstance(e.value.__cause__, CapacityError) and "exceed every bucket" in str(e.value)


def test_errors_propagate_with_context_and_threads_stop(recs):
    bad = dataclasses.replace(recs[1], positions=recs[1].positions.copy())
    bad.positions[4, 2, 0] = np.nan
    records = [recs[0], bad]
    bp = choose_buckets([recs[0], recs[1]], cutoff=CUTOFF, target_nodes=64)
    before = threading.active_count()
    loader = BatchLoader(records, cutoff=CUTOFF, buckets=bp, prefetch=2)
    with pytest.raises(RuntimeError, match=f"protein {bad.name} frame 4: non-finite positions"):
        for _ in loader.epoch(0):
            pass
    ok = BatchLoader(recs, cutoff=CUTOFF, target_nodes=32, prefetch=1)
    it = ok.epoch(0)
    next(it)
    it.close()  # early exit: the producer thread must stop
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="no forces"):
        BatchLoader([dataclasses.replace(recs[0], forces=None)], cutoff=CUTOFF, target_nodes=64)
    with pytest.raises(ValueError, match="cutoff"):
        BatchLoader(recs, cutoff=CUTOFF + 1, buckets=bp)


def test_bucket_plan_roundtrip(recs, tmp_path):
    bp = choose_buckets(recs, cutoff=CUTOFF, target_nodes=64, samples=3)
    bp.save(tmp_path / "buckets.json")
    again = BucketPlan.load(tmp_path / "buckets.json")
    assert again == bp
    e = bp.estimates[recs[0].name]
    assert e.temperatures == tuple(sorted(set(recs[0].temperature.tolist())))
    assert all(len(s) <= 3 for s in e.sampled)


def test_planner_utilisation_on_mdcath_like_mix():
    """Planned slot utilisation on 600 proteins of mdCATH sizes (estimates only, nothing read)."""
    rng = np.random.default_rng(0)
    sizes = mdcath_like_sizes(600, rng)
    recs, est = [], {}
    for k, n in enumerate(sizes.tolist()):
        t = int(rng.integers(20, 60))
        topo = CGTopology(("ALA",) * n, np.arange(n), ("A",) * n, np.zeros(n, np.int32),
                          np.zeros(n, np.int32))  # fmt: skip
        name = f"p{k}"
        temp = np.full(t, 320.0, np.float32)
        recs.append(ProteinRecord(name, topo, np.zeros((t, 1, 3)), None, temp,
                                  np.zeros(t, np.int32)))  # fmt: skip
        e = int(n * (22 - 60 / n ** 0.5) * rng.uniform(0.9, 1.1))
        est[name] = SizeEstimate(name, n, n - 1, n - 2, n - 3, (320.0,), (e,), (e // 2 - n,),
                                 ((0,),))  # fmt: skip
    bp = choose_buckets(recs, cutoff=10.0, target_nodes=2048, estimates=est, margin=0.0)
    plan = EpochPlanner(recs, None, bp).plan_epoch(0, 0)
    cap = bp.buckets[0]
    beads = np.asarray([est[n].beads for n in plan.names])
    edges = np.asarray([est[n].edges[0] for n in plan.names])
    nb = len(plan)
    assert beads[plan.protein].sum() / (nb * cap.n_node) >= 0.95
    assert edges[plan.protein].sum() / (nb * cap.n_edge) >= 0.9
    assert len(bp.buckets) == 2


def test_prepared_dataset_source(recs, tmp_path):
    h5, tmp, final = open_for_writing(tmp_path, species_map_name="aa20",
                                      species_map={"ALA": 0}, config={})  # fmt: skip
    for r in recs:
        write_record(h5, r, frame=np.arange(r.n_frames))
    finalise(h5, tmp, final)
    with PreparedDataset(tmp_path) as ds:
        assert select_frames(ds).keys() == {r.name for r in recs}
        split = split_frames(ds, by="frame", val_fraction=0.2, seed=1)
        loader = BatchLoader(ds, split.train, cutoff=CUTOFF, target_nodes=64, shuffle="blocks",
                             block_frames=4, window_blocks=2)  # fmt: skip
        seen, _ = run_epoch(loader, 1, recs)
        assert set(seen) == {(n, int(i)) for n, idx in split.train.items() for i in idx}
        assert set(seen.values()) == {1}
        # frames read from the file (one slice per run of consecutive rows) in the asked order, repeats kept
        mem = recs[4]
        lazy = ds.record(mem.name)
        for idx in ([7, 3, 4, 5, 3, 29, 0], [2], [0, 1, 2], list(range(mem.n_frames))[::-1], []):
            r, f = lazy.frames(np.asarray(idx, np.int64))
            np.testing.assert_array_equal(r, mem.positions[idx])
            np.testing.assert_array_equal(f, mem.forces[idx])
            assert r.dtype == f.dtype == np.float32 and r.shape == (len(idx), mem.n_beads, 3)


def _same_batches(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=x.dtype.kind == "f")
               for p, q in zip(a, b, strict=True) for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(q)))  # fmt: skip


def _shared_blocks() -> set[str]:
    """Python's shared-memory blocks on this machine (Linux: /dev/shm/psm_*; elsewhere none seen)."""
    import pathlib

    d = pathlib.Path("/dev/shm")
    return {p.name for p in d.glob("psm_*")} if d.is_dir() else set()


def test_worker_processes_build_the_same_batches(recs, tmp_path):
    """Steps built by worker processes (spawned; records read lazily from HDF5 reopen there) are the
    batches, descriptions and stats of the single-thread loader, in order; an early exit leaves the
    pool usable and frees the batches built ahead; an error in a worker names the step and its cause;
    close() stops the processes."""
    h5, tmp, final = open_for_writing(tmp_path, species_map_name="aa20",
                                      species_map={"ALA": 0}, config={})  # fmt: skip
    for r in recs:
        write_record(h5, r, frame=np.arange(r.n_frames))
    finalise(h5, tmp, final)
    shm_before = _shared_blocks()
    with PreparedDataset(tmp_path) as ds:
        kw = dict(cutoff=CUTOFF, target_nodes=64, seed=2, n_devices=2)
        ref = BatchLoader(ds, prefetch=0, **kw)
        want = [list(ref.epoch(e, describe=True)) for e in (0, 1)]
        pool = BatchLoader(ds, buckets=ref.buckets, prefetch=1, workers=2, **kw)
        it = pool.epoch(0)
        next(it)
        it.close()  # early exit: queued steps cancelled, the workers stay for the next epoch
        for e in (0, 1):
            got = list(pool.epoch(e, describe=True))
            assert [d for _, d in got] == [d for _, d in want[e]]
            assert _same_batches([b for b, _ in got], [b for b, _ in want[e]])
        assert pool.stats.per_bucket == ref.stats.per_bucket and pool.stats.frames == ref.stats.frames
        procs = list(pool._executor._processes.values())
        pool.close()
        assert pool._executor is None and not any(p.is_alive() for p in procs)
        assert _shared_blocks() <= shm_before, "a worker's shared-memory batch was never freed"
    bad = dataclasses.replace(recs[1], positions=recs[1].positions.copy())
    bad.positions[4, 2, 0] = np.nan
    bp = choose_buckets([recs[0], recs[1]], cutoff=CUTOFF, target_nodes=64)
    loader = BatchLoader([recs[0], bad], cutoff=CUTOFF, buckets=bp, workers=1)
    with pytest.raises(RuntimeError, match=r"failed at epoch 0 step \d+ .*non-finite positions") as e:
        for _ in loader.epoch(0):
            pass
    assert isinstance(e.value.__cause__, ValueError) and f"protein {bad.name} frame 4" in str(e.value)
    loader.close()
    with pytest.raises(ValueError, match="workers must be >= 0"):
        BatchLoader(recs, cutoff=CUTOFF, target_nodes=64, workers=-1)


def _villin_records(path) -> list[ProteinRecord]:
    """CA beads of villin, one record per temperature (forces summed over CA+HA as a stand-in)."""
    out = []
    with h5py.File(path, "r") as f:
        (dom,) = list(f.keys())
        g = f[dom]
        pdb = g["pdbProteinAtoms"][()]
        pdb = pdb.decode() if isinstance(pdb, bytes) else str(pdb)
        names = [ln[12:16].strip() for ln in pdb.splitlines() if ln.startswith(("ATOM", "HETATM"))]
        ca = np.flatnonzero(np.asarray(names) == "CA")
        resid = np.asarray(g["resid"][()])
        resname = [normalise_resname(x) for x in g["resname"][()][ca]]
        for temp in sorted(k for k in g.keys() if k.isdigit()):
            xyz = np.asarray(g[temp]["0"]["coords"][()], np.float32)
            frc = np.asarray(g[temp]["0"]["forces"][()], np.float32)
            ha = np.asarray([np.flatnonzero((resid == resid[i]) & (np.asarray(names) == "HA"))
                             for i in ca], dtype=object)  # fmt: skip
            fca = frc[:, ca].copy()
            for k, h in enumerate(ha):
                fca[:, k] += frc[:, h].sum(axis=1)
            topo = CGTopology(tuple(resname), resid[ca].astype(np.int32), ("A",) * len(ca),
                              chain_segments(["A"] * len(ca), resid[ca], xyz[0, ca]),
                              species_of(resname))  # fmt: skip
            t = len(xyz)
            temps = np.full(t, float(temp), np.float32)
            out.append(ProteinRecord(f"{dom}_{temp}", topo, xyz[:, ca], fca, temps,
                                     np.zeros(t, np.int32)))  # fmt: skip
    return out


def test_villin_epoch_exact(villin_h5):
    recs = _villin_records(villin_h5)
    assert recs[0].n_beads == 35
    loader = BatchLoader(recs, cutoff=10.0, target_nodes=256, seed=0, n_devices=2, prefetch=2)
    assert len(loader.buckets.buckets) == 2
    seen, steps = run_epoch(loader, 0, recs)
    assert set(seen.values()) == {1} and len(seen) == 400
    u = loader.stats.overall()
    assert u["nodes"] > 0.8  # 35-bead frames in a 256-node bucket: 7 per batch


def _traj_records():
    """Three proteins: 2 temperatures x 3 replicas of 40 frames each (stored interleaved by trajectory),
    and one protein with a single trajectory of 60 frames."""
    base = synthetic_records([10, 14, 9], [240, 240, 60], seed=5)
    out = []
    for r in base[:2]:
        temp = np.repeat([320.0, 350.0], 120).astype(np.float32)
        rep = np.tile(np.repeat([0, 1, 2], 40), 2).astype(np.int32)
        out.append(dataclasses.replace(r, temperature=temp, replica=rep))
    out.append(dataclasses.replace(base[2], temperature=np.full(60, 320.0, np.float32),
                                   replica=np.zeros(60, np.int32)))  # fmt: skip
    return out


def _positions_in_trajectory(rec, idx):
    """(trajectory key, position within that trajectory) of every frame index."""
    key = list(zip(rec.temperature.tolist(), rec.replica.tolist()))
    pos = {}
    for k in set(key):
        for p, i in enumerate(np.flatnonzero([kk == k for kk in key])):
            pos[int(i)] = (k, p)
    return [pos[int(i)] for i in idx]


def test_time_block_split_keeps_a_gap(caplog):
    """No validation frame lies within `gap` stored frames of a training frame of the same trajectory;
    every trajectory has validation frames; deterministic by seed; the dropped frames are the gaps."""
    recs = _traj_records()
    for gap in (0, 3, 5):
        s = split_frames(recs, by="time_block", val_fraction=0.2, seed=1, gap=gap, n_blocks=5)
        for r in recs:
            tr, va = s.train[r.name], s.val[r.name]
            dr = s.dropped.get(r.name, np.zeros(0, int))
            assert not set(tr) & set(va) and not set(dr) & (set(tr) | set(va))
            assert len(tr) + len(va) + len(dr) == r.n_frames
            ptr, pva = _positions_in_trajectory(r, tr), _positions_in_trajectory(r, va)
            for k, p in pva:
                near = [q for kk, q in ptr if kk == k and abs(q - p) <= gap]
                assert not near, (r.name, k, p, near)
            assert {k for k, _ in pva} == set(zip(r.temperature.tolist(), r.replica.tolist()))
            assert abs(len(va) / r.n_frames - 0.2) < 0.05
            if gap == 0:
                assert len(dr) == 0
    same = split_frames(recs, by="time_block", val_fraction=0.2, seed=1, gap=3, n_blocks=5)
    other = split_frames(recs, by="time_block", val_fraction=0.2, seed=2, gap=3, n_blocks=5)
    again = split_frames(recs, by="time_block", val_fraction=0.2, seed=1, gap=3, n_blocks=5)
    assert all(np.array_equal(same.val[n], again.val[n]) for n in same.val)
    assert any(not np.array_equal(same.val[n], other.val[n]) for n in same.val)
    # short trajectories with a wide gap lose many frames: said in a warning
    with caplog.at_level("WARNING"):
        split_frames(recs, by="time_block", val_fraction=0.2, gap=10, n_blocks=10)
    assert "drops" in caplog.text


def test_trajectory_split_holds_out_whole_trajectories(caplog):
    recs = _traj_records()
    with caplog.at_level("WARNING"):
        s = split_frames(recs, by="trajectory", val_fraction=0.34, seed=0, gap=4)
    for r in recs[:2]:
        key = np.asarray([hash(k) for k in zip(r.temperature.tolist(), r.replica.tolist())])
        ktr, kva = set(key[s.train[r.name]]), set(key[s.val[r.name]])
        assert not ktr & kva and len(kva) == 2 and len(ktr) == 4  # round(0.34 * 6) trajectories
        assert len(s.train[r.name]) + len(s.val[r.name]) == r.n_frames  # no gap needed
    # the single-trajectory protein falls back to time blocks with a warning
    one = recs[2]
    assert "single (temperature, replica) trajectory" in caplog.text and one.name in caplog.text
    assert len(s.val[one.name]) and len(s.dropped[one.name])
    assert min(abs(a - b) for a in s.val[one.name] for b in s.train[one.name]) > 4
    again = split_frames(recs, by="trajectory", val_fraction=0.34, seed=0, gap=4)
    assert all(np.array_equal(s.val[n], again.val[n]) for n in s.val)
    with pytest.raises(ValueError, match="gap"):
        split_frames(recs, by="time_block", gap=-1)


def test_default_split_is_leak_free():
    from cameo_eqx.training.config import DataConfig

    assert DataConfig().split_by in ("trajectory", "time_block") and DataConfig().split_gap >= 1


def test_time_block_split_too_short_is_a_clear_error():
    recs = synthetic_records([9, 14], 10, seed=3, temperatures=(300.0, 350.0))  # 5-frame trajectories
    with pytest.raises(ValueError, match="leaves no training frames.*smaller split_gap"):
        split_frames(recs, by="time_block", val_fraction=0.1, gap=5)
    assert split_frames(recs, by="time_block", val_fraction=0.1, gap=1).n_train > 0
