#!/usr/bin/env bash
# Train on N processes of this machine (one per GPU):
#   scripts/distributed_train.sh 8 -c t2t_vit_14 --data-dir /data/imagenet [key=value ...]
# A worker that dies is restarted up to T2T_MAX_RESTARTS times (default 3); the restarted
# group resumes from the newest checkpoint in --output by itself.
# T2T_NUMA_BINDING=node (or socket, exclusive, core-complex) binds each worker and its loader
# processes to the CPUs near its GPU (torchrun --numa-binding; needs numactl and a torchrun that
# has the option). DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NUM_PROCESSES t2t-train-arguments..." >&2
  exit 2
fi
NPROC=$1
shift
PY=${PYTHON:-python}
# t2t from the checkout this script is in, ahead of an installed copy.
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
# NCCL: a collective that times out (dist.timeout_minutes) ends the process, so torchrun restarts
# the group instead of every GPU idling; the monitor also ends a process whose watchdog is stuck, and
# each rank dumps its last collectives (flight recorder) to show which rank was missing.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-3}
export TORCH_NCCL_ENABLE_MONITORING=${TORCH_NCCL_ENABLE_MONITORING:-1}
export TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=${TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC:-600}
export TORCH_NCCL_TRACE_BUFFER_SIZE=${TORCH_NCCL_TRACE_BUFFER_SIZE:-2000}
export TORCH_NCCL_DUMP_ON_TIMEOUT=${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}

NUMA_ARGS=()
if [ -n "${T2T_NUMA_BINDING:-}" ]; then
  case "$T2T_NUMA_BINDING" in
    node|socket|exclusive|core-complex) ;;
    *) echo "T2T_NUMA_BINDING=$T2T_NUMA_BINDING: expected node, socket, exclusive or core-complex" >&2; exit 2 ;;
  esac
  NUMA_ARGS=(--numa-binding="$T2T_NUMA_BINDING")
  if [ "${DRY_RUN:-0}" != 1 ]; then
    if ! "$PY" -m torch.distributed.run --help 2>/dev/null | grep -q -- "--numa-binding"; then
      echo "T2T_NUMA_BINDING=$T2T_NUMA_BINDING: this torch's torchrun has no --numa-binding option; upgrade torch or unset it" >&2
      exit 2
    fi
    if ! command -v numactl >/dev/null; then
      echo "T2T_NUMA_BINDING=$T2T_NUMA_BINDING: torchrun's NUMA binding needs the numactl command, which is not installed" >&2
      exit 2
    fi
  fi
fi

CMD=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC"
     --max-restarts="${T2T_MAX_RESTARTS:-3}" ${NUMA_ARGS[@]+"${NUMA_ARGS[@]}"} -m t2t.train "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
  env | grep -E '^TORCH_(NCCL|ELASTIC)_' | sort
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
exec "${CMD[@]}"
