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

from ..config import TOKEN_STRIDE, Config, ConfigError, DataConfig, MixupConfig, TokenLabelConfig, \
    check_data_settings, check_transform_settings
from ..errors import T2TError
from .cifar import CIFARDataset, find_cifar_dir
from .dataset import DatasetError, ImageDataset, ImageFolderDataset, SeededDataset, check_same_classes, \
    find_split_dirs, find_unreadable_images, find_unreadable_samples, open_folder
from .holdout import split_minival
from .readers import FolderReader, Reader
from .parquet import ParquetReader, has_parquet, open_parquet
from .shards import find_shard_classes, open_shards
from .batch_buffers import SPARE_BUFFERS
from .loader import build_eval_loader, build_train_loader, set_loader_epoch
from .mixup import build_mixup
from .progressive import ResolutionSchedule, SizeScheduledTransform
from .sampler import TrainSampler
from .token_label import DenseTokenTargets, MixToken, TokenLabelDataset, TokenLabelTransform
from .transforms import BatchNormalize, BatchNormalizeErase, build_eval_transform, build_padded_crop_transform, \
    build_simple_crop_transform, build_train_transform

_logger = logging.getLogger(__name__)


class DataSizeError(T2TError, ValueError):
    """The training set cannot give one global batch per epoch."""


@dataclass(frozen=True)
class DataSpec:
    """Everything the data layer takes from a run's config, decided once (``DataSpec.from_config``).

    Which backend builds the loaders, and whether its batches reach the device as uint8 (to be
    normalised and erased there) or as normalised floats, are settled here and nowhere else.
    """

    data: DataConfig
    img_size: int
    seed: int
    batch_size: int  # per process
    global_batch_size: int  # images per optimizer step, all processes
    eval_batch_size: int
    eval_crop_pct: float
    eval_interpolation: str
    token_label_dir: Optional[str] = None  # token labeling: each training image brings its label map
    label_smoothing: float = 0.0  # of the token-label targets
    uint8_train: bool = False  # the training loader hands uint8 batches, normalised and erased on the device
    uint8_eval: bool = False  # the evaluation loader hands uint8 batches, normalised on the device
    device: torch.device = torch.device("cpu")
    pin_memory: bool = False
    resolution: Optional[ResolutionSchedule] = None  # train.img_sizes: the training image size of each epoch

    @classmethod
    def from_config(cls, cfg: Config, *, global_batch_size: int, eval_crop_pct: float, eval_interpolation: str,
                    device: torch.device = torch.device("cpu"), normalize_on_device: Optional[bool] = None,
                    batch_size: Optional[int] = None) -> "DataSpec":
        """The spec of `cfg` on `device`; `normalize_on_device` (default: on CUDA) asks the Pillow workers for uint8.

        The eval crop and interpolation are the resolved ones (the model's pretrained cfg fills what
        the config leaves unset); `batch_size` defaults to train.batch_size.
        """
        check_data_settings(cfg)  # config.validate's check, for a config changed after loading
        on_device = device.type == "cuda" if normalize_on_device is None else normalize_on_device
        uint8_train, uint8_eval = BACKENDS[cfg.data.backend].batch_types(cfg.data, on_device)
        return cls(data=cfg.data, img_size=cfg.model.img_size, seed=cfg.train.seed,
                   batch_size=batch_size if batch_size is not None else cfg.train.batch_size,
                   global_batch_size=global_batch_size, eval_batch_size=cfg.eval.batch_size,
                   eval_crop_pct=eval_crop_pct, eval_interpolation=eval_interpolation,
                   token_label_dir=cfg.token_label.dir, label_smoothing=cfg.loss.label_smoothing,
                   uint8_train=uint8_train, uint8_eval=uint8_eval, device=device, pin_memory=device.type == "cuda",
                   resolution=ResolutionSchedule.from_config(cfg.train))


