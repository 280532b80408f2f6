"""Experimental backbone variants for A/B runs on a GPU (issue 15): `bench_gpu.py --variant NAME` and
`bench_hlo.py --variant NAME` swap one block of a backbone for another formulation of the same function,
in this process only. They exist because some choices can only be decided by a GPU: a CPU compile and an
H200 compile (`bench_hlo.py --target h200`) can rank two formulations in opposite orders. Not used by the
library; `tests/test_variants.py` checks that each one that changes the CPU computation gives the default's
energies, forces and training gradients, and that the Allegro and MACE ones force their formulation in a
CPU and a CUDA lowering.

- `mace-grouped-messages`: MACE's messages grouped by target irrep (825189e), one block, one radial
  weighting and one segment sum per l3. Against the default at 825189e: faster on CPU (chain E+F 23 against
  31 ms), but the H200 compile moved 1.7x the bytes in a simulation step and 1.5x in a training step.
- `mace-sparse-tp` and `mace-edge-dots`: MACE's per-edge products of an input irrep with the spherical
  harmonics have two formulations, picked by the compile target (`mace._edge_products`: batched dots on CPU,
  the Clebsch-Gordan blocks' nonzeros on GPUs, chosen from the H200 compile: a 128-replica step 5.6 GB
  instead of 7.0, a training step 20.3 GB instead of 23.4). `mace-edge-dots` is the GPU A/B baseline,
  `mace-sparse-tp` runs the GPU path on CPU.
- `allegro-sparse-tp` and `allegro-node-matrices`: Allegro's tensor product has two formulations, picked by
  the compile target (`_AllegroLayer.tensor_product`: per-node (C, 9, 9) matrices on CPU, the sparse
  per-edge contraction with closed custom VJPs on GPUs, chosen from the H200 compile: a 128-replica step
  7.3 GB instead of 10.9, 191 M scattered elements instead of 493; a training step 24.8 GB instead of 33.4).
  These force one of them on every platform: `allegro-node-matrices` is the GPU A/B baseline (on CPU it is
  the default itself), `allegro-sparse-tp` runs the GPU path on CPU (3.5-5.5x slower there).
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

NAMES = ("mace-grouped-messages", "mace-sparse-tp", "mace-edge-dots", "allegro-sparse-tp", "allegro-node-matrices")


def apply(name: str | None) -> None:
    """Swaps in variant `name` (one of `NAMES`; None: nothing) for the rest of this process."""
    if name is not None:
        cls, attr, fn = _variant(name)
        setattr(cls, attr, fn)


@contextlib.contextmanager
def applied(name: str):
    """Variant `name` swapped in for the `with` block, the default restored after it."""
    cls, attr, fn = _variant(name)
    old = getattr(cls, attr)
    setattr(cls, attr, fn)
    try:
        yield
    finally:
        setattr(cls, attr, old)


def _variant(name: str):
    """`(class or module, attribute name, replacement)` of variant `name`."""
    if name not in NAMES:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(NAMES)}")
    return {"mace-grouped-messages": _mace_grouped_messages, "mace-sparse-tp": _mace_sparse_tp,
            "mace-edge-dots": _mace_edge_dots, "allegro-sparse-tp": _allegro_sparse_tp,
            "allegro-node-matrices": _allegro_node_matrices}[name]()


# ------------------------------------------------------------------------------- MACE, grouped by l3


@functools.lru_cache(maxsize=None)
def _grouped_plan(in_irs, sh_irs):
    """The default plan regrouped by target irrep: per l3, `(blocks, paths)` with `blocks` the
    `(i, (d_sh, d1, k d3))` columns of input irrep i's block for its k paths into l3, `paths` their indices."""
    from cameo_eqx.modules import mace

    blocks, path_irs = mace._conv_plan(in_irs, sh_irs)
    starts, p = [], 0  # per path: (input irrep, first column in its block, width)
    for i, blk in enumerate(blocks):
        off = 0
        while off < blk.shape[-1]:
            starts.append((i, off, mace._dim(path_irs[p])))
            off, p = off + starts[-1][2], p + 1
    groups = []
    for ir in sh_irs:
        paths = tuple(q for q, t in enumerate(path_irs) if t == ir)
        cols: dict[int, list[np.ndarray]] = {}
        for q in paths:
            i, off, d = starts[q]
            cols.setdefault(i, []).append(blocks[i][..., off : off + d])
        groups.append((tuple((i, np.concatenate(c, axis=-1)) for i, c in sorted(cols.items())), paths))
    return tuple(groups), path_irs


def _mace_grouped_messages():
    import jax
    import jax.numpy as jnp

    from cameo_eqx.modules import mace

    def messages(self, h, y, radial_in, geo, senders, receivers, n_node, inv_avg):
        dtype, c = h[0].dtype, self.channels
        groups, path_irs = _grouped_plan(self.in_irs, self.sh_irs)
        with jax.named_scope("mace_messages"):
            x = [mace._channel_linear(xi, w)[senders] for xi, w in zip(h, self.linear_up)]  # (E, C, d1) each
            r = geo.spread(self.radial(radial_in)).reshape(-1, c, len(path_irs))  # (E, C, P)
            a = []
            for (blocks, paths), ir, w in zip(groups, self.sh_irs, self.linear_a):
                if not paths:
                    a.append(jnp.zeros((mace._dim(ir), n_node, c), dtype))
                    continue
                mg = jnp.concatenate(
                    [jnp.einsum("ecm,emk->eck", x[i], jnp.einsum("eq,qmk->emk", y, jnp.asarray(blk, dtype)))
                     for i, blk in blocks], axis=-1,
                ).reshape(-1, c, len(paths), mace._dim(ir))  # (E, C, P_l3, d_l3)  # fmt: skip
                pick = np.zeros((len(path_irs), len(paths)), np.float32)
                pick[list(paths), np.arange(len(paths))] = 1.0
                mg = mg * (r @ jnp.asarray(pick, dtype))[..., None]
                mg = jax.ops.segment_sum(mg, receivers, num_segments=n_node) * inv_avg
                a.append(jnp.einsum("ncpm,cpd->mnd", mg, w))
            return jnp.concatenate(a + [jnp.ones((1, n_node, c), dtype)], axis=0)

    return mace._Layer, "messages", messages


# ------------------------------------------------------------- MACE edge products, one formulation everywhere


def _mace_sparse_tp():
    from cameo_eqx.modules import mace

    return mace, "_edge_products", lambda x, y, blk, sparse: mace._edge_sparse(x, y, sparse)


def _mace_edge_dots():
    from cameo_eqx.modules import mace

    return mace, "_edge_products", lambda x, y, blk, sparse: mace._edge_dots(x, y, blk)


# ----------------------------------------------------------------- Allegro, one formulation everywhere


def _allegro_sparse_tp():
    from cameo_eqx.modules import allegro

    return allegro._AllegroLayer, "node_matrices", allegro._AllegroLayer.sparse_tp


def _allegro_node_matrices():
    from cameo_eqx.modules import allegro

    return allegro._AllegroLayer, "sparse_tp", allegro._AllegroLayer.node_matrices
