#!/usr/bin/env bash
# Launch ffpipe on one host with torchrun: one rank per GPU (or CPU process with gloo).
#   launch/torchrun.sh NPROC [hydra overrides...]
#   launch/torchrun.sh 1 experiment=mnist10k
# All ranks share one run directory: the stamp is fixed here (multi-node jobs on a shared
# filesystem should export the same FFPIPE_RUN_STAMP on every node, plus torchrun's --rdzv-* flags).
set -euo pipefail
NPROC=${1:?usage: launch/torchrun.sh NPROC [overrides...]}
shift
export FFPIPE_RUN_STAMP=${FFPIPE_RUN_STAMP:-$(date +%Y-%m-%d/%H-%M-%S)}
PY=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
exec "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m ffpipe.train "$@"
