"""Data parallelism: a 1-D mesh over every device, a filtered `shard_map`, global arrays, and
multi-process start-up (`jax.distributed`).

The batch's leading (device) axis is split across the mesh axis `"data"`; model and optimiser state
are replicated. Inside the mapped function every device sees its slice of the batch (leading axis of
length `global_devices_axis / n_devices`), computes sums, and combines them with `lax.psum`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .config import DistributedConfig

log = logging.getLogger(__name__)

AXIS = "data"
"""Name of the mesh axis that the batch is split along."""


def _slurm_multi() -> bool:
    try:
        return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    except ValueError:
        return False


def initialize(cfg: DistributedConfig) -> bool:
    """Starts `jax.distributed` when configured or detected (SLURM with more than one task).

    On CPU, gloo collectives are selected first (needed for cross-process `psum` on CPU).

    **Arguments:**

    - `cfg`: the distributed settings; explicit coordinator/process values override SLURM's.

    **Returns:** whether `jax.distributed` is (now) initialised.
    """
    explicit = cfg.coordinator_address is not None or (cfg.num_processes or 1) > 1
    want = cfg.enabled if cfg.enabled is not None else (explicit or _slurm_multi())
    if not want:
        return False
    if jax.distributed.is_initialized():
        return True
    if cfg.num_processes is not None and cfg.num_processes > 1 and (
        cfg.process_id is None or cfg.coordinator_address is None
    ) and not _slurm_multi():
        raise ValueError(
            "distributed: num_processes > 1 needs coordinator_address and process_id (or a SLURM job)"
        )
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # pragma: no cover (older/newer jax without the option)
        log.warning("could not select gloo CPU collectives")
    kwargs: dict[str, Any] = {}
    if cfg.coordinator_address is not None:
        kwargs["coordinator_address"] = cfg.coordinator_address
    if cfg.num_processes is not None:
        kwargs["num_processes"] = cfg.num_processes
    if cfg.process_id is not None:
        kwargs["process_id"] = cfg.process_id
    if cfg.local_device_ids is not None:
        kwargs["local_device_ids"] = list(cfg.local_device_ids)
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())  # fmt: skip
    return True


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh (axis `"data"`) over the given devices (default: every device of every process)."""
    devs = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devs, dtype=object), (AXIS,))


def local_axis_size(mesh: Mesh) -> int:
    """Devices of this process in the mesh: the leading batch axis each process provides."""
    me = jax.process_index()
    return sum(1 for d in mesh.devices.flat if d.process_index == me)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Array leaves as global arrays replicated over the mesh (every process passes the same values)."""
    sharding = NamedSharding(mesh, P())

    def put(x):
        if not eqx.is_array(x):
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, x.shape)

    return jax.tree.map(put, tree)


def shard_leading(tree: Any, mesh: Mesh) -> Any:
    """Host arrays with this process's share of the leading axis → global arrays split over the mesh.

    Each process passes `local_axis_size(mesh)` entries along axis 0; the global leading axis is
    `mesh.size` long (process p's entries come after those of processes < p).
    """
    sharding = NamedSharding(mesh, P(AXIS))

    def put(x):
        if not eqx.is_array(x) and not isinstance(x, np.ndarray):
            return x
        x = np.asarray(x)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        n_local = x.shape[0]
        glob = (n_local * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, glob)

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """Replicated global arrays → host NumPy (this process's first shard), other leaves unchanged."""

    def get(x):
        if isinstance(x, jax.Array):
            if x.is_fully_addressable:
                return np.asarray(x)
            return np.asarray(x.addressable_data(0))
        return x

    return jax.tree.map(get, tree)


def filter_shard_map(
    fn: Callable[..., Any], mesh: Mesh, in_specs: tuple[P, ...], out_spec: P = P()
) -> Callable[..., Any]:
    """`shard_map` for arbitrary pytrees: array leaves are mapped, everything else is closed over.

    **Arguments:**

    - `fn`: the per-device function of positional arguments.
    - `mesh`: the 1-D device mesh.
    - `in_specs`: one `PartitionSpec` per positional argument, applied to all its array leaves.
    - `out_spec`: the `PartitionSpec` of every array leaf of the output.

    **Returns:** a function with the same signature; call it inside `jit` with inputs already placed
    (`replicate` / `shard_leading`). Gradients are NOT combined implicitly (`check_vma=False`): `fn` must
    `psum` whatever should be global.
    """

    def wrapped(*args):
        if len(args) != len(in_specs):
            raise TypeError(f"filter_shard_map: {len(args)} arguments for {len(in_specs)} in_specs")
        dyn, static = eqx.partition(args, eqx.is_array)
        out_static: list = []

        def inner(dyn_args):
            out = fn(*eqx.combine(dyn_args, static))
            o_dyn, o_static = eqx.partition(out, eqx.is_array)
            out_static.append(o_static)
            return o_dyn

        mapped = jax.shard_map(inner, mesh=mesh, in_specs=(tuple(in_specs),), out_specs=out_spec,
                               check_vma=False)  # fmt: skip
        o_dyn = mapped(dyn)
        return eqx.combine(o_dyn, out_static[0])

    return wrapped
