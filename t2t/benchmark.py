#!/usr/bin/env python3
"""Throughput, memory, FLOPs and MFU of a T2T-ViT training or inference step, or of the data pipeline.

    python scripts/benchmark.py -m t2t_vit_14 --mode infer --batch-size 16 --steps 20
    python scripts/benchmark.py -m t2t_vit_14 --mode train --amp bf16 --device cuda --json out.json
    python scripts/benchmark.py --mode data --data-dir /data/imagenet
    python scripts/benchmark.py -m t2t_vit_14 --mode train --compare plain,official,backend --rounds 3
    python scripts/benchmark.py -m t2t_vit_14 --mode train --img-sizes 160 224 --rounds 3

Modes: `infer` times a forward pass under torch.inference_mode; `train` times the real training
step on a synthetic uint8 batch (make_train_step): normalisation and random erasing on the device,
mixup/cutmix, autocast forward + soft-target cross-entropy, backward, the project's AdamW
(t2t.engine.optim.build_optimizer, with its no-decay groups, fused on CUDA) stepped through a
GradScaler (active for fp16 only) and the model EMA update; it also counts the aten operations one
step dispatches (`aten_calls_per_step`, count_aten_calls); `data` runs t2t.tools.data_bench.run_data_benchmark: our training input pipeline against
timm's stock one on the same files, images/s on one core each, and the ratio.

Timing: `--warmup` untimed steps, then `--steps` timed ones (CUDA synchronised around each); the
median step gives images/s, the fastest and slowest steps the spread. On the CPU the warm-up goes on,
up to `--max-warmup` steps in all, until three steps in a row make few page faults (see warm_up): the
first training steps grow the heap and are slower than the thousands after them. `warmup_steps` says how many
ran, `page_faults_per_step` how many faults the timed steps still made. FLOPs are counted the paper's
way (t2t.count_macs: every matmul and attention product; 1 MAC = 2 FLOPs); a training step counts as
3 forward passes. MFU divides the achieved FLOP/s by a matrix-multiply peak measured in the same run,
on the same device and in the same dtype (fp32, with TF32 on CUDA as in training, or the --amp dtype):
right after each timed step, three square matmuls of --peak-size are timed, and the peak is the median
of all of them. Spreading the peak's samples through the run matters on a shared machine, whose speed
drifts by 10-20% within a minute: a peak taken once, before or after, moves the MFU by as much. MFU is
the median step's FLOP/s over that peak; the fastest and slowest steps over the same peak give its
spread. It is relative to what this device reaches in this run, not to a datasheet figure.
On the CPU in float32 a second peak is sampled the same way with oneDNN's inner product (prepacked
weights), the library under torch's CPU convolutions, which the T2T module uses; it can beat torch.mm
(MKL) by a wide margin on some CPUs. `mfu` keeps the torch.mm peak; `mfu_best_peak` divides by the
better of the two, the stricter figure.
`--img-sizes 160 224` times the step at each size on one model built at the largest, a smaller size
with the position table resampled as train.img_sizes trains (progressive resolution), in alternating
rounds as `--compare` does; it prints each smaller size's images/s and its ratio to the largest's.
`--cpu-backend on` times the model converted by t2t.models.cpu.accelerate (float32 CPU only).
`--compare plain,official,backend` times those variants side by side in one process on the same
weights: each warmed up as above, then --rounds rounds in which every variant runs --steps timed steps
in turn, so a shared machine's drift hits them alike. Each round gives a median images/s per variant
and its ratio to the first variant's in the same round; the table shows every round, the median rate
over rounds, and the median of the per-round ratios with their range (the figure to read on a
machine whose speed moves between rounds). The best round of each variant and the ratio of the bests
are given too: where other jobs take the cores for seconds at a time, each variant's fastest round is
the nearest thing to its speed on a quiet machine. `--cpu-time --threads 1` times each step in the
process's CPU seconds instead: one thread's CPU time is the step's cost whatever else runs on the
cores (up to cache sharing), so images per CPU second compare the variants on a busy machine; with
more threads, time spent spinning at OpenMP barriers while a sibling thread waits for a core would count. `official` is the official
model code (t2t/tools/official_t2t.py), `backend` the plain model after accelerate.
Peak memory is torch.cuda.max_memory_allocated on CUDA; on the CPU it is the process's peak RSS
(getrusage; includes the ~1 GB of the torch import); both include the matmul operands (3 x 64 MiB
for 4096 x 4096 fp32 on CUDA, 3 x 16 MiB for 2048 on the CPU).
CPU threads: all cores available to the process (os.sched_getaffinity) unless --threads says
otherwise, set with torch.set_num_threads; pass --threads to compare runs on a shared machine.
CPU memory: as in train.py and validate.py, freed memory stays in the process and large tensors
go on transparent huge pages (t2t/runtime.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Sequence

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch's first large allocation; t2t/runtime.py

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import t2t  # registers the models
from .cli import ArgumentParser, run_main
from .config import ConfigError, OptimConfig
from .engine.collectives import unwrap_model
from .engine.distributed import init_distributed
from .inference import check_batch_fits, check_model_name
from .engine.distill import DistillationLoss
from .engine.precision import amp_context, amp_dtype
from .engine.optim import build_optimizer
from .models import cpu
from .models.factory import create_model, named_model_config
from .models.positions import PositionTables
from .outputs import check_output_file, write_text
from .runtime import keep_freed_memory

# Problems with the arguments or the data folder: one line on stderr, exit status 2, nothing written.

# Defaults for the flags left unset; --smoke swaps in the tiny ones (explicit flags still win).
DEFAULTS = dict(batch_size=16, img_size=224, steps=20, warmup=5, max_warmup=30, peak_size=None, num_images=200)
SMOKE = dict(batch_size=2, img_size=32, steps=2, warmup=1, max_warmup=1, peak_size=128, num_images=8)
# The CPU warm-up ends after SETTLED_STEPS steps in a row each made fewer page faults than this
# (1 MiB of 4 KiB pages); one quiet step alone can be followed by faulting ones.
SETTLED_PAGE_FAULTS = 256
SETTLED_STEPS = 3


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def page_faults() -> int:
    """Page faults of this process so far (minor + major, getrusage)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def warm_up(step: Callable[[], None], device: torch.device, warmup: int, max_warmup: int,
            probe: Callable[[], Any] | None = None) -> int:
    """Run `warmup` untimed steps, each followed by `probe` as the timed ones will be (its allocations
    shape the heap too); on the CPU, go on (up to `max_warmup` steps in all) until the last
    SETTLED_STEPS steps each page-faulted fewer than SETTLED_PAGE_FAULTS times. Returns the number of
    steps run.

    A CPU training step allocates activations of many sizes, and the C library's heap takes several
    steps to hold a free block for each of them (t2t_vit_14, batch 16: ~90 000 faults in the first
    step, 1 000-5 000 in most of the next nine, then none but an occasional ~500; the faulting steps
    run 5-20% slower).
    A long run spends nearly all its steps in that settled state, so that is what gets timed.
    """
    done = quiet = 0  # steps run; of them, the last ones in a row under the threshold
    while done < warmup or (device.type == "cpu" and done < max_warmup and quiet < SETTLED_STEPS):
        before = page_faults()
        step()
        if probe is not None:
            probe()
        quiet = quiet + 1 if page_faults() - before < SETTLED_PAGE_FAULTS else 0
        done += 1
    _sync(device)
    return done


