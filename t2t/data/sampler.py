"""Samplers: a resumable, shardable training sampler with repeated augmentation, and exact eval sharding."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from ..rng import shuffle_seed
from .dataset import RepeatedSample, SampleKey

__all__ = ["ShardSampler", "TrainSampler"]


class TrainSampler(Sampler[SampleKey]):
    """Shuffled, sharded, resumable index order for training; ``repeats > 1`` is DeiT's repeated augmentation.

    For an epoch: a permutation of range(dataset_len) from a torch.Generator seeded with (seed, epoch);
    with ``repeats = r`` every index is written r times in a row (so the copies fall on r different
    ranks) as ``RepeatedSample(index, slot)`` keys, slot 0 .. r - 1, so that the dataset augments each
    copy with its own random draws (copies seeded alike would be one picture shown r times); the list is wrapped round if too short and cut to ``samples_per_epoch * num_replicas``;
    rank k takes positions k, k + W, k + 2W, ... (W = num_replicas).

    ``samples_per_epoch`` (per rank) is floor(dataset_len / W) with ``drop_last`` and ceil(...) without,
    whatever ``repeats`` is: an epoch still has one dataset's worth of samples, so with repeats = 3 it
    shows about a third of the images, three augmentations each. This is DeiT's RASampler without its
    rounding of the epoch down to a multiple of 256 images. With ``drop_last`` every rank gets the
    same number of samples and a few images (different ones each epoch) are left out.

    Progress is counted in samples of the global order, not in steps: rank k of W reads global
    positions p, p + W, p + 2W, ... with p = start_sample + k, so with a global batch G = W x b x accum
    every optimizer step consumes the same G consecutive positions whatever W is. ``epoch_samples``
    (global) cuts the epoch to a whole number of global batches; a run stopped on W processes
    continues on W' with ``set_epoch(epoch, start_sample)``, ``start_sample`` being the samples all
    ranks consumed so far in the epoch. ``len()`` is what remains for this rank.

    ``blocks`` (samples per shard, in position order) replaces the epoch's permutation by
    ``block_order``: shards permuted, samples shuffled within windows of ``block_window`` shards, so
    that the ranks together read a few shards at a time, each front to back. Everything else (repeats,
    rank slicing, progress in samples, elastic resume) is unchanged.
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
        epoch_samples: int | None = None,
        blocks: Sequence[int] | None = None,
        block_window: int = 4,
    ) -> None:
        if dataset_len <= 0:
            raise ValueError(f"dataset_len must be positive, got {dataset_len}")
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if blocks is not None and (sum(blocks) != dataset_len or min(blocks) < 0):
            raise ValueError(f"blocks must be counts that sum to dataset_len={dataset_len}, got {len(blocks)} blocks "
                             f"of {sum(blocks)} samples")
        if block_window < 1:
            raise ValueError(f"block_window must be >= 1, got {block_window}")
        self.blocks = None if blocks is None else [int(b) for b in blocks]
        self.block_window = int(block_window)
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
        self.total = self.samples_per_epoch * self.num_replicas  # global positions per epoch
        if epoch_samples is not None:
            if not 0 < epoch_samples <= self.total or epoch_samples % self.num_replicas:
                raise ValueError(
                    f"epoch_samples must be a positive multiple of num_replicas={num_replicas} and at most "
                    f"{self.total}, got {epoch_samples}")
            self.total = int(epoch_samples)
            self.samples_per_epoch = self.total // self.num_replicas
        self.epoch = 0
        self.start_sample = 0

    def set_epoch(self, epoch: int, start_sample: int = 0) -> None:
        """Select the epoch's order and skip its first ``start_sample`` global positions (all ranks')."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_sample <= self.total or start_sample % self.num_replicas:
            raise ValueError(
                f"start_sample must be a multiple of num_replicas={self.num_replicas} in [0, {self.total}] "
                f"(samples of all ranks per epoch), got {start_sample}"
            )
        self.epoch = int(epoch)
        self.start_sample = int(start_sample)

    def epoch_indices(self) -> list[SampleKey]:
        """This rank's full list of sample keys for the current epoch (ignoring start_sample).

        Plain indices, or ``RepeatedSample(index, slot)`` with ``repeats > 1``; the slot is the copy's
        place in its run of r, a function of the global order only, so it survives a resume on any
        world size.
        """
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(shuffle_seed(self.seed, self.epoch))
            if self.blocks is None:
                order = torch.randperm(self.dataset_len, generator=generator)
            else:
                order = block_order(self.blocks, self.block_window, generator)
        else:
            order = torch.arange(self.dataset_len)
        slots = None
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)
            slots = torch.arange(self.repeats).repeat(self.dataset_len)
        if len(order) < self.total:  # only without drop_last: wrap round, as DistributedSampler pads
            copies = math.ceil(self.total / len(order))
            order = order.repeat(copies)
            slots = None if slots is None else slots.repeat(copies)
        indices = order[self.rank:self.total:self.num_replicas].tolist()
        if slots is None:
            return indices
        return [RepeatedSample(i, s) for i, s in zip(indices, slots[self.rank:self.total:self.num_replicas].tolist())]

    def __iter__(self) -> Iterator[SampleKey]:
        return iter(self.epoch_indices()[self.start_sample // self.num_replicas:])

    def __len__(self) -> int:
        return self.samples_per_epoch - self.start_sample // self.num_replicas


def block_order(blocks: Sequence[int], window: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation of range(sum(blocks)) that reads blocks (shards) whole: the blocks in a random order,
    then the samples of each run of `window` consecutive blocks of that order shuffled among themselves.

    Block b holds samples starts[b] .. starts[b] + blocks[b] - 1. Everything is drawn from `generator`
    (seeded from (seed, epoch)), so the order is as much a function of (seed, epoch) as the global one.
    """
    starts = [0]
    for size in blocks[:-1]:
        starts.append(starts[-1] + size)
    permuted = torch.randperm(len(blocks), generator=generator).tolist()
    parts = []
    for w in range(0, len(permuted), window):
        members = torch.cat([torch.arange(starts[b], starts[b] + blocks[b]) for b in permuted[w:w + window]])
        parts.append(members[torch.randperm(len(members), generator=generator)])
    return torch.cat(parts)


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
