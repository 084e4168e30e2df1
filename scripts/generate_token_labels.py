#!/usr/bin/env python
"""Dense token labels from a teacher: its classifier applied at every location of its last feature map.

    python scripts/generate_token_labels.py --teacher FILE --teacher-model NAME --data-dir DIR \\
        --output LABELDIR [--topk 5] [--img-size 224] [--batch-size 64] [--workers 4]
    torchrun --nproc_per_node=8 scripts/generate_token_labels.py ...    # each process labels its share

For every image DIR/train/<class>/<name>.<ext> (or DIR/<class>/... without a train/ folder) it writes
LABELDIR/<class>/<name>.pt: the teacher's top-k scores and class indices at each location, (k, H, W).
The whole image is resized to --img-size (no centre crop), so the map covers what a training crop can
cover. Files are written whole (temporary name, then rename); an interrupted run continues where it
stopped: every existing file is read and checked (readable, this teacher's, the map's shape, class
indices in range, finite scores) and written again if it fails. LABELDIR/labels.json records the
teacher (path, size, sha256) and the classes, so labels of two teachers or data sets are never mixed;
a teacher whose checkpoint names its classes must name the data's, in the same order. Under torchrun rank r of W labels images r, r + W, ... (the ShardSampler order).

Teachers: a ViT-like model (forward_features gives (B, prefix + N, D) tokens) has its head (or its
aux_head, if it has one, as TokenLabeling does) applied to each patch token; a CNN (B, C, H, W) has its
classifier applied at each position.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import t2t  # noqa: E402,F401
from t2t.cli import ArgumentParser, UsageError, check_output_folder, run_main  # noqa: E402
from t2t.config import MAX_BATCH  # noqa: E402
from t2t.data.dataset import _DECODE_ERRORS, DatasetError, ImageFolderDataset  # noqa: E402
from t2t.data.loader import init_loader_worker  # noqa: E402
from t2t.data.sampler import ShardSampler  # noqa: E402
from t2t.data.token_label import LabelMapError, label_path, read_label_record, save_label_map  # noqa: E402
from t2t.data.transforms import ToNormalizedTensor  # noqa: E402
from t2t.engine.distributed import resolve_device  # noqa: E402
from t2t.engine.teacher import load_teacher  # noqa: E402
from t2t.progress import Progress  # noqa: E402
from t2t.inference import check_batch_fits  # noqa: E402
from t2t.outputs import CtrlC, workers_stopped, write_text  # noqa: E402
from t2t.tools.token_labels import dense_logits  # noqa: E402

_logger = logging.getLogger("t2t.labels")


class _Images(torch.utils.data.Dataset):
    """(image tensor, index) of the dataset's images, resized whole to img_size."""

    def __init__(self, dataset: ImageFolderDataset, img_size: int, mean, std) -> None:
        from PIL import Image

        self.dataset, self.img_size, self.to_tensor = dataset, img_size, ToNormalizedTensor(mean, std)
        self.bicubic = Image.BICUBIC

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            img = self.dataset._decode(index)
        except _DECODE_ERRORS as e:  # every image needs its labels: none is skipped
            raise DatasetError(f"cannot read image {self.dataset.reader.path(index)!r}: {type(e).__name__}: {e}. "
                               "Replace or delete the file (token labels are made for every training image)") from None
        return self.to_tensor(img.resize((self.img_size, self.img_size), self.bicubic)), index


def _check_record(output: str, record: dict) -> None:
    """Labels of another teacher, setting or data set already in --output: refuse instead of mixing them."""
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
    for key in ("sha256", "topk", "img_size", "model"):
        if saved.get(key) != record[key]:
            raise UsageError(f"--output {output!r} holds labels made with {key}={saved.get(key)!r} (teacher "
                             f"{saved.get('path')!r}); this run has {key}={record[key]!r} (teacher "
                             f"{record['path']!r}): choose another --output")
    if "classes" in saved and list(saved["classes"]) != list(record["classes"]):
        raise UsageError(f"--output {output!r} holds labels of another data set ({len(saved['classes'])} classes in "
                         f"its labels.json, {len(record['classes'])} in --data-dir): choose another --output")


def _problem(path: str, record: dict, shape: tuple[int, ...], num_classes: int) -> str | None:
    """Why an existing label file must be written again (unreadable, of another teacher, wrong shape...), or None."""
    try:
        values, indices, teacher = read_label_record(path)
    except LabelMapError as e:
        return str(e)
    if teacher is not None and teacher != record["sha256"]:
        return f"made by another teacher (sha256 {teacher[:12]})"
    if tuple(values.shape) != shape:
        return f"a {tuple(values.shape)} map, expected {shape}"
    if int(indices.min()) < 0 or int(indices.max()) >= num_classes:
        return f"class index {int(indices.max())} outside the {num_classes} classes"
    if not bool(torch.isfinite(values).all()):
        return "NaN or infinite scores"
    return None


