#!/usr/bin/env bash
# GPU acceptance check: every CUDA-only path of t2t in one command, under 8 minutes on one GPU.
#   scripts/gpu_check.sh            (PYTHON=... to choose the interpreter; T2T_CHECK_DIR=... for scratch space)
# Needs python3 with torch (CUDA), torchvision, timm and pyyaml; downloads nothing. Prints a pass/fail
# table, then the benchmark's images/s and MFU. Exits 0 at once on a machine without CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check"
  exit 0
fi
if ! "$PY" -c "import timm, torchvision, yaml" 2>/dev/null; then
  echo "gpu_check: this interpreter lacks timm, torchvision or pyyaml; install the project first (pip install -e .)" >&2
  exit 1
fi
WORK=${T2T_CHECK_DIR:-$(mktemp -d)}
mkdir -p "$WORK"
DATA=$WORK/data
RESULTS=$WORK/results.txt
: > "$RESULTS"
START=$(date +%s)
export PYTHONUNBUFFERED=1

record() {  # record NAME STATUS DETAIL
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RESULTS"
  printf '[%4ds] %-34s %s  %s\n' $(($(date +%s) - START)) "$1" "$2" "$3"
}

"$PY" - <<'EOF'
import torch
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {p.name}, {p.total_memory / 2**30:.0f} GiB, "
      f"{torch.cuda.device_count()} device(s), bf16 {torch.cuda.is_bf16_supported()}")
EOF

if "$PY" scripts/make_demo_data.py --out "$DATA" > "$WORK/make_data.log" 2>&1; then
  record make_demo_data PASS "$DATA"
else
  record make_demo_data FAIL "see $WORK/make_data.log"
fi

# train.py on the GPU, stopped by SIGTERM inside epoch 1, then continued with --resume auto.
train_with_sigterm() {  # NAME OVERRIDES...
  local name=$1; shift
  local out=$WORK/run-$name log=$WORK/$name.log
  local args=(-c configs/demo.yaml --data-dir "$DATA" --output "$out" train.device=cuda train.epochs=3
              train.log_interval=2 checkpoint.every_steps=4 "$@")
  "$PY" train.py "${args[@]}" > "$log" 2>&1 &
  local pid=$! waited=0
  until ls "$out"/step-*.pth > /dev/null 2>&1 && [ -f "$out/last.pth" ]; do  # inside epoch 1
    if ! kill -0 "$pid" 2> /dev/null || [ $waited -gt 1200 ]; then break; fi
    sleep 0.25; waited=$((waited + 1))
  done
  kill -TERM "$pid" 2> /dev/null
  wait "$pid"; local code=$?
  if [ "$code" != 75 ]; then
    record "train $name: SIGTERM -> exit 75" FAIL "exit $code, see $log"
    return
  fi
  record "train $name: SIGTERM -> exit 75" PASS "$(grep -o 'checkpoint saved at step [0-9]*' "$log" | tail -1)"
  if "$PY" train.py "${args[@]}" --resume auto >> "$log" 2>&1; then
    record "train $name: --resume auto" PASS "$(grep -o 'val top-1 [0-9.]*' "$log" | tail -1)"
  else
    record "train $name: --resume auto" FAIL "see $log"
  fi
}
train_with_sigterm bf16 train.amp=bf16
train_with_sigterm fp16 train.amp=fp16
train_with_sigterm compile train.amp=bf16 train.compile=true

CKPT=$WORK/run-bf16/last.pth
for size in 224 384; do
  if "$PY" validate.py --data-dir "$DATA" -m t2t_vit_7 --checkpoint "$CKPT" --img-size $size --amp bf16 \
      --device cuda --results-file "$WORK/val$size.json" > "$WORK/val$size.log" 2>&1; then
    record "validate.py at $size" PASS "$("$PY" -c "import json; r = json.load(open('$WORK/val$size.json')); print(f\"top1 {r['top1']:.2f} on {r['count']} images, {r['images_per_sec']:.0f} img/s\")")"
  else
    record "validate.py at $size" FAIL "see $WORK/val$size.log"
  fi
done

for mode in train infer; do
  if "$PY" scripts/benchmark.py -m t2t_vit_14 --mode $mode --batch-size 64 --device cuda --amp bf16 --steps 20 \
      --warmup 10 --json "$WORK/bench-$mode.json" > "$WORK/bench-$mode.log" 2>&1; then
    record "benchmark t2t_vit_14 $mode b64 bf16" PASS "$("$PY" -c "import json; r = json.load(open('$WORK/bench-$mode.json')); print(f\"{r['images_per_sec']:.0f} img/s, MFU {100 * r['mfu']:.1f}% of {r['matmul_peak_gflops_per_sec'] / 1000:.0f} TFLOP/s, peak memory {r['peak_memory_mib']:.0f} MiB\")")"
  else
    record "benchmark t2t_vit_14 $mode b64 bf16" FAIL "see $WORK/bench-$mode.log"
  fi
done

