#!/usr/bin/env bash
# Single- or multi-node DDP training with torchrun.
#
#   scripts/train_multigpu.sh NGPUS CONFIG [key=value ...] [--resume auto]
#       one node, NGPUS processes (one per GPU; on CPU: gloo processes)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 MASTER_PORT=29500 scripts/train_multigpu.sh 4 CONFIG ...
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=host0 MASTER_PORT=29500 scripts/train_multigpu.sh 4 CONFIG ...
#       two nodes x 4 GPUs: run the same command on each node with its NODE_RANK
#
# Every rank writes to one run directory: RUN_DIR (default runs/<config name>/<timestamp>),
# passed as run.dir. Batch sizes in the config are per process (per GPU); see README.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,13p' "$0"; exit 2
fi
NGPUS=$1; CONFIG=$2; shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RUN_DIR=${RUN_DIR:-runs/$(basename "${CONFIG%.*}")/$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ "$NNODES" -eq 1 ]; then
  RDZV=(--standalone)
else
  RDZV=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT")
fi
exec "$PYTHON" -m torch.distributed.run "${RDZV[@]}" --nproc_per_node="$NGPUS" -m uda train \
  --config "$CONFIG" trainer.devices="$NGPUS" trainer.num_nodes="$NNODES" trainer.strategy=ddp \
  run.dir="$RUN_DIR" "$@"
