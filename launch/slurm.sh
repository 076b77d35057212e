#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, all of its GPUs.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm.sh configs/vit_b32.py /shared/runs/vit_b32 [--config.X=Y ...]
#
# jax.distributed.initialize() finds the coordinator, process count and id
# from SLURM's environment (clip_jax.main does this when SLURM_NTASKS > 1).
# The run resumes by itself from WORKDIR's newest checkpoint when requeued;
# SLURM's SIGTERM before preemption triggers a checkpoint.
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail
config=${1:?usage: launch/slurm.sh CONFIG WORKDIR [FLAGS...]}
workdir=${2:?usage: launch/slurm.sh CONFIG WORKDIR [FLAGS...]}
shift 2
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
srun --kill-on-bad-exit=1 python -m clip_jax.main --config="$config" --workdir="$workdir" "$@"
