#!/usr/bin/env bash
# Creates (idempotently) the two benchmark-only virtualenvs of the PyTorch reference implementations:
#   .venv-bench-mace     torch 2.13.0 (local CPU wheel) + mace-torch  (pins e3nn 0.4.4)
#   .venv-bench-allegro  torch 2.13.0 (local CPU wheel) + nequip + nequip-allegro (need e3nn >= 0.5)
# Two venvs because mace-torch's e3nn pin and current nequip's e3nn requirement cannot coexist (one venv
# would resolve to the old nequip 0.6.2 / nequip-allegro 0.3.0).
# Usage: benchmarks/reference/setup_venvs.sh [mace|allegro|all]   (default: all; venvs in the project root)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHICH="${1:-all}"

make_venv() {  # name, pip requirements..., then a python check line via $CHECK
  local name="$1"; shift
  local venv="$ROOT/.venv-bench-$name"
  local stamp="$venv/.installed-stamp"
  if [ -f "$stamp" ]; then echo "reference venv ready: $venv"; return 0; fi
  test -x "$venv/bin/python" || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "torch==2.13.0" "$@"
  "$venv/bin/python" -c "$CHECK"
  touch "$stamp"
  echo "reference venv ready: $venv"
}

if [ "$WHICH" = all ] || [ "$WHICH" = mace ]; then
  CHECK='import torch, e3nn, mace; from importlib.metadata import version as v; print("torch", torch.__version__, "mace-torch", v("mace-torch"), "e3nn", e3nn.__version__)'
  make_venv mace "mace-torch"
fi
if [ "$WHICH" = all ] || [ "$WHICH" = allegro ]; then
  CHECK='import torch, e3nn, nequip, allegro; from importlib.metadata import version as v; print("torch", torch.__version__, "nequip", v("nequip"), "nequip-allegro", v("nequip-allegro"), "e3nn", e3nn.__version__)'
  make_venv allegro "nequip" "nequip-allegro"
fi
