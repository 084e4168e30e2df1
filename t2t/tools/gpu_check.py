"""The Python parts of scripts/gpu_check.sh: versions, the DALI graph, and the loaders beside a step-shaped loop.

    python -m t2t.tools.gpu_check versions
    python -m t2t.tools.gpu_check photos DIR [--per-class 512]
    python -m t2t.tools.gpu_check dali-graph DIR [--device cpu]
    python -m t2t.tools.gpu_check loaders DIR [--backends pil,dali] [--device cpu] [--batches 20]
    python -m t2t.tools.gpu_check buffers DIR [--device cpu] [--batches 8]

Every command runs on the CPU with ``--device cpu`` (small sizes; what the tests check), so the script
can be trusted before a GPU session spends its minutes on it. Each prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

import torch

__all__ = ["main", "step_loop"]


def versions() -> dict[str, Any]:
    """Driver, CUDA, torch, DALI and GPU names (what is there; None for what is not)."""
    out: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                           "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30), gpus=torch.cuda.device_count(),
                   bf16=torch.cuda.is_bf16_supported())
    smi = shutil.which("nvidia-smi")
    if smi:
        query = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                               text=True)
        out["driver"] = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout else None
    try:
        import nvidia.dali as dali

        out["dali"] = dali.__version__
    except Exception as e:  # not installed, or a broken install
        out["dali"] = f"not importable ({type(e).__name__})"
    return out


def photos(root: str, per_class: int = 512) -> dict[str, Any]:
    """ImageNet-sized photo-like JPEGs (375-500 px) in root/{train,val}/{a,b}/."""
    from .data_bench import make_benchmark_images

    for split, count in (("train", per_class), ("val", max(8, per_class // 16))):
        for seed, name in enumerate(("a", "b")):
            folder = os.path.join(root, split, name)
            if os.path.isdir(folder) and len(os.listdir(folder)) == count:
                continue
            make_benchmark_images(os.path.join(root, split, "tmp"), count, min_size=375, max_size=500,
                                  seed=seed + (10 if split == "val" else 0))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(os.path.join(root, split, "tmp", "images"), folder)
            shutil.rmtree(os.path.join(root, split, "tmp"))
    return {"photos": root, "train_per_class": per_class}


def _train_loader(backend: str, data_dir: str, device: torch.device, *, batch_size: int, workers: int,
                  img_size: int = 224, overrides: Sequence[str] = ()) -> Any:
    """The training loader train.py builds for `backend` (the recipe's augmentation), through the data layer."""
    from ..config import load_config
    from ..data import setup as data_setup

    cfg = load_config(None, [f"data.backend={backend}", f"data.workers={workers}", f"model.img_size={img_size}",
                             f"train.batch_size={batch_size}", *overrides])
    spec = data_setup.DataSpec.from_config(cfg, global_batch_size=batch_size, eval_crop_pct=0.875,
                                           eval_interpolation="bicubic", device=device)
    return data_setup.build_train_and_val(spec, data_dir)


def dali_graph(data_dir: str, device: torch.device, *, batches: int = 3, batch_size: int = 64) -> dict[str, Any]:
    """Build the DALI training graph that runs on `device` (all of it in DALI) and run `batches` batches."""
    from ..data.dali import DaliTrainLoader

    data = _train_loader("dali", data_dir, device, batch_size=batch_size, workers=4)
    loader: DaliTrainLoader = data.train_loader
    loader.resize_in_dali = True  # the GPU's graph, on the CPU too
    start = time.perf_counter()
    shapes = []
    for b, (images, targets) in enumerate(data.train_batches(0)):
        images, targets = data.feed.train(images, targets)
        shapes.append(tuple(images.shape))
        if b + 1 == batches:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ok = len(shapes) == batches and all(s == (batch_size, 3, 224, 224) for s in shapes)
    return {"dali_graph": "ok" if ok else "wrong batches", "batches": len(shapes), "shape": list(shapes[0]),
            "device": str(device), "seconds": round(time.perf_counter() - start, 2)}


def step_loop(device: torch.device, *, launches: int = 400, size: int = 256) -> Callable[[], torch.Tensor]:
    """One step-shaped call: `launches` small kernels issued from Python, as a training step's ~1-2k launches."""
    x = torch.randn(size, size, device=device)
    w = torch.randn(size, size, device=device) / size ** 0.5

    def step() -> torch.Tensor:
        y = x
        for _ in range(launches // 2):
            y = torch.tanh(y @ w)
        return y
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loaders_beside_a_loop(data_dir: str, device: torch.device, *, backends: Sequence[str], batches: int,
                          batch_size: int, workers: int, launches: int) -> dict[str, Any]:
    """Per backend: loader images/s alone; the step loop's steps/s alone and while the loader feeds a thread."""
    step = step_loop(device, launches=launches)
    for _ in range(3):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        step()
    _sync(device)
    alone = batches / (time.perf_counter() - start)
    out: dict[str, Any] = {"device": str(device), "batch_size": batch_size, "workers": workers,
                           "step_launches": launches, "step_loop_steps_per_sec": round(alone, 1)}
    for backend in backends:
        data = _train_loader(backend, data_dir, device, batch_size=batch_size, workers=workers)
        it = iter(data.train_batches(0))
        next(it)  # start-up (workers, pipeline build) untimed
        start = time.perf_counter()
        count = 0
        for _ in range(batches):
            images, targets = data.feed.train(*next(it))
            count += images.shape[0]
        _sync(device)
        out[f"{backend}_images_per_sec_alone"] = round(count / (time.perf_counter() - start), 1)
        # The loader feeds a queue from a thread, as a prefetching trainer would; the main thread steps.
        feeding = threading.Event()
        fed: list[int] = []

        def feed() -> None:
            for images, targets in data.train_batches(1):
                fed.append(images.shape[0])
                if len(fed) >= batches or not feeding.is_set():
                    return

        feeding.set()
        thread = threading.Thread(target=feed, daemon=True)
        start = time.perf_counter()
        thread.start()
        steps = 0
        while thread.is_alive() or steps < batches:
            step()
            steps += 1
            if steps >= 4 * batches:
                break
        _sync(device)
        elapsed = time.perf_counter() - start
        feeding.clear()
        thread.join()
        beside = steps / elapsed
        out[f"{backend}_step_loop_steps_per_sec_beside"] = round(beside, 1)
        out[f"{backend}_step_loop_slowdown"] = round(alone / beside, 2)
        out[f"{backend}_images_per_sec_beside"] = round(sum(fed) / elapsed, 1)
    return out


def batch_buffers_agree(data_dir: str, device: torch.device, *, batches: int, batch_size: int,
                        workers: int) -> dict[str, Any]:
    """The Pillow loader's first `batches` batches with data.batch_buffers on and off: the same values (on CUDA
    both come out of the DataLoader's pinning thread), the buffered ones pinned there, none the usual way."""
    loaders = [_train_loader("pil", data_dir, device, batch_size=batch_size, workers=workers,
                             overrides=[f"data.batch_buffers={on}"]) for on in ("true", "false")]
    same, pinned, count = True, True, 0
    for (images, targets), (ref_images, ref_targets) in zip(*(data.train_batches(0) for data in loaders)):
        same = same and torch.equal(images, ref_images) and torch.equal(targets, ref_targets)
        pinned = pinned and (images.is_pinned() if device.type == "cuda" else True)
        count += 1
        if count == batches:
            break
    return {"pil_batch_buffers_same_batches": same, "pil_batch_buffers_pinned": pinned, "batches": count,
            "pil_batch_buffers_fallbacks": loaders[0].train_loader.fallbacks}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("versions")
    ph = sub.add_parser("photos")
    ph.add_argument("root")
    ph.add_argument("--per-class", type=int, default=512)
    for name in ("dali-graph", "loaders", "buffers"):
        s = sub.add_parser(name)
        s.add_argument("data_dir")
        s.add_argument("--device", default="cuda")
        s.add_argument("--batch-size", type=int, default=128)
        s.add_argument("--batches", type=int, default=20)
        s.add_argument("--workers", type=int, default=8)
        s.add_argument("--launches", type=int, default=1000)
        s.add_argument("--backends", type=lambda v: v.split(","), default=["pil", "dali"])
    args = p.parse_args(argv)
    if args.command == "versions":
        result = versions()
    elif args.command == "photos":
        result = photos(args.root, args.per_class)
    elif args.command == "dali-graph":
        result = dali_graph(args.data_dir, torch.device(args.device), batch_size=args.batch_size,
                            batches=min(args.batches, 3))
    elif args.command == "buffers":
        result = batch_buffers_agree(args.data_dir, torch.device(args.device), batches=min(args.batches, 8),
                                     batch_size=args.batch_size, workers=args.workers)
        if not (result["pil_batch_buffers_same_batches"] and result["pil_batch_buffers_pinned"]):
            print(json.dumps(result), flush=True)
            return 1
    else:
        result = loaders_beside_a_loop(args.data_dir, torch.device(args.device), backends=args.backends,
                                       batches=args.batches, batch_size=args.batch_size, workers=args.workers,
                                       launches=args.launches)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
