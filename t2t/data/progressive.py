"""Progressive resolution on the data side: the training image size as a function of the epoch.

`ResolutionSchedule` says which of train.img_sizes an epoch trains at; `SizeScheduledTransform`
holds one training transform per size and applies the epoch's one. The size lives in shared memory,
as the dataset's epoch does, so persistent DataLoader workers follow `set_epoch` calls. A sample's
augmentation draws stay a function of (seed, epoch, index): the dataset reseeds before the transform.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch

from ..config import TrainConfig, img_size_phase_starts


@dataclass(frozen=True)
class ResolutionSchedule:
    """Train at sizes[i] from epoch starts[i] on (starts[0] == 0); the last size is model.img_size."""

    sizes: tuple[int, ...]
    starts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.sizes) != len(self.starts) or not self.sizes or self.starts[0] != 0:
            raise ValueError(f"ResolutionSchedule(sizes={self.sizes}, starts={self.starts}): expected one start "
                             "epoch per size, the first 0")

    @classmethod
    def from_config(cls, train: TrainConfig) -> Optional["ResolutionSchedule"]:
        """The schedule train.img_sizes / train.img_size_epochs describe; None when progressive resolution is off."""
        if not train.img_sizes:
            return None
        return cls(sizes=tuple(train.img_sizes), starts=img_size_phase_starts(train))

    def size_at(self, epoch: int) -> int:
        """The training image size of `epoch` (0-based)."""
        return self.sizes[bisect.bisect_right(self.starts, epoch) - 1]

    def describe(self) -> str:
        return ", ".join(f"{size} px from epoch {start}" for size, start in zip(self.sizes, self.starts))


class SizeScheduledTransform:
    """The training transform of the current epoch's size, one per size of `schedule`.

    The dataset calls it as it calls any transform (and its ``decode_and_crop`` when the transforms
    have one: the fast JPEG path); ``set_epoch`` picks the size, also in live worker processes.
    """

    def __init__(self, transforms: Mapping[int, Callable[[Any], Any]], schedule: ResolutionSchedule) -> None:
        missing = [s for s in schedule.sizes if s not in transforms]
        if missing:
            raise ValueError(f"no training transform for the sizes {missing} of the schedule {schedule.describe()}")
        self.transforms = dict(transforms)
        self.schedule = schedule
        self._size = torch.full((1,), schedule.sizes[0], dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._size[0] = self.schedule.size_at(epoch)

    @property
    def size(self) -> int:
        return int(self._size[0])

    @property
    def current(self) -> Callable[[Any], Any]:
        return self.transforms[self.size]

    @property
    def decode_and_crop(self) -> Optional[Callable[[Any], Any]]:
        return getattr(self.current, "decode_and_crop", None)

    def __call__(self, img: Any) -> Any:
        return self.current(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule.describe()}; now {self.size} px: {self.current!r})"