def time_steps(step: Callable[[], None], device: torch.device, steps: int,
               probe: Callable[[], Any] | None = None,
               clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[Any]]:
    """Seconds per call of `step` for `steps` calls (on `clock`), and what `probe` returned right after
    each call (empty without a probe)."""
    _sync(device)
    times, probes = [], []
    for _ in range(steps):
        start = clock()
        step()
        _sync(device)
        times.append(clock() - start)
        if probe is not None:
            probes.append(probe())
    return times, probes


def _gflops_probe(matmul: Callable[[], Any], device: torch.device, size: int, repeats: int) -> Callable[[], float]:
    """A function returning the median GFLOP/s of `repeats` calls of a size x size `matmul`
    (2 * size^3 FLOPs each), after two warm-up calls now; each probe synchronises before it times."""
    for _ in range(2):
        matmul()

    def probe() -> float:
        times, _ = time_steps(matmul, device, steps=repeats)
        return 2 * size ** 3 / statistics.median(times) / 1e9
    return probe


def matmul_probe(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 3) -> Callable[[], float]:
    """A function returning the median GFLOP/s of `repeats` size x size torch.mm calls."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    return _gflops_probe(lambda: torch.mm(a, b, out=out), device, size, repeats)


def onednn_matmul_probe(size: int, repeats: int = 3) -> Callable[[], float] | None:
    """Like matmul_probe, for oneDNN's float32 inner product on the CPU (prepacked weights), or None
    where torch has no oneDNN. torch.mm runs on MKL; oneDNN, which torch's CPU convolutions use, is
    faster on some CPUs (~1.25x on this project's AMD EPYC), so the best of the two is the honest peak."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        a = torch.randn(size, size)
        weight = torch.ops.mkldnn._reorder_linear_weight(torch.randn(size, size), size)
        matmul = lambda: torch.ops.mkldnn._linear_pointwise(a, weight, None, "none", [], "")  # noqa: E731
        return _gflops_probe(matmul, torch.device("cpu"), size, repeats)
    except (AttributeError, RuntimeError):  # a torch without these ops
        return None


def make_step(model: nn.Module, mode: str, batch_size: int, img_size: int, device: torch.device,
              amp: str, teacher: nn.Module | None = None,
              positions: Callable[[], contextlib.AbstractContextManager] | None = None) -> Callable[[], None]:
    """One inference forward, or one real training step: forward + loss + backward + AdamW step.

    With a `teacher` the training step is a distillation step (DeiT hard, alpha 0.5): the frozen
    teacher runs on the same batch inside the loss, as in train.py. `positions()` is entered around the
    forward (and backward), as the Trainer enters PositionTables.at for a size other than the model's.
    """
    if mode != "infer":
        return make_train_step(model, batch_size, img_size, device, amp, teacher=teacher, positions=positions)
    amp_dtype(amp)  # an unknown precision is refused here, before the first step
    images = torch.randn(batch_size, 3, img_size, img_size, device=device)
    autocast = lambda: amp_context(device, amp)  # noqa: E731
    model.eval()

    @torch.inference_mode()
    def step() -> None:
        with autocast(), positions() if positions is not None else contextlib.nullcontext():
            model(images)
    return step


# ---------------------------------------------------------------------------------------------------
# Train mode: the step the training loop runs, and the aten operations it dispatches

def make_train_step(model: nn.Module, batch_size: int, img_size: int, device: torch.device,
                    amp: str, teacher: nn.Module | None = None,
                    positions: Callable[[], contextlib.AbstractContextManager] | None = None) -> Callable[[], None]:
    """One real training step on a synthetic uint8 batch, as t2t/engine/train_loop.py runs it.

    Per-step reseeding, uint8 images to the device, normalisation and random erasing there
    (BatchNormalizeErase, the recipe's 0.25 pixel mode), mixup/cutmix (0.8 / 1.0, label smoothing
    0.1), autocast forward, soft-target cross-entropy, backward, AdamW (fused on CUDA, with the
    recipe's no-decay groups) through a GradScaler (active for fp16 only), the model EMA update.
    """
    from timm.loss import SoftTargetCrossEntropy

    from .data.mixup import build_mixup
    from .rng import reseed_step
    from .data.transforms import BatchNormalizeErase
    from .engine.collectives import unwrap_model
    from .engine.ema import CachedModelEma

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, img_size, img_size), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, model.num_classes, (batch_size,), generator=generator)
    if device.type == "cuda":
        images, targets = images.pin_memory(), targets.pin_memory()
    on_device = BatchNormalizeErase(re_prob=0.25, re_mode="pixel", device=device)
    mixup = build_mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=model.num_classes) \
        if batch_size % 2 == 0 else None  # timm's Mixup needs an even batch
    criterion = DistillationLoss(SoftTargetCrossEntropy(), teacher, kind="hard" if teacher is not None else "none",
                                 alpha=0.5)
    model.train()
    optimizer = build_optimizer(model, OptimConfig(), lr=OptimConfig().lr, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    ema = CachedModelEma(unwrap_model(model), decay=0.99996)
    counter = [0]

    def step() -> None:
        counter[0] += 1
        reseed_step(0, counter[0], 0)
        x = on_device(images)
        y = targets.to(device, non_blocking=True)
        if mixup is not None:
            x, y = mixup(x, y)
        else:
            y = F.one_hot(y, model.num_classes).float()
        with positions() if positions is not None else contextlib.nullcontext():
            with amp_context(device, amp):
                loss = criterion(model(x), y, x)
            scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model, step=counter[0])
    return step


