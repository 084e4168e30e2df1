"""Datasets, transforms, samplers, loaders and mixup for T2T-ViT training (timm's pieces, configured)."""
from .dataset import (
    DatasetError,
    ImageDataset,
    ImageFolderDataset,
    RepeatedSample,
    check_classes_match,
    check_same_classes,
    find_split_dirs,
    find_unreadable_images,
    resolve_eval_dir,
)
from .loader import build_eval_loader, build_train_loader, set_loader_epoch
from .mixup import build_mixup
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
    "ImageDataset",
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
    "eval_resize_size",
    "find_split_dirs",
    "find_unreadable_images",
    "normalize_and_erase",
    "resolve_eval_dir",
    "set_loader_epoch",
]
