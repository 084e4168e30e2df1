"""Every random draw of a training run as a function of its position: the heart of exact resume.

A run's randomness has three sources, and each is seeded from a tuple of integers that names where
in the run the draw happens, never from a generator's history:

* **the order** (``SEED_STREAM_SHUFFLE``): the training sampler's permutation of an epoch comes from
  a ``torch.Generator`` seeded with ``shuffle_seed(seed, epoch)``. Sharding, repeated augmentation
  and the position inside the epoch are functions of that one global permutation, counted in samples.
* **a sample's augmentation** (``SEED_STREAM_SAMPLE``): before a dataset decodes and augments sample
  ``index`` (copy ``slot`` under repeated augmentation), ``reseed_sample(seed, epoch, index, slot)``
  seeds Python's ``random``, NumPy's global RNG and torch's CPU RNG, the three that timm's
  RandomResizedCrop, RandAugment and random erasing draw from. Copy 0 omits the slot, so a run without
  repeated augmentation keeps the seed of (seed, epoch, index); copies > 0 add it, so the copies of one
  image (which the sampler sends to different ranks) are augmented differently.
* **the main process** (``SEED_STREAM_STEP``): before every micro-batch the Trainer calls
  ``reseed_step(seed, micro_step, rank)`` (micro_step = global optimizer step x accumulation + the
  micro-batch's place in the step), which seeds ``random``, NumPy and torch on every device: mixup
  and cutmix (timm's ``Mixup`` draws from NumPy's global RNG), dropout and drop-path.

Why a resume is exact. Nothing above depends on how many workers a DataLoader has, which worker
prepares which sample, or how many draws came before: a run stopped at any step and started again
from its checkpoint (epoch, samples consumed in the epoch, global step) reseeds every generator to the
value the uninterrupted run had at that point. Why a resume on another world size shows every sample
the same: the permutation depends on (seed, epoch) only, and a sample's seed on (seed, epoch, index,
slot), where the slot is the copy's place in the global order, not the rank that reads it; so the
sample at global position p of an epoch is the same image with the same crop, flip, RandAugment ops
and erasing whatever W ranks read it. Only the per-step stream involves the rank: each rank mixes its
own micro-batch, and a batch split over other ranks is mixed with other draws (the images are the same;
their mixup pairs and masks are not).

``derive_seed`` hashes the tuple, first key the stream, with BLAKE2b to 64 bits, so neighbouring
positions get unrelated seeds and the three streams never share one.
"""
from __future__ import annotations

import hashlib
import random
import struct

import numpy as np
import torch

__all__ = [
    "SEED_STREAM_SAMPLE",
    "SEED_STREAM_SHUFFLE",
    "SEED_STREAM_STEP",
    "derive_seed",
    "reseed_sample",
    "reseed_step",
    "sample_seed",
    "seed_global_rngs",
    "shuffle_seed",
]

# First key of every derive_seed() call, so the three uses never share a seed.
SEED_STREAM_SAMPLE = 1  # (stream, seed, epoch, index[, repeat slot]): a sample's augmentation
SEED_STREAM_SHUFFLE = 2  # (stream, seed, epoch): the training sampler's permutation
SEED_STREAM_STEP = 3  # (stream, seed, step, rank): main-process randomness of one optimizer step


def derive_seed(*keys: int) -> int:
    """A 64-bit seed hashed from integer keys in [0, 2**64), e.g. (SEED_STREAM_SAMPLE, seed, epoch, index)."""
    try:
        packed = struct.pack(f"<{len(keys)}Q", *keys)
    except struct.error as exc:
        raise ValueError(f"seed keys must be integers in [0, 2**64), got {keys}") from exc
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little")


def seed_global_rngs(seed: int, *, accelerators: bool = False) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch's CPU RNG (and every device's if asked).

    ``accelerators=False`` seeds only torch's CPU generator: enough for data workers, and about 1 us,
    where ``torch.manual_seed`` took about 200 us here (CUDA not initialised: it queues lazy seeding
    calls that record a formatted stack trace).
    """
    random.seed(seed)
    np.random.seed(seed >> 32)  # legacy seeding takes 32 bits; an int seeds 5x faster than an array
    if accelerators:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def shuffle_seed(seed: int, epoch: int) -> int:
    """Seed of the training sampler's permutation for `epoch`."""
    return derive_seed(SEED_STREAM_SHUFFLE, seed, epoch)


def sample_seed(seed: int, epoch: int, index: int, slot: int = 0) -> int:
    """Seed of the augmentation of copy `slot` of sample `index` in `epoch` (slot 0: no slot key)."""
    keys = (SEED_STREAM_SAMPLE, seed, epoch, index) + ((slot,) if slot else ())
    return derive_seed(*keys)


def reseed_sample(seed: int, epoch: int, index: int, slot: int = 0) -> None:
    """Seed ``random``, NumPy and torch's CPU RNG for one sample: its augmentation depends on nothing else."""
    seed_global_rngs(sample_seed(seed, epoch, index, slot))


def reseed_step(seed: int, micro_step: int, rank: int) -> None:
    """Seed ``random``, NumPy and torch (all devices) from (seed, micro_step, rank), before each micro-batch.

    Mixup/cutmix, dropout and drop-path then repeat exactly after a resume.
    """
    seed_global_rngs(derive_seed(SEED_STREAM_STEP, seed, micro_step, rank), accelerators=True)
