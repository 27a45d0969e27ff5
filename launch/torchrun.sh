#!/usr/bin/env bash
# Launch ffpipe on one host with torchrun: one rank per GPU (NCCL), or CPU processes (gloo).
#   launch/torchrun.sh NPROC [hydra overrides...]
#   launch/torchrun.sh 2 parallel=pff_all_layers experiment=mnist10k
# All ranks share one run directory (the stamp is fixed here). More ranks than GPUs share the GPUs
# through gloo. Several hosts: launch/multinode.sh; SLURM: launch/slurm.sbatch.
set -euo pipefail
NPROC=${1:?usage: launch/torchrun.sh NPROC [overrides...]}
shift
export FFPIPE_RUN_STAMP=${FFPIPE_RUN_STAMP:-$(date +%Y-%m-%d/%H-%M-%S)}
PY=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
exec "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m ffpipe.train "$@"
