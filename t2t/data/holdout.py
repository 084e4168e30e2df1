"""A held-out minival carved from the training folder, decided image by image from its relative path.

An image is held out when the first 8 bytes of the SHA-256 of its path relative to the training
root ('class/file.jpg', '/'-separated), read as an integer, fall below `fraction` x 2**64. The
decision is a function of the path alone: the same images are held out whatever the listing order,
the world size, the seed or the machine, and adding images to a class never moves the others.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Iterable

import numpy as np

from .dataset import DatasetError, ImageFolderDataset

__all__ = ["holdout_positions", "is_held_out", "split_minival"]

_SCALE = 2 ** 64


def is_held_out(relative_path: str, fraction: float) -> bool:
    """Whether the image at `relative_path` (under the training root) belongs to the held-out minival."""
    key = relative_path.replace(os.sep, "/").encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") < fraction * _SCALE


def holdout_positions(relative_paths: Iterable[str], fraction: float) -> tuple[list[int], list[int]]:
    """(positions kept for training, positions held out), each in listing order."""
    keep: list[int] = []
    held: list[int] = []
    for i, path in enumerate(relative_paths):
        (held if is_held_out(path, fraction) else keep).append(i)
    return keep, held


def split_minival(train: ImageFolderDataset, fraction: float, transform: Callable) -> ImageFolderDataset:
    """Take the held-out images out of `train` (in place) and return them as a dataset read with `transform`."""
    samples: Any = train.samples
    if hasattr(samples, "relpath"):  # a SampleList (t2t/data/filelist.py): the relative paths without joining
        relpaths: Iterable[str] = (samples.relpath(i) for i in range(len(samples)))
    else:
        relpaths = (os.path.relpath(path, train.root) for path, _ in samples)
    keep, held = holdout_positions(relpaths, fraction)
    where = f"data.holdout_fraction={fraction} of the {len(samples)} images in {train.root!r}"
    if not held:
        raise DatasetError(f"{where} holds out no image: raise the fraction, or set it to 0 for no minival")

    def subset(positions: list[int]) -> Any:
        return samples.subset(positions) if hasattr(samples, "subset") else [samples[i] for i in positions]

    kept = subset(keep)
    counts = np.bincount(np.asarray([t for _, t in kept] if isinstance(kept, list) else kept.targets, dtype=np.int64),
                         minlength=len(train.classes))
    if not counts.all():
        raise DatasetError(f"{where} holds out every image of class {train.classes[int(np.argmin(counts))]!r}: lower "
                           "the fraction")
    # Built on the whole listing (every class has images), then cut: the minival need not hold every class.
    minival = ImageFolderDataset(train.root, transform, seed=train.seed, classes=train.classes, samples=samples)
    minival.samples = subset(held)
    minival.bad_image_hint = train.bad_image_hint
    train.samples = kept
    return minival