def count_aten_calls(step: Callable[[], None]) -> dict[str, int]:
    """The aten operations one call of `step` dispatches (forward, backward, optimizer, EMA, augmentation).

    Counted below autograd, at the Python dispatch level (TorchDispatchMode): each kernel-level
    operation once, a fused or foreach operation as one. About the number of kernel launches on
    CUDA, plus views and other operations that launch nothing.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: dict[str, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            self.calls[name] = self.calls.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    with Counter() as counter:
        step()
    return counter.calls


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(MiB, what was measured)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "CPU peak RSS of the process (getrusage)"


def benchmark_model(args: argparse.Namespace) -> dict[str, Any]:
    device = init_distributed(args.device).device
    # A training step holds the activations for backward: many times the forward's working set.
    check_batch_fits(args.batch_size, args.img_size, device, copies=8 if args.mode == "train" else 1)
    dtype = amp_dtype(args.amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = create_model(named_model_config(args.model, args.img_size)).to(device)
    params, trainable = t2t.count_params(model)
    forward_gflops = 2 * t2t.count_macs(model, args.img_size) / 1e9
    backend = cpu.apply_backend(model, args.cpu_backend == "on", device, args.amp)
    step_gflops = forward_gflops * (3 if args.mode == "train" else 1)
    if args.compile:
        model = torch.compile(model)
    peak_size = args.peak_size or (4096 if device.type == "cuda" else 2048)
    probe = matmul_probe(device, dtype, peak_size)
    onednn_probe = onednn_matmul_probe(peak_size) if device.type == "cpu" and dtype == torch.float32 else None
    teacher = None
    if args.teacher_model:  # random weights: only its cost is measured
        img_size = args.img_size if args.teacher_model.startswith("t2t_vit") else None  # any timm model
        teacher = create_model(named_model_config(args.teacher_model, allow_any_timm_model=True), model.num_classes,
                               img_size=img_size, drop_rate=None, drop_path_rate=None)
        teacher = teacher.to(device).eval().requires_grad_(False)
    step = make_step(model, args.mode, args.batch_size, args.img_size, device, args.amp, teacher=teacher)
    probes = lambda: (probe(), onednn_probe() if onednn_probe else None)  # noqa: E731
    warmup_steps = warm_up(step, device, args.warmup, args.max_warmup, probes)
    aten = count_aten_calls(step) if args.mode == "train" else None
    faults = page_faults()
    times, samples = time_steps(step, device, args.steps, probes)
    faults = page_faults() - faults
    memory, memory_kind = peak_memory(device)
    median = statistics.median(times)
    teacher_ms = None
    if teacher is not None:  # the teacher's forward alone on the same batch, for its share of the step
        teacher_step = make_step(teacher, "infer", args.batch_size, args.img_size, device, args.amp)
        teacher_times, _ = time_steps(teacher_step, device, args.steps, probes)
        teacher_ms = 1e3 * statistics.median(teacher_times)
    images_per_sec = args.batch_size / median
    slowest, fastest = args.batch_size / max(times), args.batch_size / min(times)  # images/s
    achieved = step_gflops * images_per_sec
    peaks = [s[0] for s in samples]
    peak = statistics.median(peaks)
    onednn = statistics.median(s[1] for s in samples) if onednn_probe else None
    best = max(peak, onednn or 0.0)
    return {
        "model": args.model, "mode": args.mode, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "compile": args.compile, "cpu_backend": backend, "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "img_size": args.img_size, "warmup_steps": warmup_steps, "steps": args.steps,
        "page_faults_per_step": faults / args.steps,
        "aten_calls_per_step": sum(aten.values()) if aten is not None else None,
        "aten_calls_top": sorted(aten.items(), key=lambda kv: -kv[1])[:8] if aten is not None else None,
        "images_per_sec": images_per_sec,
        "images_per_sec_min": slowest, "images_per_sec_max": fastest,
        "step_ms_median": 1e3 * median, "step_ms_min": 1e3 * min(times), "step_ms_max": 1e3 * max(times),
        "peak_memory_mib": memory, "peak_memory_kind": memory_kind,
        "params": params, "params_trainable": trainable,
        "gflops_per_image_forward": forward_gflops, "gflops_per_image_step": step_gflops,
        "achieved_gflops_per_sec": achieved,
        "matmul_peak_gflops_per_sec": peak,
        "matmul_peak_min": min(peaks), "matmul_peak_max": max(peaks), "matmul_peak_size": peak_size,
        "mfu": achieved / peak,
        "mfu_min": step_gflops * slowest / peak, "mfu_max": step_gflops * fastest / peak,
        "onednn_peak_gflops_per_sec": onednn,
        "best_peak_gflops_per_sec": best,
        "mfu_best_peak": achieved / best,
        **({"teacher_model": args.teacher_model, "teacher_ms_median": teacher_ms,
            "teacher_share": teacher_ms / (1e3 * median)} if teacher is not None else {}),
    }


VARIANTS = ("plain", "backend", "official")


def build_variant(kind: str, args: argparse.Namespace, device: torch.device, weights: dict | None) -> nn.Module:
    """The plain model, the plain model after cpu.accelerate, or the official model code, on `weights`."""
    if kind == "official":
        from .tools.official_t2t import official_model

        model = official_model(args.model, img_size=args.img_size)
    else:
        model = create_model(named_model_config(args.model, args.img_size))
        if kind == "backend":
            cpu.accelerate(model)
    if weights is not None:
        model.load_state_dict(weights)
    return model.to(device)


def benchmark_compare(args: argparse.Namespace) -> dict[str, Any]:
    """images/s of each --compare variant, in alternating rounds in one process (see the module docs)."""
    device = init_distributed(args.device).device
    per_model = 8 if args.mode == "train" else 1
    check_batch_fits(args.batch_size, args.img_size, device, copies=len(args.compare) * per_model)
    kinds = args.compare
    weights = create_model(named_model_config(args.model, args.img_size)).state_dict()
    steps = {k: make_step(build_variant(k, args, device, weights), args.mode, args.batch_size, args.img_size,
                          device, args.amp) for k in kinds}
    warmups, rounds = _alternating_rounds(steps, args, device)
    results: dict[str, Any] = {
        "model": args.model, "mode": args.mode, "device": str(device), "dtype": str(amp_dtype(args.amp)).replace("torch.", ""),
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "img_size": args.img_size,
        "rounds": args.rounds, "steps": args.steps, "clock": "process CPU time" if args.cpu_time else "wall"}
    for k in kinds:
        ratios = _rate_row(results, k, kinds[0], warmups, rounds)
        results.update({f"{k}_vs_{kinds[0]}_min": min(ratios), f"{k}_vs_{kinds[0]}_max": max(ratios),
                        f"{k}_images_per_sec_best": max(rounds[k]),
                        f"{k}_best_vs_{kinds[0]}_best": max(rounds[k]) / max(rounds[kinds[0]])})
    return results


def _alternating_rounds(steps: dict[Any, Callable[[], Any]], args: argparse.Namespace,
                        device: torch.device) -> tuple[dict[Any, int], dict[Any, list[float]]]:
    """(warm-up steps, images/s per round) of each step: --rounds rounds, each timing --steps steps of every one
    in turn, so a shared machine's drift hits them alike."""
    warmups = {k: warm_up(step, device, args.warmup, args.max_warmup) for k, step in steps.items()}
    rounds: dict[Any, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for k, step in steps.items():
            times, _ = time_steps(step, device, args.steps, clock=time.process_time if args.cpu_time else time.perf_counter)
            rounds[k].append(args.batch_size / statistics.median(times))
    return warmups, rounds


def _rate_row(results: dict[str, Any], k: Any, base: Any, warmups: dict[Any, int],
              rounds: dict[Any, list[float]]) -> list[float]:
    """Add `k`'s warm-up, images/s per round and median, and its ratio to `base` per round and median, to
    `results`; return the ratios."""
    ratios = [rate / ref for rate, ref in zip(rounds[k], rounds[base])]
    results.update({f"{k}_warmup_steps": warmups[k], f"{k}_images_per_sec_rounds": rounds[k],
                    f"{k}_images_per_sec": statistics.median(rounds[k]),
                    f"{k}_vs_{base}_rounds": ratios, f"{k}_vs_{base}": statistics.median(ratios)})
    return ratios


def benchmark_sizes(args: argparse.Namespace) -> dict[str, Any]:
    """images/s of the step at each of --img-sizes (progressive resolution), in alternating rounds in one process.

    One model at the largest size, as train.img_sizes trains it: at a smaller size the step runs with the
    position table PositionTables lends (t2t/models/positions.py), as in the Trainer. Each round times
    --steps steps at every size in turn, so a shared machine's drift hits the sizes alike; the ratio of
    each size's median images/s to the largest size's in the same round, and its median over the rounds,
    is the speed-up a low-resolution phase buys.
    """
    device = init_distributed(args.device).device
    sizes = sorted(set(args.img_sizes))
    full = sizes[-1]
    check_batch_fits(args.batch_size, full, device, copies=len(sizes) * (8 if args.mode == "train" else 1))
    model = create_model(named_model_config(args.model, full)).to(device)
    if args.compile:
        model = torch.compile(model)  # one compilation per size
    tables = PositionTables(unwrap_model(model))
    steps = {size: make_step(model, args.mode, args.batch_size, size, device, args.amp,
                             positions=lambda size=size: tables.at(size)) for size in sizes}
    warmups, rounds = _alternating_rounds(steps, args, device)
    results: dict[str, Any] = {
        "model": args.model, "mode": args.mode, "device": str(device), "dtype": str(amp_dtype(args.amp)).replace("torch.", ""),
        "compile": args.compile, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "img_sizes": sizes, "rounds": args.rounds, "steps": args.steps,
        "clock": "process CPU time" if args.cpu_time else "wall", "uptime_load": list(os.getloadavg())}
    for size in sizes:
        _rate_row(results, size, full, warmups, rounds)
    return results


def benchmark_data(args: argparse.Namespace) -> dict[str, Any]:
    from .tools.data_bench import run_data_benchmark

    if args.feed:  # what each backend's feed costs the training process (t2t.tools.feed_bench)
        from t2t.tools.feed_bench import run_feed_benchmark

        results = run_feed_benchmark(args.data_dir, args.data_backend or ("pil", "dali"), augment=args.augment,
                                     img_size=args.img_size, batch_size=args.batch_size, workers=args.workers,
                                     rounds=args.rounds, steps=args.steps, pin=args.pin,
                                     batch_buffers=not args.no_batch_buffers)
        return {"mode": "data", "data_dir": args.data_dir, "uptime_load": list(os.getloadavg()), **results}
    if args.shard_order:  # global against block order reading shards (t2t.tools.shard_bench)
        from t2t.tools.shard_bench import run_shard_order_benchmark

        results = run_shard_order_benchmark(args.data_dir, orders=args.shard_order, num_images=args.num_images,
                                            block_shards=args.block_shards, drop_caches=not args.keep_page_cache,
                                            rounds=args.rounds, folder=args.folder)
        return {"mode": "data", "data_dir": args.data_dir, "shard_orders": ",".join(args.shard_order), **results}
    if args.data_backend:  # backends side by side (t2t.tools.data_bench.run_backend_benchmark)
        from .tools.data_bench import augmentation_statistics, run_backend_benchmark, summarise_statistics

        results = run_backend_benchmark(args.data_dir, args.data_backend, augment=args.augment,
                                        img_size=args.img_size, num_images=args.num_images, rounds=args.rounds)
        if args.data_stats:
            stats = summarise_statistics(augmentation_statistics(args.data_dir, img_size=args.img_size))
            results["statistics"] = stats
        return {"mode": "data", "data_dir": args.data_dir, "backends": ",".join(args.data_backend), **results}
    results = run_data_benchmark(args.data_dir, img_size=args.img_size, num_images=args.num_images,
                                 prefetcher=args.prefetcher, rounds=args.rounds)
    return {"mode": "data", "data_dir": args.data_dir, "img_size": args.img_size, "prefetcher": args.prefetcher,
            **results}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list):
        return " / ".join(map(_fmt, value))
    return str(value)


