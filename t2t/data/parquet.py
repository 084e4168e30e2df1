"""Parquet files of encoded images (the Hugging Face ImageNet layout) behind the reader interface.

A split is a folder of ``*.parquet`` files with an ``image`` column (the encoded bytes, or a struct
whose ``bytes`` field holds them, as the ``datasets`` library's Image feature writes it) and an
integer ``label`` column. Positions run over the files in name order, then their rows in order.

Parquet is read by row group: one image at a random position costs its whole row group's image
column. The reader keeps the row groups it last read (``cache_groups`` per process), so it reads
well in the block order (``data.shuffle: block``: the row groups are the blocks, permuted per epoch,
samples shuffled within a window of ``data.block_shards`` of them) and in the evaluation's order; in
the global order nearly every sample reads a new row group (a warning says so at start).

pyarrow is an optional dependency (the ``parquet`` extra), imported when a parquet split is opened.
"""
from __future__ import annotations

import glob
import json
import os
import threading
from collections import OrderedDict
from typing import Any, Optional, Sequence

import numpy as np

from .dataset import DatasetError
from .filelist import SampleList
from .readers import BlockReader, Reader

__all__ = ["ParquetReader", "find_parquet_split", "has_parquet", "open_parquet"]

# The split names of a Hugging Face download (data/<split>-00000-of-00014.parquet), per our split name.
_HF_SPLITS = {"train": "train", "val": "validation"}


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError("data.format=parquet needs pyarrow: pip install 't2t-vit[parquet]'") from None
    return pq


def has_parquet(folder: str) -> bool:
    """Whether `folder` holds *.parquet files."""
    return os.path.isdir(folder) and any(name.endswith(".parquet") for name in os.listdir(folder))


def find_parquet_split(data_dir: str, split: str, *, loose: bool = False) -> list[str]:
    """The parquet files of `split` ('train' or 'val'): data_dir/<split>/*.parquet, else the Hugging Face
    download's data_dir/data/<train|validation>-*.parquet (or the same names directly in data_dir); with
    `loose`, else every data_dir/*.parquet (data_dir is the split's own folder)."""
    ours = os.path.join(data_dir, split)
    if has_parquet(ours):
        return sorted(glob.glob(os.path.join(glob.escape(ours), "*.parquet")))
    for folder in (os.path.join(data_dir, "data"), data_dir):
        found = sorted(glob.glob(os.path.join(glob.escape(folder), f"{_HF_SPLITS[split]}-*.parquet")))
        if found:
            return found
    if loose and has_parquet(data_dir):
        return sorted(glob.glob(os.path.join(glob.escape(data_dir), "*.parquet")))
    raise DatasetError(f"no parquet files for the {split} split in {data_dir!r}: data.format=parquet reads "
                       f"DATA_DIR/{split}/*.parquet, or a Hugging Face download's "
                       f"DATA_DIR/data/{_HF_SPLITS[split]}-*.parquet")


