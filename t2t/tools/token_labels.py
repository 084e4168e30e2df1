"""Dense token labels from a teacher, written per block of images; and TokenLabeling's label folders imported.

    python scripts/generate_token_labels.py --teacher FILE --data-dir DIR --output LABELDIR \\
        [--teacher-model NAME] [--topk 5] [--img-size 224] [--batch-size 64] [--workers 4] [--block-size 1024]
    torchrun --nproc_per_node=8 scripts/generate_token_labels.py ...    # each process labels its blocks
    python -m t2t.tools.token_labels import --from TL_DIR --data-dir DIR --output LABELDIR

generate: the teacher's top-k scores and class indices at every location of its last feature map,
(k, H, W) per image, for every training image of DIR (an ImageFolder root, DIR/train, or tar shards,
DIR/train/*.tar, as data.format=shards reads them). The whole image is resized to --img-size (no
centre crop), so the map covers what a training crop can cover. The teacher runs in batches under
autocast (bf16 on CUDA, float32 on the CPU; --precision overrides). The maps go to LABELDIR/blocks/,
--block-size images per file (t2t/data/label_blocks.py), written whole (temporary name, fsync, rename);
LABELDIR/labels.json records the teacher (path, size, sha256), the classes and what identifies the
data (sample count, SHA-256 of the images' relative paths), so labels of two teachers or data sets
are never mixed. Under torchrun, rank 0 lists the data (or indexes the shards) and hands the listing
to the others (a gloo group that lives for that broadcast only); rank r of W then labels blocks r,
r + W, ... with no further collective. An
interrupted run continues: every existing block is read and checked (its header, its size, class
indices in range, finite scores) and only missing or unsound blocks are written again.

import: a folder of one label file per image, LABELDIR/<class>/<image stem>.pt (TokenLabeling's
published labels, a (2, k, H, W) tensor each, named by the image's name up to its first dot; or this
project's older per-image layout, named by the name without its extension), into the block
layout for the images of DIR, matched by relative path. Images without a label file are listed in
one line and nothing is written.

Teachers: a ViT-like model (forward_features gives (B, prefix + N, D) tokens) has its head (or its
aux_head, if it has one, as TokenLabeling does) applied to each patch token; a CNN (B, C, H, W) has its
classifier applied at each position.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from ..engine.teacher import TeacherError

__all__ = ["dense_logits", "main", "open_train_reader"]

_logger = logging.getLogger("t2t.labels")

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dense_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class scores at every location of the model's last feature map: (B, num_classes, H, W)."""
    features = model.forward_features(images)
    if features.ndim == 3:  # tokens (B, prefix + N, D)
        prefix = getattr(model, "num_prefix_tokens", 1)
        tokens = features[:, prefix:]
        grid = math.isqrt(tokens.shape[1])
        if grid * grid != tokens.shape[1]:
            raise TeacherError(f"the teacher gives {tokens.shape[1]} patch tokens, not a square grid")
        head = getattr(model, "aux_head", None) or model.get_classifier()
        scores = head(tokens)  # (B, N, C)
        return scores.transpose(1, 2).reshape(scores.shape[0], -1, grid, grid)
    if features.ndim == 4:  # (B, D, H, W)
        head = model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise TeacherError(f"the teacher's classifier is a {type(head).__name__}; expected a Linear layer")
        return torch.einsum("bdhw,cd->bchw", features, head.weight) + head.bias[None, :, None, None]
    raise TeacherError(f"the teacher's forward_features gives a {features.ndim}-d tensor; expected tokens or a map")


def open_train_reader(data_dir: str, fmt: str = "auto"):
    """The reader of the training images of `data_dir` (an ImageFolder root with or without train/, or shards)."""
    from ..data.dataset import open_folder
    from ..data.setup import resolve_format
    from ..data.shards import find_shard_classes, open_shards

    import time

    train_dir = os.path.join(data_dir, "train")
    fmt = resolve_format(data_dir, fmt)
    start = time.perf_counter()
    if fmt == "shards":
        reader = open_shards(train_dir, find_shard_classes(data_dir))
    elif fmt == "imagefolder":
        reader = open_folder(train_dir if os.path.isdir(train_dir) else data_dir)
    else:
        from ..cli import UsageError

        raise UsageError(f"--data-dir {data_dir!r} is read as {fmt}: token labels are made for ImageFolder "
                         "training folders and tar shards")
    _logger.info("listed %d training images of %s in %.1f s", len(reader), reader.root, time.perf_counter() - start)
    return reader


