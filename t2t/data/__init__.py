"""Datasets, transforms, samplers, loaders and mixup for T2T-ViT training (timm's pieces, configured)."""
from .dataset import (
    DatasetError,
    ImageFolderDataset,
    RepeatedSample,
    check_classes_match,
    check_same_classes,
    derive_seed,
    find_split_dirs,
    find_unreadable_images,
    resolve_eval_dir,
    seed_global_rngs,
)
from .loader import build_eval_loader, build_train_loader, set_loader_epoch
from .mixup import build_mixup, seed_main_process_rng
from .sampler import ShardSampler, TrainSampler
from .transforms import (
    BatchNormalizeErase,
    FastTrainTransform,
    ToNormalizedTensor,
    build_eval_transform,
    build_train_transform,
    eval_resize_size,
    normalize_and_erase,
)

__all__ = [
    "BatchNormalizeErase",
    "DatasetError",
    "FastTrainTransform",
    "ImageFolderDataset",
    "RepeatedSample",
    "ShardSampler",
    "ToNormalizedTensor",
    "TrainSampler",
    "build_eval_loader",
    "build_eval_transform",
    "build_mixup",
    "build_train_loader",
    "build_train_transform",
    "check_classes_match",
    "check_same_classes",
    "derive_seed",
    "eval_resize_size",
    "find_split_dirs",
    "find_unreadable_images",
    "normalize_and_erase",
    "resolve_eval_dir",
    "seed_global_rngs",
    "seed_main_process_rng",
    "set_loader_epoch",
]
