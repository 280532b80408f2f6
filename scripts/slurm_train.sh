#!/bin/bash
# Multi-node training with SLURM: one process per node, each driving all of its GPUs.
#   sbatch --nodes=N scripts/slurm_train.sh configs/train_mdcath.yaml [extra train flags]
# jax.distributed.initialize auto-detects the coordinator, process count and index from SLURM
# (the trainer calls it when SLURM_NTASKS > 1); each process reads a disjoint share of every epoch.
#SBATCH --job-name=cameo-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch [--nodes=N] scripts/slurm_train.sh CONFIG.yaml [flags]}
shift || true
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PY=${PY:-.venv/bin/python}
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
echo "nodes: ${SLURM_JOB_NUM_NODES:-1}, tasks: ${SLURM_NTASKS:-1}, gpus/node: ${SLURM_GPUS_PER_NODE:-?}"
# --resume auto: a requeued or restarted job continues from the last valid checkpoint.
srun --kill-on-bad-exit=1 "$PY" cli.py train --config "$CONFIG" --resume auto "$@"
