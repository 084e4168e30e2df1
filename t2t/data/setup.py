"""The training run's data, assembled from the config: datasets, resumable loaders, mixup."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader

from ..config import ConfigError, DataConfig, MixupConfig, TokenLabelConfig
from .cifar import CIFARDataset, find_cifar_dir
from .dataset import DatasetError, ImageFolderDataset, SeededDataset, check_same_classes, find_split_dirs, \
    find_unreadable_images
from .loader import build_eval_loader, build_train_loader, set_loader_epoch
from .mixup import build_mixup
from .sampler import TrainSampler
from .token_label import DenseTokenTargets, MixToken, TokenLabelDataset, TokenLabelTransform
from .transforms import BatchNormalize, BatchNormalizeErase, build_eval_transform, build_padded_crop_transform, \
    build_simple_crop_transform, build_train_transform

_logger = logging.getLogger(__name__)


class DataSizeError(ValueError):
    """The training set cannot give one global batch per epoch."""


@dataclass
class TrainData:
    train_dir: str
    classes: list[str]
    train_len: int
    batch_size: int  # per process
    global_batch_size: int
    steps_per_epoch: int  # optimizer steps: train_len // global_batch_size
    train_loader: DataLoader
    val_loader: DataLoader
    # uint8 batches -> normalised, randomly erased float batches on the device (CUDA); None: the
    # workers deliver normalised float batches.
    on_device: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    # The same for validation batches (normalised only); None: float batches from the workers.
    val_on_device: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    # Token labels: the workers' label structure -> (class target, dense target) on the device.
    labels_on_device: Optional[Callable[[Any], Any]] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def batch_to_device(self, device: torch.device) -> Optional[Callable[[Any, Any], tuple[Any, Any]]]:
        """(images, targets) of a worker batch -> the step's batch on `device`; None where a copy does."""
        if self.on_device is None and self.labels_on_device is None:
            return None

        def to_device(images: torch.Tensor, targets: Any) -> tuple[Any, Any]:
            images = self.on_device(images) if self.on_device is not None else images.to(device, non_blocking=True)
            if self.labels_on_device is not None:
                return images, self.labels_on_device(targets)
            return images, targets.to(device, non_blocking=True)
        return to_device

    def train_batches(self, epoch: int, start_sample: int = 0) -> DataLoader:
        """The epoch's batches from global sample `start_sample` on (a resume skips inside the sampler)."""
        set_loader_epoch(self.train_loader, epoch, start_sample=start_sample)
        return self.train_loader


def shared_memory_per_process(*, workers: int, prefetch_factor: int, batch_size: int, eval_batch_size: int,
                              img_size: int, uint8_train: bool, uint8_eval: bool) -> int:
    """Bytes of batches the training and evaluation loader workers of one process can hold in shared memory.

    Each loader's workers hold up to workers x prefetch batches; the evaluation loader uses the
    DataLoader's default prefetch of 2. Both are counted: their workers stay alive side by side.
    """
    if workers == 0:
        return 0
    pixels = 3 * img_size * img_size
    train = workers * prefetch_factor * batch_size * pixels * (1 if uint8_train else 4)
    evaluation = workers * 2 * eval_batch_size * pixels * (1 if uint8_eval else 4)
    return train + evaluation


