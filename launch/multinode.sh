#!/usr/bin/env bash
# Launch one ffpipe job over several hosts: run this on every node (same arguments but NODE_RANK).
#   launch/multinode.sh NNODES NODE_RANK HOST:PORT NPROC_PER_NODE [hydra overrides...]
#   node 0: launch/multinode.sh 2 0 10.0.0.1:29500 4 parallel=pff_all_layers experiment=mnist10k
#   node 1: launch/multinode.sh 2 1 10.0.0.1:29500 4 parallel=pff_all_layers experiment=mnist10k
# torchrun's c10d rendezvous at HOST:PORT (served by the agent on HOST) gathers the agents; ranks
# are numbered node by node. On a shared filesystem export the same FFPIPE_RUN_STAMP on every node
# so all ranks write into one run directory (rank 0 writes summary.json, trace.json, gantt.png).
set -euo pipefail
NNODES=${1:?usage: launch/multinode.sh NNODES NODE_RANK HOST:PORT NPROC_PER_NODE [overrides...]}
NODE_RANK=${2:?node rank}
ENDPOINT=${3:?rendezvous HOST:PORT}
NPROC=${4:?processes per node}
shift 4
PY=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
exec "$PY" -m torch.distributed.run --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" \
  --rdzv-backend c10d --rdzv-endpoint "$ENDPOINT" --rdzv-id "${FFPIPE_RDZV_ID:-ffpipe}" \
  -m ffpipe.train "$@"
