#!/usr/bin/env python3
"""Sort the flat ImageNet validation folder into one folder per class (synset), for validate.py.

    python scripts/prepare_imagenet_val.py --val-dir ILSVRC2012_img_val --labels LOC_val_solution.csv \
        --out /data/imagenet/val            # symlinks (default); --copy or --move instead

Two label files are understood, told apart by their content:
  * text, one synset id per line (e.g. n01751748), in image order: line i labels the i-th image of
    the folder in sorted file-name order (ILSVRC2012_val_00000001.JPEG, ...);
  * CSV with the header `ImageId,PredictionString` (Kaggle's LOC_val_solution.csv): the synset is the
    first token of PredictionString, ImageId is the file name without its extension.
Nothing is written until every image has a label and every destination is free: existing files are
never overwritten, and the default (symlinks) leaves the source untouched.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import shutil
import sys
from typing import Sequence

_logger = logging.getLogger("prepare_imagenet_val")

SYNSET = re.compile(r"^n\d{8}$")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


class PrepareError(Exception):
    """A problem with the inputs, reported in one line."""


def list_images(val_dir: str) -> list[str]:
    """Image file names directly inside `val_dir`, sorted."""
    if not os.path.isdir(val_dir):
        raise PrepareError(f"--val-dir {val_dir!r} is not a directory")
    names = sorted(n for n in os.listdir(val_dir)
                   if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(val_dir, n)))
    if not names:
        raise PrepareError(f"--val-dir {val_dir!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return names


def _check_synset(synset: str, where: str) -> str:
    if not SYNSET.match(synset):
        raise PrepareError(f"{where}: {synset!r} is not a synset id like n01751748")
    return synset


def read_text_labels(path: str, lines: list[str], images: list[str]) -> dict[str, str]:
    """One synset per line, in image order -> {file name: synset}."""
    labels = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            labels.append(_check_synset(line.strip(), f"{path} line {number}"))
    if len(labels) != len(images):
        raise PrepareError(
            f"{path} has {len(labels)} labels but the validation folder has {len(images)} images; "
            "a one-synset-per-line file must label every image, in file-name order")
    return dict(zip(images, labels))


def read_csv_labels(path: str, lines: list[str], images: list[str]) -> dict[str, str]:
    """`ImageId,PredictionString` rows -> {file name: first synset of the prediction string}."""
    by_stem = {os.path.splitext(name)[0]: name for name in images}
    reader = csv.reader(lines)
    header = [h.strip() for h in next(reader)]
    try:
        id_col, pred_col = header.index("ImageId"), header.index("PredictionString")
    except ValueError:
        raise PrepareError(f"{path} line 1: expected the header ImageId,PredictionString, got {','.join(header)!r}")
    mapping, missing = {}, []
    for number, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(id_col, pred_col) or not row[pred_col].split():
            raise PrepareError(f"{path} line {number}: expected ImageId,PredictionString, got {','.join(row)!r}")
        image_id = os.path.splitext(row[id_col].strip())[0]
        synset = _check_synset(row[pred_col].split()[0], f"{path} line {number}")
        if image_id not in by_stem:
            missing.append(image_id)
            continue
        if by_stem[image_id] in mapping:
            raise PrepareError(f"{path} line {number}: image {image_id!r} is listed twice")
        mapping[by_stem[image_id]] = synset
    if missing:
        raise PrepareError(f"{path} lists {len(missing)} images that are not in the validation folder "
                           f"(first: {missing[0]!r})")
    unlabelled = [name for name in images if name not in mapping]
    if unlabelled:
        raise PrepareError(f"{path} has no label for {len(unlabelled)} images of the validation folder "
                           f"(first: {unlabelled[0]!r})")
    return mapping


def read_labels(path: str, images: list[str]) -> dict[str, str]:
    """Detect the label file's format from its first line and return {file name: synset}."""
    try:
        with open(path, newline="") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise PrepareError(f"--labels {path!r} cannot be read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise PrepareError(f"--labels {path!r} is not a text file: {e}") from e
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise PrepareError(f"--labels {path!r} is empty")
    if "," in first:
        return read_csv_labels(path, lines, images)
    return read_text_labels(path, lines, images)


def plan(val_dir: str, out: str, labels: dict[str, str]) -> list[tuple[str, str]]:
    """(source, destination) pairs; refuses if any destination already exists."""
    pairs = [(os.path.join(os.path.abspath(val_dir), name), os.path.join(out, synset, name))
             for name, synset in sorted(labels.items())]
    taken = [dst for _, dst in pairs if os.path.lexists(dst)]
    if taken:
        raise PrepareError(f"{len(taken)} destination files already exist (first: {taken[0]!r}); "
                           "remove them or choose another --out, nothing was written")
    return pairs


def place(pairs: list[tuple[str, str]], mode: str) -> None:
    for src, dst in pairs:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.lexists(dst):  # appeared since planning
            raise PrepareError(f"{dst!r} already exists; stopped before overwriting it")
        if mode == "link":
            os.symlink(src, dst)
        elif mode == "copy":
            shutil.copy2(src, dst)
        else:
            shutil.move(src, dst)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--val-dir", required=True, help="the flat folder of ILSVRC2012_val_*.JPEG files")
    p.add_argument("--labels", required=True, help="one synset per line, or LOC_val_solution.csv")
    p.add_argument("--out", required=True, help="where the class folders are created")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--link", dest="mode", action="store_const", const="link", help="symlink (default)")
    mode.add_argument("--copy", dest="mode", action="store_const", const="copy", help="copy the files")
    mode.add_argument("--move", dest="mode", action="store_const", const="move", help="move the files")
    p.set_defaults(mode="link")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        images = list_images(args.val_dir)
        labels = read_labels(args.labels, images)
        pairs = plan(args.val_dir, args.out, labels)
        place(pairs, args.mode)
    except (PrepareError, OSError) as e:
        print(f"prepare_imagenet_val.py: error: {e}", file=sys.stderr)
        return 2
    verb = {"link": "Linked", "copy": "Copied", "move": "Moved"}[args.mode]
    _logger.info("%s %d images into %d class folders under %s", verb, len(pairs), len(set(labels.values())), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
