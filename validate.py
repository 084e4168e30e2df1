#!/usr/bin/env python3
"""Evaluate a T2T-ViT checkpoint on an ImageNet-style class-folder set: top-1, top-5, loss.

    python validate.py --data-dir /data/imagenet -m t2t_vit_14 --checkpoint 81.5_T2T_ViT_14.pth.tar
    python validate.py --data-dir /data/imagenet -c runs/x/config.yaml --checkpoint runs/x/best.pth
    torchrun --nproc_per_node=2 validate.py ...    # each image is counted exactly once

Settings come from, in increasing priority: built-in defaults (the paper's eval: crop 0.9, bicubic),
the run's config (-c), the checkpoint itself (class count; image size from its position table when
neither a flag nor a config gives one), and explicit flags. User errors exit with status 2 and one
line on stderr. --results-file is checked before the evaluation starts: it may not be an input, and an
existing file is replaced only with --overwrite, once the new one is complete. Ctrl-C: exit 130.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Sequence

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch loads; see t2t/runtime.py

import timm
import torch.nn as nn

import t2t
from t2t.cli import ArgumentParser, one_line
from t2t.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError, load_config
from t2t.data.cifar import CIFARDataset, find_cifar_dir
from t2t.data.dataset import DatasetError, ImageFolderDataset, check_classes_match, resolve_eval_dir
from t2t.data.loader import build_eval_loader
from t2t.data.transforms import build_eval_transform
from t2t.engine.distributed import DeviceError, DistInfo, cleanup_distributed, init_distributed, setup_logging
from t2t.engine.evaluate import evaluate
from t2t.engine.precision import resolve_amp
from t2t.inference import BatchSizeError, CheckpointInfo, check_batch_fits, check_model_name, inspect_checkpoint
from t2t.models import CheckpointError
from t2t.models.weights import EMA_KEYS
from t2t.outputs import INTERRUPTED, OutputError, atomic_output, check_output_file
from t2t.runtime import keep_freed_memory

_logger = logging.getLogger("validate")


class ValidateError(Exception):
    """A user-facing problem with the inputs: reported in one line, exit status 2."""


# Problems with the user's inputs (files, folders, names): one line on stderr and exit status 2.
USER_ERRORS = (ValidateError, CheckpointError, DatasetError, ConfigError, DeviceError, OSError, OutputError,
               BatchSizeError)


@dataclass
class Settings:
    """Everything the evaluation depends on, after merging defaults, config and flags."""

    model: str
    img_size: int | None  # None: take it from the checkpoint's position table
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    batch_size: int = 100
    workers: int = min(8, os.cpu_count() or 1)
    amp: str = "none"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int | None = None
    cpu_backend: bool = False
    data_backend: str = "pil"  # pil | dali (decode and resize with NVIDIA DALI, on the GPU under CUDA)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True,
                   help="dataset root (its val/ is used), the class-folder dir, or an extracted CIFAR folder (test split)")
    p.add_argument("--checkpoint", required=True, help="our checkpoint or an official release file")
    p.add_argument("-c", "--config", help="a run's config.yaml: model, img_size, eval settings, amp")
    p.add_argument("-m", "--model", help="registered model name, e.g. t2t_vit_14")
    p.add_argument("--img-size", type=int, help="eval resolution (default: config, else the checkpoint's)")
    p.add_argument("--crop-pct", type=float, help="centre-crop fraction (default 0.9)")
    p.add_argument("--interpolation", choices=["bicubic", "bilinear", "nearest", "lanczos"])
    p.add_argument("--batch-size", type=int, help="per-process batch size (default 100)")
    p.add_argument("--workers", type=int, help="data-loading processes per rank")
    p.add_argument("--amp", choices=["none", "bf16", "fp16", "auto"],
                   help="autocast dtype (default none; auto: bf16 on CUDA, else none)")
    p.add_argument("--cpu-backend", choices=["on", "off"], help="t2t.models.cpu.accelerate in float32 on the CPU "
                   "(default: the config's model.cpu_backend, else off)")
    p.add_argument("--no-ema", action="store_true", help="use the model weights even if EMA weights exist")
    p.add_argument("--allow-class-mismatch", action="store_true",
                   help="evaluate even if the class folder names differ from the classes the checkpoint records")
    p.add_argument("--data-backend", choices=["pil", "dali"],
                   help="decode with Pillow in worker processes, or with NVIDIA DALI (default: the config's "
                        "data.backend, else pil)")
    p.add_argument("--results-file", help="write the results as JSON here (rank 0); its folder must exist")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --results-file (kept until the new file is complete)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    return p.parse_args(argv)


def resolve_settings(args: argparse.Namespace, recorded: str | None = None) -> Settings:
    """Defaults < the run's config (-c) < explicit flags; without -m or -c, the model the checkpoint records."""
    if args.config:
        cfg = load_config(args.config)
        settings = Settings(
            model=cfg.model.name, img_size=cfg.model.img_size, crop_pct=cfg.eval.crop_pct,
            interpolation=cfg.eval.interpolation, batch_size=cfg.eval.batch_size, workers=cfg.data.workers,
            amp=cfg.train.amp, mean=tuple(cfg.data.mean), std=tuple(cfg.data.std),
            num_classes=cfg.model.num_classes, cpu_backend=cfg.model.cpu_backend, data_backend=cfg.data.backend)
    elif args.model:
        settings = Settings(model=args.model, img_size=None)
    elif recorded:  # the checkpoint names its model (our runs, exported .safetensors, official training files)
        settings = Settings(model=recorded.lower(), img_size=None)
    else:
        raise ValidateError(f"checkpoint {args.checkpoint!r} records no model name: give it with -m/--model NAME "
                            "or a run's config with -c CONFIG")
    flags = {"model": args.model, "img_size": args.img_size, "crop_pct": args.crop_pct,
             "interpolation": args.interpolation, "batch_size": args.batch_size, "workers": args.workers,
             "amp": args.amp, "cpu_backend": None if args.cpu_backend is None else args.cpu_backend == "on",
             "data_backend": args.data_backend}
    for key, value in flags.items():
        if value is not None:
            setattr(settings, key, value)
    where = "-m/--model" if args.model else f"model.name in {args.config!r}" if args.config else \
        f"recorded in checkpoint {args.checkpoint!r}"
    check_model_name(settings.model, where)
    if settings.img_size is not None and (settings.img_size <= 0 or settings.img_size % 16):
        raise ValidateError(f"--img-size {settings.img_size}: expected a positive multiple of 16")
    if not 0 < settings.crop_pct <= 1:
        raise ValidateError(f"--crop-pct {settings.crop_pct}: expected a fraction in (0, 1]")
    if settings.batch_size < 1 or settings.workers < 0:
        raise ValidateError(f"batch size {settings.batch_size} / workers {settings.workers}: expected >= 1 / >= 0")
    return settings


