"""The training run's data, assembled from the config: datasets, resumable loaders, mixup, reseeding."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch.utils.data import DataLoader

from ..config import ConfigError, DataConfig, MixupConfig
from .cifar import CIFARDataset, find_cifar_dir
from .dataset import ImageFolderDataset, SeededDataset, check_same_classes, find_split_dirs
from .loader import build_eval_loader, build_train_loader, set_loader_epoch
from .mixup import build_mixup, seed_main_process_rng
from .sampler import TrainSampler
from .transforms import build_eval_transform, build_padded_crop_transform, build_train_transform


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


def resolve_format(data_dir: str, fmt: str) -> str:
    """'cifar' or 'imagefolder' for `data_dir`; 'auto' picks cifar for an extracted CIFAR folder."""
    if fmt == "auto":
        return "cifar" if find_cifar_dir(data_dir) is not None else "imagefolder"
    return fmt


def build_datasets(cfg: DataConfig, data_dir: str, train_tf: Callable, eval_tf: Callable,
                   seed: int) -> tuple[SeededDataset, SeededDataset, str]:
    """(train, val, the folder read) in the format `cfg.format` names or detects."""
    if resolve_format(data_dir, cfg.format) == "cifar":
        train_ds = CIFARDataset(data_dir, train=True, transform=train_tf, seed=seed)
        return train_ds, CIFARDataset(data_dir, train=False, transform=eval_tf, seed=seed), train_ds.root
    train_dir, val_dir = find_split_dirs(data_dir)
    train_ds = ImageFolderDataset(train_dir, train_tf, seed=seed, skip_bad_images=cfg.skip_bad_images)
    val_ds = ImageFolderDataset(val_dir, eval_tf, seed=seed, skip_bad_images=cfg.skip_bad_images)
    check_same_classes(train_ds, val_ds)
    return train_ds, val_ds, train_dir


def build_train_tf(cfg: DataConfig, img_size: int) -> Callable:
    """The training transform `cfg.train_transform` names."""
    if cfg.train_transform == "cifar":
        if cfg.auto_augment:
            raise ConfigError(f"data.auto_augment={cfg.auto_augment!r} is not used by data.train_transform=cifar: "
                              "set it to null")
        if cfg.interpolation == "random":
            raise ConfigError("data.interpolation='random' is for data.train_transform=imagenet: "
                              "choose bilinear or bicubic for the cifar resize")
        return build_padded_crop_transform(
            img_size, padding=img_size // 8, hflip=cfg.hflip, interpolation=cfg.interpolation,
            re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount, mean=tuple(cfg.mean), std=tuple(cfg.std))
    return build_train_transform(
        img_size, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, auto_augment=cfg.auto_augment,
        color_jitter=cfg.color_jitter, interpolation=cfg.interpolation, re_prob=cfg.reprob, re_mode=cfg.remode,
        re_count=cfg.recount, mean=tuple(cfg.mean), std=tuple(cfg.std), fast_decode=cfg.fast_decode)


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
    train_tf = build_train_tf(cfg, img_size)
    eval_tf = build_eval_transform(img_size, eval_crop_pct, eval_interpolation, mean=tuple(cfg.mean),
                                   std=tuple(cfg.std))
    train_ds, val_ds, train_dir = build_datasets(cfg, data_dir, train_tf, eval_tf, seed)
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


def build_mixup_fn(cfg: MixupConfig, num_classes: int) -> Optional[Any]:
    return build_mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.prob,
                       switch_prob=cfg.switch_prob, mode=cfg.mode, label_smoothing=cfg.label_smoothing,
                       num_classes=num_classes)


def reseed_step(seed: int, micro_step: int, rank: int) -> None:
    """Seed mixup, dropout and drop-path from the position in the run (exact resume)."""
    seed_main_process_rng(seed, micro_step, rank)