def _todo(output: str, relpaths: list[str], shard: list[int], record: dict, shape: tuple[int, ...],
          num_classes: int) -> list[int]:
    """Images of this shard without a sound label file; each existing file is read and checked, not trusted."""
    listed: dict[str, set[str]] = {}
    todo, bad = [], []
    for i in shard:
        path = label_path(output, relpaths[i])
        folder, name = os.path.split(path)
        if folder not in listed:  # one listing per class folder, not one stat per image
            listed[folder] = {e.name for e in os.scandir(folder)} if os.path.isdir(folder) else set()
        if name not in listed[folder]:
            todo.append(i)
            continue
        problem = _problem(path, record, shape, num_classes)
        if problem is not None:
            todo.append(i)
            bad.append((path, problem))
    if bad:
        _logger.warning("%d existing label files are written again (unreadable or not of this teacher and setting; "
                        "first: %s: %s)", len(bad), bad[0][0], bad[0][1])
    return todo


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="checkpoint file of the teacher")
    parser.add_argument("--teacher-model", default=None, help="timm name (default: the one the checkpoint records)")
    parser.add_argument("--data-dir", required=True, help="dataset folder (with train/) or a folder of class folders")
    parser.add_argument("--output", required=True, help="LABELDIR: one <class>/<name>.pt per image")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--log-interval", type=int, default=20, help="batches between progress lines when not on a terminal")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_main("generate_token_labels.py", lambda: _generate(args),
                    interrupted=f"the label files written so far in {args.output!r} are complete")


def _generate(args: argparse.Namespace) -> int:
    for flag, value, low, high in (("--topk", args.topk, 1, None), ("--img-size", args.img_size, 16, 16384),
                                   ("--batch-size", args.batch_size, 1, MAX_BATCH), ("--workers", args.workers, 0, 1024),
                                   ("--log-interval", args.log_interval, 1, None)):
        if value < low or (high is not None and value > high):
            raise UsageError(f"{flag}={value}: expected {low} to {high}" if high else f"{flag}={value}: expected >= {low}")
    check_output_folder(args.output)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", 0)),
                            int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    train_dir = os.path.join(args.data_dir, "train")
    root = train_dir if os.path.isdir(train_dir) else args.data_dir
    dataset = ImageFolderDataset(root)
    real_output, real_root = os.path.realpath(args.output), os.path.realpath(root)
    if real_output == real_root or real_output.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UsageError(f"--output {args.output!r} lies inside the images {root!r} (real path {real_output!r}): "
                         "choose a folder outside it")
    if args.topk > len(dataset.classes):
        raise UsageError(f"--topk={args.topk}: the dataset has only {len(dataset.classes)} classes")
    shard = list(ShardSampler(len(dataset), world, rank))
    check_batch_fits(min(args.batch_size, max(len(shard), 1)), args.img_size, device)
    teacher = load_teacher(args.teacher, model_name=args.teacher_model, num_classes=len(dataset.classes),
                           img_size=args.img_size, device=device, source="--teacher", classes=dataset.classes,
                           model_source="--teacher-model")
    record = dict(teacher.identity, topk=args.topk, img_size=args.img_size, classes=dataset.classes)
    _check_record(args.output, record)
    os.makedirs(args.output, exist_ok=True)
    if rank == 0:
        write_text(os.path.join(args.output, "labels.json"), json.dumps(record, indent=1))
    model = teacher.model
    with torch.no_grad():  # the map's size, from one blank image: every file must have it
        grid = tuple(dense_logits(model, torch.zeros(1, 3, args.img_size, args.img_size, device=device)).shape[-2:])
    relpaths = [os.path.relpath(p, root) for p, _ in dataset.samples]
    todo = _todo(args.output, relpaths, shard, record, (args.topk, *grid), len(dataset.classes))
    _logger.info("rank %d of %d: %d images to label, %d already done (in %s)", rank, world, len(todo),
                 len(shard) - len(todo), args.output)
    mean = model.pretrained_cfg.get("mean", (0.485, 0.456, 0.406))
    std = model.pretrained_cfg.get("std", (0.229, 0.224, 0.225))
    # Workers ignore Ctrl-C: the main process stops them, so an interruption is one line, not their tracebacks.
    loader = DataLoader(torch.utils.data.Subset(_Images(dataset, args.img_size, mean, std), todo),
                        batch_size=args.batch_size, num_workers=args.workers, shuffle=False,
                        worker_init_fn=init_loader_worker)
    written = 0
    # A redrawn line with the rate and the ETA on a terminal; a log line every --log-interval batches elsewhere.
    with torch.no_grad(), CtrlC() as ctrl_c, workers_stopped(loader) as batches, \
            Progress(len(todo), f"rank {rank}: labelling", every_updates=args.log_interval, logger=_logger,
                     enabled=rank == 0 or not sys.stderr.isatty()) as progress:
        # A Ctrl-C that Python swallows (at a worker's start) still stops at the next batch.
        for images, indices in batches:
            ctrl_c.check()
            scores = dense_logits(model, images.to(device)).float()  # (B, C, H, W)
            values, classes = scores.topk(args.topk, dim=1)
            for value, cls, index in zip(values.cpu(), classes.cpu(), indices.tolist()):
                save_label_map(label_path(args.output, relpaths[index]), value, cls,
                               teacher=record["sha256"])
            written += len(indices)
            progress.update(len(indices))
        ctrl_c.check()
    _logger.info("rank %d: labelled %d images (map %dx%d, top-%d)", rank, written, *grid, args.topk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
