"""DataLoaders for training (resumable TrainSampler) and exact sharded evaluation (ShardSampler)."""
from __future__ import annotations

import atexit
import multiprocessing
import signal
import sys
from types import TracebackType
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .batch_buffers import BufferedLoader, batch_buffers_available
from .sampler import ShardSampler, TrainSampler

__all__ = ["build_batch_loader", "build_eval_loader", "build_train_loader", "set_loader_epoch"]


def init_loader_worker(worker_id: int = 0) -> None:
    """Set up a loader worker: it ignores SIGTERM and SIGINT, and stays quiet when its consumer left.

    Slurm, container runtimes, `kill -- -PGID` and Ctrl-C signal every process of the group; a
    worker that died of it would make the main process fail before it could save a checkpoint.
    Workers still end with their main process (the DataLoader's watchdog) or by SIGKILL.

    A worker hands each batch's tensors to the main process as file descriptors, served by a thread
    of multiprocessing's resource sharer. When the main process stops in the middle of receiving
    one (Ctrl-C in predict.py or validate.py), that thread's connection is cut and Python would
    print its traceback into the tool's clean one-line exit; that one error is dropped.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = _drop_cut_fd_transfers


def _drop_cut_fd_transfers(exc_type: type, exc: BaseException, tb: Optional[TracebackType]) -> None:
    # The resource sharer's thread reports its errors through sys.excepthook (caught in its _serve).
    first_file = tb.tb_frame.f_code.co_filename if tb is not None else ""
    if issubclass(exc_type, (ConnectionError, EOFError)) and first_file.endswith("resource_sharer.py"):
        return
    sys.__excepthook__(exc_type, exc, tb)


def _kill_leftover_workers() -> None:
    """At exit, SIGKILL loader workers still alive (they ignore the SIGTERM multiprocessing would send).

    Registered after multiprocessing's own exit hook, so it runs first; a run that ends with an error
    inside a loader's iteration leaves its workers to this.
    """
    children = [child for child in multiprocessing.active_children() if child.daemon]
    if not children:
        return
    # The DataLoader's SIGCHLD handler would raise "worker killed by signal" from inside this hook.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
        child.join(timeout=5)


_exit_hook_registered = False


def _register_exit_hook() -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_kill_leftover_workers)
        _exit_hook_registered = True


def _check_loader_args(batch_size: int, workers: int) -> None:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")


def build_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    sampler: Sampler[int],
    workers: int,
    pin_memory: bool = False,
    persistent_workers: bool = True,
    drop_last: bool = True,
    prefetch_factor: int | None = None,
    batch_bytes: int | None = None,
) -> DataLoader | BufferedLoader:
    """Training DataLoader over ``sampler``; worker randomness needs no init_fn (__getitem__ reseeds).

    With ``batch_bytes`` (an upper bound of one batch's bytes) and persistent workers, the workers
    collate into shared buffers made once (t2t/data/batch_buffers.py): the same batches, without a new
    shared-memory tensor for each. Call ``set_loader_epoch(loader, epoch, start_index)`` before
    iterating each epoch.
    """
    _check_loader_args(batch_size, workers)
    _register_exit_hook()
    common = dict(
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=init_loader_worker,
        # A private generator: otherwise every iter(loader) draws a worker base seed from torch's
        # global RNG in the main process, which would shift dropout / drop-path randomness.
        generator=torch.Generator().manual_seed(0),
    )
    if batch_bytes and workers > 0 and persistent_workers and batch_buffers_available():
        common.pop("num_workers")
        return BufferedLoader(dataset, batch_size=batch_size, sampler=sampler, workers=workers, drop_last=drop_last,
                              prefetch_factor=prefetch_factor or 2, batch_bytes=batch_bytes, **common)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        **common,
    )


def build_eval_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    workers: int,
    num_replicas: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """Evaluation DataLoader: rank r reads r, r + W, ... (no padding), keeps the last partial batch."""
    _check_loader_args(batch_size, workers)
    _register_exit_hook()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), num_replicas=num_replicas, rank=rank),
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=persistent_workers and workers > 0,
        worker_init_fn=init_loader_worker,
        generator=torch.Generator().manual_seed(0),
    )


def build_batch_loader(batches: Dataset, order: Sampler, *, workers: int,
                       prefetch_factor: int | None = None) -> DataLoader:
    """DataLoader whose items are whole batches: ``batches[item]`` for each item of ``order``, made in worker processes.

    For loaders that do their per-sample work in workers and hand the training process batch-level
    arrays (the DALI backend's plans). Workers persist across epochs; with ``workers=0`` the batches are
    made in the calling process.
    """
    _check_loader_args(1, workers)
    _register_exit_hook()
    return DataLoader(
        batches,
        batch_size=None,
        sampler=order,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=init_loader_worker,
        generator=torch.Generator().manual_seed(0),  # as build_train_loader: the global RNG is left alone
    )


def set_loader_epoch(loader: DataLoader, epoch: int, start_sample: int = 0) -> None:
    """Point the loader's sampler and dataset at ``epoch``; skip its first ``start_sample`` global samples.

    Must run before ``iter(loader)``: persistent workers read the epoch from shared memory when they
    prepare each sample, and the sampler fixes its order when iteration starts.
    """
    sampler = loader.sampler
    if isinstance(sampler, TrainSampler):
        sampler.set_epoch(epoch, start_sample)
    elif start_sample:
        raise ValueError(f"start_sample={start_sample} needs a TrainSampler, the loader has {type(sampler).__name__}")
    elif hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    if hasattr(getattr(loader.dataset, "transform", None), "set_epoch"):  # train.img_sizes: the epoch's image size
        loader.dataset.transform.set_epoch(epoch)