@dataclass
class DeviceFeed:
    """Moves the loaders' batches to the device: the one place that finishes a batch there.

    uint8 images are normalised (and, for training, randomly erased) on the device; token-label
    structures become (class target, dense target); anything else is copied.
    """

    device: torch.device
    train_images: Optional[BatchNormalizeErase] = None
    eval_images: Optional[BatchNormalize] = None
    labels: Optional[DenseTokenTargets] = None

    def train(self, images: torch.Tensor, targets: Any) -> tuple[Any, Any]:
        """A training batch of the loader -> the step's (images, targets) on the device."""
        images = self.train_images(images) if self.train_images is not None else \
            images.to(self.device, non_blocking=True)
        if self.labels is not None:
            return images, self.labels(targets)
        return images, targets.to(self.device, non_blocking=True)

    def eval(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An evaluation batch of the loader -> (normalised images, targets) on the device."""
        images = self.eval_images(images) if self.eval_images is not None else \
            images.to(self.device, non_blocking=True)
        return images, targets.to(self.device, non_blocking=True)

    @classmethod
    def build(cls, spec: DataSpec, num_classes: int) -> "DeviceFeed":
        cfg = spec.data
        return cls(
            device=spec.device,
            train_images=BatchNormalizeErase(tuple(cfg.mean), tuple(cfg.std), re_prob=cfg.reprob, re_mode=cfg.remode,
                                             re_count=cfg.recount, device=spec.device) if spec.uint8_train else None,
            eval_images=BatchNormalize(tuple(cfg.mean), tuple(cfg.std), device=spec.device) if spec.uint8_eval
            else None,
            labels=DenseTokenTargets(num_classes, spec.img_size // TOKEN_STRIDE, smoothing=spec.label_smoothing,
                                     device=spec.device) if spec.token_label_dir is not None else None)


@dataclass
class TrainData:
    train_dir: str
    classes: list[str]
    train_len: int
    batch_size: int  # per process
    global_batch_size: int
    steps_per_epoch: int  # optimizer steps: train_len // global_batch_size
    train_loader: Any  # a DataLoader, or the DALI backend's loader of the same interface
    val_loader: Any
    feed: DeviceFeed  # moves both loaders' batches to the device
    # data.holdout_fraction: the training images held out (never in train_loader), read as val_loader reads.
    minival_loader: Optional[Any] = None
    minival_len: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_batches(self, epoch: int, start_sample: int = 0) -> Any:
        """The epoch's batches from global sample `start_sample` on (a resume skips inside the sampler)."""
        set_loader_epoch(self.train_loader, epoch, start_sample=start_sample)
        return self.train_loader


def shared_memory_per_process(*, workers: int, prefetch_factor: int, batch_size: int, eval_batch_size: int,
                              img_size: int, uint8_train: bool, uint8_eval: bool, batch_buffers: bool = False) -> int:
    """Bytes of batches the training and evaluation loader workers of one process can hold in shared memory.

    Each loader's workers hold up to workers x prefetch batches (the training loader's batch buffers:
    3 more); the evaluation loader uses the DataLoader's default prefetch of 2. Both are counted: their
    workers stay alive side by side.
    """
    if workers == 0:
        return 0
    pixels = 3 * img_size * img_size
    train_batches = workers * prefetch_factor + (SPARE_BUFFERS if batch_buffers else 0)
    train = train_batches * batch_size * pixels * (1 if uint8_train else 4)
    evaluation = workers * 2 * eval_batch_size * pixels * (1 if uint8_eval else 4)
    return train + evaluation


def train_batch_bytes(spec: DataSpec) -> int:
    """An upper bound of one training batch's bytes, for the batch buffers: images at the largest size of the
    run, and room for the targets (a token-label map each, with token labels)."""
    size = max((spec.img_size,) + (spec.resolution.sizes if spec.resolution is not None else ()))
    image = 3 * size * size * (1 if spec.uint8_train else 4)
    extra = 64 * 1024 if spec.token_label_dir is not None else 1024
    return spec.batch_size * (image + extra) + 64 * 1024


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
    """'cifar', 'shards', 'parquet' or 'imagefolder' for `data_dir`; 'auto' picks cifar for an extracted CIFAR
    folder, shards for a data_dir/train holding *.tar files, parquet for *.parquet files there (or a Hugging
    Face download's data_dir/data)."""
    if fmt != "auto":
        return fmt
    if find_cifar_dir(data_dir) is not None:
        return "cifar"
    train = os.path.join(data_dir, "train")
    if os.path.isdir(train) and any(name.endswith(".tar") for name in os.listdir(train)):
        return "shards"
    if has_parquet(train) or has_parquet(os.path.join(data_dir, "data")):
        return "parquet"
    return "imagefolder"


def _open_split_readers(fmt: str, data_dir: str, *, rank: int, broadcast: Optional[Callable[[Any], Any]],
                        list_cache_dir: Optional[str]) -> tuple[Reader, Reader]:
    """The training and validation readers of an image-folder or shard root.

    Rank 0 lists the folders (from its cache in `list_cache_dir` when they have not changed) or
    indexes the shards, and `broadcast` (a collective: rank 0's object on every rank) hands the
    readers to the others: one directory walk or index pass per job start instead of one per
    process. Without `broadcast` (no process group) every process opens them itself.
    """
    readers: Any = None
    if rank == 0 or broadcast is None:
        try:
            if fmt == "shards":
                classes = find_shard_classes(data_dir)
                train = open_shards(os.path.join(data_dir, "train"), classes)
                readers = (train, open_shards(os.path.join(data_dir, "val"), train.classes))
            elif fmt == "parquet":
                train = open_parquet(data_dir, "train", find_shard_classes(data_dir))
                readers = (train, open_parquet(data_dir, "val", train.classes))
            else:
                found = []
                for split, folder in zip(("train", "val"), find_split_dirs(data_dir)):
                    cache = os.path.join(list_cache_dir, f"filelist-{split}.npz") if list_cache_dir and rank == 0 \
                        else None
                    found.append(open_folder(folder, list_cache=cache))
                readers = tuple(found)
        except DatasetError as e:
            readers = e  # every rank raises it, instead of the others waiting for readers that never come
    if broadcast is not None:
        readers = broadcast(readers)
    if isinstance(readers, DatasetError):
        raise readers
    return readers


def build_datasets(cfg: DataConfig, data_dir: str, train_tf: Callable, eval_tf: Callable,
                   seed: int, *, rank: int = 0, broadcast: Optional[Callable[[Any], Any]] = None,
                   list_cache_dir: Optional[str] = None,
                   train_dataset: Callable[..., ImageDataset] = ImageDataset,
                   ) -> tuple[SeededDataset, SeededDataset, str]:
    """(train, val, the training folder read) in the format `cfg.format` names or detects.

    Image folders and shards are opened by rank 0 and handed to the others (`_open_split_readers`).
    `train_dataset` builds the training set from its reader (e.g. `TokenLabelDataset` with its label folder).
    """
    fmt = resolve_format(data_dir, cfg.format)
    if fmt not in ("shards", "parquet") and cfg.shuffle == "block":
        raise DatasetError(f"data.shuffle=block reads shards or parquet row groups in blocks; {data_dir!r} is read "
                           f"as {fmt}: set data.shuffle=global, or point --data-dir at shards (scripts/make_shards.py)")
    if fmt == "cifar":
        if train_dataset is not ImageDataset:
            raise DatasetError(f"{data_dir!r} is a CIFAR folder; token labels (token_label.dir) are read for "
                               "ImageFolder training folders and shards")
        train_ds = CIFARDataset(data_dir, train=True, transform=train_tf, seed=seed)
        return train_ds, CIFARDataset(data_dir, train=False, transform=eval_tf, seed=seed), train_ds.root
    train_reader, val_reader = _open_split_readers(fmt, data_dir, rank=rank, broadcast=broadcast,
                                                   list_cache_dir=list_cache_dir)
    dataset = ImageFolderDataset if fmt == "imagefolder" else ImageDataset
    train_ds = train_dataset(train_reader, train_tf, seed=seed, skip_bad_images=cfg.skip_bad_images) \
        if train_dataset is not ImageDataset else _wrap(dataset, train_reader, train_tf, seed, cfg.skip_bad_images)
    val_ds = _wrap(dataset, val_reader, eval_tf, seed, cfg.skip_bad_images)
    check_same_classes(train_ds, val_ds)
    return train_ds, val_ds, train_reader.root


def _wrap(dataset: type, reader: Reader, transform: Callable, seed: int, skip_bad_images: bool) -> ImageDataset:
    """An ImageDataset (an ImageFolderDataset for a folder reader) over `reader`."""
    if dataset is ImageFolderDataset:
        return ImageFolderDataset(reader.root, transform, seed=seed, skip_bad_images=skip_bad_images,
                                  classes=reader.classes, samples=reader.samples)
    return ImageDataset(reader, transform, seed=seed, skip_bad_images=skip_bad_images)


def build_train_tf(cfg: DataConfig, img_size: int, use_prefetcher: bool = False) -> Callable:
    """The training transform `cfg.train_transform` names (uint8 output with `use_prefetcher`, imagenet only)."""
    check_transform_settings(cfg)  # config.validate's check, for callers with a DataConfig of their own
    if cfg.train_transform == "cifar":
        return build_padded_crop_transform(
            img_size, padding=img_size // 8, hflip=cfg.hflip, interpolation=cfg.interpolation,
            re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount, mean=tuple(cfg.mean), std=tuple(cfg.std))
    if cfg.train_transform == "src":
        return build_simple_crop_transform(
            img_size, hflip=cfg.hflip, auto_augment=cfg.auto_augment, color_jitter=cfg.color_jitter,
            interpolation=cfg.interpolation, re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount,
            mean=tuple(cfg.mean), std=tuple(cfg.std))
    return build_train_transform(
        img_size, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, auto_augment=cfg.auto_augment,
        color_jitter=cfg.color_jitter, interpolation=cfg.interpolation, re_prob=cfg.reprob, re_mode=cfg.remode,
        re_count=cfg.recount, mean=tuple(cfg.mean), std=tuple(cfg.std), fast_decode=cfg.fast_decode,
        use_prefetcher=use_prefetcher)


def build_train_and_val(spec: DataSpec, data_dir: str, *, num_replicas: int = 1, rank: int = 0,
                        gather: Callable[[Any], list[Any]] = lambda found: [found],
                        broadcast: Optional[Callable[[Any], Any]] = None,
                        list_cache_dir: Optional[str] = None) -> TrainData:
    """Datasets, loaders and the device feed of `spec`; an epoch is (train images // global batch) optimizer steps.

    The processes share the check of the validation images; `gather` is the collective that pools
    their findings, `broadcast` the one that hands rank 0's readers (file lists cached in
    `list_cache_dir`, or shard indices) to the others.
    """
    train_ds, val_ds, train_dir = _build_split_datasets(spec, data_dir, rank=rank, broadcast=broadcast,
                                                        list_cache_dir=list_cache_dir)
    minival_ds = _split_minival(spec.data, train_ds, val_ds.transform, data_dir)
    steps_per_epoch = _steps_per_epoch(len(train_ds), spec.global_batch_size, train_dir)
    if isinstance(val_ds, ImageDataset):
        check_val_images(val_ds, workers=spec.data.workers, rank=rank, num_replicas=num_replicas, gather=gather)
    sampler = build_train_sampler(spec.data, train_ds, steps_per_epoch * spec.global_batch_size, seed=spec.seed,
                                   num_replicas=num_replicas, rank=rank)
    loader, val_loader = BACKENDS[spec.data.backend].loaders(spec, train_ds, val_ds, sampler,
                                                             num_replicas=num_replicas, rank=rank)
    minival_loader = None if minival_ds is None else _build_minival_loader(spec, minival_ds,
                                                                           num_replicas=num_replicas, rank=rank)
    sampler.set_epoch(0)
    return TrainData(train_dir=train_dir, classes=list(train_ds.classes), train_len=len(train_ds),
                     batch_size=spec.batch_size, global_batch_size=spec.global_batch_size,
                     steps_per_epoch=steps_per_epoch, train_loader=loader, val_loader=val_loader,
                     feed=DeviceFeed.build(spec, len(train_ds.classes)), minival_loader=minival_loader,
                     minival_len=0 if minival_ds is None else len(minival_ds))


def _build_split_datasets(spec: DataSpec, data_dir: str, *, rank: int, broadcast: Optional[Callable[[Any], Any]],
                          list_cache_dir: Optional[str]) -> tuple[SeededDataset, SeededDataset, str]:
    """The training and validation sets with their transforms; with token labels, training images bring label maps."""
    cfg = spec.data
    train_dataset: Callable[..., ImageDataset] = ImageDataset
    if spec.token_label_dir is not None:
        train_tf, train_dataset = _token_label_pieces(cfg, spec.img_size, spec.token_label_dir,
                                                      use_prefetcher=spec.uint8_train)
    elif spec.resolution is not None:  # one transform per size; the epoch picks one (set_loader_epoch)
        train_tf = SizeScheduledTransform({size: build_train_tf(cfg, size, use_prefetcher=spec.uint8_train)
                                           for size in spec.resolution.sizes}, spec.resolution)
    else:
        train_tf = build_train_tf(cfg, spec.img_size, use_prefetcher=spec.uint8_train)
    eval_tf = build_eval_transform(spec.img_size, spec.eval_crop_pct, spec.eval_interpolation, mean=tuple(cfg.mean),
                                   std=tuple(cfg.std), uint8=spec.uint8_eval)
    return build_datasets(cfg, data_dir, train_tf, eval_tf, spec.seed, rank=rank, broadcast=broadcast,
                          list_cache_dir=list_cache_dir, train_dataset=train_dataset)


def _split_minival(cfg: DataConfig, train_ds: SeededDataset, eval_tf: Callable,
                   data_dir: str) -> Optional[ImageFolderDataset]:
    """data.holdout_fraction: move the held-out images out of `train_ds` into a minival read with `eval_tf`."""
    if cfg.holdout_fraction == 0:
        return None
    if not isinstance(train_ds, ImageFolderDataset):  # data.format=auto found one (config.validate refuses the rest)
        found = "a CIFAR folder" if isinstance(train_ds, CIFARDataset) else \
            "parquet files" if isinstance(train_ds.reader, ParquetReader) else "tar shards"
        raise ConfigError(f"data.holdout_fraction={cfg.holdout_fraction} holds out images of a class-folder training "
                          f"set by their paths; {data_dir!r} holds {found}: set it to 0")
    before = len(train_ds)
    minival = split_minival(train_ds, cfg.holdout_fraction, eval_tf)
    _logger.info("Held out %d of the %d training images as the minival (data.holdout_fraction=%g): %d left to train on",
                 len(minival), before, cfg.holdout_fraction, len(train_ds))
    return minival


def _build_minival_loader(spec: DataSpec, minival_ds: ImageFolderDataset, *, num_replicas: int, rank: int) -> Any:
    """The minival's sharded evaluation loader, read as the validation set is (same backend and transform)."""
    cfg = spec.data
    if cfg.backend == "dali":
        from .dali import DaliEvalLoader
        return DaliEvalLoader(minival_ds, img_size=spec.img_size, crop_pct=spec.eval_crop_pct,
                              interpolation=spec.eval_interpolation, mean=tuple(cfg.mean), std=tuple(cfg.std),
                              batch_size=spec.eval_batch_size, workers=cfg.workers, num_replicas=num_replicas,
                              rank=rank, device=spec.device)
    return build_eval_loader(minival_ds, batch_size=spec.eval_batch_size, workers=cfg.workers,
                             num_replicas=num_replicas, rank=rank, pin_memory=spec.pin_memory, persistent_workers=True)


def _steps_per_epoch(train_len: int, global_batch_size: int, train_dir: str) -> int:
    """Optimizer steps per epoch: the whole global batches in the training set (DataSizeError if none)."""
    steps_per_epoch = train_len // global_batch_size
    if steps_per_epoch < 1:
        raise DataSizeError(
            f"the global batch of {global_batch_size} images (processes x train.batch_size x grad_accum_steps) "
            f"is more than the {train_len} training images in {train_dir!r}: not one optimizer step per epoch")
    return steps_per_epoch


def build_train_sampler(cfg: DataConfig, train_ds: SeededDataset, epoch_samples: int, *, seed: int,
                         num_replicas: int, rank: int) -> TrainSampler:
    """Rank `rank`'s share of the training order; repeated augmentation repeats each image `cfg.repeats` times.

    data.shuffle=block orders the shards (the reader's blocks) instead of the images: see TrainSampler.
    """
    blocks = None
    if cfg.shuffle == "block":
        blocks = train_ds.reader.block_sizes
        # Each rank meets the shards of one window at a time: each is read ahead whole when first met
        # (a parquet reader keeps the window's row groups decoded instead).
        train_ds.reader.read_ahead_shards = 2 * cfg.block_shards
        if isinstance(train_ds.reader, ParquetReader):
            train_ds.reader.cache_groups = cfg.block_shards
    elif isinstance(getattr(train_ds, "reader", None), ParquetReader):  # a CIFAR set has no reader
        _logger.warning("data.format=parquet with data.shuffle=global: nearly every sample reads its whole row group "
                        "(%d row groups of %d images on average); data.shuffle=block reads each once per epoch",
                        len(train_ds.reader.block_file), len(train_ds) // max(1, len(train_ds.reader.block_file)))
    # The epoch is a whole number of global batches of the global order, the same for any world size.
    return TrainSampler(len(train_ds), num_replicas=num_replicas, rank=rank, seed=seed,
                        repeats=cfg.repeats if cfg.repeated_aug else 1, drop_last=True, epoch_samples=epoch_samples,
                        blocks=blocks, block_window=cfg.block_shards)


def _build_dali_loaders(spec: DataSpec, train_ds: SeededDataset, val_ds: SeededDataset, sampler: TrainSampler, *,
                        num_replicas: int, rank: int) -> tuple[Any, Any]:
    """Loaders that decode and augment with NVIDIA DALI (t2t/data/dali.py): image folders and shards."""
    from .dali import build_dali_loaders
    if not isinstance(train_ds, ImageDataset):
        raise DatasetError(f"data.backend=dali reads image folders and shards; {train_ds.root!r} is a CIFAR folder: "
                           "set data.backend=pil")
    return build_dali_loaders(
        spec.data, train_ds, val_ds, sampler, img_size=spec.img_size, batch_size=spec.batch_size,
        eval_batch_size=spec.eval_batch_size, eval_crop_pct=spec.eval_crop_pct,
        eval_interpolation=spec.eval_interpolation, num_replicas=num_replicas, rank=rank, device=spec.device)


def _build_pil_loaders(spec: DataSpec, train_ds: SeededDataset, val_ds: SeededDataset, sampler: TrainSampler, *,
                       num_replicas: int, rank: int) -> tuple[DataLoader, DataLoader]:
    """DataLoaders whose workers run the Pillow transforms, after a warning if their batches may overfill /dev/shm."""
    cfg = spec.data
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE") or max(1, torch.cuda.device_count()))
    check_shared_memory(
        shared_memory_per_process(workers=cfg.workers, prefetch_factor=cfg.prefetch_factor,
                                  batch_size=spec.batch_size, eval_batch_size=spec.eval_batch_size,
                                  img_size=spec.img_size, uint8_train=spec.uint8_train, uint8_eval=spec.uint8_eval,
                                  batch_buffers=cfg.batch_buffers),
        processes_here, free_shared_memory())
    loader = build_train_loader(train_ds, batch_size=spec.batch_size, sampler=sampler, workers=cfg.workers,
                                pin_memory=spec.pin_memory, prefetch_factor=cfg.prefetch_factor,
                                batch_bytes=train_batch_bytes(spec) if cfg.batch_buffers else None)
    # Persistent: an evaluation every epoch would otherwise fork its workers anew (seconds per epoch at scale).
    val_loader = build_eval_loader(val_ds, batch_size=spec.eval_batch_size, workers=cfg.workers,
                                   num_replicas=num_replicas, rank=rank, pin_memory=spec.pin_memory,
                                   persistent_workers=True)
    return loader, val_loader


@dataclass(frozen=True)
class Backend:
    """What a data.backend decides: the batch types its loaders hand over, and the loaders."""

    # (DataConfig, normalise on the device?) -> (uint8 training batches?, uint8 evaluation batches?)
    batch_types: Callable[[DataConfig, bool], tuple[bool, bool]]
    loaders: Callable[..., tuple[Any, Any]]


# The one dispatch on data.backend. Pillow workers send uint8 when the device normalises (the ImageNet
# transform only); DALI's training batches are always uint8, and its eval pipeline normalises itself.
BACKENDS: dict[str, Backend] = {
    "pil": Backend(batch_types=lambda cfg, on_device: (on_device and cfg.train_transform == "imagenet", on_device),
                   loaders=_build_pil_loaders),
    "dali": Backend(batch_types=lambda cfg, on_device: (True, False), loaders=_build_dali_loaders),
}


def _token_label_pieces(cfg: DataConfig, img_size: int, label_dir: str, *,
                        use_prefetcher: bool) -> tuple[TokenLabelTransform, Callable[..., ImageDataset]]:
    """The transform that reports each image's crop, flip and RandAugment geometry, and the dataset reading its map.

    What token labels need of the config (the Pillow backend, the imagenet transform, an image size
    the token grid divides) is checked by config.validate.
    """
    # One transform that records its draws; with data.fast_decode=false it decodes at full size.
    base = build_train_tf(dataclasses.replace(cfg, fast_decode=True), img_size, use_prefetcher=use_prefetcher)
    base.draft = cfg.fast_decode
    return TokenLabelTransform(base), functools.partial(TokenLabelDataset, label_dir=label_dir)


def check_val_images(val_ds: ImageDataset, workers: int, *, rank: int = 0, num_replicas: int = 1,
                     gather: Callable[[Any], list[Any]] = lambda found: [found]) -> None:
    """Decode every validation image once, cheaply, so a bad one fails the run before an epoch is spent on it.

    Each of `num_replicas` processes checks every `num_replicas`-th image from `rank`; `gather` (a
    collective: every process's findings, in rank order) gives all of them the same verdict. With
    ``skip_bad_images`` the unreadable images are left out of the validation set, with a warning.
    """
    reader = val_ds.reader
    names = [reader.path(i) for i in range(len(reader))]
    if isinstance(reader, FolderReader):  # files: checked by path
        mine = find_unreadable_images(names[rank::num_replicas], workers=workers)
    else:
        mine = [(names[i], reason) for i, reason in
                find_unreadable_samples(reader, range(rank, len(reader), num_replicas), workers=workers)]
    position = {name: i for i, name in enumerate(names)}
    bad = sorted((found for part in gather(mine) for found in part), key=lambda found: position[found[0]])
    if not bad:
        return
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    first = bad[0][0]
    if not val_ds.skip_bad_images:
        raise DatasetError(
            f"validation image {first!r} cannot be read ({bad[0][1]}){more}: replace or delete it, or set "
            "data.skip_bad_images=true to leave such files out")
    unreadable = {position[name] for name, _ in bad}
    keep = [i for i in range(len(reader)) if i not in unreadable]
    if not keep:
        raise DatasetError(f"every image of the validation folder {val_ds.root!r} is unreadable, e.g. {first!r}")
    val_ds.reader = reader.subset(keep)
    _logger.warning("Left %d unreadable validation images out: %s%s", len(bad), first, more)


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