# data.backend=dali (needs the extra: pip install -e ".[dali]"): mixed (GPU) JPEG decoding and GPU augmentation.
# Nothing of it has run on a GPU before this check; its figures go to the README's DALI section.
if "$PY" -c "import nvidia.dali" 2>/dev/null; then
  train_with_sigterm dali train.amp=bf16 data.backend=dali
  PHOTOS=$WORK/photos
  if "$PY" - "$PHOTOS" > "$WORK/photos.log" 2>&1 <<'EOF'
import os, sys
from t2t.data.bench import make_benchmark_images
root = sys.argv[1]
for k, (split, count) in enumerate((("train", 1024), ("val", 64))):
    for j, c in enumerate(("a", "b")):  # ImageNet-sized photo-like JPEGs, 375-500 px a side
        make_benchmark_images(os.path.join(root, split, c), count, min_size=375, max_size=500, seed=10 * k + j)
EOF
  then
    # Data only: training batches of 256 at 224 (RandAugment m9) from one process, images/s on the GPU.
    if "$PY" - "$PHOTOS/train" > "$WORK/dali-data.log" 2>&1 <<'EOF'
import sys, time, torch
from t2t.data.bench import _augment_kwargs, _dali_loader
from t2t.data.dali import DaliTrainLoader
loader = _dali_loader(sys.argv[1], 224, _augment_kwargs("full", "rand-m9-mstd0.5-inc1"), batch_size=256, seed=0,
                      threads=8, count=2048)
loader = DaliTrainLoader(loader.dataset, loader.sampler, loader.planner, batch_size=256, workers=8,
                         device=torch.device("cuda", 0))
for batch, _ in loader:  # warm-up epoch
    pass
torch.cuda.synchronize()
start, images = time.perf_counter(), 0
for epoch in range(1, 4):
    loader.dataset.set_epoch(epoch)
    for batch, _ in loader:
        images += batch.shape[0]
torch.cuda.synchronize()
rate = images / (time.perf_counter() - start)
print(f"{rate:.0f} training images/s from one process (mixed decode, 8 threads, batch 256)")
EOF
    then
      record "dali: training batches, 1 GPU" PASS "$(tail -1 "$WORK/dali-data.log")"
    else
      record "dali: training batches, 1 GPU" FAIL "see $WORK/dali-data.log"
    fi
    # t2t_vit_14 at batch 128 bf16 fed by DALI: images/s and the data share of the step (goal: under 5%).
    if "$PY" train.py -c configs/t2t_vit_14.yaml --data-dir "$PHOTOS" --output "$WORK/run-dali-14" \
        data.backend=dali data.workers=8 train.batch_size=128 train.amp=bf16 train.device=cuda \
        train.max_steps=300 train.log_interval=50 > "$WORK/dali-14.log" 2>&1; then
      record "dali: t2t_vit_14 b128 bf16 300 steps" PASS "$(grep -o '[0-9.]* img/s  data [0-9]*%' "$WORK/dali-14.log" | tail -1)"
    else
      record "dali: t2t_vit_14 b128 bf16 300 steps" FAIL "see $WORK/dali-14.log"
    fi
  else
    record "dali: photo-like JPEGs" FAIL "see $WORK/photos.log"
  fi
else
  record "dali" SKIP 'nvidia.dali not importable: pip install -e ".[dali]"'
fi

# The collective helpers through a one-process NCCL group: a CPU tensor handed to NCCL directly fails,
# the helpers take numbers or CPU tensors and place them on the GPU themselves.
if MASTER_ADDR=127.0.0.1 MASTER_PORT=$((20000 + RANDOM % 20000)) RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 \
    "$PY" - > "$WORK/nccl.log" 2>&1 <<'EOF'
import torch
import torch.distributed as dist
from t2t.engine import distributed

info = distributed.init_distributed("cuda", always_group=True)
assert info.backend == "nccl" and distributed.collective_device().type == "cuda", info
try:
    dist.all_reduce(torch.ones(2))
    raw = "accepted"
except Exception as e:  # what every collective on a CPU tensor did before the helpers owned their tensors
    raw = f"refused ({str(e).splitlines()[0][:60]})"
assert distributed.sum_over_ranks(1.5, 2) == [1.5, 2.0]
out = distributed.all_reduce_sum(torch.tensor([3.0, 4.0], dtype=torch.float64))
assert out.device.type == "cpu" and out.tolist() == [3.0, 4.0]
assert distributed.broadcast_object({"resume": "last.pth"}) == {"resume": "last.pth"}
print(f"helpers ok; a raw CPU tensor in NCCL: {raw}")
distributed.cleanup_distributed()
EOF
then
  record "collective helpers on NCCL" PASS "$(tail -1 "$WORK/nccl.log")"
else
  record "collective helpers on NCCL" FAIL "see $WORK/nccl.log"
fi

echo
echo "| check | result | detail |"
echo "|---|---|---|"
awk -F'\t' '{printf "| %s | %s | %s |\n", $1, $2, $3}' "$RESULTS"
FAILED=$(grep -c $'\tFAIL\t' "$RESULTS")
echo
echo "$(grep -c $'\tPASS\t' "$RESULTS") passed, $FAILED failed in $(($(date +%s) - START)) s (logs in $WORK)"
[ "$FAILED" = 0 ]
