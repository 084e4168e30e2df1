#!/usr/bin/env python3
"""Evaluate a T2T-ViT checkpoint on an ImageNet-style class-folder set: top-1, top-5, loss.

    python validate.py --data-dir /data/imagenet -m t2t_vit_14 --checkpoint 81.5_T2T_ViT_14.pth.tar
    python validate.py --data-dir /data/imagenet -c runs/x/config.yaml --checkpoint runs/x/best.pth
    torchrun --nproc_per_node=2 validate.py ...    # each image is counted exactly once
    python validate.py --data-dir /data/imagenet --checkpoint a.pth b.pth --img-size 224,384 --tta none,flip \
        --real-labels real.json --csv results.csv   # one row per checkpoint, size and TTA mode

Settings come from, in increasing priority: built-in defaults (the paper's eval: crop 0.9, bicubic),
the run's config (-c), the checkpoint itself (class count; image size from its position table when
neither a flag nor a config gives one), and explicit flags. User errors exit with status 2 and one
line on stderr. The outputs (--results-file, --json, --csv) are checked before the evaluation starts: none
may be an input, and an existing file is replaced only with --overwrite, once the new one is complete.
Ctrl-C: exit 130. The suite itself (sweeps, TTA, ReaL, the table) lives in t2t/engine/eval_suite.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, replace
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
from t2t.engine.eval_suite import (SuiteJob, check_output_files, format_table, load_real_labels, parse_list,
                                   parse_tta, resolutions, run_suite, write_rows)
from t2t.engine.precision import resolve_amp
from t2t.inference import BatchSizeError, CheckpointInfo, check_batch_fits, check_model_name, inspect_checkpoint
from t2t.models import CheckpointError
from t2t.models.weights import EMA_KEYS
from t2t.cli import UsageError
from t2t.outputs import INTERRUPTED, OutputError, atomic_output
from t2t.runtime import keep_freed_memory

_logger = logging.getLogger("validate")


class ValidateError(Exception):
    """A user-facing problem with the inputs: reported in one line, exit status 2."""


# Problems with the user's inputs (files, folders, names): one line on stderr and exit status 2.
USER_ERRORS = (ValidateError, CheckpointError, DatasetError, ConfigError, DeviceError, OSError, OutputError,
               BatchSizeError, UsageError)


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
    p.add_argument("--checkpoint", required=True, nargs="+", action="extend",
                   help="our checkpoint or an official release file; several (--checkpoint A B, or the flag "
                   "repeated) give one row each")
    p.add_argument("-c", "--config", help="a run's config.yaml: model, img_size, eval settings, amp")
    p.add_argument("-m", "--model", help="registered model name, e.g. t2t_vit_14")
    p.add_argument("--img-size", help="eval resolution, or a comma-separated sweep such as 224,288,384: one row "
                   "per size, position table interpolated from the checkpoint's (default: config, else the "
                   "checkpoint's own size)")
    p.add_argument("--crop-pct", help="centre-crop fraction: one value for every size, or one per --img-size "
                   "(e.g. 0.9,0.9,1.0); default: the config's eval.crop_pct, else 0.9 at every size (the paper's "
                   "eval: shorter side to floor(size / 0.9), e.g. 384 -> 426 -> 384)")
    p.add_argument("--tta", default="none", help="test-time augmentation, comma-separated modes, one row each: "
                   "none, flip (mean of the logits of the image and its mirror); default none")
    p.add_argument("--real-labels", metavar="FILE", help="ImageNet-ReaL real.json (one list of class indices per "
                   "image, in sorted file-name order): adds real_top1 over the images that have labels")
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
    p.add_argument("--results-file", help="write the result as a JSON object here (one row only; rank 0); its "
                   "folder must exist")
    p.add_argument("--json", metavar="FILE", help="write every row, as a JSON list of objects (rank 0)")
    p.add_argument("--csv", metavar="FILE", help="write every row as CSV, one line per row (rank 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (each kept until its new file is complete)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    return p.parse_args(argv)


def resolve_settings(args: argparse.Namespace, recorded: str | None = None, checkpoint: str | None = None) -> Settings:
    """Defaults < the run's config (-c) < explicit flags; without -m or -c, the model the checkpoint records.

    img_size and crop_pct stay the config's (or the defaults): the sweep flags are resolved by resolve_resolutions.
    """
    checkpoint = checkpoint or args.checkpoint[0]
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
        raise ValidateError(f"checkpoint {checkpoint!r} records no model name: give it with -m/--model NAME "
                            "or a run's config with -c CONFIG")
    flags = {"model": args.model, "interpolation": args.interpolation, "batch_size": args.batch_size,
             "workers": args.workers, "amp": args.amp, "cpu_backend": None if args.cpu_backend is None else args.cpu_backend == "on",
             "data_backend": args.data_backend}
    for key, value in flags.items():
        if value is not None:
            setattr(settings, key, value)
    where = "-m/--model" if args.model else f"model.name in {args.config!r}" if args.config else \
        f"recorded in checkpoint {checkpoint!r}"
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


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Log each row, print the table and one JSON line per row, and write the requested files."""
    for results in rows:
        real = f"  ReaL top1 {results['real_top1']:.3f}% on {results['real_count']}" \
            if results.get("real_top1") is not None else ""
        _logger.info(
            "%s @%d crop %g tta %s (%s weights): top1 %.3f%%  top5 %.3f%%%s  loss %.4f  on %d images  (%.1f images/s)",
            results["model"], results["img_size"], results["crop_pct"], results["tta"], results["weights"],
            results["top1"], results["top5"], real, results["loss"], results["count"], results["images_per_sec"])
    print(format_table(rows), flush=True)
    for results in rows:
        print(json.dumps(results), flush=True)
    if args.results_file:
        with atomic_output(args.results_file) as tmp:
            with open(tmp, "w") as f:
                json.dump(rows[0], f, indent=2)
                f.write("\n")
    write_rows(rows, json_path=args.json, csv_path=args.csv)


