"""Token-label maps stored per block of images: a few large files, memory-mapped, instead of one file per image.

A label folder in the block layout holds ``labels.json`` (``"format": "blocks"``: the teacher, top-k,
the map's shape, the class names, and what identifies the training data: its sample count and the
SHA-256 of its relative paths in position order) and ``blocks/block-NNNNNN.tlb``. Block b holds the
maps of sample positions [b * block_size, (b + 1) * block_size) in position order, so a sample's row
is its position: no per-image index, no per-image file. Positions are the reader's (t2t/data/readers.py):
an image folder's listing order, or a shard folder's shard-then-member order, which for shards made by
scripts/make_shards.py is the folder's order; their relative paths hash alike, so one label folder serves
a folder and the shards made from it.

A block file: the magic ``T2TLABL1``, a little-endian uint32 header length, a JSON header (block
number, first position, row count, map shape, dtypes, the data's relpaths hash, the teacher's
sha256), zero padding to a multiple of 64 bytes, then values (rows, k, H, W) float16 and indices
(rows, k, H, W) int16 or int32. Its size is fixed by its header, so a copy cut short is found
without reading it. Files are written whole (temporary name, fsync, rename).

Reading (`BlockLabels`) checks every block's header and size once, at start, then maps the blocks
lazily; a forked or spawned loader worker maps them again in its own process (nothing but paths
crosses the fork or the pickle).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .dataset import DatasetError
from .filelist import SampleList
from .readers import Reader

__all__ = ["BLOCK_FORMAT", "BlockLabels", "LabelBlockError", "block_path", "block_problem", "block_ranges",
           "check_record", "data_identity", "read_block", "read_block_header", "relpaths_list", "write_block"]

BLOCK_FORMAT = "blocks"
BLOCK_VERSION = 1
BLOCK_FOLDER = "blocks"
_MAGIC = b"T2TLABL1"
_ALIGN = 64


class LabelBlockError(DatasetError):
    """A label block that is missing, cut short, unreadable or not of this label folder and data."""


def relpaths_list(reader: Reader) -> SampleList:
    """The reader's relative paths as a SampleList (its own arrays when it has them: no per-sample call)."""
    for name in ("relpaths", "samples"):
        found = getattr(reader, name, None)
        if isinstance(found, SampleList):
            return found
    return SampleList.from_pairs("", [(reader.relpath(i), 0) for i in range(len(reader))])


def data_identity(reader: Reader) -> dict[str, Any]:
    """What identifies a training split for its labels: sample count and SHA-256 of its relpaths in position order."""
    listed = relpaths_list(reader)
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(listed._ends, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(listed._blob, dtype=np.uint8).tobytes())
    return {"samples": len(listed), "relpaths_sha256": digest.hexdigest()}


def block_ranges(samples: int, block_size: int) -> list[tuple[int, int]]:
    """[start, stop) sample positions of each block."""
    return [(start, min(start + block_size, samples)) for start in range(0, samples, block_size)]


def block_path(label_dir: str, block: int) -> str:
    return os.path.join(label_dir, BLOCK_FOLDER, f"block-{block:06d}.tlb")


def _index_dtype(num_classes: int) -> np.dtype:
    return np.dtype("<i2") if num_classes <= 2 ** 15 else np.dtype("<i4")


def write_block(path: str, values: np.ndarray, indices: np.ndarray, *, block: int, start: int, data_sha256: str,
                teacher: Optional[str], num_classes: int) -> None:
    """Write one block: values (rows, k, H, W) and indices of the same shape, whole or not at all."""
    from ..outputs import atomic_output  # the rename-into-place every written file goes through

    if values.shape != indices.shape or values.ndim != 4:
        raise ValueError(f"values {values.shape} and indices {indices.shape} must both be (rows, k, H, W)")
    index_dtype = _index_dtype(num_classes)
    header = {"version": BLOCK_VERSION, "block": int(block), "start": int(start), "rows": int(values.shape[0]),
              "shape": list(values.shape[1:]), "values": "<f2", "indices": index_dtype.str,
              "relpaths_sha256": data_sha256, "teacher": teacher}
    text = json.dumps(header).encode("utf-8")
    head = _MAGIC + struct.pack("<I", len(text)) + text
    head += b"\0" * (-len(head) % _ALIGN)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(head)
        f.write(np.ascontiguousarray(values, dtype="<f2").tobytes())
        f.write(np.ascontiguousarray(indices, dtype=index_dtype).tobytes())


