#!/usr/bin/env bash
# GPU check for one GPU. The default part (issue 28: data at scale) takes under 8 minutes with DALI installed:
#   driver / CUDA / DALI versions; the DALI GPU graph builds and runs 3 batches (read from tar shards);
#   the Pillow loader's batches the same with and without batch buffers (pinned on CUDA); the DALI and
#   Pillow loaders' images/s alone and beside a step-shaped GPU loop; the recompile count of
#   train.compile=true data.backend=dali (TORCH_LOGS=recompiles); model-bound training images/s of
#   t2t_vit_14 and t2t_vit_7 at batch 128 bf16, eager and compiled.
#   scripts/gpu_check.sh           the default part
#   scripts/gpu_check.sh --full    then every CUDA-only path of t2t (SIGTERM + resume in bf16/fp16/compile,
#                                  validate.py, DALI training, NCCL helpers, host-sync audit, learning, ...)
# PYTHON=... chooses the interpreter, T2T_CHECK_DIR=... the scratch space. T2T_CHECK_DEVICE=cpu runs the
# default part on the CPU with tiny sizes (to check this script itself; its figures mean nothing). Needs
# python3 with torch, torchvision, timm and pyyaml (DALI for its legs); downloads nothing. Prints a
# pass/fail table. Exits 0 at once on a machine without an NVIDIA GPU unless T2T_CHECK_DEVICE=cpu, and 2 on
# one whose GPU this torch cannot use (the driver is older than torch's CUDA needs).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
FULL=0
[ "${1:-}" = "--full" ] && FULL=1
DEVICE=${T2T_CHECK_DEVICE:-cuda}
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu_check: $PY cannot import torch; install the project first (pip install .), or set PYTHON=..." >&2
  exit 1
fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  # An NVIDIA GPU that this torch cannot use (a driver older than torch's CUDA, a CPU-only torch) is a failure.
  if ! "$PY" -c "
import sys
from t2t.engine.distributed import check_nvidia_gpu_usable
try:
    check_nvidia_gpu_usable()
except ValueError as e:
    sys.exit(f'gpu_check: {e}')"; then
    exit 2
  fi
  echo "gpu_check: no NVIDIA GPU here (no driver, torch.cuda.is_available() is False): nothing to check"
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
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

record() {  # record NAME STATUS DETAIL
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RESULTS"
  printf '[%4ds] %-34s %s  %s\n' $(($(date +%s) - START)) "$1" "$2" "$3"
}

check() {  # check NAME LOG COMMAND...: PASS with the log's last line, or FAIL naming the log
  local name=$1 log=$2; shift 2
  if "$@" > "$log" 2>&1; then
    record "$name" PASS "$(tail -1 "$log" | cut -c1-400)"
  else
    record "$name" FAIL "see $log"
  fi
}

# ---------------------------------------------------------------------------------------------------
# Data at scale (the default part)

if [ "$DEVICE" = cpu ]; then  # tiny sizes: the script and its Python parts run, nothing is measured
  PER_CLASS=16 BATCH=8 BATCHES=3 WORKERS=2 LAUNCHES=100 STEPS=4 IMG=64 COMPILED="" BENCH_BATCH=8
  BENCH=(--smoke --device cpu)
else
  PER_CLASS=1024 BATCH=128 BATCHES=20 WORKERS=8 LAUNCHES=1000 STEPS=60 IMG=224 COMPILED=--compile BENCH_BATCH=128
  BENCH=(--device cuda --amp bf16 --steps 20 --warmup 10)
fi
PHOTOS=$WORK/photos
SHARDS=$WORK/shards
check "versions" "$WORK/versions.log" "$PY" -m t2t.tools.gpu_check versions
[ "$DEVICE" = cuda ] && command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
check "photo-like JPEGs" "$WORK/photos.log" "$PY" -m t2t.tools.gpu_check photos "$PHOTOS" --per-class "$PER_CLASS"
check "make_shards.py" "$WORK/shards.log" "$PY" scripts/make_shards.py --data-dir "$PHOTOS" --output "$SHARDS" --shard-size 128
if "$PY" -c "import nvidia.dali" 2>/dev/null; then
  check "dali: GPU graph, 3 batches" "$WORK/dali-graph.log" \
    "$PY" -m t2t.tools.gpu_check dali-graph "$SHARDS" --device "$DEVICE" --batch-size "$BATCH"
  LOADERS=pil,dali