def _hf_class_names(schema: Any) -> Optional[list[str]]:
    """The label names a Hugging Face ClassLabel feature stores in the file's metadata, if any."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        names = json.loads(meta)["info"]["features"]["label"]["names"]
    except (ValueError, KeyError, TypeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None


class ParquetReader(BlockReader):
    """The images of parquet files, by position: file-name order, then row order; read by row group."""

    layout = "parquet"

    def __init__(self, root: str, files: Sequence[str], classes: Sequence[str], *, block_of: np.ndarray,
                 row_of: np.ndarray, block_file: np.ndarray, block_group: np.ndarray, targets: np.ndarray,
                 relpaths: SampleList) -> None:
        self.root = root
        self.files = list(files)
        self.classes = list(classes)
        self.block_of, self.row_of = block_of, row_of  # per position: its row group (global id), its row there
        self.block_file, self.block_group = block_file, block_group  # per row group: its file, its index there
        self._targets = targets
        self.relpaths = relpaths
        self.cache_groups = 2
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._handles: dict[int, Any] = {}
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()  # the DALI backend's reader threads share one reader

    def _blocks(self) -> tuple[np.ndarray, int]:
        return self.block_of, len(self.block_file)  # the row groups

    def _group(self, block: int) -> Any:
        """The image bytes of row group `block` (a pyarrow BinaryArray), from the cache or read now."""
        if self._pid != os.getpid():  # a forked worker: the parent's handles and buffers are not ours
            self._reset()
        with self._lock:
            column = self._cache.get(block)
            if column is not None:
                self._cache.move_to_end(block)
                return column
            file = int(self.block_file[block])
            handle = self._handles.get(file)
            if handle is None:
                handle = self._handles[file] = _pyarrow().ParquetFile(self.files[file])
            column = handle.read_row_group(int(self.block_group[block]), columns=["image"]).column(0)
            column = column.combine_chunks()
            if hasattr(column.type, "get_field_index"):  # the datasets library's Image struct
                column = column.field("bytes")
            self._cache[block] = column
            while len(self._cache) > max(1, self.cache_groups):
                self._cache.popitem(last=False)
            return column

    def read(self, i: int) -> bytes:
        data = self._group(int(self.block_of[i]))[int(self.row_of[i])].as_py()
        if not data:
            raise OSError("no image bytes in this row")
        return data

    def path(self, i: int) -> str:
        block = int(self.block_of[i])
        return f"{self.files[int(self.block_file[block])]}:row group {int(self.block_group[block])}, " \
               f"row {int(self.row_of[i])}"

    def relpath(self, i: int) -> str:
        return self.relpaths.relpath(i)

    def subset(self, keep: Sequence[int]) -> "ParquetReader":
        keep = np.asarray(keep, dtype=np.int64)
        return ParquetReader(
            self.root, self.files, self.classes, block_of=self.block_of[keep], row_of=self.row_of[keep],
            block_file=self.block_file, block_group=self.block_group, targets=self._targets[keep],
            relpaths=SampleList.from_pairs("", [(self.relpaths.relpath(i), self.target(i)) for i in keep.tolist()]))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("_pid", "_handles", "_cache", "_lock"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def close(self) -> None:
        self._handles, self._cache = {}, OrderedDict()

    def __repr__(self) -> str:
        return f"ParquetReader(root={self.root!r}, files={len(self.files)}, row_groups={len(self.block_file)}, " \
               f"images={len(self)})"


def open_parquet(data_dir: str, split: str, classes: Optional[Sequence[str]] = None, *,
                 loose: bool = False) -> ParquetReader:
    """The ParquetReader of `split` under `data_dir` (see `find_parquet_split`); `classes`: the names the labels
    mean (classes.json), else the files' Hugging Face label names, else the indices as names."""
    pq = _pyarrow()
    files = find_parquet_split(data_dir, split, loose=loose)
    block_of, row_of, block_file, block_group, targets, names = [], [], [], [], [], []
    hf_names: Optional[list[str]] = None
    for k, path in enumerate(files):
        try:
            handle = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...: all mean "not a readable parquet file"
            raise DatasetError(f"{path!r} is not a readable parquet file ({type(e).__name__}: {e})") from None
        schema = handle.schema_arrow
        missing = [c for c in ("image", "label") if c not in schema.names]
        if missing:
            raise DatasetError(f"parquet file {path!r} has no {' or '.join(repr(c) for c in missing)} column "
                               f"(its columns: {', '.join(schema.names)}): expected 'image' (encoded bytes) and "
                               "'label' (class index), the Hugging Face ImageNet layout")
        hf_names = hf_names or _hf_class_names(schema)
        labels = handle.read(columns=["label"]).column(0)
        if labels.null_count or not str(labels.type).startswith(("int", "uint")):
            raise DatasetError(f"parquet file {path!r}: the 'label' column must hold class indices, got "
                               f"{labels.type} with {labels.null_count} missing")
        labels = labels.to_numpy()
        has_path = "path" in getattr(schema.field("image").type, "names", [])
        paths = handle.read(columns=["image.path"]).column(0).combine_chunks().field("path").to_pylist() \
            if has_path else [None] * len(labels)
        stem = os.path.splitext(os.path.basename(path))[0]
        for g in range(handle.metadata.num_row_groups):
            rows = handle.metadata.row_group(g).num_rows
            block_of.append(np.full(rows, len(block_file), dtype=np.int32))
            row_of.append(np.arange(rows, dtype=np.int32))
            block_file.append(k)
            block_group.append(g)
        targets.append(labels.astype(np.int64))
        names.extend((name or f"{stem}-{row:07d}.jpg") for row, name in enumerate(paths))
    targets_all = np.concatenate(targets)
    named = classes is not None or hf_names is not None
    classes = list(classes) if classes is not None else hf_names
    if classes is None:
        classes = [str(c) for c in range(int(targets_all.max()) + 1)]
    bad = np.flatnonzero((targets_all < 0) | (targets_all >= len(classes)))
    if len(bad):
        i = int(bad[0])
        raise DatasetError(f"row {i} of the {split} parquet files has the label {int(targets_all[i])}, out of range "
                           f"for the {len(classes)} classes{' the files name' if named else ''} (a test split has "
                           "no labels: -1)")
    relpaths = SampleList.from_pairs("", [(f"{classes[t]}/{os.path.basename(n)}", int(t))
                                          for n, t in zip(names, targets_all.tolist())])
    return ParquetReader(os.path.dirname(files[0]), files, classes, block_of=np.concatenate(block_of),
                         row_of=np.concatenate(row_of), block_file=np.array(block_file, dtype=np.int32),
                         block_group=np.array(block_group, dtype=np.int32), targets=targets_all, relpaths=relpaths)
