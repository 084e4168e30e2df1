"""Where a split's encoded images come from: one small reader per storage layout, one interface.

A reader maps a sample position (what the sampler's key resolves to) to the encoded bytes of one
image and its class; the datasets, both backends and every transform above them see only this
interface, never the layout. Positions are the same at any world size: rank 0's listing or a shard
index fixes them, so order and augmentation stay functions of (seed, epoch, index).

``FolderReader``: the ImageFolder layout (root/<class>/<file>), opened by path.
``ShardReader`` (t2t/data/shards.py): tar shards in the webdataset layout, read by offset.
"""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image

__all__ = ["BlockReader", "FolderReader", "Reader"]


class Reader:
    """The interface: ``len``, ``classes``, ``targets``; per position ``read``, ``open``, ``target``, ``path``, ``relpath``."""

    root: str  # the split's folder, named in messages
    classes: list[str]
    layout = ""

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def targets(self) -> np.ndarray:
        """int (N,) class indices, in position order."""
        raise NotImplementedError

    def target(self, i: int) -> int:
        return int(self.targets[i])

    def read(self, i: int) -> bytes:
        """The encoded image at position `i` (OSError if it cannot be read whole)."""
        raise NotImplementedError

    def open(self, i: int) -> Image.Image:
        """The image at `i`, opened (not decoded) by PIL: a context manager."""
        return Image.open(io.BytesIO(self.read(i)))

    def path(self, i: int) -> str:
        """What names sample `i` in a message: a file path, or 'shard.tar:member'."""
        raise NotImplementedError

    def relpath(self, i: int) -> str:
        """The sample's path relative to the split, as the ImageFolder layout would name it (token labels, ReaL)."""
        raise NotImplementedError

    def subset(self, keep: Sequence[int]) -> "Reader":
        """A reader of the samples at positions `keep`, in that order."""
        raise NotImplementedError


class BlockReader(Reader):
    """A reader whose samples sit in blocks each read front to back (tar shards, parquet row groups): the
    blocks of data.shuffle=block. Subclasses set ``_targets`` and name each position's block."""

    _targets: np.ndarray

    def _blocks(self) -> tuple[np.ndarray, int]:
        """(the block of each position, the number of blocks)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._targets)

    @property
    def targets(self) -> np.ndarray:
        return self._targets

    def target(self, i: int) -> int:
        return int(self._targets[i])

    @property
    def block_sizes(self) -> list[int]:
        """Samples per block, in block order."""
        blocks, count = self._blocks()
        return np.bincount(blocks, minlength=count).tolist()


class FolderReader(Reader):
    """root/<class>/<file>: samples as listed (t2t/data/filelist.py), opened by path."""

    layout = "imagefolder"

    def __init__(self, root: str, classes: Sequence[str], samples: Sequence[tuple[str, int]]) -> None:
        self.root = root
        self.classes = list(classes)
        self.samples = samples  # a SampleList (t2t/data/filelist.py), or (path, target) pairs

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> np.ndarray:
        if hasattr(self.samples, "relpath"):  # a SampleList (t2t/data/filelist.py): its int32 array
            return self.samples.targets
        return np.array([t for _, t in self.samples], dtype=np.int64)

    def target(self, i: int) -> int:
        return self.samples[i][1]

    def read(self, i: int) -> bytes:
        with open(self.samples[i][0], "rb") as f:
            return f.read()

    def open(self, i: int) -> Image.Image:
        return Image.open(self.samples[i][0])

    def path(self, i: int) -> str:
        return self.samples[i][0]

    def relpath(self, i: int) -> str:
        if hasattr(self.samples, "relpath"):
            return self.samples.relpath(i % len(self.samples))
        return os.path.relpath(self.samples[i][0], self.root)

    def subset(self, keep: Sequence[int]) -> "FolderReader":
        if hasattr(self.samples, "subset"):
            return FolderReader(self.root, self.classes, self.samples.subset(keep))
        return FolderReader(self.root, self.classes, [self.samples[i] for i in keep])
