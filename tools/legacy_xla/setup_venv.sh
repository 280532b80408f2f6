#!/usr/bin/env bash
# Creates (idempotently) the virtualenv that emulates the chemtrain-deploy connector's XLA generation:
# jax/jaxlib 0.4.35 (XLA 76da730, StableHLO 1.7.x), the version the connector was built on.
# Usage: tools/legacy_xla/setup_venv.sh [VENV_DIR]   (default: .venv-xla0435 in the project root)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$ROOT/.venv-xla0435}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.installed-stamp"
if [ -f "$STAMP" ]; then
  echo "legacy XLA venv ready: $VENV"; exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "jax==0.4.35" "jaxlib==0.4.35" "numpy<2.1"
"$VENV/bin/python" -c "import jax, jaxlib; assert jax.__version__ == '0.4.35', jax.__version__; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__)"
touch "$STAMP"
echo "legacy XLA venv ready: $VENV"