class _Images(torch.utils.data.Dataset):
    """(image tensor, position) of a reader's images, resized whole to img_size."""

    def __init__(self, reader, img_size: int, mean, std) -> None:
        from PIL import Image

        from ..data.dataset import ImageDataset
        from ..data.transforms import ToNormalizedTensor

        self.dataset, self.img_size = ImageDataset(reader), img_size
        self.to_tensor, self.bicubic = ToNormalizedTensor(mean, std), Image.BICUBIC

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int):
        from ..data.dataset import _DECODE_ERRORS, DatasetError

        try:
            img = self.dataset._decode(position)
        except _DECODE_ERRORS as e:  # every image needs its labels: none is skipped
            raise DatasetError(f"cannot read image {self.dataset.reader.path(position)!r}: {type(e).__name__}: {e}. "
                               "Replace or delete it (token labels are made for every training image)") from None
        return self.to_tensor(img.resize((self.img_size, self.img_size), self.bicubic)), position


def open_reader_once(data_dir: str, fmt: str, world: int):
    """open_train_reader on rank 0 only, its reader (or its error) broadcast to the other ranks of torchrun's
    `world` processes: one directory walk or shard index per job, not one per process."""
    if world == 1:
        return open_train_reader(data_dir, fmt)
    from datetime import timedelta

    import torch.distributed as dist

    from ..engine.collectives import broadcast_object
    from ..errors import T2TError

    dist.init_process_group("gloo", timeout=timedelta(minutes=30))  # CPU objects only, whatever the devices
    try:
        reader: Any = None
        if dist.get_rank() == 0:
            try:
                reader = open_train_reader(data_dir, fmt)
            except (T2TError, OSError, ValueError) as e:  # every rank raises it, instead of waiting for a listing
                reader = e
        reader = broadcast_object(reader)  # on the CPU: the collective device stays the CPU without init_distributed
    finally:
        dist.destroy_process_group()
    if isinstance(reader, BaseException):
        raise reader
    return reader


def _check_record(output: str, record: dict, keys=("sha256", "topk", "img_size", "model")) -> None:
    """Labels of another teacher, setting, layout or data set already in --output: refuse instead of mixing them."""
    from ..cli import UsageError

    path = os.path.join(output, "labels.json")
    if not os.path.lexists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"--output {output!r}: its labels.json cannot be read ({type(e).__name__}: {e}); it records "
                         "which teacher made the labels there: restore it, or choose another --output") from None
    if not isinstance(saved, dict):
        raise UsageError(f"--output {output!r}: its labels.json holds a JSON {type(saved).__name__}, not the record "
                         "of a label folder: restore it, or choose another --output")
    if saved.get("format") != record["format"]:
        raise UsageError(f"--output {output!r} holds labels in the one-file-per-image layout: convert them with "
                         f"`python -m t2t.tools.token_labels import --from {output} ...` into another folder, or "
                         "choose another --output")
    for key in keys:
        if saved.get(key) != record[key]:
            raise UsageError(f"--output {output!r} holds labels made with {key}={saved.get(key)!r} (teacher "
                             f"{saved.get('path')!r}); this run has {key}={record[key]!r} (teacher "
                             f"{record['path']!r}): choose another --output")
    if "classes" in saved and list(saved["classes"]) != list(record["classes"]):
        raise UsageError(f"--output {output!r} holds labels of another data set ({len(saved['classes'])} classes in "
                         f"its labels.json, {len(record['classes'])} in --data-dir): choose another --output")
    for key in ("samples", "relpaths_sha256", "block_size"):
        if saved.get(key) != record[key]:
            raise UsageError(f"--output {output!r} holds labels of other data or blocks ({key} {saved.get(key)!r}, "
                             f"this run {record[key]!r}): choose another --output")


def _todo_blocks(output: str, record: dict, mine: list[int], ranges, num_classes: int) -> list[int]:
    """This rank's blocks without a sound file; each existing block is read whole and checked, not trusted."""
    from ..data.label_blocks import block_problem

    todo, bad = [], []
    for block in mine:
        problem = block_problem(output, record, block, *ranges[block], num_classes=num_classes)
        if problem is not None:
            todo.append(block)
            if problem != "missing":
                bad.append((block, problem))
    if bad:
        _logger.warning("%d existing label blocks are written again (first: block %d: %s)", len(bad), *bad[0])
    return todo