def build_dataset(data_dir: str, settings: Settings) -> ImageFolderDataset | CIFARDataset:
    """The test split of an extracted CIFAR folder, else the class folders of data_dir/val or data_dir."""
    transform = build_eval_transform(
        settings.img_size, crop_pct=settings.crop_pct, interpolation=settings.interpolation,
        mean=settings.mean, std=settings.std)
    if find_cifar_dir(data_dir) is not None:
        return CIFARDataset(data_dir, train=False, transform=transform)
    dataset = ImageFolderDataset(resolve_eval_dir(data_dir), transform)
    dataset.bad_image_hint = ""  # training's data.skip_bad_images has no place here: every image must count
    return dataset


def build_dali_eval_loader(dataset: ImageFolderDataset | CIFARDataset, settings: Settings, dist: DistInfo):
    """--data-backend dali: decode, resize and centre-crop with NVIDIA DALI (t2t/data/dali.py)."""
    from t2t.data.dali import DaliEvalLoader, require_dali

    require_dali()
    if not isinstance(dataset, ImageFolderDataset):
        raise ValidateError("--data-backend dali reads image folders; this is a CIFAR folder: use --data-backend pil")
    return DaliEvalLoader(dataset, img_size=settings.img_size, crop_pct=settings.crop_pct,
                          interpolation=settings.interpolation, mean=settings.mean, std=settings.std,
                          batch_size=settings.batch_size, workers=settings.workers, num_replicas=dist.world_size,
                          rank=dist.rank, device=dist.device)


def build_model(settings: Settings, checkpoint: str, info: CheckpointInfo, use_ema: bool) -> tuple[nn.Module, str]:
    """Create the model with the checkpoint's class count and load its weights; return (model, entry used)."""
    model = timm.create_model(settings.model, img_size=settings.img_size, num_classes=settings.num_classes)
    try:
        source = t2t.load_pretrained_weights(model, checkpoint, use_ema=use_ema)
    except CheckpointError as e:
        # The loader's message starts "checkpoint PATH (entry) does not fit this T2TViT: ..."; keep the details.
        details = str(e).split(" does not fit this ", 1)[-1].split(": ", 1)[-1]
        recorded = ""
        if info.arch:
            hint = info.arch.lower() != settings.model and timm.is_model(info.arch.lower())
            recorded = f" (it records the model {info.arch!r}" + (f"; try -m {info.arch.lower()})" if hint else ")")
        raise ValidateError(
            f"checkpoint {checkpoint!r}{recorded} does not fit model {settings.model!r}: {details}") from e
    return model, source


