"""The image list of an ImageFolder split: compact in memory, listed once per job, cached in the run folder.

1.28M ImageNet files as a list of (path, target) tuples cost about 190 bytes each in Python objects,
and every forked loader worker ends up with its own copy (reference counting writes to every
object it touches). ``SampleList`` keeps the same pairs as three NumPy arrays: the paths relative
to the root as one UTF-8 byte blob, their end offsets, and int32 targets; a worker touching it
touches three objects.

Listing walks every class folder (1.28M directory entries on a shared filesystem). The engine lets
rank 0 list and broadcasts the result to the other ranks, and ``cached_listing`` keeps the list in
the run folder keyed by the modification times of every folder walked: a file added, removed or
renamed in any of them changes that folder's mtime, and the next start lists again. Delete the
cache file to force a new listing.
"""
from __future__ import annotations

import logging
import os
import json
import zipfile
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ..outputs import atomic_output
from ..walk import walk_files

_logger = logging.getLogger(__name__)

CACHE_VERSION = 1


class SampleList(Sequence):
    """(path, target) pairs of one folder, stored as arrays; indexes and iterates like a list of tuples."""

    def __init__(self, root: str, blob: np.ndarray, ends: np.ndarray, targets: np.ndarray) -> None:
        self.root = root
        self._blob = blob  # uint8 (total bytes,): relative paths, UTF-8, back to back
        self._ends = ends  # int64 (N,): end offset of path i in the blob
        self._targets = targets  # int32 (N,)

    @classmethod
    def from_pairs(cls, root: str, pairs: Sequence[tuple[str, int]]) -> "SampleList":
        """From (relative path, target) pairs."""
        encoded = [rel.encode("utf-8", "surrogateescape") for rel, _ in pairs]
        ends = np.cumsum([len(b) for b in encoded], dtype=np.int64) if encoded else np.zeros(0, np.int64)
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        targets = np.fromiter((t for _, t in pairs), dtype=np.int32, count=len(pairs))
        return cls(root, blob, ends, targets)

    def __len__(self) -> int:
        return len(self._ends)

    def relpath(self, i: int) -> str:
        start = int(self._ends[i - 1]) if i > 0 else 0
        return self._blob[start:int(self._ends[i])].tobytes().decode("utf-8", "surrogateescape")

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for {n} samples")
        i %= n
        return os.path.join(self.root, self.relpath(i)), int(self._targets[i])

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SampleList):
            return (self.root == other.root and np.array_equal(self._blob, other._blob)
                    and np.array_equal(self._ends, other._ends) and np.array_equal(self._targets, other._targets))
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == tuple(b) for a, b in zip(self, other))
        return NotImplemented

    @property
    def targets(self) -> np.ndarray:
        """int32 (N,) class indices."""
        return self._targets

    def subset(self, keep: Sequence[int]) -> "SampleList":
        """The samples at positions `keep`, in that order."""
        return SampleList.from_pairs(self.root, [(self.relpath(i), int(self._targets[i])) for i in keep])

    def nbytes(self) -> int:
        return self._blob.nbytes + self._ends.nbytes + self._targets.nbytes

    def __repr__(self) -> str:
        return f"SampleList(root={self.root!r}, samples={len(self)}, {self.nbytes() / 2**20:.1f} MiB)"


def list_image_folder(root: str, classes: Sequence[str], is_image: Callable[[str], bool],
                      is_hidden: Callable[[str], bool]) -> tuple[SampleList, dict[str, int]]:
    """Walk root/<class>/ for each class (recursively, following links, torchvision's order); regular files only,
    each real folder once (t2t.walk.walk_files).

    Returns the samples and the mtime (ns) of every folder walked, the key of a cached listing.
    Class folders without images are left empty: the caller names them.
    """
    pairs: list[tuple[str, int]] = []
    mtimes = {".": os.stat(root).st_mtime_ns}
    for target, name in enumerate(classes):
        class_dir = os.path.join(root, name)
        for dirpath, fnames in walk_files(class_dir):
            rel_dir = os.path.relpath(dirpath, root)
            mtimes[rel_dir] = os.stat(dirpath).st_mtime_ns
            for fname in fnames:
                rel = os.path.join(rel_dir, fname)
                if is_image(fname) and not is_hidden(os.path.relpath(rel, name)):
                    pairs.append((rel, target))
    return SampleList.from_pairs(root, pairs), mtimes


def _cache_is_current(root: str, mtimes: dict[str, int]) -> bool:
    for rel, mtime in mtimes.items():
        try:
            if os.stat(os.path.join(root, rel)).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def cached_listing(root: str, classes: Sequence[str], cache_path: Optional[str], *,
                   is_image: Callable[[str], bool], is_hidden: Callable[[str], bool]) -> SampleList:
    """list_image_folder, read from `cache_path` (.npz, no pickled objects) when every folder walked
    still has its recorded mtime; otherwise listed and the cache rewritten."""
    key = {"version": CACHE_VERSION, "root": os.path.abspath(root), "classes": list(classes)}
    if cache_path and os.path.isfile(cache_path):
        try:
            with np.load(cache_path, allow_pickle=False) as cached:
                meta = json.loads(cached["meta"].tobytes().decode("utf-8"))
                if meta["key"] == key and _cache_is_current(root, meta["mtimes"]):
                    samples = SampleList(root, cached["blob"], cached["ends"], cached["targets"])
                    _logger.info("File list of %s read from %s (%d images)", root, cache_path, len(samples))
                    return samples
            _logger.info("File list cache %s is out of date: listing %s again", cache_path, root)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
            _logger.warning("Ignoring the file list cache %s (%s): listing %s again", cache_path, e, root)
    samples, mtimes = list_image_folder(root, classes, is_image, is_hidden)
    if cache_path and os.path.isdir(os.path.dirname(os.path.abspath(cache_path))):
        meta = np.frombuffer(json.dumps({"key": key, "mtimes": mtimes}).encode("utf-8"), dtype=np.uint8)
        try:
            with atomic_output(cache_path) as tmp, open(tmp, "wb") as f:
                np.savez(f, meta=meta, blob=samples._blob, ends=samples._ends, targets=samples._targets)
        except OSError as e:
            _logger.warning("Could not write the file list cache %s: %s", cache_path, e)
    return samples