class _BlockWriter:
    """Rows of this rank's blocks, collected as batches arrive; each block is written once its last row is in."""

    def __init__(self, output: str, record: dict, ranges, shape: tuple[int, ...], num_classes: int) -> None:
        self.output, self.record, self.ranges, self.shape, self.num_classes = output, record, ranges, shape, num_classes
        self.block_size = record["block_size"]
        self.open: dict[int, list[Any]] = {}  # block -> [values, indices, rows filled]

    def add(self, positions: np.ndarray, values: np.ndarray, indices: np.ndarray) -> int:
        """Put rows in their blocks; returns how many blocks were completed and written."""
        from ..data.label_blocks import block_path, write_block

        written = 0
        for block in np.unique(positions // self.block_size).tolist():
            start, stop = self.ranges[block]
            pick = (positions >= start) & (positions < stop)
            slot = self.open.get(block)
            if slot is None:
                rows = stop - start
                slot = self.open[block] = [np.zeros((rows, *self.shape), np.float16),
                                           np.zeros((rows, *self.shape), np.int32), 0]
            slot[0][positions[pick] - start] = values[pick]
            slot[1][positions[pick] - start] = indices[pick]
            slot[2] += int(pick.sum())
            if slot[2] == stop - start:
                write_block(block_path(self.output, block), slot[0], slot[1], block=block, start=start,
                            data_sha256=self.record["relpaths_sha256"], teacher=self.record.get("sha256"),
                            num_classes=self.num_classes)
                del self.open[block]
                written += 1
        return written


def _check_ranges(args: argparse.Namespace, checks) -> None:
    from ..cli import UsageError

    for flag, value, low, high in checks:
        if value < low or (high is not None and value > high):
            raise UsageError(f"{flag}={value}: expected {low} to {high}" if high else f"{flag}={value}: expected >= {low}")


def _check_output_outside(output: str, root: str) -> None:
    from ..cli import UsageError

    real_output, real_root = os.path.realpath(output), os.path.realpath(root)
    if real_output == real_root or real_output.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UsageError(f"--output {output!r} lies inside the images {root!r} (real path {real_output!r}): "
                         "choose a folder outside it")


def _generate(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from ..cli import UsageError, check_output_folder
    from ..config import MAX_BATCH
    from ..data.label_blocks import BLOCK_FORMAT, BLOCK_VERSION, block_ranges, data_identity
    from ..data.loader import init_loader_worker
    from ..engine.distributed import resolve_device
    from ..engine.teacher import load_teacher
    from ..inference import check_batch_fits
    from ..outputs import CtrlC, workers_stopped, write_text
    from ..progress import Progress

    _check_ranges(args, (("--topk", args.topk, 1, None), ("--img-size", args.img_size, 16, 16384),
                         ("--batch-size", args.batch_size, 1, MAX_BATCH), ("--workers", args.workers, 0, 1024),
                         ("--log-interval", args.log_interval, 1, None), ("--block-size", args.block_size, 1, None)))
    check_output_folder(args.output)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", 0)),
                            int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    reader = open_reader_once(args.data_dir, args.format, world)  # the job's one listing (or shard index)
    _check_output_outside(args.output, reader.root)
    classes = list(reader.classes)
    if args.topk > len(classes):
        raise UsageError(f"--topk={args.topk}: the dataset has only {len(classes)} classes")
    ranges = block_ranges(len(reader), args.block_size)
    mine = list(range(rank, len(ranges), world))  # blocks by index: no collective needed
    teacher = load_teacher(args.teacher, model_name=args.teacher_model, num_classes=len(classes),
                           img_size=args.img_size, device=device, source="--teacher", classes=classes,
                           model_source="--teacher-model")
    model = teacher.model
    with torch.no_grad():  # the map's size, from one blank image: every block must have it
        grid = tuple(dense_logits(model, torch.zeros(1, 3, args.img_size, args.img_size, device=device)).shape[-2:])
    record = dict(teacher.identity, topk=args.topk, img_size=args.img_size, classes=classes, format=BLOCK_FORMAT,
                  version=BLOCK_VERSION, block_size=args.block_size, shape=[args.topk, *grid],
                  **data_identity(reader), data_dir=os.path.abspath(args.data_dir))
    _check_record(args.output, record)
    os.makedirs(args.output, exist_ok=True)
    if rank == 0:
        write_text(os.path.join(args.output, "labels.json"), json.dumps(record, indent=1))
    todo = _todo_blocks(args.output, record, mine, ranges, len(classes))
    positions = [p for block in todo for p in range(*ranges[block])]
    _logger.info("rank %d of %d: %d images to label (%d blocks), %d blocks already done (in %s, %s)", rank, world,
                 len(positions), len(todo), len(mine) - len(todo), args.output, precision)
    check_batch_fits(min(args.batch_size, max(len(positions), 1)), args.img_size, device)
    mean = model.pretrained_cfg.get("mean", (0.485, 0.456, 0.406))
    std = model.pretrained_cfg.get("std", (0.229, 0.224, 0.225))
    # Workers ignore Ctrl-C: the main process stops them, so an interruption is one line, not their tracebacks.
    loader = DataLoader(torch.utils.data.Subset(_Images(reader, args.img_size, mean, std), positions),
                        batch_size=args.batch_size, num_workers=args.workers, shuffle=False,
                        worker_init_fn=init_loader_worker, pin_memory=device.type == "cuda")
    writer = _BlockWriter(args.output, record, ranges, (args.topk, *grid), len(classes))
    dtype = PRECISIONS[precision]
    written = 0
    # A redrawn line with the rate and the ETA on a terminal; a log line every --log-interval batches elsewhere.
    with torch.no_grad(), CtrlC() as ctrl_c, workers_stopped(loader) as batches, \
            Progress(len(positions), f"rank {rank}: labelling", every_updates=args.log_interval, logger=_logger,
                     enabled=rank == 0 or not sys.stderr.isatty()) as progress:
        for images, index in batches:  # a Ctrl-C that Python swallows (at a worker's start) still stops here
            ctrl_c.check()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                scores = dense_logits(model, images.to(device, non_blocking=True))  # (B, C, H, W)
            values, top = scores.float().topk(args.topk, dim=1)
            written += writer.add(index.numpy(), values.half().cpu().numpy(), top.cpu().numpy())
            progress.update(len(index))
        ctrl_c.check()
    _logger.info("rank %d: labelled %d images into %d blocks (map %dx%d, top-%d)", rank, len(positions), written,
                 *grid, args.topk)
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..cli import UsageError, check_output_folder
    from ..data.label_blocks import BLOCK_FORMAT, BLOCK_VERSION, block_path, block_problem, block_ranges, \
        data_identity, write_block
    from ..data.token_label import LabelMapError, label_path, read_label_record
    from ..outputs import CtrlC, write_text
    from ..progress import Progress

    _check_ranges(args, (("--block-size", args.block_size, 1, None), ("--workers", args.workers, 1, 1024)))
    source = args.source
    if not os.path.isdir(source):
        raise UsageError(f"--from {source!r} is not a folder: expected one label file per image, <class>/<stem>.pt")
    check_output_folder(args.output)
    if os.path.realpath(args.output) == os.path.realpath(source):
        raise UsageError(f"--output {args.output!r} is the --from folder: choose another folder for the blocks")
    reader = open_train_reader(args.data_dir, args.format)
    _check_output_outside(args.output, reader.root)
    classes = list(reader.classes)
    listed = _relpaths(reader)
    files = [label_path(source, rel) for rel in listed]
    present: dict[str, set[str]] = {}  # one listing per class folder of --from, not one stat per image
    missing = []
    for k, (rel, path) in enumerate(zip(listed, files)):
        folder, name = os.path.split(path)
        if folder not in present:
            present[folder] = {e.name for e in os.scandir(folder)} if os.path.isdir(folder) else set()
        first_dot = os.path.basename(rel).split(".")[0] + ".pt"  # TokenLabeling cuts the name at its first dot
        if name not in present[folder] and first_dot in present[folder]:
            files[k] = os.path.join(folder, first_dot)
        elif name not in present[folder]:
            missing.append(rel)
    if missing:
        raise LabelMapError(f"--from {source!r} has no label file for {len(missing)} of the {len(listed)} images of "
                            f"{reader.root!r} (first: {missing[0]!r}, expected {label_path(source, missing[0])!r}): "
                            "import labels made for this data")
    values0, indices0, teacher = read_label_record(files[0]) if files else (torch.zeros(0), torch.zeros(0), None)
    shape = list(values0.shape)
    record: dict[str, Any] = {"path": os.path.abspath(source), "size": None, "sha256": teacher, "model": "imported",
                              "img_size": None}
    own = os.path.join(source, "labels.json")  # this project's older per-image folder: keep what made it
    if os.path.exists(own):
        try:
            with open(own, encoding="utf-8") as f:
                saved = json.load(f)
            if isinstance(saved, dict) and list(saved.get("classes", classes)) == classes:
                record.update({k: saved.get(k) for k in ("path", "size", "sha256", "model", "img_size")})
        except (OSError, ValueError):
            pass
    record.update(topk=shape[0], classes=classes, format=BLOCK_FORMAT, version=BLOCK_VERSION,
                  block_size=args.block_size, shape=shape, **data_identity(reader),
                  data_dir=os.path.abspath(args.data_dir), imported_from=os.path.abspath(source))
    _check_record(args.output, record, keys=("sha256", "topk", "model"))
    os.makedirs(args.output, exist_ok=True)
    write_text(os.path.join(args.output, "labels.json"), json.dumps(record, indent=1))
    ranges = block_ranges(len(listed), args.block_size)
    todo = [b for b in range(len(ranges))
            if block_problem(args.output, record, b, *ranges[b], num_classes=len(classes)) is not None]
    _logger.info("importing %d images from %s: %d blocks to write, %d already done", len(listed), source, len(todo),
                 len(ranges) - len(todo))

    def load(position: int):
        values, indices, _ = read_label_record(files[position])
        if list(values.shape) != shape:
            raise LabelMapError(f"label file {files[position]!r} holds a {tuple(values.shape)} map, the first one "
                                f"({files[0]!r}) {tuple(shape)}: every image's map must have one shape")
        if int(indices.min()) < 0 or int(indices.max()) >= len(classes):
            raise LabelMapError(f"label file {files[position]!r} names class {int(indices.max())}, outside the "
                                f"{len(classes)} classes of {reader.root!r}")
        return values.half().numpy(), indices.int().numpy()

    with CtrlC() as ctrl_c, ThreadPoolExecutor(args.workers) as pool, \
            Progress(sum(ranges[b][1] - ranges[b][0] for b in todo), "importing", logger=_logger) as progress:
        for block in todo:
            start, stop = ranges[block]
            rows = list(pool.map(load, range(start, stop)))  # reading small files: I/O-bound, threads suffice
            ctrl_c.check()
            write_block(block_path(args.output, block), np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]),
                        block=block, start=start, data_sha256=record["relpaths_sha256"], teacher=record.get("sha256"),
                        num_classes=len(classes))
            progress.update(stop - start)
    _logger.info("imported %d label maps %s into %d blocks in %s", len(listed), tuple(shape), len(ranges), args.output)
    return 0