def check_classes(settings: Settings, info: CheckpointInfo, dataset: ImageFolderDataset, checkpoint: str,
                  allow_mismatch: bool = False) -> None:
    """One classifier output per class folder, named as in training (if recorded); settle settings.num_classes."""
    num_folders = len(dataset.classes)
    if info.num_classes is not None:
        settings.num_classes = info.num_classes
    elif settings.num_classes is None:
        settings.num_classes = num_folders
    if settings.num_classes != num_folders:
        source = f"checkpoint {checkpoint!r}" if info.num_classes is not None else "the config"
        raise ValidateError(
            f"{source} has {settings.num_classes} classes but {dataset.root!r} has {num_folders} class folders")
    if info.classes is not None and not allow_mismatch:
        check_classes_match(info.classes, dataset.classes, where=f"{dataset.root!r}",
                            fix=f" (checkpoint {checkpoint!r}); rename the folders, or pass --allow-class-mismatch")


def report(results: dict[str, Any], results_file: str | None) -> None:
    _logger.info(
        "%s @%d (%s weights): top1 %.3f%%  top5 %.3f%%  loss %.4f  on %d images  (%.1f images/s)",
        results["model"], results["img_size"], results["weights"], results["top1"], results["top5"],
        results["loss"], results["count"], results["images_per_sec"])
    print(json.dumps(results), flush=True)
    if results_file:
        with atomic_output(results_file) as tmp:
            with open(tmp, "w") as f:
                json.dump(results, f, indent=2)
                f.write("\n")


def check_results_file(args: argparse.Namespace) -> None:
    """--results-file may not be an input, nor an existing file without --overwrite; checked before the work."""
    if args.results_file:
        inputs = [("--checkpoint", args.checkpoint), ("-c/--config", args.config)]
        check_output_file(args.results_file, inputs=inputs, overwrite=args.overwrite, flag="--results-file")


def run(args: argparse.Namespace, dist: DistInfo) -> dict[str, Any]:
    check_results_file(args)
    use_ema = not args.no_ema
    info = inspect_checkpoint(args.checkpoint, use_ema)
    settings = resolve_settings(args, info.arch)
    settings.amp = resolve_amp(settings.amp, dist.device)
    if settings.img_size is None:
        settings.img_size = info.img_size or 224
    dataset = build_dataset(args.data_dir, settings)
    check_classes(settings, info, dataset, args.checkpoint, allow_mismatch=args.allow_class_mismatch)
    per_rank = -(-len(dataset) // dist.world_size)
    check_batch_fits(min(settings.batch_size, per_rank), settings.img_size, dist.device)
    model, source = build_model(settings, args.checkpoint, info, use_ema)
    weights = "ema" if source in EMA_KEYS else "model"
    _logger.info("Using the %s weights (entry %r) of %s; settings %s", weights, source, args.checkpoint,
                 asdict(settings))
    if settings.data_backend == "dali":
        loader = build_dali_eval_loader(dataset, settings, dist)
    else:
        loader = build_eval_loader(
            dataset, batch_size=settings.batch_size, workers=settings.workers, num_replicas=dist.world_size,
            rank=dist.rank, pin_memory=dist.device.type == "cuda")
    t2t.models.cpu.apply_backend(model, settings.cpu_backend, dist.device, settings.amp)
    metrics = evaluate(model.to(dist.device), loader, device=dist.device, amp=settings.amp, dist=dist)
    return {**metrics, "model": settings.model, "checkpoint": args.checkpoint, "weights": weights,
            "weights_entry": source, "img_size": settings.img_size, "crop_pct": settings.crop_pct,
            "interpolation": settings.interpolation, "amp": settings.amp, "data_dir": dataset.root,
            "world_size": dist.world_size}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()
    try:
        dist = init_distributed(args.device)
        setup_logging(dist.is_main)
        results = run(args, dist)
        if dist.is_main:
            report(results, args.results_file)
        return 0
    except USER_ERRORS as e:
        print(f"validate.py: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nvalidate.py: interrupted (Ctrl-C): no results written", file=sys.stderr)
        return INTERRUPTED
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
