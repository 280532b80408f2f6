#!/bin/bash
# Scaling sweep on a SLURM cluster: training-step throughput over nodes x GPUs per node, strong and weak
# modes, then the Amdahl / Gustafson fits and the plot (benchmarks/bench_scaling.py).
#   sbatch --nodes=4 --gpus-per-node=4 scripts/scaling_sweep.sh OUT_DIR [bench_scaling.py run flags]
# Inside one allocation of the largest size, for every NODES in $NODES_LIST and G in $GPUS_LIST it runs one
# job step with one process per node (as scripts/slurm_train.sh does; jax.distributed picks up the
# coordinator, process count and index from SLURM when there is more than one task), each process using
# its first G GPUs; process 0 writes OUT_DIR/n<NODES>_g<G>/scaling_<mode>_n<N>_p<NODES>.json.
# Then it merges them:  python benchmarks/bench_scaling.py analyze OUT_DIR  (rerun that by hand any time,
# e.g. after adding runs from another allocation) -> OUT_DIR/scaling.json and OUT_DIR/scaling.png.
#   NODES_LIST="1 2 4" GPUS_LIST="1 2 4" (defaults: powers of two up to the allocation)
#   NODES_PER_DEVICE=4096: beads per GPU per step in weak mode; the strong mode's global batch is
#   NODES_PER_DEVICE x the largest device count, so the largest run has NODES_PER_DEVICE beads per GPU.
#   Model: the flags, e.g. --preset default --hp n_features=64 n_layers=3 (default: PaiNN small 16x2).
#SBATCH --job-name=cameo-scaling
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=02:00:00
#SBATCH --output=slurm-scaling-%j.out
set -euo pipefail
OUT=${1:?usage: sbatch [--nodes=N --gpus-per-node=G] scripts/scaling_sweep.sh OUT_DIR [bench_scaling.py run flags]}
shift || true
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PY=${PY:-.venv/bin/python}
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
MAX_NODES=${SLURM_JOB_NUM_NODES:-1}
GPN=${SLURM_GPUS_PER_NODE:-4}
GPN=${GPN##*:}  # "h100:4" -> 4
pow2() { local n=1 out=""; while [ "$n" -le "$1" ]; do out="$out $n"; n=$((n * 2)); done; echo "$out"; }
NODES_LIST=${NODES_LIST:-$(pow2 "$MAX_NODES")}
GPUS_LIST=${GPUS_LIST:-$(pow2 "$GPN")}
NODES_PER_DEVICE=${NODES_PER_DEVICE:-4096}
max_nodes=0; max_gpus=0
for n in $NODES_LIST; do [ "$n" -gt "$max_nodes" ] && max_nodes=$n; done
for g in $GPUS_LIST; do [ "$g" -gt "$max_gpus" ] && max_gpus=$g; done
if [ "$max_nodes" -gt "$MAX_NODES" ] || [ "$max_gpus" -gt "$GPN" ]; then
  echo "NODES_LIST/GPUS_LIST ask for $max_nodes nodes x $max_gpus GPUs; the allocation has $MAX_NODES x $GPN" >&2
  exit 2
fi
GLOBAL_NODES=$((NODES_PER_DEVICE * max_nodes * max_gpus))
mkdir -p "$OUT"
echo "scaling sweep: nodes {$NODES_LIST} x GPUs/node {$GPUS_LIST}, $NODES_PER_DEVICE beads/GPU (weak), $GLOBAL_NODES beads/step (strong)"
for n in $NODES_LIST; do
  for g in $GPUS_LIST; do
    echo "== $n node(s) x $g GPU(s)"
    srun --nodes="$n" --ntasks="$n" --ntasks-per-node=1 --gpus-per-node="$GPN" --kill-on-bad-exit=1 \
      "$PY" benchmarks/bench_scaling.py run --local-devices "$g" --out-dir "$OUT/n${n}_g${g}" \
      --nodes-per-device "$NODES_PER_DEVICE" --global-nodes "$GLOBAL_NODES" "$@"
  done
done
"$PY" benchmarks/bench_scaling.py analyze "$OUT"
