"""Samplers: a resumable, shardable training sampler with repeated augmentation, and exact eval sharding."""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from .dataset import SEED_STREAM_SHUFFLE, derive_seed

__all__ = ["ShardSampler", "TrainSampler"]


class TrainSampler(Sampler[int]):
    """Shuffled, sharded, resumable index order for training; ``repeats > 1`` is DeiT's repeated augmentation.

    For an epoch: a permutation of range(dataset_len) from a torch.Generator seeded with (seed, epoch);
    with ``repeats = r`` every index is written r times in a row (so the copies fall on r different
    ranks); the list is wrapped round if too short and cut to ``samples_per_epoch * num_replicas``;
    rank k takes positions k, k + W, k + 2W, ... (W = num_replicas).

    ``samples_per_epoch`` (per rank) is floor(dataset_len / W) with ``drop_last`` and ceil(...) without,
    whatever ``repeats`` is: an epoch still has one dataset's worth of samples, so with repeats = 3 it
    shows about a third of the images, three augmentations each. This is DeiT's RASampler without its
    rounding of the epoch down to a multiple of 256 images. With ``drop_last`` every rank gets the
    same number of samples and a few images (different ones each epoch) are left out.

    ``set_epoch(epoch, start_index)`` skips the first ``start_index`` samples of this rank's list, for
    resuming inside an epoch (pass batches_done * batch_size); ``len()`` is what remains.
    """

    def __init__(
        self,
        dataset_len: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        repeats: int = 1,
        drop_last: bool = True,
    ) -> None:
        if dataset_len <= 0:
            raise ValueError(f"dataset_len must be positive, got {dataset_len}")
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset_len = int(dataset_len)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.repeats = int(repeats)
        self.drop_last = bool(drop_last)
        if drop_last:
            self.samples_per_epoch = self.dataset_len // self.num_replicas
        else:
            self.samples_per_epoch = math.ceil(self.dataset_len / self.num_replicas)
        if self.samples_per_epoch == 0:
            raise ValueError(
                f"a dataset of {dataset_len} images cannot give every one of {num_replicas} ranks a sample "
                f"with drop_last=True; use more images or drop_last=False"
            )
        self.epoch = 0
        self.start_index = 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch's order and skip the first ``start_index`` samples of this rank."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_index <= self.samples_per_epoch:
            raise ValueError(
                f"start_index must be in [0, {self.samples_per_epoch}] (samples per rank per epoch), got {start_index}"
            )
        self.epoch = int(epoch)
        self.start_index = int(start_index)

    def epoch_indices(self) -> list[int]:
        """This rank's full index list for the current epoch (ignoring start_index)."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(derive_seed(SEED_STREAM_SHUFFLE, self.seed, self.epoch))
            order = torch.randperm(self.dataset_len, generator=generator)
        else:
            order = torch.arange(self.dataset_len)
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)
        total = self.samples_per_epoch * self.num_replicas
        if len(order) < total:  # only without drop_last: wrap round, as DistributedSampler pads
            order = order.repeat(math.ceil(total / len(order)))
        return order[self.rank:total:self.num_replicas].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start_index:])

    def __len__(self) -> int:
        return self.samples_per_epoch - self.start_index


class ShardSampler(Sampler[int]):
    """Rank r of W takes indices r, r + W, r + 2W, ...: no padding, so sharded evaluation is exact."""

    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0) -> None:
        if dataset_len < 0:
            raise ValueError(f"dataset_len must be >= 0, got {dataset_len}")
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.dataset_len = int(dataset_len)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.dataset_len, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.dataset_len, self.num_replicas))
