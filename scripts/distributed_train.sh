#!/usr/bin/env bash
# Train on N processes of this machine (one per GPU):
#   scripts/distributed_train.sh 8 -c configs/t2t_vit_14.yaml --data-dir /data/imagenet [key=value ...]
# A worker that dies is restarted up to T2T_MAX_RESTARTS times (default 3); the restarted
# group resumes from the newest checkpoint in --output by itself.
set -euo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NUM_PROCESSES train.py-arguments..." >&2
  exit 2
fi
NPROC=$1
shift
HERE="$(cd "$(dirname "$0")/.." && pwd)"
exec "${PYTHON:-python}" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
  --max-restarts="${T2T_MAX_RESTARTS:-3}" "$HERE/train.py" "$@"