else
  record "dali" SKIP 'nvidia.dali not importable: pip install -e ".[dali]"'
  LOADERS=pil
fi
check "pil batch buffers: same, pinned" "$WORK/buffers.log" \
  "$PY" -m t2t.tools.gpu_check buffers "$SHARDS" --device "$DEVICE" --batch-size "$BATCH" --workers "$WORKERS"
check "loaders alone / beside a step loop" "$WORK/loaders.log" \
  "$PY" -m t2t.tools.gpu_check loaders "$SHARDS" --device "$DEVICE" --backends "$LOADERS" --batch-size "$BATCH" \
  --batches "$BATCHES" --workers "$WORKERS" --launches "$LAUNCHES"
if [ "$LOADERS" = pil,dali ]; then
  # torch.compile with DALI batches: every recompile after the first compile is logged; expect none.
  if TORCH_LOGS=recompiles "$PY" train.py -c configs/demo.yaml --data-dir "$SHARDS" --output "$WORK/run-recompiles" \
      data.backend=dali data.workers="$WORKERS" train.compile=true train.device="$DEVICE" train.batch_size="$BATCH" \
      model.img_size="$IMG" train.max_steps="$STEPS" train.log_interval=10 > "$WORK/recompiles.log" 2>&1; then
    record "recompiles: compile + dali" PASS "$(grep -c 'Recompiling function' "$WORK/recompiles.log") recompiles in $STEPS steps"
  else
    record "recompiles: compile + dali" FAIL "see $WORK/recompiles.log"
  fi
fi
for model in t2t_vit_14 t2t_vit_7; do
  for compiled in "" $COMPILED; do
    name="model-bound $model b$BENCH_BATCH bf16${compiled:+ compiled}"
    json=$WORK/bench-$model${compiled:+-compiled}.json
    if "$PY" scripts/benchmark.py -m $model --mode train --batch-size "$BENCH_BATCH" "${BENCH[@]}" $compiled --json "$json" \
        > "$json.log" 2>&1; then
      record "$name" PASS "$("$PY" -c "import json; r = json.load(open('$json')); print(f\"{r['images_per_sec']:.0f} img/s at batch {r['batch_size']}\")")"
    else
      record "$name" FAIL "see $json.log"
    fi
  done
done

if [ "$FULL" = 0 ] || [ "$DEVICE" = cpu ]; then
  echo
  echo "| check | result | detail |"
  echo "|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s |\n", $1, $2, $3}' "$RESULTS"
  FAILED=$(grep -c $'\tFAIL\t' "$RESULTS")
  echo
  echo "$(grep -c $'\tPASS\t' "$RESULTS") passed, $FAILED failed in $(($(date +%s) - START)) s (logs in $WORK)"
  [ "$FAILED" = 0 ]
  exit
fi

# ---------------------------------------------------------------------------------------------------
# --full: every CUDA-only path

"$PY" - <<'EOF'
import torch
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {p.name}, {p.total_memory / 2**30:.0f} GiB, "
      f"{torch.cuda.device_count()} device(s), bf16 {torch.cuda.is_bf16_supported()}")
EOF

if "$PY" -m t2t.tools.demo_data --out "$DATA" > "$WORK/make_data.log" 2>&1; then
  record make_demo_data PASS "$DATA"
else
  record make_demo_data FAIL "see $WORK/make_data.log"
fi

