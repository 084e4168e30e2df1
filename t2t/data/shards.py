"""Tar shards in the webdataset layout: an index per shard, a reader by offset, and the writer.

Layout: ``OUT/train/*.tar`` and ``OUT/val/*.tar``; a sample is ``<key>.<image ext>`` plus ``<key>.cls``
(the class index as ASCII text), the key being everything before the first dot of the member's file
name (webdataset's rule), members of a sample in any order. ``OUT/classes.json`` (written by
``make_shards``) names the classes; without it the classes are the indices found, as text.

Each shard has an index beside it (``<shard>.idx.npz``, no pickled objects): the data offset, size,
class and name of every image member, in the shard's order, with the shard's size and mtime. Shards
written by ``make_shards`` come with theirs; any other shard is indexed on first use (one pass over
its headers) and the index cached there (in memory only when the folder is read-only). An index
whose shard no longer has the recorded size and mtime is refused: the samples it lists may have moved.

A split's samples are its shards' images in shard-name order, then member order: the positions the
sampler's keys resolve to, so the order and augmentation of a run on shards made from a folder are
those of the run on the folder. Images are read with ``os.pread`` from shards held open: no open,
stat or seek per sample, and forked loader workers share nothing but the descriptors.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import posixpath
import tarfile
import time
import zipfile
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from .dataset import _DECODE_ERRORS, IMG_EXTENSIONS, DatasetError, open_folder
from .filelist import SampleList
from .readers import BlockReader, Reader

__all__ = ["INDEX_SUFFIX", "ShardIndex", "ShardReader", "find_shard_classes", "index_shard", "make_shards",
           "open_shards"]

_logger = logging.getLogger(__name__)

INDEX_SUFFIX = ".idx.npz"
INDEX_VERSION = 1
CLASSES_FILE = "classes.json"


@dataclass
class ShardIndex:
    """The image members of one shard, in its order."""

    path: str
    size: int  # the shard's bytes and mtime when indexed
    mtime_ns: int
    offsets: np.ndarray  # int64 (n,): where each image's data starts
    sizes: np.ndarray  # int64 (n,)
    targets: np.ndarray  # int64 (n,)
    members: SampleList  # member names (with the targets)
    relpaths: SampleList  # the images' paths relative to their split folder (member names, unless make_shards
    # had to change a name to fit the webdataset key rule)

    def __len__(self) -> int:
        return len(self.offsets)

    def save(self, path: str) -> None:
        from ..outputs import atomic_output  # the rename-into-place every written file goes through

        meta = {"version": INDEX_VERSION, "shard": os.path.basename(self.path), "size": self.size,
                "mtime_ns": self.mtime_ns}
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
                     offsets=self.offsets, sizes=self.sizes, targets=self.targets,
                     members_blob=self.members._blob, members_ends=self.members._ends,
                     relpaths_blob=self.relpaths._blob, relpaths_ends=self.relpaths._ends)


def _index_path(shard: str) -> str:
    return shard + INDEX_SUFFIX


def _load_index(shard: str, path: str) -> ShardIndex:
    """The index at `path` of `shard`; DatasetError if it is unreadable or the shard changed since."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
            targets = z["targets"]
            index = ShardIndex(
                path=shard, size=int(meta["size"]), mtime_ns=int(meta["mtime_ns"]), offsets=z["offsets"],
                sizes=z["sizes"], targets=targets,
                members=SampleList("", z["members_blob"], z["members_ends"], targets),
                relpaths=SampleList("", z["relpaths_blob"], z["relpaths_ends"], targets))
            version = meta["version"]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise DatasetError(f"shard index {path!r} cannot be read ({type(e).__name__}: {e}): delete it to index "
                           f"{shard!r} again") from None
    if version != INDEX_VERSION:
        raise DatasetError(f"shard index {path!r} has version {version}, this t2t reads {INDEX_VERSION}: delete it "
                           "to index the shard again")
    st = os.stat(shard)
    if (st.st_size, st.st_mtime_ns) != (index.size, index.mtime_ns):
        raise DatasetError(
            f"shard {shard!r} changed after its index {path!r} was made (size {index.size} -> {st.st_size} bytes, "
            f"mtime {index.mtime_ns} -> {st.st_mtime_ns} ns): delete the index to index the shard again, or "
            "restore the shard (copies keep their mtime with cp -p / rsync -t)")
    return index


def _split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a member name by webdataset's rule: the key ends at the first dot of the file name."""
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, ext if dot else ""


