#!/usr/bin/env python
"""Dense token labels from a teacher: its classifier applied at every location of its last feature map.

    python scripts/generate_token_labels.py --teacher FILE --teacher-model NAME --data-dir DIR \\
        --output LABELDIR [--topk 5] [--img-size 224] [--batch-size 64] [--workers 4]
    torchrun --nproc_per_node=8 scripts/generate_token_labels.py ...    # each process labels its share

For every image DIR/train/<class>/<name>.<ext> (or DIR/<class>/... without a train/ folder) it writes
LABELDIR/<class>/<name>.pt: the teacher's top-k scores and class indices at each location, (k, H, W).
The whole image is resized to --img-size (no centre crop), so the map covers what a training crop can
cover. Files are written whole (temporary name, then rename); an interrupted run continues where it
stopped, and LABELDIR/labels.json records the teacher (path, size, sha256) so labels of two teachers
are never mixed. Under torchrun rank r of W labels images r, r + W, ... (the ShardSampler order).

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
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import t2t  # noqa: E402,F401
from t2t.cli import ArgumentParser, UsageError, run_main  # noqa: E402
from t2t.data.dataset import ImageFolderDataset  # noqa: E402
from t2t.data.sampler import ShardSampler  # noqa: E402
from t2t.data.token_label import label_path, save_label_map  # noqa: E402
from t2t.data.transforms import ToNormalizedTensor  # noqa: E402
from t2t.engine.teacher import load_teacher  # noqa: E402
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
        img = self.dataset._decode(index)
        return self.to_tensor(img.resize((self.img_size, self.img_size), self.bicubic)), index


def _check_record(output: str, record: dict) -> None:
    """Labels of another teacher or setting already in --output: refuse instead of mixing them."""
    path = os.path.join(output, "labels.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = json.load(f)
    for key in ("sha256", "topk", "img_size", "model"):
        if saved.get(key) != record[key]:
            raise UsageError(f"--output {output!r} holds labels made with {key}={saved.get(key)!r} (teacher "
                             f"{saved.get('path')!r}); this run has {key}={record[key]!r} (teacher "
                             f"{record['path']!r}): choose another --output")


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
    parser.add_argument("--log-interval", type=int, default=20, help="batches between progress lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_main("generate_token_labels.py", lambda: _generate(args),
                    interrupted=f"the label files written so far in {args.output!r} are complete")


def _generate(args: argparse.Namespace) -> int:
    for flag, value, low in (("--topk", args.topk, 1), ("--img-size", args.img_size, 16),
                             ("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                             ("--log-interval", args.log_interval, 1)):
        if value < low:
            raise UsageError(f"{flag}={value}: expected >= {low}")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if args.device == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    train_dir = os.path.join(args.data_dir, "train")
    root = train_dir if os.path.isdir(train_dir) else args.data_dir
    dataset = ImageFolderDataset(root)
    if os.path.abspath(args.output).startswith(os.path.abspath(root) + os.sep) or \
            os.path.abspath(args.output) == os.path.abspath(root):
        raise UsageError(f"--output {args.output!r} lies inside the images {root!r}: choose a folder outside it")
    teacher = load_teacher(args.teacher, model_name=args.teacher_model, num_classes=len(dataset.classes),
                           img_size=args.img_size, device=device, source="--teacher")
    if args.topk > len(dataset.classes):
        raise UsageError(f"--topk={args.topk}: the dataset has only {len(dataset.classes)} classes")
    record = dict(teacher.identity, topk=args.topk, img_size=args.img_size, classes=dataset.classes)
    _check_record(args.output, record)
    os.makedirs(args.output, exist_ok=True)
    if rank == 0:
        tmp = os.path.join(args.output, f".labels.json.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, os.path.join(args.output, "labels.json"))

    relpaths = [os.path.relpath(p, root) for p, _ in dataset.samples]
    todo = [i for i in ShardSampler(len(dataset), world, rank)
            if not os.path.isfile(label_path(args.output, relpaths[i]))]
    done_before = len(ShardSampler(len(dataset), world, rank)) - len(todo)
    _logger.info("rank %d of %d: %d images to label, %d already done (in %s)", rank, world, len(todo), done_before,
                 args.output)
    mean = teacher.model.pretrained_cfg.get("mean", (0.485, 0.456, 0.406))
    std = teacher.model.pretrained_cfg.get("std", (0.229, 0.224, 0.225))
    loader = DataLoader(torch.utils.data.Subset(_Images(dataset, args.img_size, mean, std), todo),
                        batch_size=args.batch_size, num_workers=args.workers, shuffle=False)
    model = teacher.model
    t0, written = time.perf_counter(), 0
    with torch.no_grad():
        for step, (images, indices) in enumerate(loader):
            scores = dense_logits(model, images.to(device)).float()  # (B, C, H, W)
            values, classes = scores.topk(args.topk, dim=1)
            for value, cls, index in zip(values.cpu(), classes.cpu(), indices.tolist()):
                save_label_map(label_path(args.output, relpaths[index]), value, cls,
                               teacher=record["sha256"])
            written += len(indices)
            if (step + 1) % args.log_interval == 0 or written == len(todo):
                rate = written / max(time.perf_counter() - t0, 1e-9)
                _logger.info("rank %d: %d/%d images, %.1f img/s, eta %.0f s", rank, written, len(todo), rate,
                             (len(todo) - written) / max(rate, 1e-9))
    _logger.info("rank %d: labelled %d images (map %dx%d, top-%d)", rank, written,
                 *(tuple(scores.shape[-2:]) if written else (0, 0)), args.topk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
