"""What block order gains reading tar shards: images/s and images per CPU-second, global order against block order.

The training split's first `num_images` sample keys of epoch 0 in each order (the TrainSampler's, as
training reads them) are read one by one from the shards (``ShardReader.read``: one ``pread`` each)
and their image headers parsed (format and size, what the DALI backend's planner does per sample),
on one thread, block order reading each shard ahead when first met, as training does. With ``drop_caches`` the page cache is emptied before each order (root only: it
writes /proc/sys/vm/drop_caches), so the reads come from the disk; otherwise from wherever they are.
``scripts/benchmark.py --mode data --data-dir SHARDS --shard-order global,block`` runs it. Order ``folder``
(with ``folder=`` the ImageFolder root the shards were made from) reads the same samples in the global order
from the loose files, as the folder reader does (an open and a read per file): shards against files.
"""
from __future__ import annotations

import io
import os
import time
from typing import Any, Sequence

from PIL import Image

from ..data.dataset import open_folder
from ..data.readers import Reader
from ..data.sampler import TrainSampler
from ..data.shards import ShardReader, find_shard_classes, open_shards

__all__ = ["drop_page_cache", "run_shard_order_benchmark"]

ORDERS = ("global", "block", "folder")


def drop_page_cache() -> bool:
    """Write back dirty pages and drop the page cache; False where this process may not (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def _keys(reader: ShardReader, order: str, num_images: int, block_shards: int, seed: int) -> list[int]:
    sampler = TrainSampler(len(reader), seed=seed, blocks=reader.block_sizes if order == "block" else None,
                           block_window=block_shards)
    sampler.set_epoch(0)
    return sampler.epoch_indices()[:num_images]


def _read_round(reader: Reader, keys: Sequence[int]) -> dict[str, float]:
    cpu, wall, read_bytes = time.process_time(), time.perf_counter(), 0
    for i in keys:
        data = reader.read(i)
        read_bytes += len(data)
        with Image.open(io.BytesIO(data)) as img:  # the header only
            img.size
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"images_per_sec": len(keys) / max(wall, 1e-9), "images_per_cpu_sec": len(keys) / max(cpu, 1e-9),
            "mb_per_sec": read_bytes / 2**20 / max(wall, 1e-9), "cpu_share": cpu / max(wall, 1e-9)}


def run_shard_order_benchmark(data_dir: str, *, orders: Sequence[str] = ("global", "block"), num_images: int = 2000,
                              block_shards: int = 4, drop_caches: bool = True, rounds: int = 1,
                              seed: int = 0, folder: str | None = None) -> dict[str, Any]:
    """For each order: images/s (wall), images per CPU-second and MB/s reading `num_images` samples of the
    training shards of `data_dir` in that order (order folder: the same samples as global, from `folder`'s
    loose files); rounds alternate the orders, each after a cache drop."""
    unknown = [o for o in orders if o not in ORDERS]
    if unknown:
        raise ValueError(f"shard order {unknown[0]!r}: expected some of {', '.join(ORDERS)}")
    reader = open_shards(os.path.join(data_dir, "train"), find_shard_classes(data_dir))
    files = None
    if "folder" in orders:
        if folder is None:
            raise ValueError("shard order 'folder' needs the ImageFolder root the shards were made from")
        files = open_folder(os.path.join(folder, "train"))
        if len(files) != len(reader) or [files.relpath(i) for i in range(0, len(files), 97)] != \
                [reader.relpath(i) for i in range(0, len(reader), 97)]:
            raise ValueError(f"{folder!r} is not the folder the shards of {data_dir!r} were made from: "
                             f"{len(files)} images against {len(reader)}, or other names at the same positions")
    keys = {order: _keys(reader, "global" if order == "folder" else order, num_images, block_shards, seed)
            for order in orders}
    results: dict[str, Any] = {"shards": len(reader.shards), "images_in_shards": len(reader),
                               "images_read": len(keys[orders[0]]), "block_shards": block_shards}
    dropped = []
    per_order: dict[str, list[dict[str, float]]] = {order: [] for order in orders}
    for _ in range(rounds):
        for order in orders:
            reader.close()
            reader.read_ahead_shards = 2 * block_shards if order == "block" else 0  # as training sets it
            dropped.append(drop_page_cache() if drop_caches else False)
            per_order[order].append(_read_round(files if order == "folder" else reader, keys[order]))
    results["page_cache_dropped"] = all(dropped) if drop_caches else False
    for order, rows in per_order.items():
        for key in rows[0]:
            values = sorted(row[key] for row in rows)
            results[f"{order}_{key}"] = values[len(values) // 2]
    if "global" in orders and "block" in orders:
        results["block_vs_global_images_per_sec"] = results["block_images_per_sec"] / results["global_images_per_sec"]
    for order in ("global", "block"):
        if order in orders and "folder" in orders:
            results[f"{order}_vs_folder_images_per_cpu_sec"] = \
                results[f"{order}_images_per_cpu_sec"] / results["folder_images_per_cpu_sec"]
    return results
