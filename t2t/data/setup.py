"""The training run's data, assembled from the config: datasets, resumable loaders, mixup, reseeding."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from torch.utils.data import DataLoader

from ..config import DataConfig, MixupConfig
from .dataset import DatasetError, ImageFolderDataset, check_same_classes, find_split_dirs, find_unreadable_images
from .loader import build_eval_loader, build_train_loader, set_loader_epoch
from .mixup import build_mixup, seed_main_process_rng
from .sampler import TrainSampler
from .transforms import build_eval_transform, build_train_transform

_logger = logging.getLogger(__name__)


@dataclass
class TrainData:
    train_dir: str
    classes: list[str]
    train_len: int
    batch_size: int
    batches_per_epoch: int
    train_loader: DataLoader
    val_loader: DataLoader

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_batches(self, epoch: int, start_batch: int = 0) -> DataLoader:
        """The epoch's batches from `start_batch` on (mid-epoch resume skips inside the sampler)."""
        set_loader_epoch(self.train_loader, epoch, start_index=start_batch * self.batch_size)
        return self.train_loader


def build_train_and_val(
        cfg: DataConfig,
        data_dir: str,
        *,
        img_size: int,
        seed: int,
        batch_size: int,
        eval_batch_size: int,
        eval_crop_pct: float,
        eval_interpolation: str,
        num_replicas: int = 1,
        rank: int = 0,
        pin_memory: bool = False,
) -> TrainData:
    train_dir, val_dir = find_split_dirs(data_dir)
    train_tf = build_train_transform(
        img_size, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, auto_augment=cfg.auto_augment,
        color_jitter=cfg.color_jitter, interpolation=cfg.interpolation, re_prob=cfg.reprob, re_mode=cfg.remode,
        re_count=cfg.recount, mean=tuple(cfg.mean), std=tuple(cfg.std), fast_decode=cfg.fast_decode)
    eval_tf = build_eval_transform(img_size, eval_crop_pct, eval_interpolation, mean=tuple(cfg.mean),
                                   std=tuple(cfg.std))
    train_ds = ImageFolderDataset(train_dir, train_tf, seed=seed, skip_bad_images=cfg.skip_bad_images)
    val_ds = ImageFolderDataset(val_dir, eval_tf, seed=seed, skip_bad_images=cfg.skip_bad_images)
    check_same_classes(train_ds, val_ds)
    check_val_images(val_ds, workers=cfg.workers)
    sampler = TrainSampler(len(train_ds), num_replicas=num_replicas, rank=rank, seed=seed,
                           repeats=cfg.repeats if cfg.repeated_aug else 1, drop_last=True)
    loader = build_train_loader(train_ds, batch_size=batch_size, sampler=sampler, workers=cfg.workers,
                                pin_memory=pin_memory, prefetch_factor=4 if cfg.workers > 0 else None)
    val_loader = build_eval_loader(val_ds, batch_size=eval_batch_size, workers=cfg.workers,
                                   num_replicas=num_replicas, rank=rank, pin_memory=pin_memory)
    sampler.set_epoch(0)
    return TrainData(train_dir=train_dir, classes=list(train_ds.classes), train_len=len(train_ds),
                     batch_size=batch_size, batches_per_epoch=len(sampler) // batch_size,
                     train_loader=loader, val_loader=val_loader)


def check_val_images(val_ds: ImageFolderDataset, workers: int) -> None:
    """Decode every validation image once, cheaply, so a bad one fails the run before an epoch is spent on it.

    With ``skip_bad_images`` the unreadable files are left out of the validation set, with a warning.
    """
    bad = find_unreadable_images([path for path, _ in val_ds.samples], workers=workers)
    if not bad:
        return
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    if not val_ds.skip_bad_images:
        raise DatasetError(
            f"validation image {bad[0][0]!r} cannot be read ({bad[0][1]}){more}: replace or delete it, or set "
            "data.skip_bad_images=true to leave such files out")
    unreadable = {path for path, _ in bad}
    val_ds.samples = [(p, t) for p, t in val_ds.samples if p not in unreadable]
    val_ds.targets = [t for _, t in val_ds.samples]
    if not val_ds.samples:
        raise DatasetError(f"every image of the validation folder {val_ds.root!r} is unreadable, e.g. {bad[0][0]!r}")
    _logger.warning("Left %d unreadable validation images out: %s%s", len(bad), bad[0][0], more)


def build_mixup_fn(cfg: MixupConfig, num_classes: int) -> Optional[Any]:
    return build_mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.prob,
                       switch_prob=cfg.switch_prob, mode=cfg.mode, label_smoothing=cfg.label_smoothing,
                       num_classes=num_classes)


def reseed_step(seed: int, micro_step: int, rank: int) -> None:
    """Seed mixup, dropout and drop-path from the position in the run (exact resume)."""
    seed_main_process_rng(seed, micro_step, rank)
