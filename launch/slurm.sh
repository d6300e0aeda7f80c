#!/usr/bin/env bash
# Multi-node GPU training under SLURM: srun starts one process per GPU, each seeing its own GPU.
#
#   sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=8 launch/slurm.sh \
#       --config=configs/stage3.py:1b --workdir=/shared/runs/run1
#   (or, inside an allocation: launch/slurm.sh --config=... --workdir=...)
#
# JAX reads the SLURM environment in jax.distributed.initialize() (launch/distributed.py detects the
# job), so every process joins one global mesh. Arguments go to `python -m launch.train` as given
# ("$@", never re-parsed by a shell), so a config value or a path cannot inject shell code.
# Environment: PYTHON (default python), SRUN (default srun), GPUS_PER_NODE (default: from SLURM, or 8).
#SBATCH --job-name=omnihuman-jax
#SBATCH --exclusive
set -euo pipefail

[[ $# -ge 1 ]] || {
  echo "usage: $0 --config=configs/stage3.py:PRESET --workdir=DIR [--config.KEY=VALUE ...]" >&2
  exit 2
}

gpus_per_node=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
exec "${SRUN:-srun}" --ntasks-per-node="$gpus_per_node" --gpus-per-task=1 --kill-on-bad-exit=1 \
  "${PYTHON:-python}" -m launch.train "$@"
