"""DataLoaders for training (resumable TrainSampler) and exact sharded evaluation (ShardSampler)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .sampler import ShardSampler, TrainSampler

__all__ = ["build_eval_loader", "build_train_loader", "set_loader_epoch"]


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
) -> DataLoader:
    """Training DataLoader over ``sampler``; worker randomness needs no init_fn (__getitem__ reseeds).

    Call ``set_loader_epoch(loader, epoch, start_index)`` before iterating each epoch.
    """
    _check_loader_args(batch_size, workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        # A private generator: otherwise every iter(loader) draws a worker base seed from torch's
        # global RNG in the main process, which would shift dropout / drop-path randomness.
        generator=torch.Generator().manual_seed(0),
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
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), num_replicas=num_replicas, rank=rank),
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=persistent_workers and workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


def set_loader_epoch(loader: DataLoader, epoch: int, start_index: int = 0) -> None:
    """Point the loader's sampler and dataset at ``epoch``; skip ``start_index`` samples of this rank.

    Must run before ``iter(loader)``: persistent workers read the epoch from shared memory when they
    prepare each sample, and the sampler fixes its order when iteration starts.
    """
    sampler = loader.sampler
    if isinstance(sampler, TrainSampler):
        sampler.set_epoch(epoch, start_index)
    elif start_index:
        raise ValueError(f"start_index={start_index} needs a TrainSampler, the loader has {type(sampler).__name__}")
    elif hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