def _relpaths(reader) -> list[str]:
    from ..data.label_blocks import relpaths_list

    listed = relpaths_list(reader)
    return [listed.relpath(i) for i in range(len(listed))]


def _generate_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="checkpoint file of the teacher")
    parser.add_argument("--teacher-model", default=None, help="timm name (default: the one the checkpoint records)")
    parser.add_argument("--data-dir", required=True, help="dataset folder (with train/), a folder of class folders, "
                                                          "or shards (DIR/train/*.tar)")
    parser.add_argument("--format", default="auto", choices=("auto", "imagefolder", "shards"))
    parser.add_argument("--output", required=True, help="LABELDIR: labels.json and blocks/")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=1024, help="images per block file")
    parser.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS),
                        help="the teacher's autocast type (auto: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--log-interval", type=int, default=20,
                        help="batches between progress lines when not on a terminal")


def _import_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True,
                        help="folder of one label file per image, <class>/<image stem>.pt")
    parser.add_argument("--data-dir", required=True, help="the images the labels were made for (folder or shards)")
    parser.add_argument("--format", default="auto", choices=("auto", "imagefolder", "shards"))
    parser.add_argument("--output", required=True, help="LABELDIR for labels.json and blocks/")
    parser.add_argument("--block-size", type=int, default=1024, help="images per block file")
    parser.add_argument("--workers", type=int, default=8, help="threads reading label files")


def main(argv: Optional[list[str]] = None) -> int:
    """`generate` (the default) or `import`; see the module's docstring."""
    from ..cli import ArgumentParser, run_main

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("generate", "import") else "generate"
    parser = ArgumentParser(prog=f"token_labels {command}", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    (_import_parser if command == "import" else _generate_parser)(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    body = _import if command == "import" else _generate
    return run_main(f"token_labels {command}", lambda: body(args),
                    interrupted=f"the label blocks written so far in {args.output!r} are complete")


if __name__ == "__main__":
    sys.exit(main())
