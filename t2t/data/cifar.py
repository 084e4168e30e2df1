"""CIFAR-10 / CIFAR-100 read in place from the extracted python-version folders.

``cifar-10-batches-py`` holds ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and
``batches.meta``; ``cifar-100-python`` holds ``train``, ``test`` and ``meta``. Each batch file is a
pickled dict with ``b'data'`` (N x 3072 uint8: 1024 red, 1024 green, 1024 blue values, rows of 32)
and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100); the meta file names the classes
(``b'label_names'`` / ``b'fine_label_names'``). This is the layout torchvision and the official
T2T-ViT transfer script download; it is read as is, nothing is converted or downloaded.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image

from .dataset import DatasetError, SampleKey, SeededDataset

__all__ = ["CIFAR_LAYOUTS", "CIFARDataset", "CIFARLayout", "find_cifar_dir", "read_cifar_split"]


@dataclass(frozen=True)
class CIFARLayout:
    """File names and dict keys of one CIFAR variant."""

    folder: str  # the name the archive extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    labels_key: bytes
    names_key: bytes


CIFAR_LAYOUTS = (
    CIFARLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                "batches.meta", b"labels", b"label_names"),
    CIFARLayout("cifar-100-python", ("train",), ("test",), "meta", b"fine_labels", b"fine_label_names"),
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain containers and NumPy arrays: a batch file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch file")
        return super().find_class(module, name)


def _load_pickle(path: str) -> dict:
    if not os.path.isfile(path):
        raise DatasetError(f"missing CIFAR file {path!r}: the extracted folder must hold it as downloaded")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()  # the files were pickled by Python 2
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as e:
        raise DatasetError(f"cannot read CIFAR file {path!r}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"CIFAR file {path!r} holds a {type(obj).__name__}, expected a pickled dict")
    return obj


def _layout_of(folder: str) -> Optional[CIFARLayout]:
    for layout in CIFAR_LAYOUTS:
        if os.path.isfile(os.path.join(folder, layout.meta_file)) and \
                os.path.isfile(os.path.join(folder, layout.test_files[0])):
            return layout
    return None


def find_cifar_dir(data_dir: str) -> Optional[tuple[str, CIFARLayout]]:
    """(folder, layout) if `data_dir` is an extracted CIFAR folder or directly holds one; else None."""
    if not os.path.isdir(data_dir):
        return None
    layout = _layout_of(data_dir)
    if layout is not None:
        return data_dir, layout
    for layout in CIFAR_LAYOUTS:  # the torchvision root ("./data") that holds the extracted folder
        inner = os.path.join(data_dir, layout.folder)
        if os.path.isdir(inner) and _layout_of(inner) == layout:
            return inner, layout
    return None


def read_class_names(folder: str, layout: CIFARLayout) -> list[str]:
    path = os.path.join(folder, layout.meta_file)
    names = _load_pickle(path).get(layout.names_key)
    if not isinstance(names, list) or not names:
        raise DatasetError(f"CIFAR meta file {path!r} has no {layout.names_key.decode()!r} list of class names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_cifar_split(folder: str, layout: CIFARLayout, train: bool, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """Images (N, 32, 32, 3) uint8 and labels of the train or test split, checked file by file."""
    images, labels = [], []
    for name in layout.train_files if train else layout.test_files:
        path = os.path.join(folder, name)
        batch = _load_pickle(path)
        data, batch_labels = batch.get(b"data"), batch.get(layout.labels_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DatasetError(f"CIFAR file {path!r}: b'data' must be a uint8 N x 3072 array, got {got}")
        if not isinstance(batch_labels, list) or len(batch_labels) != len(data):
            got = len(batch_labels) if isinstance(batch_labels, list) else type(batch_labels).__name__
            raise DatasetError(f"CIFAR file {path!r}: expected {len(data)} {layout.labels_key!r} labels, got {got}")
        bad = [t for t in batch_labels if not isinstance(t, int) or not 0 <= t < num_classes]
        if bad:
            raise DatasetError(f"CIFAR file {path!r}: label {bad[0]!r} outside the {num_classes} classes of the meta file")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # planes -> (N, H, W, C)
        labels.extend(batch_labels)
    return np.ascontiguousarray(np.concatenate(images)), labels


class CIFARDataset(SeededDataset):
    """One split of an extracted CIFAR folder, as RGB PIL images, with per-sample seeded augmentation."""

    def __init__(self, root: str, train: bool, transform: Callable | None = None, *, seed: int = 0) -> None:
        found = find_cifar_dir(os.fspath(root))
        if found is None:
            names = " or ".join(repr(layout.folder) for layout in CIFAR_LAYOUTS)
            raise DatasetError(f"{root!r} is not an extracted CIFAR folder: expected {names} as downloaded "
                               f"(with {CIFAR_LAYOUTS[0].meta_file!r} or {CIFAR_LAYOUTS[1].meta_file!r} inside)")
        super().__init__(seed=seed)
        self.root, self.layout = found
        self.train = train
        self.classes: list[str] = read_class_names(self.root, self.layout)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.images, self.targets = read_cifar_split(self.root, self.layout, train, len(self.classes))
        if not self.targets:
            files = ", ".join(self.layout.train_files if train else self.layout.test_files)
            raise DatasetError(f"the {'training' if train else 'test'} split of CIFAR folder {self.root!r} holds no "
                               f"images ({files}): restore the files as downloaded")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: SampleKey) -> tuple[Any, int]:
        index, slot = self.check_index(key)
        self.reseed(index, slot)
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform is not None else image), self.targets[index]

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return (f"{type(self).__name__}(root={self.root!r}, split={split}, images={len(self)}, "
                f"classes={len(self.classes)}, seed={self.seed}, transform={self.transform!r})")