def check_outputs(args: argparse.Namespace) -> None:
    """No output may be an input or another output, nor an existing file without --overwrite; checked first."""
    inputs = [*(("--checkpoint", c) for c in args.checkpoint), ("-c/--config", args.config),
              ("--real-labels", args.real_labels), ("--data-dir", args.data_dir)]
    outputs = [("--results-file", args.results_file), ("--json", args.json), ("--csv", args.csv)]
    check_output_files(outputs, inputs, args.overwrite)


def resolve_resolutions(args: argparse.Namespace, settings: Settings, info: CheckpointInfo) -> list:
    """The (img_size, crop_pct) settings for one checkpoint: flags, else the config's, else its own size at 0.9."""
    sizes = parse_list(args.img_size, int, "--img-size") if args.img_size else \
        [settings.img_size or info.img_size or 224]
    crops = parse_list(args.crop_pct, float, "--crop-pct") if args.crop_pct else None
    return resolutions(sizes, crops, default_crop=settings.crop_pct)


def run(args: argparse.Namespace, dist: DistInfo) -> list[dict[str, Any]]:
    """Evaluate every checkpoint at every resolution and TTA mode; one row each, in that order."""
    check_outputs(args)
    tta = parse_tta(args.tta)
    sizes = len(parse_list(args.img_size, int, "--img-size")) if args.img_size else 1  # one per checkpoint otherwise
    num_rows = len(args.checkpoint) * sizes * len(tta)
    if args.results_file and num_rows > 1:
        raise ValidateError(f"--results-file {args.results_file!r} holds one result but this call gives {num_rows} "
                            "rows (checkpoints x sizes x TTA modes): use --json FILE or --csv FILE")
    use_ema = not args.no_ema
    entries = []  # (checkpoint, info, settings, resolutions)
    for checkpoint in args.checkpoint:
        info = inspect_checkpoint(checkpoint, use_ema)
        settings = resolve_settings(args, info.arch, checkpoint)
        settings.amp = resolve_amp(settings.amp, dist.device)
        entries.append((checkpoint, info, settings, resolve_resolutions(args, settings, info)))
    first = entries[0][2]  # loader settings (batch, workers, amp, transform) come from flags and config: shared
    dataset = build_dataset(args.data_dir, replace(first, img_size=entries[0][3][0].img_size,
                                                   crop_pct=entries[0][3][0].crop_pct))
    for checkpoint, info, settings, _ in entries:
        check_classes(settings, info, dataset, checkpoint, allow_mismatch=args.allow_class_mismatch)
    real_labels = None
    if args.real_labels:
        if not hasattr(dataset, "samples"):
            raise ValidateError(f"--real-labels {args.real_labels!r}: the evaluation set {args.data_dir!r} is not "
                                "an image folder (ReaL labels ImageNet's validation images by file name)")
        real_labels = load_real_labels(args.real_labels, [path for path, _ in dataset.samples])
    per_rank = -(-len(dataset) // dist.world_size)
    largest = max(r.img_size for *_, rs in entries for r in rs)
    check_batch_fits(min(first.batch_size, per_rank), largest, dist.device)

    def build_loader(resolution):
        data = build_dataset(args.data_dir, replace(first, img_size=resolution.img_size,
                                                    crop_pct=resolution.crop_pct))
        at_size = replace(first, img_size=resolution.img_size, crop_pct=resolution.crop_pct)
        if first.data_backend == "dali":
            loader = build_dali_eval_loader(data, at_size, dist)
        else:
            loader = build_eval_loader(
                data, batch_size=first.batch_size, workers=first.workers, num_replicas=dist.world_size,
                rank=dist.rank, pin_memory=dist.device.type == "cuda")
        return loader, list(loader.sampler)

    def job(checkpoint, info, settings, resolution):
        def build():
            at_size = replace(settings, img_size=resolution.img_size, crop_pct=resolution.crop_pct)
            model, source = build_model(at_size, checkpoint, info, use_ema)
            weights = "ema" if source in EMA_KEYS else "model"
            _logger.info("Using the %s weights (entry %r) of %s; settings %s", weights, source, checkpoint,
                         asdict(at_size))
            if settings.cpu_backend:
                from t2t.models import cpu

                cpu.apply_backend(model, True, dist.device, settings.amp)
            return model.to(dist.device), {
                "model": settings.model, "checkpoint": checkpoint, "weights": weights, "weights_entry": source,
                "interpolation": settings.interpolation, "amp": settings.amp, "data_dir": dataset.root,
                "world_size": dist.world_size}
        return SuiteJob(resolution, build)

    jobs = [job(c, i, s, r) for c, i, s, rs in entries for r in rs]
    return run_suite(jobs, build_loader=build_loader, tta=tta, device=dist.device, amp=first.amp, dist=dist,
                     real_labels=real_labels)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()
    try:
        dist = init_distributed(args.device)
        setup_logging(dist.is_main)
        rows = run(args, dist)
        if dist.is_main:
            report(rows, args)
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
