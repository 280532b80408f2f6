#!/usr/bin/env bash
# Issue 15's GPU benchmark (bench_gpu.py) on a machine that cannot install anything: a lent GPU machine, whose
# image has jax with CUDA, equinox, optax, optimistix, jaxtyping, h5py, scipy, pyyaml, tqdm and matplotlib in
# its python3, but not e3nn-jax, matscipy (with ase), tyro or tensorboardX, and no network.
#
#   make device-wheels                                   # here, once: those packages' wheels into .whl/ (4 MB)
#   bash benchmarks/device_bench.sh [bench_gpu.py args]  # there, with .whl carried: install, check, benchmark
#   bash benchmarks/device_bench.sh --check              # only install and check the imports
#
# The wheels go to /tmp/site (PYTHONPATH), never into the image. Results: $OUT/gpu.json where $OUT is set
# (the device tool's folder that comes back), else benchmarks/results/gpu.json; the tables on stdout.
# PYTHON picks the interpreter (default python3), DEVICE_WHEELS_DIR the wheels' folder (default .whl).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

WHEELS=${DEVICE_WHEELS_DIR:-.whl}

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# every package cameo_eqx imports, before any long work: a missing one is named here, not in a traceback later
"$PY" - <<'EOF'
import importlib
import importlib.metadata as md
import sys

need = {"jax": "jax", "jaxlib": "jaxlib", "equinox": "equinox", "optax": "optax", "optimistix": "optimistix",
        "jaxtyping": "jaxtyping", "e3nn_jax": "e3nn-jax", "matscipy": "matscipy", "ase": "ase", "h5py": "h5py",
        "numpy": "numpy", "scipy": "scipy", "yaml": "pyyaml", "tqdm": "tqdm", "matplotlib": "matplotlib",
        "tyro": "tyro", "tensorboardX": "tensorboardX"}
missing = []
for mod, dist in need.items():
    try:
        importlib.import_module(mod)
    except ImportError:
        missing.append(dist)
if missing:
    sys.exit(f"device_bench: {sys.executable} lacks {', '.join(missing)}; run `make device-wheels` where pip "
             f"works and carry .whl")
print("device_bench:", ", ".join(f"{d} {md.version(d)}" for d in need.values()), flush=True)
import jax  # noqa: E402

print("device_bench: jax devices", jax.devices(), flush=True)
EOF

if [[ "${1:-}" == "--check" ]]; then
    exit 0
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
out=${OUT:-benchmarks/results}
exec "$PY" benchmarks/bench_gpu.py --out "$out/gpu.json" "$@"
