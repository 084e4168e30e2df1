#!/usr/bin/env python3
"""Evaluate a T2T-ViT checkpoint on an ImageNet-style class-folder set: top-1, top-5, loss.

    python validate.py --data-dir /data/imagenet -m t2t_vit_14 --checkpoint 81.5_T2T_ViT_14.pth.tar
    python validate.py --data-dir /data/imagenet --checkpoint runs/x/best.pth    # the run's stored config
    python validate.py --data-dir /data/imagenet -c eval.yaml eval.crop_pct=1.0 --checkpoint runs/x/best.pth
    torchrun --nproc_per_node=2 validate.py ...    # each image is counted exactly once
    python validate.py --data-dir /data/imagenet --checkpoint a.pth b.pth --img-size 224,384 --tta none,flip \
        --real-labels builtin --csv results.csv   # one row per checkpoint, size and TTA mode
    python validate.py --data-dir /data/imagenet --eval-set v2=/data/imagenetv2 imagenet-a=/data/imagenet-a \
        imagenet-r=/data/imagenet-r sketch=/data/sketch --checkpoint 81.5_T2T_ViT_14.pth.tar   # one row per set

Settings are one Config (t2t/config.py), in increasing priority: validate.py's defaults, the
checkpoint's stored config (for files without one: its model name and the image size of its position
table), the -c file, section.key=value overrides, then the flags (aliases of config keys; see --help).
The model is built from that config (t2t/models/factory.py), so a token-labeling or distilled run is
evaluated as the model it trained; crop and interpolation left unset come from the model's pretrained
cfg. The class count is the checkpoint's. User errors exit with status 2 and one line on stderr. The outputs (--results-file, --json, --csv) are checked before the evaluation starts: none
may be an input, and an existing file is replaced only with --overwrite, once the new one is complete.
Ctrl-C: exit 130. The suite itself (sweeps, TTA, ReaL, the table) lives in t2t/engine/eval_suite.py, the named
sets (--eval-set; ImageNet-A/-R scored on their 200 classes) in t2t/engine/eval_sets.py.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from typing import Any, Sequence

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch's first large allocation; t2t/runtime.py

import timm
import torch
import torch.nn as nn

import t2t
from .cli import ArgumentParser, UsageError, run_main, split_overrides
from .config import Config
from .data.cifar import CIFARDataset, find_cifar_dir
from .data.dataset import (DatasetError, ImageDataset, ImageFolderDataset, check_classes_match, check_same_classes,
                           class_indices, find_split_dirs, resolve_eval_dir)
from .data.loader import build_eval_loader
from .data.parquet import find_parquet_split, open_parquet
from .data.shards import find_shard_classes, open_shards
from .engine.distributed import DistInfo, cleanup_distributed, init_distributed, setup_logging
from .engine.eval_sets import EvalSet, SubsetLogits, output_indices, parse_eval_sets
from .engine.eval_suite import (BUILTIN_REAL_LABELS, Resolution, SuiteJob, check_output_files, format_table,
                                load_real_labels, parse_list, parse_tta, resolutions, run_suite, write_rows)
from .engine.fewshot import extract_features, fewshot_accuracy, shot_split
from .engine.precision import resolve_amp
from .inference import CheckpointInfo, check_batch_fits, inspect_checkpoint, resolve_eval_config
from .models import CheckpointError
from .models.factory import EvalPreprocessing, create_model, resolve_eval_preprocessing
from .models.weights import EMA_KEYS
from .outputs import write_text
from .runtime import keep_freed_memory

_logger = logging.getLogger("validate")

DATA_DIR_SET = "val"  # the name of --data-dir's rows


class ValidateError(UsageError):
    """A user-facing problem with the inputs: reported in one line, exit status 2 (t2t.cli's table)."""


# validate.py's own defaults for the run-time keys: fp32, all cores up to 8, batches of 100.
DEFAULTS = {"eval": {"batch_size": 100}, "data": {"workers": min(8, os.cpu_count() or 1)}, "train": {"amp": "none"}}

SETTINGS_HELP = """settings, in increasing priority:
  validate.py's defaults (amp none, batch 100, workers min(8, cores));
  the checkpoint's stored config (model section, eval.crop_pct, eval.interpolation, data.mean/std), or for files
    without one its recorded model name and the image size of its position table;
  the -c file; section.key=value overrides; then the flags, which are aliases of config keys:
    -m/--model model.name, --img-size model.img_size, --crop-pct eval.crop_pct, --interpolation eval.interpolation,
    --batch-size eval.batch_size, --workers data.workers, --amp train.amp, --cpu-backend model.cpu_backend,
    --data-backend data.backend.
  eval.crop_pct / eval.interpolation left unset (null) come from the model's pretrained cfg (T2T-ViT: 0.9, bicubic:
  224 -> 248 -> 224, 384 -> 426 -> 384). Overrides written after --checkpoint are taken as overrides."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="t2t-validate", description=__doc__.split("\n")[0], epilog=SETTINGS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="dataset root (its val/ is used), the class-folder dir, or an extracted CIFAR "
                   "folder (test split); its rows are the set 'val'")
    p.add_argument("--eval-set", nargs="+", action="extend", default=[], metavar="NAME=DIR",
                   help="more evaluation sets, one row each (e.g. v2=DIR imagenet-a=DIR imagenet-r=DIR sketch=DIR; "
                   "the flag may be repeated): class folders named as the checkpoint's classes, by output index "
                   "(ImageNet-V2), or the 200 WordNet ids of ImageNet-A/-R, which score the 1000-class logits "
                   "restricted to their classes (timm's bundled index lists)")
    p.add_argument("--checkpoint", required=True, nargs="+", action="extend",
                   help="our checkpoint or an official release file; several (--checkpoint A B, or the flag "
                   "repeated) give one row each")
    p.add_argument("-c", "--config", help="a config.yaml (e.g. a run's): its keys override the checkpoint's stored config")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. eval.crop_pct=1.0 eval.interpolation=bilinear")
    p.add_help_config()
    p.add_argument("-m", "--model", help="model.name: registered model name, e.g. t2t_vit_14")
    p.add_argument("--img-size", help="model.img_size: eval resolution, or a comma-separated sweep such as 224,288,384: "
                   "one row per size, position table interpolated from the checkpoint's (default: the config's, "
                   "else the checkpoint's own size)")
    p.add_argument("--crop-pct", help="eval.crop_pct: centre-crop fraction: one value for every size, or one per "
                   "--img-size (e.g. 0.9,0.9,1.0); default: the config's eval.crop_pct, else the model's pretrained "
                   "cfg (0.9: shorter side to floor(size / 0.9), e.g. 384 -> 426 -> 384)")
    p.add_argument("--fewshot", metavar="DIR", help="few-shot linear probe (ridge regression on the frozen "
                   "pre-logits features, as big_vision's few-shot evaluators): DIR/train gives the shots and DIR/val "
                   "the test, or, without them, DIR's class folders give both (the shots drawn first); one row per "
                   "--shots value and checkpoint, at the first --img-size")
    p.add_argument("--shots", default="1,5,10", help="images per class of the few-shot probe, comma-separated "
                   "(default 1,5,10)")
    p.add_argument("--fewshot-l2", type=float, default=1024.0, help="the probe's ridge penalty on the standardised "
                   "features (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="which images are the shots (default 0)")
    p.add_argument("--tta", default="none", help="test-time augmentation, comma-separated modes, one row each: "
                   "none, flip (mean of the logits of the image and its mirror); default none")
    p.add_argument("--real-labels", metavar="FILE", help="ImageNet-ReaL real.json (one list of class indices per "
                   "image, in sorted file-name order), or 'builtin' for the copy timm ships: adds real_top1 of the "
                   "--data-dir set over the images that have labels")
    p.add_argument("--interpolation", choices=["bicubic", "bilinear", "nearest", "lanczos"], help="eval.interpolation")
    p.add_argument("--batch-size", type=int, help="eval.batch_size: per-process batch size (default 100)")
    p.add_argument("--workers", type=int, help="data.workers: data-loading processes per rank")
    p.add_argument("--amp", choices=["none", "bf16", "fp16", "auto"],
                   help="train.amp: autocast dtype (default none; auto: bf16 on CUDA, else none)")
    p.add_argument("--cpu-backend", choices=["on", "off"], help="model.cpu_backend: t2t.models.cpu.accelerate in "
                   "float32 on the CPU (default: the config's, else off)")
    p.add_argument("--no-ema", action="store_true", help="use the model weights even if EMA weights exist")
    p.add_argument("--allow-class-mismatch", action="store_true",
                   help="evaluate even if the class folder names differ from the classes the checkpoint records")
    p.add_argument("--data-backend", choices=["pil", "dali"],
                   help="data.backend: decode with Pillow in worker processes, or with NVIDIA DALI (default: the "
                        "config's, else pil)")
    p.add_argument("--results-file", help="write the result as a JSON object here (one row only; rank 0); its "
                   "folder must exist")
    p.add_argument("--json", metavar="FILE", help="write every row, as a JSON list of objects (rank 0)")
    p.add_argument("--csv", metavar="FILE", help="write every row as CSV, one line per row (rank 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (each kept until its new file is complete)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    args = p.parse_intermixed_args(argv)
    args.checkpoint, extra = split_overrides(args.checkpoint)
    args.eval_set, more = split_overrides(args.eval_set)
    args.overrides = [*args.overrides, *extra, *more]
    return args


def resolve_config(args: argparse.Namespace, info: CheckpointInfo, checkpoint: str | None = None) -> Config:
    """The config `checkpoint` is evaluated with (t2t.inference.resolve_eval_config; the flags are aliases).

    The sweep flags (--img-size, --crop-pct with several values) are resolved by resolve_resolutions.
    """
    checkpoint = checkpoint or args.checkpoint[0]
    if args.workers is not None and args.workers < 0:
        raise ValidateError(f"--workers {args.workers}: expected >= 0")
    cpu = None if args.cpu_backend is None else args.cpu_backend == "on"
    flags = {"model.name": (args.model, "-m/--model"), "eval.interpolation": (args.interpolation, "--interpolation"),
             "eval.batch_size": (args.batch_size, "--batch-size"), "data.workers": (args.workers, "--workers"),
             "train.amp": (args.amp, "--amp"), "model.cpu_backend": (cpu, "--cpu-backend"),
             "data.backend": (args.data_backend, "--data-backend")}
    return resolve_eval_config(checkpoint, info, config_file=args.config, overrides=args.overrides, flags=flags,
                               defaults=DEFAULTS)


def preprocessing(cfg: Config, resolution: Resolution | None = None) -> EvalPreprocessing:
    """The eval transform settings of cfg's model (at `resolution` if given): the config's, else the model's."""
    return resolve_eval_preprocessing(
        cfg.model.name, img_size=resolution.img_size if resolution else cfg.model.img_size,
        crop_pct=resolution.crop_pct if resolution else cfg.eval.crop_pct, interpolation=cfg.eval.interpolation,
        mean=cfg.data.mean, std=cfg.data.std)


def build_dataset(data_dir: str, pre: EvalPreprocessing, fmt: str = "auto") -> ImageDataset | CIFARDataset:
    """The test split of an extracted CIFAR folder, the shards or parquet files of data_dir/val (or data_dir, or a
    Hugging Face download's validation files), else the class folders of data_dir/val or data_dir; found by what
    the folder holds (`fmt` auto), whatever the run trained on."""
    transform = pre.transform()
    if fmt in ("auto", "cifar") and find_cifar_dir(data_dir) is not None:
        return CIFARDataset(data_dir, train=False, transform=transform)
    folder = resolve_eval_dir(data_dir)
    if fmt == "parquet" or (fmt == "auto" and _has_parquet_val(data_dir)):
        names = find_shard_classes(data_dir) or find_shard_classes(os.path.dirname(os.path.abspath(data_dir)))
        dataset: ImageDataset = ImageDataset(open_parquet(data_dir, "val", names, loose=True), transform)
    elif fmt == "shards" or (fmt == "auto" and glob.glob(os.path.join(glob.escape(folder), "*.tar"))):
        names = find_shard_classes(data_dir) or find_shard_classes(os.path.dirname(os.path.abspath(folder)))
        dataset = ImageDataset(open_shards(folder, names), transform)
    else:
        dataset = ImageFolderDataset(folder, transform)
    dataset.bad_image_hint = ""  # training's data.skip_bad_images has no place here: every image must count
    return dataset


def _has_parquet_val(data_dir: str) -> bool:
    try:
        return bool(find_parquet_split(data_dir, "val", loose=True))
    except DatasetError:
        return False


def build_dali_eval_loader(dataset: ImageDataset | CIFARDataset, pre: EvalPreprocessing, cfg: Config,
                           dist: DistInfo):
    """--data-backend dali: decode, resize and centre-crop with NVIDIA DALI (t2t/data/dali.py)."""
    from .data.dali import DaliEvalLoader, require_dali

    require_dali()
    if not isinstance(dataset, ImageDataset):
        raise ValidateError("--data-backend dali reads image folders and shards; this is a CIFAR folder: use "
                            "--data-backend pil")
    return DaliEvalLoader(dataset, img_size=pre.img_size, crop_pct=pre.crop_pct, interpolation=pre.interpolation,
                          mean=pre.mean, std=pre.std, batch_size=cfg.eval.batch_size, workers=cfg.data.workers,
                          num_replicas=dist.world_size, rank=dist.rank, device=dist.device)


def build_model(cfg: Config, checkpoint: str, info: CheckpointInfo, use_ema: bool,
                img_size: int | None = None) -> tuple[nn.Module, str]:
    """The model cfg describes (t2t.models.factory), with its weights from `checkpoint`; (model, entry used)."""
    model = create_model(cfg.model, cfg.model.num_classes, img_size=img_size, grad_checkpointing=False)
    try:
        source = t2t.load_pretrained_weights(model, checkpoint, use_ema=use_ema)
    except CheckpointError as e:
        # The loader's message starts "checkpoint PATH (entry) does not fit this T2TViT: ..."; keep the details.
        details = str(e).split(" does not fit this ", 1)[-1].split(": ", 1)[-1]
        recorded = ""
        if info.arch:
            hint = info.arch.lower() != cfg.model.name and timm.is_model(info.arch.lower())
            recorded = f" (it records the model {info.arch!r}" + (f"; try -m {info.arch.lower()})" if hint else ")")
        raise ValidateError(
            f"checkpoint {checkpoint!r}{recorded} does not fit model {cfg.model.name!r}: {details}") from e
    return model, source


def check_classes(cfg: Config, info: CheckpointInfo, dataset: ImageDataset, checkpoint: str,
                  allow_mismatch: bool = False) -> None:
    """One classifier output per class folder, named as in training (if recorded); settle cfg.model.num_classes."""
    num_folders = len(dataset.classes)
    if info.num_classes is not None:
        cfg.model.num_classes = info.num_classes
    elif cfg.model.num_classes is None:
        cfg.model.num_classes = num_folders
    if cfg.model.num_classes != num_folders:
        source = f"checkpoint {checkpoint!r}" if info.num_classes is not None else "the config"
        raise ValidateError(
            f"{source} has {cfg.model.num_classes} classes but {dataset.root!r} has {num_folders} class folders")
    indices = class_indices(dataset.classes)
    if indices is not None and (info.classes is None or class_indices(info.classes) is None):
        # ImageNet-V2's layout: folder 'k' holds images of class k (find_classes sorts such names by value);
        # a checkpoint whose own classes are index names is checked name by name below.
        if indices != list(range(num_folders)):
            missing = next(i for i in range(num_folders) if i not in set(indices))
            raise ValidateError(
                f"the class folders of {dataset.root!r} are named by class index, but not 0 ... {num_folders - 1} "
                f"(no folder {str(missing)!r}): the labels would be wrong; name folder k for class k")
        _logger.info("The class folders of %s are named by class index: folder k is scored as class k%s",
                     dataset.root, f" ({info.classes[0]!r} for '0')" if info.classes else "")
        return
    if info.classes is not None and not allow_mismatch:
        check_classes_match(info.classes, dataset.classes, where=f"{dataset.root!r}",
                            fix=f" (checkpoint {checkpoint!r}); rename the folders, or pass --allow-class-mismatch")


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Log each row, print the table and one JSON line per row, and write the requested files."""
    for results in rows:
        if results.get("shots") is not None:  # logged by fewshot_rows
            continue
        real = f"  ReaL top1 {results['real_top1']:.3f}% on {results['real_count']}" \
            if results.get("real_top1") is not None else ""
        _logger.info(
            "%s: %s @%d crop %g tta %s (%s weights): top1 %.3f%%  top5 %.3f%%%s  loss %.4f  on %d images  "
            "(%.1f images/s)", results.get("eval_set", DATA_DIR_SET), results["model"], results["img_size"], results["crop_pct"], results["tta"], results["weights"],
            results["top1"], results["top5"], real, results["loss"], results["count"], results["images_per_sec"])
    print(format_table(rows), flush=True)
    for results in rows:
        print(json.dumps(results), flush=True)
    if args.results_file:
        write_text(args.results_file, json.dumps(rows[0], indent=2) + "\n")
    write_rows(rows, json_path=args.json, csv_path=args.csv)


def check_outputs(args: argparse.Namespace) -> None:
    """No output may be an input or another output, nor an existing file without --overwrite; checked first."""
    inputs = [*(("--checkpoint", c) for c in args.checkpoint), ("-c/--config", args.config),
              ("--real-labels", None if args.real_labels == BUILTIN_REAL_LABELS else args.real_labels),
              ("--data-dir", args.data_dir), ("--fewshot", args.fewshot), *(("--eval-set", s.partition("=")[2]) for s in args.eval_set)]
    outputs = [("--results-file", args.results_file), ("--json", args.json), ("--csv", args.csv)]
    check_output_files(outputs, inputs, args.overwrite)


def resolve_resolutions(args: argparse.Namespace, cfg: Config) -> list:
    """The (img_size, crop_pct) settings for one checkpoint: the flags' sweep, else the config's size and crop
    (its crop unset: the model's pretrained cfg)."""
    sizes = parse_list(args.img_size, int, "--img-size") if args.img_size else [cfg.model.img_size]
    crops = parse_list(args.crop_pct, float, "--crop-pct") if args.crop_pct else None
    return resolutions(sizes, crops, default_crop=preprocessing(cfg).crop_pct)


def evaluation_sets(args: argparse.Namespace) -> list[EvalSet]:
    """--data-dir (named 'val') and the --eval-set NAME=DIR sets, in the order given."""
    sets = parse_eval_sets(args.eval_set)
    if args.data_dir:
        if any(s.name == DATA_DIR_SET for s in sets):
            raise ValidateError(f"--eval-set {DATA_DIR_SET}=...: the name {DATA_DIR_SET!r} is --data-dir's; name the "
                                "set otherwise")
        sets.insert(0, EvalSet(DATA_DIR_SET, args.data_dir))
    return sets


def run(args: argparse.Namespace, dist: DistInfo) -> list[dict[str, Any]]:
    """Evaluate every checkpoint on every set at every resolution and TTA mode; one row each, in that order."""
    check_outputs(args)
    tta = parse_tta(args.tta)
    sets = evaluation_sets(args)
    if not sets and not args.fewshot:
        raise ValidateError("nothing to evaluate: give --data-dir DIR, --eval-set NAME=DIR and/or --fewshot DIR")
    if args.real_labels and not args.data_dir:
        raise ValidateError(f"--real-labels {args.real_labels!r} labels the images of --data-dir (ImageNet's "
                            "validation set): give --data-dir")
    sizes = len(parse_list(args.img_size, int, "--img-size")) if args.img_size else 1  # one per checkpoint otherwise
    num_rows = len(args.checkpoint) * (len(sets) * sizes * len(tta) + (len(parse_shots(args.shots)) if args.fewshot
                                                                         else 0))
    if args.results_file and num_rows > 1:
        raise ValidateError(f"--results-file {args.results_file!r} holds one result but this call gives {num_rows} "
                            "rows (sets x checkpoints x sizes x TTA modes): use --json FILE or --csv FILE")
    use_ema = not args.no_ema
    entries = []  # (checkpoint, info, cfg, resolutions)
    for checkpoint in args.checkpoint:
        info = inspect_checkpoint(checkpoint, use_ema)
        cfg = resolve_config(args, info, checkpoint)
        cfg.train.amp = resolve_amp(cfg.train.amp, dist.device)
        entries.append((checkpoint, info, cfg, resolve_resolutions(args, cfg)))
    rows = []
    for eval_set in sets:
        rows += evaluate_set(args, dist, eval_set, entries, tta, use_ema)
    if args.fewshot:
        for entry in entries:
            rows += fewshot_rows(args, dist, entry, use_ema)
    return rows


def parse_shots(text: str) -> list[int]:
    """'1,5,10' -> [1, 5, 10]; ValidateError on a value < 1 or a repeated one."""
    shots = parse_list(text, int, "--shots")
    if min(shots) < 1 or len(set(shots)) != len(shots):
        raise ValidateError(f"--shots {text!r}: expected distinct whole numbers >= 1, e.g. 1,5,10")
    return shots


def fewshot_rows(args: argparse.Namespace, dist: DistInfo, entry: tuple, use_ema: bool) -> list[dict[str, Any]]:
    """--fewshot DIR: a ridge-regression probe on the frozen pre-logits features; one row per --shots value.

    DIR with train/ and val/: the shots come from train/, the test is val/. Otherwise the shots come from
    DIR's class folders and the test is the rest of them (t2t.engine.fewshot.shot_split).
    """
    checkpoint, info, cfg, resolutions_ = entry
    shots = parse_shots(args.shots)
    resolution = resolutions_[0]
    pre = preprocessing(cfg, resolution)
    root = args.fewshot
    split_dirs = all(os.path.isdir(os.path.join(root, s)) for s in ("train", "val"))
    train_dir, test_dir = find_split_dirs(root) if split_dirs else (root, None)
    train = ImageFolderDataset(train_dir, pre.transform())
    test = ImageFolderDataset(test_dir, pre.transform()) if test_dir else None
    for ds in (train, test):
        if ds is not None:
            ds.bad_image_hint = ""
    if test is not None:
        check_same_classes(train, test)
    num_classes = len(train.classes)
    try:
        split = shot_split(train.targets, num_classes, shots, args.seed, test_labels_from_rest=test is None)
    except ValueError as e:
        raise ValidateError(f"--fewshot {root!r} --shots {args.shots}: {e}") from None
    if cfg.model.num_classes is None:
        cfg.model.num_classes = info.num_classes
    if cfg.model.num_classes is None:
        raise ValidateError(f"checkpoint {checkpoint!r} has no classifier head to tell its class count: give "
                            "model.num_classes=N")
    model, source = build_model(cfg, checkpoint, info, use_ema, img_size=resolution.img_size)
    model.to(dist.device)

    def features_of(dataset, positions):
        subset = torch.utils.data.Subset(dataset, positions)
        loader = build_eval_loader(subset, batch_size=cfg.eval.batch_size, workers=cfg.data.workers,
                                   num_replicas=dist.world_size, rank=dist.rank, pin_memory=dist.device.type == "cuda")
        return extract_features(model, loader, list(loader.sampler), len(positions), device=dist.device,
                                amp=cfg.train.amp, dist=dist)

    start = time.perf_counter()
    most = split.shots[max(shots)]
    labels = torch.tensor(train.targets)
    if test is None:
        positions = sorted(set(most) | set(split.test))
        table = features_of(train, positions)
        row_of = {p: i for i, p in enumerate(positions)}
        test_features, test_labels = table[[row_of[p] for p in split.test]], labels[split.test]
    else:
        table, row_of = features_of(train, most), {p: i for i, p in enumerate(most)}
        test_features, test_labels = features_of(test, list(range(len(test)))), torch.tensor(test.targets)
    rows = []
    for k in shots:
        picked = split.shots[k]
        top1 = fewshot_accuracy(table[[row_of[p] for p in picked]], labels[picked].to(table.device), test_features,
                                test_labels, num_classes, args.fewshot_l2)
        rows.append({"eval_set": f"fewshot-{k}shot", "top1": top1, "top5": None, "loss": None,
                     "count": len(test_labels), "images_per_sec": None, "model": cfg.model.name,
                     "checkpoint": checkpoint, "weights": "ema" if source in EMA_KEYS else "model",
                     "weights_entry": source, "img_size": resolution.img_size, "crop_pct": resolution.crop_pct,
                     "tta": "none", "interpolation": pre.interpolation, "amp": cfg.train.amp, "data_dir": train.root,
                     "classes": num_classes, "shots": k, "fewshot_seed": args.seed, "fewshot_l2": args.fewshot_l2,
                     "world_size": dist.world_size})
    _logger.info("few-shot probe of %s on %s: %s (%.1f s)", checkpoint, root,
                 ", ".join(f"{r['shots']}-shot {r['top1']:.2f}%" for r in rows), time.perf_counter() - start)
    return rows


def evaluate_set(args: argparse.Namespace, dist: DistInfo, eval_set: EvalSet, entries: list, tta: list[str],
                 use_ema: bool) -> list[dict[str, Any]]:
    """The rows of one evaluation set: every checkpoint at every resolution and TTA mode."""
    first = entries[0][2]  # loader settings (batch, workers, amp, transform) come from the first's config: shared
    dataset = build_dataset(eval_set.root, preprocessing(first, entries[0][3][0]))
    subsets = {}  # checkpoint -> the model outputs scored, one per class folder (None: all, in order)
    for checkpoint, info, cfg, _ in entries:
        if eval_set.name == DATA_DIR_SET:
            check_classes(cfg, info, dataset, checkpoint, allow_mismatch=args.allow_class_mismatch)
            subsets[checkpoint] = None
        else:
            if info.num_classes is not None:
                cfg.model.num_classes = info.num_classes
            elif cfg.model.num_classes is None:
                cfg.model.num_classes = len(dataset.classes)
            subsets[checkpoint] = output_indices(eval_set.name, dataset.root, dataset.classes, cfg.model.num_classes,
                                                 info.classes)
    real_labels = None
    if args.real_labels and eval_set.name == DATA_DIR_SET:
        if not hasattr(dataset, "reader"):
            raise ValidateError(f"--real-labels {args.real_labels!r}: the evaluation set {args.data_dir!r} is not "
                                "an image folder or shards (ReaL labels ImageNet's validation images by file name)")
        fewest = min(entries, key=lambda e: e[2].model.num_classes)  # every model must know every label
        real_labels = load_real_labels(args.real_labels, [os.path.join(dataset.root, dataset.reader.relpath(i))
                                                          for i in range(len(dataset))],
                                       num_classes=fewest[2].model.num_classes, model=f"checkpoint {fewest[0]!r}")
    per_rank = -(-len(dataset) // dist.world_size)
    largest = max(r.img_size for *_, rs in entries for r in rs)
    check_batch_fits(min(first.eval.batch_size, per_rank), largest, dist.device)

    def build_loader(resolution):
        pre = preprocessing(first, resolution)
        data = build_dataset(eval_set.root, pre)
        if first.data.backend == "dali":
            loader = build_dali_eval_loader(data, pre, first, dist)
        else:
            loader = build_eval_loader(
                data, batch_size=first.eval.batch_size, workers=first.data.workers, num_replicas=dist.world_size,
                rank=dist.rank, pin_memory=dist.device.type == "cuda")
        return loader, list(loader.sampler)

    def job(checkpoint, info, cfg, resolution):
        def build():
            model, source = build_model(cfg, checkpoint, info, use_ema, img_size=resolution.img_size)
            weights = "ema" if source in EMA_KEYS else "model"
            pre = preprocessing(first, resolution)
            _logger.info("Using the %s weights (entry %r) of %s on %s: %s (%s) @%d, %s", weights, source, checkpoint,
                         eval_set.name, cfg.model.name, type(model).__name__, resolution.img_size, pre)
            if cfg.model.cpu_backend:
                from .models import cpu

                cpu.apply_backend(model, True, dist.device, cfg.train.amp)
            indices = subsets[checkpoint]
            if indices is not None:
                model = SubsetLogits(model, indices)
            return model.to(dist.device), {
                "eval_set": eval_set.name, "model": cfg.model.name, "checkpoint": checkpoint, "weights": weights,
                "weights_entry": source, "interpolation": pre.interpolation, "amp": cfg.train.amp,
                "data_dir": dataset.root, "classes": len(dataset.classes), "world_size": dist.world_size}
        return SuiteJob(resolution, build)

    jobs = [job(c, i, s, r) for c, i, s, rs in entries for r in rs]
    return run_suite(jobs, build_loader=build_loader, tta=tta, device=dist.device, amp=first.train.amp, dist=dist,
                     real_labels=real_labels)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()

    def evaluate() -> int:
        try:
            dist = init_distributed(args.device)
            setup_logging(dist.is_main)
            rows = run(args, dist)
            if dist.is_main:
                report(rows, args)
            return 0
        finally:
            cleanup_distributed()
    return run_main("t2t-validate", evaluate, interrupted="no results written")


if __name__ == "__main__":
    sys.exit(main())