def print_table(results: dict[str, Any]) -> None:
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {_fmt(value)}")
    if "speedup" in results:
        ours, stock = results["ours_images_per_sec_per_core"], results["timm_images_per_sec_per_core"]
        print(f"\nours {ours:.1f} vs timm {stock:.1f} images/s per core: {results['speedup']:.2f}x")
    for size in results.get("img_sizes", [])[:-1]:
        full = results["img_sizes"][-1]
        ratios = results[f"{size}_vs_{full}_rounds"]
        print(f"{results['model']} {results['mode']} at {size} px: {results[f'{size}_images_per_sec']:.2f} images/s, "
              f"{results[f'{size}_vs_{full}']:.2f}x its {results[f'{full}_images_per_sec']:.2f} images/s at {full} px "
              f"(median of {len(ratios)} rounds of {results['steps']} steps, batch {results['batch_size']}, "
              f"{results['threads']} thread(s), {results['clock']} clock; "
              f"rounds {min(ratios):.2f}-{max(ratios):.2f}x)")
    if "mfu" in results:
        print(f"\n{results['images_per_sec']:.1f} images/s ({results['images_per_sec_min']:.1f}-"
              f"{results['images_per_sec_max']:.1f}), {results['achieved_gflops_per_sec']:.1f} GFLOP/s of a "
              f"{results['matmul_peak_gflops_per_sec']:.1f} GFLOP/s {results['dtype']} matmul peak: "
              f"MFU {100 * results['mfu']:.1f}% ({100 * results['mfu_min']:.1f}-{100 * results['mfu_max']:.1f} "
              f"from the slowest and fastest steps)")
        if results["onednn_peak_gflops_per_sec"]:
            print(f"oneDNN inner product peak {results['onednn_peak_gflops_per_sec']:.1f} GFLOP/s: MFU against the "
                  f"best of the two peaks ({results['best_peak_gflops_per_sec']:.1f}) "
                  f"{100 * results['mfu_best_peak']:.1f}%")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="t2t-benchmark", description=__doc__.split("\n")[0])
    p.add_argument("-m", "--model", default="t2t_vit_14")
    p.add_argument("--mode", choices=["train", "infer", "data"], default="infer")
    p.add_argument("--batch-size", type=int, help="images per step (default 16)")
    p.add_argument("--img-size", type=int, help="input resolution (default 224)")
    p.add_argument("--img-sizes", type=int, nargs="+", metavar="SIZE",
                   help="--mode train or infer: the step's images/s at each size, the model built at the largest "
                        "(progressive resolution, train.img_sizes), e.g. --img-sizes 160 224")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--cpu-backend", choices=["on", "off"], default="off",
                   help="convert the model with t2t.models.cpu.accelerate (float32 CPU runs only; default off)")
    p.add_argument("--compare", type=lambda s: s.split(","),
                   help=f"comma-separated variants timed side by side in alternating rounds: {', '.join(VARIANTS)}")
    p.add_argument("--cpu-time", action="store_true",
                   help="--compare or --img-sizes on the CPU: time steps in process CPU seconds instead of wall seconds (with "
                        "--threads 1, what a step costs whatever else shares the cores)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--steps", type=int, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 5)")
    p.add_argument("--max-warmup", type=int,
                   help=f"CPU: keep warming up, up to this many steps in all, until {SETTLED_STEPS} steps in a row "
                        f"each make fewer than {SETTLED_PAGE_FAULTS} page faults (default 30)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores available)")
    p.add_argument("--peak-size", type=int, help="matmul size for the peak (default 4096 CUDA, 2048 CPU)")
    p.add_argument("--data-dir", help="class-folder images for --mode data")
    p.add_argument("--num-images", type=int, help="images decoded in --mode data (default 200)")
    p.add_argument("--rounds", type=int, default=3,
                   help="--mode data: epochs over the images; --compare: alternating rounds (default 3)")
    p.add_argument("--prefetcher", action="store_true",
                   help="--mode data: uint8 batches, normalise and erase on the device (timm's use_prefetcher)")
    p.add_argument("--data-backend", type=lambda v: v.split(","),
                   help="--mode data: comma-separated backends measured side by side, of pil, dali, timm "
                        "(uint8 out, one thread each)")
    p.add_argument("--augment", choices=["full", "crop"], default="full",
                   help="--data-backend: the recipes' augmentation, or decode + random-resized crop + flip only")
    p.add_argument("--data-stats", action="store_true",
                   help="--data-backend: also compare pil and dali augmentation statistics on the images")
    p.add_argument("--feed", action="store_true",
                   help="--mode data: the training process's CPU time per sample and a step-shaped loop's slowdown "
                        "beside each backend's training loader (--data-backend pil,dali, --workers, --batch-size, "
                        "--steps: the loop's steps per round)")
    p.add_argument("--workers", type=int, default=1, help="--feed: the loader's data.workers (default 1)")
    p.add_argument("--pin", action="store_true",
                   help="--feed: the training process on the first core, the loader's workers on the others "
                        "(as on a GPU node, where they do not share the loop's core)")
    p.add_argument("--no-batch-buffers", action="store_true",
                   help="--feed: the Pillow loader as with data.batch_buffers=false (a new shared tensor per batch)")
    p.add_argument("--shard-order", type=lambda v: v.split(","),
                   help="--mode data on shards (DIR/train/*.tar): comma-separated orders read side by side, of "
                        "global, block, folder (one thread, reading and parsing headers; the page cache dropped "
                        "before each when run as root; folder: the same samples from --folder's loose files)")
    p.add_argument("--folder", help="--shard-order folder: the ImageFolder root the shards were made from")
    p.add_argument("--block-shards", type=int, default=4, help="--shard-order block: shards per window (default 4)")
    p.add_argument("--keep-page-cache", action="store_true", help="--shard-order: do not drop the page cache")
    p.add_argument("--json", help="also write the results here as JSON (checked before the run; its folder must exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--teacher-model", help="--mode train: a distillation step with this timm model as the teacher "
                   "(random weights; its forward time share is reported)")
    p.add_argument("--smoke", action="store_true", help="tiny run for tests: batch 2, 32 px, 1 + 2 steps")
    args = p.parse_args(argv)
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.compare and (args.mode == "data" or not set(args.compare) <= set(VARIANTS) or args.compile):
        p.error(f"--compare {','.join(args.compare)}: expected variants among {', '.join(VARIANTS)}, "
                "with --mode train or infer and without --compile")
    if args.feed and (args.mode != "data" or not set(args.data_backend or ()) <= {"pil", "dali"}):
        p.error("--feed: only with --mode data, and --data-backend among pil, dali")
    if args.shard_order and (args.data_backend or not set(args.shard_order) <= {"global", "block", "folder"}):
        p.error(f"--shard-order {','.join(args.shard_order)}: expected some of global, block, folder "
                "(comma-separated), without --data-backend")
    if args.shard_order and ("folder" in args.shard_order) != (args.folder is not None):
        p.error("--shard-order folder and --folder DIR (the ImageFolder root the shards were made from) go together")
    if args.data_backend and not set(args.data_backend) <= {"pil", "dali", "timm"}:
        p.error(f"--data-backend {','.join(args.data_backend)}: expected some of pil, dali, timm (comma-separated)")
    if args.data_backend and "dali" in args.data_backend:
        from .data.dali import DaliMissingError, require_dali
        try:
            require_dali()
        except DaliMissingError as e:
            p.error(f"--data-backend dali: {e}")
    if args.mode == "data" and not args.data_dir:
        p.error("--mode data needs --data-dir DIR (class folders, or a root with train/)")
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("--steps and --batch-size must be >= 1, --warmup >= 0")
    for flag, value, low in (("--rounds", args.rounds, 1), ("--threads", args.threads, 1),
                             ("--max-warmup", args.max_warmup, 0), ("--peak-size", args.peak_size, 1),
                             ("--num-images", args.num_images, 1), ("--workers", args.workers, 0)):
        if value is not None and value < low:
            p.error(f"{flag} {value}: expected >= {low}")
    if args.mode == "data":
        if not os.path.isdir(args.data_dir):
            p.error(f"--data-dir {args.data_dir!r}: no such folder")
        if args.img_size < 1:
            p.error(f"--img-size {args.img_size}: expected >= 1")
    elif args.img_size < 16 or args.img_size % 16:
        p.error(f"--img-size {args.img_size}: expected a positive multiple of 16 (T2T-ViT's token grid)")
    if args.img_sizes is not None:
        odd = [s for s in args.img_sizes if s < 16 or s % 16]
        if args.mode == "data" or args.compare or args.teacher_model or args.cpu_backend == "on":
            p.error("--img-sizes: only with --mode train or infer, without --compare, --teacher-model or --cpu-backend")
        if odd or len(set(args.img_sizes)) < 2:
            p.error(f"--img-sizes {' '.join(map(str, args.img_sizes))}: expected two or more positive multiples of 16 "
                    "(T2T-ViT's token grid)")
    args.max_warmup = max(args.max_warmup, args.warmup)
    return args


def check_arguments(args: argparse.Namespace) -> None:
    """What needs more than the parser: the model name, the --json path, the batch against free memory."""
    if args.mode != "data":
        check_model_name(args.model, "-m/--model")
    if args.teacher_model and (args.mode != "train" or args.compare):
        raise ConfigError(f"--teacher-model {args.teacher_model!r}: only with --mode train, without --compare")
    if args.teacher_model and not timm.is_model(args.teacher_model):
        raise ConfigError(f"--teacher-model {args.teacher_model!r}: not a model timm knows")
    if args.json:
        check_output_file(args.json, inputs=[("--data-dir", args.data_dir)] if args.data_dir else [],
                          overwrite=args.overwrite, flag="--json")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("t2t-benchmark", lambda: _benchmark_and_report(args), interrupted="no results written")


def _benchmark_and_report(args: argparse.Namespace) -> int:
    check_arguments(args)
    keep_freed_memory()
    torch.set_num_threads(args.threads or available_cores())
    if args.mode == "data":
        results = benchmark_data(args)
    else:
        results = benchmark_compare(args) if args.compare else benchmark_sizes(args) if args.img_sizes \
            else benchmark_model(args)
    print_table(results)
    if args.json:
        write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
