"""ImageFolder datasets whose per-sample randomness is a function of (seed, epoch, index, repeat slot).

Every ``__getitem__`` reseeds Python's ``random``, NumPy's global RNG and torch's CPU RNG from
(seed, epoch, index) before it decodes and augments (``t2t.rng.reseed_sample``; the scheme is
described there), so a sample's augmentation does not depend on which worker prepares it, how many workers there are, or where an epoch was resumed. Under repeated
augmentation the sampler hands out ``RepeatedSample(index, slot)`` keys, and copy ``slot`` of an
image is seeded with the slot as well, so the copies of one image are augmented differently.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, NamedTuple, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import T2TError, UsageError
from ..rng import reseed_sample
from .decode import to_rgb
from .filelist import SampleList, cached_listing
from ..walk import walk_files
from .readers import FolderReader, Reader

__all__ = [
    "DatasetError",
    "ImageDataset",
    "ImageFolderDataset",
    "IMG_EXTENSIONS",
    "RepeatedSample",
    "SampleKey",
    "check_classes_match",
    "class_indices",
    "SeededDataset",
    "check_same_classes",
    "find_classes",
    "find_split_dirs",
    "find_unreadable_images",
    "resolve_eval_dir",
]

_logger = logging.getLogger(__name__)

# What PIL raises for a file it cannot identify, a truncated or corrupt stream, or a decompression bomb.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class DatasetError(T2TError, ValueError):
    """A dataset folder or image that cannot be used; the message names the path and the fix."""


# ---------------------------------------------------------------------------------------------
# Sample keys


class RepeatedSample(NamedTuple):
    """Copy ``slot`` (0 .. repeats - 1) of image ``index``: the key a repeated-augmentation sampler yields."""

    index: int
    slot: int


SampleKey = Union[int, RepeatedSample]  # what a dataset's __getitem__ accepts


# ---------------------------------------------------------------------------------------------
# Folder discovery


def _is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def class_indices(classes: Sequence[str]) -> list[int] | None:
    """The integer each class folder is named by, if every name is one (ImageNet-V2: '0' ... '999'), else None."""
    if classes and all(name.isascii() and name.isdigit() for name in classes):
        return [int(name) for name in classes]
    return None


def find_classes(root: str) -> list[str]:
    """Class folder names under ``root`` (hidden folders skipped), sorted as torchvision's ImageFolder sorts
    them; folders that are all named by integers (ImageNet-V2's '0' ... '999') are sorted by value, so that
    folder 'k' is class k when the names are 0 ... N-1 (sorted as strings, '10' would come before '2')."""
    _check_dir(root, what="dataset folder")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DatasetError(
            f"no class folders in {root!r}: expected the ImageFolder layout {root}/<class_name>/<image files>"
        )
    indices = class_indices(classes)
    if indices is not None:
        twice = sorted(c for c in classes if indices.count(int(c)) > 1)
        if twice:
            raise DatasetError(f"class folders of {root!r} are named by class index, but {twice[0]!r} and "
                               f"{twice[1]!r} name the same index: rename one of them")
        classes.sort(key=int)
    return classes


def _check_dir(path: str, *, what: str) -> None:
    if not os.path.exists(path):
        raise DatasetError(f"{what} {path!r} does not exist")
    if not os.path.isdir(path):
        raise DatasetError(f"{what} {path!r} is not a directory")


def _is_hidden(relative_path: str) -> bool:
    # Dot-files and dot-folders: macOS AppleDouble "._x.jpg" companions, editor and sync droppings.
    return any(part.startswith(".") for part in relative_path.split(os.sep))


def find_split_dirs(data_dir: str) -> tuple[str, str]:
    """(train_dir, val_dir) = (data_dir/train, data_dir/val), with a clear error if either is missing."""
    _check_dir(data_dir, what="data_dir")
    dirs = []
    for split in ("train", "val"):
        path = os.path.join(data_dir, split)
        if not os.path.isdir(path):
            raise DatasetError(
                f"missing {split!r} folder: expected {path!r} (data_dir must contain train/ and val/, "
                f"each with one sub-folder per class)"
            )
        dirs.append(path)
    return dirs[0], dirs[1]


def resolve_eval_dir(data_dir: str) -> str:
    """data_dir/val if it is a directory, else data_dir itself (a dataset root or a class-folder dir)."""
    val_dir = os.path.join(data_dir, "val")
    return val_dir if os.path.isdir(val_dir) else data_dir


def _class_difference(a: Sequence[str], b: Sequence[str], name_a: str, name_b: str) -> str:
    """The first way two class lists differ: names only in one of them, else the first index whose name differs."""
    set_a, set_b = set(a), set(b)
    only_a = [c for c in a if c not in set_b]
    only_b = [c for c in b if c not in set_a]
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} only in {name_a} (first: {only_a[0]!r})")
        if only_b:
            parts.append(f"{len(only_b)} only in {name_b} (first: {only_b[0]!r})")
        return "; ".join(parts)
    i = next(k for k, (ca, cb) in enumerate(zip(a, b)) if ca != cb)
    return f"same names in another order: class #{i} is {a[i]!r} in {name_a} and {b[i]!r} in {name_b}"


def check_same_classes(train_ds: "ImageFolderDataset", val_ds: "ImageFolderDataset") -> None:
    """Raise DatasetError naming both folders and the first differing class if the class lists differ."""
    a, b = list(train_ds.classes), list(val_ds.classes)
    if a == b:
        return
    detail = _class_difference(a, b, "the training folder", "the validation folder")
    raise DatasetError(
        f"training folder {train_ds.root!r} has {len(a)} classes and validation folder {val_ds.root!r} "
        f"has {len(b)}; they must hold the same class folders: {detail}"
    )


def check_classes_match(expected: Sequence[str], found: Sequence[str], where: str, fix: str = "") -> None:
    """Raise DatasetError if the class folders of ``where`` differ from the classes a checkpoint was trained on.

    Label i means class ``expected[i]`` to the model; scoring or training on folders named otherwise
    would pair images with the wrong labels. ``fix`` is appended to the message (e.g. an override flag).
    """
    expected, found = list(expected), list(found)
    if expected == found:
        return
    detail = _class_difference(expected, found, "the checkpoint", where)
    raise DatasetError(
        f"the class folders of {where} do not match the {len(expected)} classes the checkpoint was trained on "
        f"({len(found)} here): {detail}; the labels would be wrong{fix}"
    )


def find_unreadable_images(paths: Sequence[str], workers: int = 0) -> list[tuple[str, str]]:
    """(path, reason) for every file PIL cannot decode; JPEGs are decoded at 1/8 scale, so a check costs little."""
    reader = FolderReader("", [], [(path, 0) for path in paths])
    return [(paths[i], reason) for i, reason in find_unreadable_samples(reader, range(len(paths)), workers=workers)]


def find_unreadable_samples(reader: Reader, positions: Sequence[int], workers: int = 0) -> list[tuple[int, str]]:
    """(position, reason) for every sample of `reader` at `positions` that PIL cannot decode (cheaply, as above)."""
    loader = torch.utils.data.DataLoader(
        _DecodeCheck(reader, list(positions)), batch_size=64, num_workers=workers, collate_fn=lambda rows: rows)
    return [row for batch in loader for row in batch if row is not None]


class _DecodeCheck(torch.utils.data.Dataset):
    """Item i: None if sample ``positions[i]`` of the reader decodes, else (position, reason)."""

    def __init__(self, reader: Reader, positions: list[int]) -> None:
        self.reader, self.positions = reader, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> tuple[int, str] | None:
        position = self.positions[index]
        try:
            with self.reader.open(position) as img:
                img.draft("RGB", (1, 1))  # JPEG: decode in the DCT domain at the smallest scale
                img.load()
        except _DECODE_ERRORS as exc:
            return position, f"{type(exc).__name__}: {exc}"
        return None


# ---------------------------------------------------------------------------------------------
# Datasets


class SeededDataset(torch.utils.data.Dataset):
    """Base of the training datasets: an epoch shared with workers, and per-sample reseeding."""

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = int(seed)
        # The epoch lives in shared memory so persistent DataLoader workers see set_epoch() calls
        # made in the main process (call it before iterating the loader).
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation randomness __getitem__ draws (visible to live workers)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch[0] = int(epoch)

    def check_index(self, key: SampleKey) -> tuple[int, int]:
        """(index in [0, len), repeat slot) of a sample key; negative indices count from the end."""
        index, slot = key if isinstance(key, RepeatedSample) else (key, 0)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        if slot < 0:
            raise IndexError(f"repeat slot {slot} of index {index} must be >= 0")
        return index % n, slot

    def reseed(self, index: int, slot: int = 0) -> None:
        """Seed the global RNGs from (seed, epoch, index, slot): the sample's augmentation depends on nothing else.

        Slot 0 (every sample without repeated augmentation) keeps the seed of (seed, epoch, index).
        """
        reseed_sample(self.seed, self.epoch, index, slot)


class ImageDataset(SeededDataset):
    """Images and classes from a reader (t2t/data/readers.py), with per-sample seeded augmentation.

    The dataset never learns where the bytes came from: it asks its reader for position i. If the
    transform has a ``decode_and_crop(image)`` method (see ``FastTrainTransform``), the dataset hands
    it the opened, not yet decoded, image so it can decode at reduced size; otherwise the image is
    decoded and converted to RGB here.
    """

    def __init__(self, reader: Reader, transform: Callable | None = None, *, seed: int = 0,
                 skip_bad_images: bool = False) -> None:
        super().__init__(seed=seed)
        self.reader = reader
        self.root = reader.root
        self.classes: list[str] = list(reader.classes)
        self.class_to_idx: dict[str, int] = {name: i for i, name in enumerate(self.classes)}
        self.transform = transform
        self.skip_bad_images = bool(skip_bad_images)
        self.bad_images = 0  # unreadable images met in this process (with skip_bad_images=True)
        # How else a user can go on past an unreadable image; tools without that setting clear it.
        self.bad_image_hint = ", or set data.skip_bad_images=true to substitute the next readable image"

    @property
    def samples(self) -> Sequence[tuple[str, int]]:
        """(path, class index) of every image, in order: image folders only (shards have no file per image)."""
        if not isinstance(self.reader, FolderReader):
            raise AttributeError(f"{self.root!r} is read as {self.reader.layout}: its samples have no paths; use "
                                 ".reader")
        return self.reader.samples

    @samples.setter
    def samples(self, samples: Sequence[tuple[str, int]]) -> None:
        self.reader = FolderReader(self.root, self.classes, samples)

    @property
    def targets(self) -> list[int]:
        """The class index of every sample, in order."""
        return [int(t) for t in self.reader.targets]

    def __len__(self) -> int:
        return len(self.reader)

    def _decode(self, position: int) -> Any:
        decode_and_crop = getattr(self.transform, "decode_and_crop", None)
        with self.reader.open(position) as img:
            if decode_and_crop is not None:
                return decode_and_crop(img)
            img.load()
            return to_rgb(img)

    def __getitem__(self, key: SampleKey) -> tuple[Any, int]:
        index, slot = self.check_index(key)
        n = len(self.reader)
        for attempt in range(n):
            # Reseed before every attempt, so the result depends only on (seed, epoch, index, slot).
            self.reseed(index, slot)
            position = (index + attempt) % n
            try:
                image = self._decode(position)
                break
            except _DECODE_ERRORS as exc:
                path = self.reader.path(position)
                if not self.skip_bad_images:
                    raise DatasetError(
                        f"cannot read image {path!r}: {type(exc).__name__}: {exc}. Replace or delete the "
                        f"file{self.bad_image_hint}"
                    ) from exc
                self.bad_images += 1
                _logger.warning("skipping unreadable image %s (%s: %s)", path, type(exc).__name__, exc)
        else:
            raise DatasetError(f"no readable image in {self.root!r}: every one of the {n} files failed to decode")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.reader.target(position)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root!r}, images={len(self)}, classes={len(self.classes)}, "
            f"seed={self.seed}, transform={self.transform!r})"
        )


class ImageFolderDataset(ImageDataset):
    """ImageFolder-layout dataset (``root/<class>/<image>``): an ImageDataset over a FolderReader."""

    def __init__(
        self,
        root: str,
        transform: Callable | None = None,
        *,
        seed: int = 0,
        skip_bad_images: bool = False,
        classes: Sequence[str] | None = None,
        samples: SampleList | None = None,
        list_cache: str | None = None,
    ) -> None:
        """`samples`: the folder's listing made elsewhere (rank 0's, broadcast); `list_cache`: a file
        where the listing is kept between starts (see t2t/data/filelist.py)."""
        super().__init__(open_folder(root, classes=classes, samples=samples, list_cache=list_cache), transform,
                         seed=seed, skip_bad_images=skip_bad_images)


def open_folder(root: str, *, classes: Sequence[str] | None = None, samples: SampleList | None = None,
                list_cache: str | None = None) -> FolderReader:
    """The FolderReader of an ImageFolder split: its classes and images, listed here unless given."""
    root = os.fspath(root)
    _check_dir(root, what="dataset folder")
    if classes is None:
        classes = find_classes(root)
    else:
        classes = list(classes)
        for name in classes:
            _check_dir(os.path.join(root, name), what=f"class folder for class {name!r}")
    if samples is None:
        samples = cached_listing(root, classes, list_cache, is_image=_is_image_file, is_hidden=_is_hidden)
    counts = np.bincount(samples.targets, minlength=len(classes)) if len(samples) else \
        np.zeros(len(classes), dtype=np.int64)
    if len(counts) != len(classes):
        raise ValueError(f"samples of {len(counts)} classes given for the {len(classes)} classes of {root!r}")
    if not counts.all():
        class_dir = os.path.join(root, classes[int(np.argmin(counts))])
        raise DatasetError(
            f"class folder {class_dir!r} holds no images (looked for {', '.join(IMG_EXTENSIONS)}); "
            f"add images or remove the folder"
        )
    # Compact: three arrays instead of a tuple and a string per image (see t2t/data/filelist.py).
    return FolderReader(root, classes, samples)


def list_images(inputs: Sequence[str]) -> list[str]:
    """Image files named, or found (recursively, sorted) under the folders named (a tool's --images)."""
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            for dirpath, names in walk_files(item):  # regular files, each real folder once
                paths.extend(os.path.join(dirpath, n) for n in names if n.lower().endswith(IMG_EXTENSIONS))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UsageError(f"--images {item!r}: no such file or folder")
    if not paths:
        raise UsageError(f"--images {' '.join(inputs)}: no image files ({', '.join(IMG_EXTENSIONS)})")
    return paths