def read_block_header(path: str) -> tuple[dict[str, Any], int]:
    """(header, data offset) of a block file; LabelBlockError naming the file if it is missing, foreign or cut short."""
    try:
        with open(path, "rb") as f:
            start = f.read(len(_MAGIC) + 4)
            if len(start) < len(_MAGIC) + 4 or start[:len(_MAGIC)] != _MAGIC:
                raise LabelBlockError(f"label block {path!r} is not a token-label block (no {_MAGIC.decode()} "
                                      "header): generate the labels again")
            (length,) = struct.unpack("<I", start[len(_MAGIC):])
            text = f.read(length)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise LabelBlockError(f"label block {path!r} is missing: run the label generation again with this --output "
                              "(it writes only the missing blocks)") from None
    except OSError as e:
        raise LabelBlockError(f"label block {path!r} cannot be read ({type(e).__name__}: {e})") from None
    try:
        header = json.loads(text.decode("utf-8"))
        rows, shape = int(header["rows"]), tuple(int(n) for n in header["shape"])
        item = int(np.prod(shape)) * (np.dtype(header["values"]).itemsize + np.dtype(header["indices"]).itemsize)
    except (ValueError, KeyError, TypeError) as e:
        raise LabelBlockError(f"label block {path!r} has an unreadable header ({type(e).__name__}: {e}): generate "
                              "the labels again") from None
    offset = len(_MAGIC) + 4 + length
    offset += -offset % _ALIGN
    if size != offset + rows * item:
        raise LabelBlockError(f"label block {path!r} is cut short or padded: {size} bytes, its header says "
                              f"{offset + rows * item} ({rows} maps): generate it again (run the label generation "
                              "with this --output)")
    return header, offset


def read_block(path: str, *, mmap: bool = True) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(header, values (rows, k, H, W) float16, indices int16/int32) of a block file, memory-mapped by default."""
    header, offset = read_block_header(path)
    shape = (int(header["rows"]), *header["shape"])
    values_dtype, index_dtype = np.dtype(header["values"]), np.dtype(header["indices"])
    if shape[0] == 0:
        return header, np.zeros(shape, values_dtype), np.zeros(shape, index_dtype)
    if mmap:
        return header, *_map_block(path, offset, header)
    with open(path, "rb") as f:
        f.seek(offset)
        values = np.frombuffer(f.read(int(np.prod(shape)) * values_dtype.itemsize), values_dtype).reshape(shape)
        indices = np.frombuffer(f.read(int(np.prod(shape)) * index_dtype.itemsize), index_dtype).reshape(shape)
    return header, values, indices


def _map_block(path: str, offset: int, header: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(values, indices) of a block whose header was read: one read-only mapping of its data."""
    shape = (int(header["rows"]), *header["shape"])
    values_dtype, index_dtype = np.dtype(header["values"]), np.dtype(header["indices"])
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=offset)
    split = int(np.prod(shape)) * values_dtype.itemsize
    return data[:split].view(values_dtype).reshape(shape), data[split:].view(index_dtype).reshape(shape)