# train.py on the GPU, stopped by SIGTERM inside epoch 1, then continued with --resume auto.
train_with_sigterm() {  # NAME OVERRIDES...
  local name=$1; shift
  local out=$WORK/run-$name log=$WORK/$name.log
  local args=(-c demo --data-dir "$DATA" --output "$out" train.device=cuda train.epochs=3
              train.log_interval=2 checkpoint.every_steps=4 "$@")
  "$PY" -m t2t.train "${args[@]}" > "$log" 2>&1 &
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
  if "$PY" -m t2t.train "${args[@]}" --resume auto >> "$log" 2>&1; then
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
  if "$PY" -m t2t.validate --data-dir "$DATA" -m t2t_vit_7 --checkpoint "$CKPT" --img-size $size --amp bf16 \
      --device cuda --results-file "$WORK/val$size.json" > "$WORK/val$size.log" 2>&1; then
    record "validate.py at $size" PASS "$("$PY" -c "import json; r = json.load(open('$WORK/val$size.json')); print(f\"top1 {r['top1']:.2f} on {r['count']} images, {r['images_per_sec']:.0f} img/s\")")"
  else
    record "validate.py at $size" FAIL "see $WORK/val$size.log"
  fi
done

for mode in train infer; do
  if "$PY" -m t2t.benchmark -m t2t_vit_14 --mode $mode --batch-size 64 --device cuda --amp bf16 --steps 20 \
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
  PHOTOS=$WORK/photos-full
  # ImageNet-sized photo-like JPEGs (smooth colour fields, shapes, grain; 375-500 px a side, quality 90),
  # written here so that this leg depends on nothing but t2t.data.dali, .dataset and .sampler.
  if "$PY" - "$PHOTOS" > "$WORK/photos.log" 2>&1 <<'EOF'
import os, sys
import numpy as np
from PIL import Image, ImageDraw, ImageFilter
root = sys.argv[1]
for k, (split, count) in enumerate((("train", 1024), ("val", 64))):
    for j, c in enumerate(("a", "b")):
        os.makedirs(os.path.join(root, split, c), exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([10 * k + j, i])
            w, h = (int(v) for v in rng.integers(375, 501, size=2))
            coarse = np.uint8(np.clip(rng.normal(128.0, 50.0, size=(h // 24 + 2, w // 24 + 2, 3)), 0, 255))
            image = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
            draw = ImageDraw.Draw(image)
            for _ in range(int(rng.integers(4, 12))):
                x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
                rx, ry = (int(v) for v in rng.integers(8, 125, size=2))
                shape = draw.ellipse if rng.uniform() < 0.5 else draw.rectangle
                shape([x - rx, y - ry, x + rx, y + ry], fill=tuple(int(v) for v in rng.integers(0, 256, size=3)))
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
            pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 6.0, size=(h, w, 3))
            Image.fromarray(np.uint8(np.clip(pixels, 0, 255))).save(os.path.join(root, split, c, f"{i:05d}.jpg"),
                                                                    quality=90)
EOF
  then
    # Data only: training batches of 256 at 224 (RandAugment m9, random bilinear/bicubic) from one
    # process with 8 DALI threads and mixed decoding, images/s on the GPU (goal: 5,000).
    if "$PY" - "$PHOTOS/train" > "$WORK/dali-data.log" 2>&1 <<'EOF'
import sys, time, torch
from t2t.data.dali import DaliTrainLoader, SamplePlanner, parse_rand_policy
from t2t.data.dataset import ImageFolderDataset
from t2t.data.sampler import TrainSampler
dataset = ImageFolderDataset(sys.argv[1], seed=0)
planner = SamplePlanner(224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, interpolation="random",
                        policy=parse_rand_policy("rand-m9-mstd0.5-inc1"), color_jitter=0.4)
sampler = TrainSampler(len(dataset), seed=0)
loader = DaliTrainLoader(dataset, sampler, planner, batch_size=256, workers=8, device=torch.device("cuda", 0))
def epoch(e):
    dataset.set_epoch(e)
    sampler.set_epoch(e)
    return sum(batch.shape[0] for batch, _ in loader)
epoch(0)  # warm-up: pipeline build, nvJPEG and CUDA set-up
torch.cuda.synchronize()
start = time.perf_counter()
images = sum(epoch(e) for e in range(1, 4))
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
    if "$PY" -m t2t.train -c t2t_vit_14 --data-dir "$PHOTOS" --output "$WORK/run-dali-14" \
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
from t2t.engine import collectives, distributed

info = distributed.init_distributed("cuda", always_group=True)
assert info.backend == "nccl" and collectives.collective_device().type == "cuda", info
try:
    dist.all_reduce(torch.ones(2))
    raw = "accepted"
except Exception as e:  # what every collective on a CPU tensor did before the helpers owned their tensors
    raw = f"refused ({str(e).splitlines()[0][:60]})"
assert collectives.sum_over_ranks(1.5, 2) == [1.5, 2.0]
out = collectives.all_reduce_sum(torch.tensor([3.0, 4.0], dtype=torch.float64))
assert out.device.type == "cpu" and out.tolist() == [3.0, 4.0]
assert collectives.broadcast_object({"resume": "last.pth"}) == {"resume": "last.pth"}
print(f"helpers ok; a raw CPU tensor in NCCL: {raw}")
distributed.cleanup_distributed()
EOF
then
  record "collective helpers on NCCL" PASS "$(tail -1 "$WORK/nccl.log")"
else
  record "collective helpers on NCCL" FAIL "see $WORK/nccl.log"
fi

# ---------------------------------------------------------------------------------------------------
# What only a GPU reveals: host syncs in the step, learning, compiled throughput and memory slope,
# a 2-rank NCCL group killed and restarted. Each is one function; the table above collects them.

# Host-sync audit: N real training steps (the demo data through the loader with RandAugment, uint8
# batches normalised and randomly erased on the GPU, mixup + cutmix, bf16 autocast, soft-target loss,
# fused AdamW, the EMA) under torch.cuda.set_sync_debug_mode("error"): any host sync fails the check.
host_sync_audit() {
  if "$PY" - "$DATA" > "$WORK/sync.log" 2>&1 <<'PYEOF'
import os, sys
import torch
from timm.loss import SoftTargetCrossEntropy
import t2t  # noqa: F401
import timm
from t2t.config import OptimConfig, load_config
from t2t.data import setup as data_setup
from t2t.data.mixup import build_mixup
from t2t.rng import reseed_step
from t2t.engine.ema import CachedModelEma
from t2t.engine.optim import build_optimizer

device = torch.device(os.environ.get("T2T_CHECK_DEVICE", "cuda"))
steps = int(os.environ.get("T2T_SYNC_STEPS", "12"))
cfg = load_config(None, ["data.workers=2", "data.auto_augment=rand-m9-mstd0.5-inc1", "data.reprob=0.25",
                         "data.remode=pixel", "model.img_size=64", "train.seed=0", "train.batch_size=32",
                         "eval.batch_size=32"])
spec = data_setup.DataSpec.from_config(cfg, global_batch_size=32, eval_crop_pct=0.9, eval_interpolation="bicubic",
                                       device=device, normalize_on_device=True)
data = data_setup.build_train_and_val(spec, sys.argv[1])
assert data.feed.train_images is not None  # uint8 batches, normalised and erased on the device
model = timm.create_model("t2t_vit_7", img_size=64, num_classes=data.num_classes).to(device)
optimizer = build_optimizer(model, OptimConfig(), lr=1e-3, fused=device.type == "cuda")
mixup = build_mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1,
                    num_classes=data.num_classes)
ema, criterion = CachedModelEma(model, decay=0.999), SoftTargetCrossEntropy()
batches = iter(data.train_batches(0))
batch = [next(batches) for _ in range(steps + 1)]  # decoded before the audit: the loader is not audited
def step(i, images, target):
    reseed_step(0, i, 0)
    x, y = data.feed.train(images, target)
    x, y = mixup(x, y)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(model, step=i)
    return loss.detach()
step(0, *batch[0])  # first step outside the audit: lazy initialisation (cuBLAS handles, optimizer state)
if device.type == "cuda":
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
losses = [step(i, *batch[i]) for i in range(1, steps + 1)]
if device.type == "cuda":
    torch.cuda.set_sync_debug_mode("default")
print(f"{steps} steps without a host sync (RandAugment, erasing, mixup/cutmix, bf16, fused AdamW, EMA); "
      f"last loss {torch.stack(losses)[-1].item():.3f}")
PYEOF
  then
    record "host-sync audit of the step" PASS "$(tail -1 "$WORK/sync.log")"
  else
    record "host-sync audit of the step" FAIL "$(grep -m1 -E 'RuntimeError|Error' "$WORK/sync.log" | cut -c1-120); see $WORK/sync.log"
  fi
}

# Learning: the bf16 demo run above (3 epochs, stopped by SIGTERM and resumed) must end well above
# chance (at least twice 1 / classes).
learning_check() {
  local ckpt=$WORK/run-bf16/last.pth
  local verdict
  verdict=$("$PY" - "$ckpt" <<'PYEOF' 2>&1
import sys, torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
row = ckpt["train_state"]["history"][-1]
classes = len(ckpt["run"]["classes"])
chance = 100.0 / classes
top1 = max(row.get("val_top1", 0.0), row.get("ema_val_top1", 0.0))
print(f"{'PASS' if top1 >= 2 * chance else 'FAIL'} top-1 {top1:.1f}% after {len(ckpt['train_state']['history'])} "
      f"epochs, chance {chance:.0f}%")
PYEOF
)
  record "learning: demo, 3 epochs" "${verdict%% *}" "${verdict#* }"
}

# torch.compile'd training throughput at two batch sizes, and the memory slope between them (MiB per image).
compiled_throughput_and_memory() {
  local b
  for b in 32 64; do
    if ! "$PY" -m t2t.benchmark -m t2t_vit_14 --mode train --batch-size $b --device cuda --amp bf16 --compile \
        --steps 8 --warmup 4 --json "$WORK/compiled-$b.json" > "$WORK/compiled-$b.log" 2>&1; then
      record "compiled train t2t_vit_14 b$b" FAIL "see $WORK/compiled-$b.log"
      return
    fi
  done
  record "compiled train t2t_vit_14 b32/b64" PASS "$("$PY" - "$WORK" <<'PYEOF'
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/compiled-{n}.json")) for n in (32, 64))
slope = (b["peak_memory_mib"] - a["peak_memory_mib"]) / (b["batch_size"] - a["batch_size"])
print(f"{a['images_per_sec']:.0f} / {b['images_per_sec']:.0f} img/s, {a['aten_calls_per_step']} / "
      f"{b['aten_calls_per_step']} aten calls, memory {a['peak_memory_mib']:.0f} / {b['peak_memory_mib']:.0f} MiB: "
      f"{slope:.1f} MiB per image")
PYEOF
)"
}

# With 2+ GPUs: train.py on a 2-rank NCCL group under torchrun, one worker SIGKILLed after a checkpoint,
# the group restarted by torchrun and resumed from that checkpoint by itself.
nccl_two_ranks_kill_restart() {
  local gpus
  gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  if [ "$gpus" -lt 2 ]; then
    record "2-rank NCCL kill + restart" SKIP "$gpus GPU visible"
    return
  fi
  local out=$WORK/run-nccl log=$WORK/nccl-restart.log
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 --max-restarts=1 train.py -c demo \
    --data-dir "$DATA" --output "$out" train.device=cuda train.amp=bf16 train.epochs=2 train.log_interval=2 \
    checkpoint.every_steps=4 > "$log" 2>&1 &
  local agent=$! waited=0
  until ls "$out"/step-*.pth > /dev/null 2>&1; do
    if ! kill -0 "$agent" 2> /dev/null || [ $waited -gt 1200 ]; then break; fi
    sleep 0.25; waited=$((waited + 1))
  done
  local victim
  victim=$(pgrep -P "$agent" | head -n 1)
  [ -n "$victim" ] && kill -KILL "$victim"
  wait "$agent"; local code=$?
  if [ "$code" = 0 ] && grep -q "Resuming from" "$out/train.log"; then
    record "2-rank NCCL kill + restart" PASS "worker $victim killed; $(grep -o 'Resuming from [^ ]*' "$out/train.log" | tail -1 | xargs basename)"
  else
    record "2-rank NCCL kill + restart" FAIL "exit $code, see $log"
  fi
}

host_sync_audit
learning_check
compiled_throughput_and_memory
nccl_two_ranks_kill_restart

echo
echo "| check | result | detail |"
echo "|---|---|---|"
awk -F'\t' '{printf "| %s | %s | %s |\n", $1, $2, $3}' "$RESULTS"
FAILED=$(grep -c $'\tFAIL\t' "$RESULTS")
echo
echo "$(grep -c $'\tPASS\t' "$RESULTS") passed, $FAILED failed in $(($(date +%s) - START)) s (logs in $WORK)"
[ "$FAILED" = 0 ]
