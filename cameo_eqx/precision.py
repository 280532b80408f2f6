"""Matmul precision of float32 computations: explicit, never the backend's silent default.

On NVIDIA GPUs from Ampere on (A100, H100, H200), JAX computes float32 dot products with TensorFloat-32
unless told otherwise: inputs rounded to a 10-bit mantissa, about 1e-3 relative per product. On CPU
every choice gives the same float32 arithmetic. So cameo_eqx traces every jitted model computation
(training, evaluation, simulation, export) under an explicit precision:

- `"float32"` (the default): true float32 products (`Precision.HIGHEST` on every dot).
- `"tensorfloat32"`: TF32 tensor cores, faster on those GPUs; an option that must pass
  `check_precision` (forces within `REDUCED_PRECISION_TOLERANCE` relative of float32) before use.

The precision is part of JAX's trace context, so a function jitted once is retraced, not reused,
under another precision.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Literal

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float

from .energy import energy_and_forces

MatmulPrecision = Literal["float32", "tensorfloat32"]
"""Precision of float32 matrix products: 'float32' (exact float32, default) or 'tensorfloat32'."""

PRECISIONS: tuple[str, ...] = typing.get_args(MatmulPrecision)
DEFAULT_PRECISION: MatmulPrecision = "float32"

REDUCED_PRECISION_TOLERANCE = 1e-3
"""Largest accepted ‖F_reduced − F_float32‖ / ‖F_float32‖ (the issue's accuracy target)."""


class PrecisionError(ValueError):
    """A reduced matmul precision moves the forces by more than the tolerance."""


def matmul_precision(name: MatmulPrecision) -> AbstractContextManager:
    """A context in which jitted code is traced with float32 matrix products at `name`.

    **Arguments:**

    - `name`: one of `PRECISIONS`.

    **Returns:** a context manager (`jax.default_matmul_precision`).
    """
    return jax.default_matmul_precision(check_name(name))


def check_name(name: str) -> MatmulPrecision:
    """`name` if it is one of `PRECISIONS`, else a ValueError listing them."""
    if name not in PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {list(PRECISIONS)}, got {name!r}")
    return typing.cast(MatmulPrecision, name)


def relative_force_error(
    reduced: Float[Array, "n 3"], reference: Float[Array, "n 3"], mask: Array | None = None
) -> float:
    """‖F_reduced − F_reference‖ / ‖F_reference‖ over the (masked) beads, as a Python float.

    **Arguments:**

    - `reduced`, `reference`: forces of the same beads.
    - `mask`: `(n,)` booleans of the real beads; None: all.

    **Returns:** the relative Frobenius-norm difference (inf when the reference is zero but the
    difference is not, 0 when both are zero).
    """
    a = np.asarray(reduced, np.float64)
    b = np.asarray(reference, np.float64)
    if mask is not None:
        m = np.asarray(mask, bool)
        a, b = a[m], b[m]
    diff = float(np.linalg.norm(a - b))
    ref = float(np.linalg.norm(b))
    if ref == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / ref


def check_precision(
    forces: Callable[[], Float[Array, "n 3"]],
    name: MatmulPrecision,
    *,
    mask: Array | None = None,
    tolerance: float = REDUCED_PRECISION_TOLERANCE,
    where: str = "model",
) -> float:
    """Measures how far a reduced precision moves the forces, and refuses it beyond `tolerance`.

    **Arguments:**

    - `forces`: a function returning forces, evaluated (and so traced) once under float32 and once under
      `name`; it must run jitted code that is traced inside the call (a `jax.jit` function is retraced
      per precision).
    - `name`: the precision to check; 'float32' is the reference and returns 0 without evaluating.
    - `mask`: real beads of the forces (padding excluded).
    - `tolerance`: largest accepted relative difference.
    - `where`: what was evaluated, for the error message (e.g. "the first training batch").

    **Returns:** the relative force difference (see `relative_force_error`).

    **Raises:** `PrecisionError` when the difference exceeds `tolerance` or is not finite.
    """
    if name == "float32":
        return 0.0
    with matmul_precision("float32"):
        reference = jax.block_until_ready(forces())
    with matmul_precision(name):
        reduced = jax.block_until_ready(forces())
    err = relative_force_error(reduced, reference, mask)
    if not err <= tolerance:
        raise PrecisionError(
            f"matmul_precision={name!r} changes the forces on {where} by {err:.2e} relative to float32 "
            f"(tolerance {tolerance:.0e}); use matmul_precision='float32'"
        )
    return err


def check_model_precision(model: Any, batch: Any, name: MatmulPrecision, *, where: str) -> float:
    """`check_precision` of a model's forces on one batch (what training and simulation run before using
    a reduced precision); also prints the measured difference.

    **Arguments:**

    - `model`: an `AbstractEnergyModel`.
    - `batch`: a packed `Batch` (no leading device axis).
    - `name`: the precision to use; 'float32' returns 0 at once.
    - `where`: what the batch is, for the message.

    **Returns:** the relative force difference.
    """
    if name == "float32":
        return 0.0
    f = eqx.filter_jit(energy_and_forces)  # a fresh trace under each precision context
    err = check_precision(lambda: f(model, batch)[1], name, mask=batch.node_mask, where=where)
    print(f"matmul_precision {name!r}: forces on {where} differ from float32 by {err:.2e} relative "
          f"(tolerance {REDUCED_PRECISION_TOLERANCE:.0e})", flush=True)
    return err


def dot_precisions(lowered_text: str) -> set[str]:
    """The precisions named by the dot products of lowered StableHLO text (e.g. `{"HIGHEST"}`).

    **Arguments:**

    - `lowered_text`: `jax.jit(f).lower(...).as_text()`.

    **Returns:** the set of precision names on `dot_general` ops ("DEFAULT" where none is given).
    """
    found: set[str] = set()
    for line in lowered_text.splitlines():
        if "dot_general" not in line:
            continue
        if "precision = [" in line:
            found.update(p.strip() for p in line.split("precision = [", 1)[1].split("]", 1)[0].split(","))
        else:
            found.add("DEFAULT")
    return found


__all__ = [
    "DEFAULT_PRECISION",
    "PRECISIONS",
    "REDUCED_PRECISION_TOLERANCE",
    "MatmulPrecision",
    "PrecisionError",
    "check_model_precision",
    "check_name",
    "check_precision",
    "dot_precisions",
    "matmul_precision",
    "relative_force_error",
]