def free_shared_memory(path: str = "/dev/shm") -> Optional[int]:
    """Bytes free for an unprivileged process in `path` (None where there is no such folder)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def check_shared_memory(per_process: int, processes: int, free: Optional[int]) -> bool:
    """Warn when the loaders of `processes` processes may need more than the `free` bytes of /dev/shm; True if so."""
    need = per_process * processes
    msg = (f"the loader workers of {processes} process{'es' if processes > 1 else ''} on this machine hold up to "
           f"{need / 2**20:.0f} MiB of shared memory ({per_process / 2**20:.0f} MiB each, training and "
           f"evaluation loaders)")
    if free is not None and need > free:
        _logger.warning("%s, more than the %d MiB free in /dev/shm: lower data.workers, data.prefetch_factor or "
                        "eval.batch_size, or give the container more (docker --shm-size)", msg, free // 2**20)
        return True
    _logger.info("%s%s", msg, f"; /dev/shm has {free // 2**20} MiB free" if free is not None else "")
    return False


def resolve_format(data_dir: str, fmt: str) -> str:
    """'cifar' or 'imagefolder' for `data_dir`; 'auto' picks cifar for an extracted CIFAR folder."""
    if fmt == "auto":
        return "cifar" if find_cifar_dir(data_dir) is not None else "imagefolder"
    return fmt


def build_datasets(cfg: DataConfig, data_dir: str, train_tf: Callable, eval_tf: Callable,
                   seed: int, *, rank: int = 0, broadcast: Optional[Callable[[Any], Any]] = None,
                   list_cache_dir: Optional[str] = None,
                   train_dataset: Callable[..., ImageFolderDataset] = ImageFolderDataset,
                   ) -> tuple[SeededDataset, SeededDataset, str]:
    """(train, val, the folder read) in the format `cfg.format` names or detects.

    Image folders are listed by rank 0 only (from its cache in `list_cache_dir` when the folders have
    not changed) and `broadcast` (a collective: rank 0's object on every rank) hands the list to the
    others: one directory walk per job start instead of one per process. Without `broadcast` (no
    process group) every process lists the folders itself. `train_dataset` builds the training set
    (e.g. `TokenLabelDataset` with its label folder).
    """
    if resolve_format(data_dir, cfg.format) == "cifar":
        if train_dataset is not ImageFolderDataset:
            raise DatasetError(f"{data_dir!r} is a CIFAR folder; token labels (token_label.dir) are read for "
                               "ImageFolder training folders")
        train_ds = CIFARDataset(data_dir, train=True, transform=train_tf, seed=seed)
        return train_ds, CIFARDataset(data_dir, train=False, transform=eval_tf, seed=seed), train_ds.root
    train_dir, val_dir = find_split_dirs(data_dir)
    datasets = []
    for split, folder, tf in (("train", train_dir, train_tf), ("val", val_dir, eval_tf)):
        make = train_dataset if split == "train" else ImageFolderDataset
        listing: Any = None
        lists_itself = rank == 0 or broadcast is None
        if lists_itself:
            cache = os.path.join(list_cache_dir, f"filelist-{split}.npz") if list_cache_dir and rank == 0 else None
            try:
                ds = make(folder, tf, seed=seed, skip_bad_images=cfg.skip_bad_images, list_cache=cache)
                listing = (ds.classes, ds.samples)
            except DatasetError as e:
                listing = e  # every rank raises it, instead of the others waiting for a list that never comes
        if broadcast is not None:
            listing = broadcast(listing)
        if isinstance(listing, DatasetError):
            raise listing
        if not lists_itself:
            classes, samples = listing
            ds = make(folder, tf, seed=seed, skip_bad_images=cfg.skip_bad_images, classes=classes, samples=samples)
        datasets.append(ds)
    train_ds, val_ds = datasets
    check_same_classes(train_ds, val_ds)
    return train_ds, val_ds, train_dir


def build_train_tf(cfg: DataConfig, img_size: int, use_prefetcher: bool = False) -> Callable:
    """The training transform `cfg.train_transform` names (uint8 output with `use_prefetcher`, imagenet only)."""
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
    if cfg.train_transform == "src":
        if cfg.interpolation == "random":
            raise ConfigError("data.interpolation='random' is for data.train_transform=imagenet: "
                              "choose bilinear or bicubic for the src resize")
        return build_simple_crop_transform(
            img_size, hflip=cfg.hflip, auto_augment=cfg.auto_augment, color_jitter=cfg.color_jitter,
            interpolation=cfg.interpolation, re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount,
            mean=tuple(cfg.mean), std=tuple(cfg.std))
    return build_train_transform(
        img_size, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, auto_augment=cfg.auto_augment,
        color_jitter=cfg.color_jitter, interpolation=cfg.interpolation, re_prob=cfg.reprob, re_mode=cfg.remode,
        re_count=cfg.recount, mean=tuple(cfg.mean), std=tuple(cfg.std), fast_decode=cfg.fast_decode,
        use_prefetcher=use_prefetcher)


def build_train_and_val(
        cfg: DataConfig, data_dir: str, *, img_size: int, seed: int, batch_size: int, global_batch_size: int,
        eval_batch_size: int, eval_crop_pct: float, eval_interpolation: str, num_replicas: int = 1, rank: int = 0,
        pin_memory: bool = False, device: torch.device = torch.device("cpu"),
        normalize_on_device: Optional[bool] = None, gather: Callable[[Any], list[Any]] = lambda found: [found],
        broadcast: Optional[Callable[[Any], Any]] = None, list_cache_dir: Optional[str] = None,
        token_label: Optional[TokenLabelConfig] = None, label_smoothing: float = 0.0,
) -> TrainData:
    """Datasets and loaders; an epoch is (train images // global_batch_size) optimizer steps.

    With `normalize_on_device` (default: on CUDA, for the ImageNet transform) the workers send uint8
    batches (a quarter of the float32 bytes through shared memory and the host-to-device copy), and
    `TrainData.on_device` normalises and randomly erases them on `device`. The processes share the
    check of the validation images; `gather` is the collective that pools their findings, `broadcast`
    the one that hands rank 0's file lists (cached in `list_cache_dir`) to the others. With
    `token_label.dir` each training image brings its label map (smoothed by `label_smoothing`), and
    `TrainData.labels_on_device` turns a batch of them into class and dense targets on `device`.
    """
    uint8, uint8_eval = _uint8_batches(cfg, device, normalize_on_device)
    label_dir = token_label.dir if token_label is not None else None
    train_ds, val_ds, train_dir = _build_split_datasets(
        cfg, data_dir, img_size=img_size, seed=seed, eval_crop_pct=eval_crop_pct,
        eval_interpolation=eval_interpolation, label_dir=label_dir, uint8=uint8, uint8_eval=uint8_eval, rank=rank,
        broadcast=broadcast, list_cache_dir=list_cache_dir)
    steps_per_epoch = _steps_per_epoch(len(train_ds), global_batch_size, train_dir)
    if isinstance(val_ds, ImageFolderDataset):
        check_val_images(val_ds, workers=cfg.workers, rank=rank, num_replicas=num_replicas, gather=gather)
    sampler = _build_train_sampler(cfg, len(train_ds), steps_per_epoch * global_batch_size, seed=seed,
                                   num_replicas=num_replicas, rank=rank)
    if cfg.backend == "dali":
        loader, val_loader = _build_dali_loaders(
            cfg, data_dir, train_ds, val_ds, sampler, img_size=img_size, batch_size=batch_size,
            eval_batch_size=eval_batch_size, eval_crop_pct=eval_crop_pct, eval_interpolation=eval_interpolation,
            num_replicas=num_replicas, rank=rank, device=device)
    else:
        loader, val_loader = _build_pil_loaders(
            cfg, train_ds, val_ds, sampler, img_size=img_size, batch_size=batch_size, eval_batch_size=eval_batch_size,
            uint8=uint8, uint8_eval=uint8_eval, num_replicas=num_replicas, rank=rank, pin_memory=pin_memory)
    sampler.set_epoch(0)
    return TrainData(train_dir=train_dir, classes=list(train_ds.classes), train_len=len(train_ds),
                     batch_size=batch_size, global_batch_size=global_batch_size, steps_per_epoch=steps_per_epoch,
                     train_loader=loader, val_loader=val_loader,
                     **_device_steps(cfg, uint8=uint8, uint8_eval=uint8_eval, num_classes=len(train_ds.classes),
                                     img_size=img_size, label_dir=label_dir, label_smoothing=label_smoothing,
                                     device=device))


def _uint8_batches(cfg: DataConfig, device: torch.device, normalize_on_device: Optional[bool]) -> tuple[bool, bool]:
    """Whether the Pillow transforms hand (training, evaluation) batches to the device as uint8, to normalise there."""
    uint8_eval = device.type == "cuda" if normalize_on_device is None else normalize_on_device
    return uint8_eval and cfg.train_transform == "imagenet", uint8_eval


def _build_split_datasets(cfg: DataConfig, data_dir: str, *, img_size: int, seed: int, eval_crop_pct: float,
                          eval_interpolation: str, label_dir: Optional[str], uint8: bool, uint8_eval: bool, rank: int,
                          broadcast: Optional[Callable[[Any], Any]], list_cache_dir: Optional[str],
                          ) -> tuple[SeededDataset, SeededDataset, str]:
    """The training and validation sets with their transforms; with `label_dir`, training images bring label maps."""
    train_dataset: Callable[..., ImageFolderDataset] = ImageFolderDataset
    if label_dir is not None:
        train_tf, train_dataset = _token_label_pieces(cfg, img_size, label_dir, use_prefetcher=uint8)
    else:
        train_tf = build_train_tf(cfg, img_size, use_prefetcher=uint8)
    eval_tf = build_eval_transform(img_size, eval_crop_pct, eval_interpolation, mean=tuple(cfg.mean),
                                   std=tuple(cfg.std), uint8=uint8_eval)
    return build_datasets(cfg, data_dir, train_tf, eval_tf, seed, rank=rank, broadcast=broadcast,
                          list_cache_dir=list_cache_dir, train_dataset=train_dataset)


def _steps_per_epoch(train_len: int, global_batch_size: int, train_dir: str) -> int:
    """Optimizer steps per epoch: the whole global batches in the training set (DataSizeError if none)."""
    steps_per_epoch = train_len // global_batch_size
    if steps_per_epoch < 1:
        raise DataSizeError(
            f"the global batch of {global_batch_size} images (processes x train.batch_size x grad_accum_steps) "
            f"is more than the {train_len} training images in {train_dir!r}: not one optimizer step per epoch")
    return steps_per_epoch


def _build_train_sampler(cfg: DataConfig, train_len: int, epoch_samples: int, *, seed: int, num_replicas: int,
                         rank: int) -> TrainSampler:
    """This process's share of the training order; repeated augmentation repeats each image `cfg.repeats` times."""
    # The epoch is a whole number of global batches of the global order, the same for any world size.
    return TrainSampler(train_len, num_replicas=num_replicas, rank=rank, seed=seed,
                        repeats=cfg.repeats if cfg.repeated_aug else 1, drop_last=True, epoch_samples=epoch_samples)


def _build_dali_loaders(cfg: DataConfig, data_dir: str, train_ds: SeededDataset, val_ds: SeededDataset,
                        sampler: TrainSampler, *, img_size: int, batch_size: int, eval_batch_size: int,
                        eval_crop_pct: float, eval_interpolation: str, num_replicas: int, rank: int,
                        device: torch.device) -> tuple[Any, Any]:
    """Loaders that decode and augment with NVIDIA DALI (t2t/data/dali.py): ImageFolder folders only."""
    from .dali import build_dali_loaders
    if not isinstance(train_ds, ImageFolderDataset):
        raise DatasetError(f"data.backend=dali reads ImageFolder folders; {data_dir!r} is a CIFAR folder: "
                           "set data.backend=pil")
    return build_dali_loaders(
        cfg, train_ds, val_ds, sampler, img_size=img_size, batch_size=batch_size, eval_batch_size=eval_batch_size,
        eval_crop_pct=eval_crop_pct, eval_interpolation=eval_interpolation, num_replicas=num_replicas, rank=rank,
        device=device)


def _build_pil_loaders(cfg: DataConfig, train_ds: SeededDataset, val_ds: SeededDataset, sampler: TrainSampler, *,
                       img_size: int, batch_size: int, eval_batch_size: int, uint8: bool, uint8_eval: bool,
                       num_replicas: int, rank: int, pin_memory: bool) -> tuple[DataLoader, DataLoader]:
    """DataLoaders whose workers run the Pillow transforms, after a warning if their batches may overfill /dev/shm."""
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE") or max(1, torch.cuda.device_count()))
    check_shared_memory(
        shared_memory_per_process(workers=cfg.workers, prefetch_factor=cfg.prefetch_factor, batch_size=batch_size,
                                  eval_batch_size=eval_batch_size, img_size=img_size, uint8_train=uint8,
                                  uint8_eval=uint8_eval),
        processes_here, free_shared_memory())
    loader = build_train_loader(train_ds, batch_size=batch_size, sampler=sampler, workers=cfg.workers,
                                pin_memory=pin_memory, prefetch_factor=cfg.prefetch_factor)
    # Persistent: an evaluation every epoch would otherwise fork its workers anew (seconds per epoch at scale).
    val_loader = build_eval_loader(val_ds, batch_size=eval_batch_size, workers=cfg.workers,
                                   num_replicas=num_replicas, rank=rank, pin_memory=pin_memory,
                                   persistent_workers=True)
    return loader, val_loader


def _device_steps(cfg: DataConfig, *, uint8: bool, uint8_eval: bool, num_classes: int, img_size: int,
                  label_dir: Optional[str], label_smoothing: float, device: torch.device) -> dict[str, Any]:
    """TrainData's on_device, val_on_device and labels_on_device: what the device does to a batch the loader gives."""
    if cfg.backend == "dali":
        uint8 = True  # DALI's training batches are uint8
        uint8_eval = False  # DALI's eval pipeline normalises itself
    return dict(
        on_device=BatchNormalizeErase(tuple(cfg.mean), tuple(cfg.std), re_prob=cfg.reprob, re_mode=cfg.remode,
                                      re_count=cfg.recount, device=device) if uint8 else None,
        val_on_device=BatchNormalize(tuple(cfg.mean), tuple(cfg.std), device=device) if uint8_eval else None,
        labels_on_device=DenseTokenTargets(num_classes, img_size // TOKEN_STRIDE, smoothing=label_smoothing,
                                           device=device) if label_dir is not None else None)


# Pixels per token side of a T2T-ViT (soft splits of stride 4, 2, 2): the token grid is img_size / 16.
TOKEN_STRIDE = 16


def _token_label_pieces(cfg: DataConfig, img_size: int, label_dir: str, *,
                        use_prefetcher: bool) -> tuple[TokenLabelTransform, Callable[..., ImageFolderDataset]]:
    """The transform that reports each image's crop, flip and RandAugment geometry, and the dataset reading its map."""
    if cfg.backend == "dali":
        raise ConfigError(f"token_label.dir={label_dir!r} with data.backend=dali: the label maps follow the crops of "
                          "the Pillow pipeline; set data.backend=pil")
    if cfg.train_transform != "imagenet":
        raise ConfigError(f"token_label.dir={label_dir!r} with data.train_transform={cfg.train_transform!r}: the "
                          "label maps follow RandomResizedCrop; set data.train_transform=imagenet")
    if img_size % TOKEN_STRIDE:
        raise ConfigError(f"token_label.dir with model.img_size={img_size}: expected a multiple of {TOKEN_STRIDE} "
                          "(the token grid MixToken cuts along)")
    # One transform that records its draws; with data.fast_decode=false it decodes at full size.
    base = build_train_tf(dataclasses.replace(cfg, fast_decode=True), img_size, use_prefetcher=use_prefetcher)
    base.draft = cfg.fast_decode
    return TokenLabelTransform(base), functools.partial(TokenLabelDataset, label_dir=label_dir)


def check_val_images(val_ds: ImageFolderDataset, workers: int, *, rank: int = 0, num_replicas: int = 1,
                     gather: Callable[[Any], list[Any]] = lambda found: [found]) -> None:
    """Decode every validation image once, cheaply, so a bad one fails the run before an epoch is spent on it.

    Each of `num_replicas` processes checks every `num_replicas`-th image from `rank`; `gather` (a
    collective: every process's findings, in rank order) gives all of them the same verdict. With
    ``skip_bad_images`` the unreadable files are left out of the validation set, with a warning.
    """
    paths = [path for path, _ in val_ds.samples]
    mine = find_unreadable_images(paths[rank::num_replicas], workers=workers)
    position = {path: i for i, path in enumerate(paths)}
    bad = sorted((found for part in gather(mine) for found in part), key=lambda found: position[found[0]])
    if not bad:
        return
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    if not val_ds.skip_bad_images:
        raise DatasetError(
            f"validation image {bad[0][0]!r} cannot be read ({bad[0][1]}){more}: replace or delete it, or set "
            "data.skip_bad_images=true to leave such files out")
    unreadable = {path for path, _ in bad}
    val_ds.samples = [(p, t) for p, t in val_ds.samples if p not in unreadable]
    if not val_ds.samples:
        raise DatasetError(f"every image of the validation folder {val_ds.root!r} is unreadable, e.g. {bad[0][0]!r}")
    _logger.warning("Left %d unreadable validation images out: %s%s", len(bad), bad[0][0], more)


def build_mixup_fn(cfg: MixupConfig, num_classes: int, *, label_smoothing: float) -> Optional[Any]:
    """The Mixup / CutMix op of the `mixup` section; its soft targets carry the loss's label smoothing."""
    return build_mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.prob,
                       switch_prob=cfg.switch_prob, mode=cfg.mode, label_smoothing=label_smoothing,
                       num_classes=num_classes)


def build_mix_token_fn(cfg: TokenLabelConfig, mixup: MixupConfig) -> Optional[MixToken]:
    """MixToken in place of mixup / CutMix for a run with token labels (None with mix_token_alpha=0)."""
    if mixup.mixup_alpha > 0 or mixup.cutmix_alpha > 0:
        raise ConfigError(f"token_label.dir with mixup.mixup_alpha={mixup.mixup_alpha} and mixup.cutmix_alpha="
                          f"{mixup.cutmix_alpha}: MixToken replaces mixup and CutMix; set both to 0")
    return MixToken(cfg.mix_token_alpha, patch=TOKEN_STRIDE) if cfg.mix_token_alpha > 0 else None