def _members(tar: tarfile.TarFile, shard: str):
    """The members of `tar`; a shard that ends inside a member (a copy cut short) ends there, with a warning:
    the member's read fails later as an unreadable image (skipped with data.skip_bad_images)."""
    member = None
    while True:
        try:
            member = tar.next()
        except tarfile.ReadError as e:
            if member is None or "unexpected end of data" not in str(e):
                raise
            _logger.warning("shard %s ends inside its member %s: the shard was cut short", shard, member.name)
            return
        if member is None:
            return
        yield member


def index_shard(shard: str) -> ShardIndex:
    """Read the headers of `shard` (and its .cls members) into a ShardIndex; DatasetError naming what is wrong."""
    st = os.stat(shard)
    images: dict[str, tuple[str, int, int]] = {}  # key -> (member, offset, size), in member order
    classes: dict[str, tuple[str, bytes]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in _members(tar, shard):
                if not member.isfile():
                    continue
                key, ext = _split_member(member.name)
                if ext.lower() == "cls":
                    handle = tar.extractfile(member)
                    classes[key] = (member.name, handle.read() if handle is not None else b"")
                elif ext.lower() in _IMAGE_EXTS:
                    if key in images:
                        raise DatasetError(f"shard {shard!r} holds two images of the key {key!r} ({images[key][0]!r} "
                                           f"and {member.name!r}): one image per key")
                    images[key] = (member.name, member.offset_data, member.size)
    except tarfile.TarError as e:
        raise DatasetError(f"shard {shard!r} is not a readable tar file ({type(e).__name__}: {e}): remake it with "
                           "scripts/make_shards.py or remove it from the folder") from None
    if not images:
        raise DatasetError(f"shard {shard!r} holds no image members (<key>.jpg, <key>.png, ... with <key>.cls)")
    targets = []
    for key, (name, _, _) in images.items():
        if key not in classes:
            raise DatasetError(f"member {name!r} of shard {shard!r} has no class: expected a member {key + '.cls'!r} "
                               "(the class index as text, webdataset layout)")
        cls_name, text = classes[key]
        try:
            targets.append(int(text.decode("ascii").strip()))
        except (UnicodeDecodeError, ValueError):
            raise DatasetError(f"member {cls_name!r} of shard {shard!r} holds {text[:20]!r}: expected a class index "
                               "(ASCII digits)") from None
        if targets[-1] < 0:
            raise DatasetError(f"member {cls_name!r} of shard {shard!r} holds the class index {targets[-1]}: "
                               "expected 0 or more")
    names = [name for name, _, _ in images.values()]
    target_array = np.array(targets, dtype=np.int64)
    members = SampleList.from_pairs("", list(zip(names, targets)))
    return ShardIndex(path=shard, size=st.st_size, mtime_ns=st.st_mtime_ns,
                      offsets=np.array([o for _, o, _ in images.values()], dtype=np.int64),
                      sizes=np.array([s for _, _, s in images.values()], dtype=np.int64),
                      targets=target_array, members=members, relpaths=members)


_IMAGE_EXTS = {e.lstrip(".").lower() for e in IMG_EXTENSIONS}


def shard_index(shard: str) -> ShardIndex:
    """The cached index of `shard`, or a new one (saved beside the shard where the folder can be written)."""
    path = _index_path(shard)
    if os.path.exists(path):
        return _load_index(shard, path)
    _logger.info("Indexing shard %s (first use)", shard)
    index = index_shard(shard)
    try:
        index.save(path)
    except OSError as e:
        _logger.warning("Could not keep the index of %s in %s (%s): it is made again at every start", shard, path, e)
    return index


class ShardReader(BlockReader):
    """The images of a folder of tar shards, by position: shard-name order, then member order; read by offset."""

    layout = "shards"

    def __init__(self, root: str, shards: Sequence[str], classes: Sequence[str], *, shard_of: np.ndarray,
                 offsets: np.ndarray, sizes: np.ndarray, targets: np.ndarray, members: SampleList,
                 relpaths: SampleList) -> None:
        self.root = root
        self.shards = list(shards)
        self.classes = list(classes)
        self.shard_of, self.offsets, self.sizes, self._targets = shard_of, offsets, sizes, targets
        self.members, self.relpaths = members, relpaths
        self._fds: dict[int, int] = {}
        # Block order: a shard met anew is read ahead whole (posix_fadvise WILLNEED: the kernel reads it in
        # large sequential requests while its samples are being read); this many are remembered as met.
        self.read_ahead_shards = 0
        self._met: list[int] = []

    @classmethod
    def from_indices(cls, root: str, indices: Sequence[ShardIndex], classes: Sequence[str]) -> "ShardReader":
        def joined(lists: list[SampleList]) -> SampleList:
            ends, shift = [], 0
            for part in lists:
                ends.append(part._ends + shift)
                shift += len(part._blob)
            targets = np.concatenate([part.targets for part in lists]).astype(np.int32)
            return SampleList("", np.concatenate([part._blob for part in lists]), np.concatenate(ends), targets)

        return cls(root, [i.path for i in indices], classes,
                   shard_of=np.concatenate([np.full(len(i), k, dtype=np.int32) for k, i in enumerate(indices)]),
                   offsets=np.concatenate([i.offsets for i in indices]),
                   sizes=np.concatenate([i.sizes for i in indices]),
                   targets=np.concatenate([i.targets for i in indices]),
                   members=joined([i.members for i in indices]), relpaths=joined([i.relpaths for i in indices]))

    def _blocks(self) -> tuple[np.ndarray, int]:
        return self.shard_of, len(self.shards)

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:  # threads (the DALI backend's readers) may race here: one descriptor is kept
            opened = os.open(self.shards[shard], os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            fd = self._fds.setdefault(shard, opened)
            if fd != opened:
                os.close(opened)
        return fd

    def _read_ahead(self, shard: int, fd: int) -> None:
        if shard in self._met:
            return
        self._met = (self._met + [shard])[-self.read_ahead_shards:]
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)

    def read(self, i: int) -> bytes:
        size, shard = int(self.sizes[i]), int(self.shard_of[i])
        fd = self._fd(shard)
        if self.read_ahead_shards:
            self._read_ahead(shard, fd)
        data = os.pread(fd, size, int(self.offsets[i]))
        if len(data) != size:
            raise OSError(f"truncated member: {len(data)} of its {size} bytes are in the shard")
        return data

    def path(self, i: int) -> str:
        return f"{self.shards[int(self.shard_of[i])]}:{self.members.relpath(i)}"

    def relpath(self, i: int) -> str:
        return self.relpaths.relpath(i)

    def subset(self, keep: Sequence[int]) -> "ShardReader":
        keep = np.asarray(keep, dtype=np.int64)
        pick = [i for i in keep.tolist()]
        return ShardReader(
            self.root, self.shards, self.classes, shard_of=self.shard_of[keep], offsets=self.offsets[keep],
            sizes=self.sizes[keep], targets=self._targets[keep],
            members=SampleList.from_pairs("", [(self.members.relpath(i), self.target(i)) for i in pick]),
            relpaths=SampleList.from_pairs("", [(self.relpaths.relpath(i), self.target(i)) for i in pick]))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"], state["_met"] = {}, []  # descriptors stay with the process that opened them
        return state

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds, self._met = {}, []

    def __repr__(self) -> str:
        return f"ShardReader(root={self.root!r}, shards={len(self.shards)}, images={len(self)})"


def find_shard_classes(data_dir: str) -> Optional[list[str]]:
    """The class names of data_dir/classes.json (written by make_shards), or None if there is none."""
    path = os.path.join(data_dir, CLASSES_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            classes = json.load(f)["classes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{path!r} cannot be read ({type(e).__name__}: {e}): expected "
                           '{"classes": [names...]} as scripts/make_shards.py writes it') from None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"{path!r}: 'classes' must be a non-empty list of names")
    return classes


def open_shards(folder: str, classes: Optional[Sequence[str]] = None) -> ShardReader:
    """The ShardReader of folder/*.tar (indexed on first use); `classes`: the names the class indices mean."""
    if not os.path.isdir(folder):
        raise DatasetError(f"missing shard folder {folder!r}: data.format=shards reads DATA_DIR/train/*.tar and "
                           "DATA_DIR/val/*.tar (scripts/make_shards.py writes them)")
    shards = sorted(glob.glob(os.path.join(glob.escape(folder), "*.tar")))
    if not shards:
        raise DatasetError(f"no shards in {folder!r}: expected *.tar files in the webdataset layout "
                           "(scripts/make_shards.py writes them)")
    indices = [shard_index(shard) for shard in shards]
    named = classes is not None
    if classes is None:
        classes = [str(c) for c in range(max(int(i.targets.max()) for i in indices) + 1)]
    for index in indices:
        bad = np.flatnonzero(index.targets >= len(classes))
        if len(bad):
            i = int(bad[0])
            raise DatasetError(
                f"member {index.members.relpath(i)!r} of shard {index.path!r} has the class index "
                f"{int(index.targets[i])}, out of range for the {len(classes)} classes"
                f"{' of classes.json' if named else ''}: the shards and the class list disagree")
    return ShardReader.from_indices(folder, indices, classes)


# ---------------------------------------------------------------------------------------------
# Writing shards from an ImageFolder root


def _member_key(relpath: str) -> str:
    """The webdataset key of an image: its path without the extension, dots in the file name made '_'."""
    folder, base = posixpath.split(relpath.replace(os.sep, "/"))
    stem = base.rsplit(".", 1)[0].replace(".", "_")
    return posixpath.join(folder, stem) if folder else stem


def _check_image(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (1, 1))  # JPEG: decode at the smallest scale, as the validation check does
        img.load()


def _write_shard(path: str, rows: list[tuple[str, bytes, int]]) -> ShardIndex:
    """Write (relpath, bytes, class) rows as one shard (atomically) and its index; the index of the written shard."""
    from ..outputs import atomic_output

    with atomic_output(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            for relpath, data, target in rows:
                key = _member_key(relpath)
                ext = posixpath.splitext(relpath)[1]
                for name, payload in ((key + ext, data), (key + ".cls", str(target).encode("ascii"))):
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(payload), 0o444, 0
                    tar.addfile(info, io.BytesIO(payload))
        index = index_shard(tmp)
    st = os.stat(path)
    index.path, index.size, index.mtime_ns = path, st.st_size, st.st_mtime_ns
    index.relpaths = SampleList.from_pairs("", [(r.replace(os.sep, "/"), t) for r, _, t in rows])
    index.save(_index_path(path))
    return index


def _shard_done(path: str, relpaths: list[str]) -> bool:
    """True if `path` and its index exist, agree, and hold exactly `relpaths` (a resumed make_shards skips it)."""
    if not (os.path.exists(path) and os.path.exists(_index_path(path))):
        return False
    try:
        index = _load_index(path, _index_path(path))
    except DatasetError:
        return False
    return [index.relpaths.relpath(i) for i in range(len(index))] == [r.replace(os.sep, "/") for r in relpaths]


def make_shards(data_dir: str, output: str, *, shard_size: int, skip_bad_images: bool = False,
                splits: Sequence[str] = ("train", "val")) -> dict[str, int]:
    """Write data_dir/<split>/ (ImageFolder) as output/<split>/<split>-NNNNNN.tar with indices, and classes.json.

    Same samples in the folder's order (the training listing's); shards already written with the same
    samples are kept (a stopped run continues); an unreadable image stops with its path, or with
    `skip_bad_images` is left out with a warning. Returns the images written per split.
    """
    from ..outputs import write_text

    if shard_size < 1:
        raise ValueError(f"--shard-size {shard_size}: expected a positive number of images per shard")
    classes = None
    counts = {}
    os.makedirs(output, exist_ok=True)
    for split in splits:
        reader = open_folder(os.path.join(data_dir, split), classes=classes)
        if classes is None:
            classes = reader.classes
            write_text(os.path.join(output, CLASSES_FILE), json.dumps({"classes": classes}, indent=1) + "\n")
        folder = os.path.join(output, split)
        os.makedirs(folder, exist_ok=True)
        total, written, skipped, start = len(reader), 0, 0, time.monotonic()
        shard_count = -(-total // shard_size)
        for k in range(shard_count):
            positions = range(k * shard_size, min(total, (k + 1) * shard_size))
            path = os.path.join(folder, f"{split}-{k:06d}.tar")
            if _shard_done(path, [reader.relpath(i) for i in positions]):
                written += len(positions)
                continue
            rows = []
            for i in positions:
                data = reader.read(i)
                try:
                    _check_image(data)
                except _DECODE_ERRORS as exc:
                    if not skip_bad_images:
                        raise DatasetError(f"cannot read image {reader.path(i)!r}: {type(exc).__name__}: {exc}. "
                                           "Replace or delete the file, or pass --skip-bad-images to leave it "
                                           "out") from None
                    skipped += 1
                    _logger.warning("leaving out unreadable image %s (%s: %s)", reader.path(i), type(exc).__name__,
                                    exc)
                    continue
                rows.append((reader.relpath(i), data, reader.target(i)))
            if rows:
                _write_shard(path, rows)
            written += len(positions)
            elapsed = time.monotonic() - start
            rate = written / max(elapsed, 1e-9)
            _logger.info("%s: shard %d/%d, %d/%d images, %.0f images/s, ETA %.0f s", split, k + 1, shard_count,
                         written, total, rate, (total - written) / max(rate, 1e-9))
        counts[split] = written - skipped
        if skipped:
            _logger.warning("%s: left out %d unreadable images", split, skipped)
    return counts