def _header_problem(header: dict[str, Any], record: dict[str, Any], block: int, start: int, stop: int) -> Optional[str]:
    """Why a block's header does not belong to the label folder `record` at slot `block`, or None."""
    if header.get("relpaths_sha256") != record["relpaths_sha256"]:
        return (f"was made for other data (relpaths sha256 {str(header.get('relpaths_sha256'))[:12]}, labels.json "
                f"{record['relpaths_sha256'][:12]})")
    if (header.get("block"), header.get("start"), header.get("rows")) != (block, start, stop - start):
        return (f"holds block {header.get('block')} (positions {header.get('start')} + {header.get('rows')}), "
                f"expected block {block} (positions {start} + {stop - start})")
    if list(header.get("shape", [])) != list(record["shape"]):
        return f"holds {header.get('shape')} maps, labels.json says {record['shape']}"
    if record.get("sha256") and header.get("teacher") != record["sha256"]:
        return f"was made by the teacher with sha256 {str(header.get('teacher'))[:12]}, labels.json names " \
               f"{str(record['sha256'])[:12]}"
    return None


def block_problem(label_dir: str, record: dict[str, Any], block: int, start: int, stop: int, *,
                  num_classes: int) -> Optional[str]:
    """Why block `block` must be written again (missing, cut short, of other data, bad values), or None: read whole."""
    path = block_path(label_dir, block)
    if not os.path.exists(path):
        return "missing"
    try:
        header, values, indices = read_block(path, mmap=False)
    except LabelBlockError as e:
        return str(e)
    problem = _header_problem(header, record, block, start, stop)
    if problem is None and len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= num_classes):
        problem = f"names class {int(indices.max())}, outside the {num_classes} classes"
    if problem is None and not np.isfinite(values).all():
        problem = "holds scores that are NaN or infinite"
    return problem


class BlockLabels:
    """The label maps of a block-layout folder by sample position: headers checked at start, blocks mapped lazily."""

    def __init__(self, label_dir: str, record: dict[str, Any], reader: Reader, *, where: str) -> None:
        self.label_dir, self.record, self.where = label_dir, record, where
        self.block_size = int(record["block_size"])
        ours = data_identity(reader)
        if ours["samples"] != record.get("samples") or ours["relpaths_sha256"] != record.get("relpaths_sha256"):
            raise LabelBlockError(
                f"{where}: labels.json was made for {record.get('samples')} images (relpaths sha256 "
                f"{str(record.get('relpaths_sha256'))[:12]}), the training data {reader.root!r} has {ours['samples']} "
                f"(relpaths sha256 {ours['relpaths_sha256'][:12]}): the labels were made for other data; generate "
                "or import them for this data")
        self.ranges = block_ranges(ours["samples"], self.block_size)
        self.headers: list[tuple[dict[str, Any], int]] = []  # (header, data offset) per block
        for block, (start, stop) in enumerate(self.ranges):  # one header read per block, none per image
            path = block_path(label_dir, block)
            header, offset = read_block_header(path)
            problem = _header_problem(header, record, block, start, stop)
            if problem:
                raise LabelBlockError(f"{where}: label block {path!r} {problem}: generate the labels again")
            self.headers.append((header, offset))
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.ranges[-1][1] if self.ranges else 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = {}  # a spawned worker maps the blocks itself (a memmap would be pickled as a copy)
        return state

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        if self._pid != os.getpid():  # a forked worker: its own mappings
            self._maps, self._pid = {}, os.getpid()
        found = self._maps.get(block)
        if found is None:
            header, offset = self.headers[block]
            found = self._maps.setdefault(block, _map_block(block_path(self.label_dir, block), offset, header))
        return found

    def lookup(self, position: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(values (k, H, W) float16, indices (k, H, W) int16/int32, where) of the sample at `position`."""
        block, row = divmod(int(position), self.block_size)
        values, indices = self._block(block)
        where = f"{block_path(self.label_dir, block)}[{row}]"
        return torch.from_numpy(np.array(values[row])), torch.from_numpy(np.array(indices[row])), where


def check_record(record: dict[str, Any], where: str, keys: Sequence[str] = ("samples", "relpaths_sha256",
                                                                             "block_size", "shape")) -> None:
    """A block-layout labels.json has what the reader needs; LabelBlockError naming the first missing key."""
    for key in keys:
        if key not in record:
            raise LabelBlockError(f"{where}: labels.json has format={BLOCK_FORMAT!r} but no {key!r}: write it again "
                                  "with the label generation or import")
