"""Named evaluation sets (ImageNet-V2, -A, -R, -Sketch, ...) scored by one classifier in one call.

A set is `name=DIR`, a folder of class folders. Each class folder is matched to one output of the
model (`output_indices`), and the model's logits are cut to those outputs, in folder order
(`SubsetLogits`), so label i is class folder i whatever the set:

- folders named as the model's classes (the checkpoint's recorded list, in any order or a subset);
- the 200 WordNet ids of ImageNet-A or ImageNet-R, mapped to ImageNet-1k outputs by the index
  files timm ships (timm/data/_info/imagenet_{a,r}_indices.txt), as their papers score them: the
  1000-class logits restricted to the set's 200 classes;
- folders named by output index, 0 .. num_classes - 1 (ImageNet-V2; t2t.data.dataset.find_classes lists
  them by value), or some of them, in any order;
- otherwise, as many folders as the model has outputs, in sorted order (an official release file,
  which records no class list, on ImageNet-layout folders).

Top-5 and the loss of a 200-class set are over its 200 classes.
"""
from __future__ import annotations

import json
import pkgutil
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..cli import UsageError
from ..data.dataset import ImageFolderDataset, class_indices, resolve_eval_dir
from ..data.loader import build_eval_loader
from .distributed import DistInfo
from .evaluate import evaluate_models

__all__ = ["EvalSet", "EvalSetError", "SubsetLogits", "builtin_real_labels", "evaluate_sets", "load_eval_set",
           "output_indices", "parse_eval_sets", "timm_subset"]

# timm's bundled class lists of the 200-class ImageNet test sets (file stem in timm/data/_info).
_TIMM_SUBSETS = {"imagenet-a": "imagenet_a", "imagenet-r": "imagenet_r"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class EvalSetError(UsageError):
    """An evaluation set that cannot be scored by the model: the message names the set and the fix."""


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: the name its rows carry and its class-folder directory."""

    name: str
    root: str


def parse_eval_sets(entries: Sequence[str], where: str = "--eval-set") -> list[EvalSet]:
    """['v2=/data/v2', 'imagenet-a=/data/a'] -> EvalSets; EvalSetError naming `where` on a bad or repeated entry."""
    sets: list[EvalSet] = []
    for entry in entries:
        name, sep, root = str(entry).partition("=")
        name = name.strip()
        if not sep or not root or not _NAME.fullmatch(name):
            raise EvalSetError(f"{where} {entry!r}: expected NAME=DIR, e.g. imagenet-a=/data/imagenet-a (a name of "
                               "letters, digits, '-', '_', '.', '+', then the class-folder directory)")
        if any(s.name == name for s in sets):
            raise EvalSetError(f"{where} {entry!r}: the name {name!r} is used twice; give each set its own name")
        sets.append(EvalSet(name, root))
    return sets


def _timm_info(filename: str) -> str:
    data = pkgutil.get_data("timm.data", f"_info/{filename}")
    if data is None:  # pragma: no cover - a timm install without its package data
        raise EvalSetError(f"timm's bundled file timm/data/_info/{filename} is missing: reinstall timm")
    return data.decode("utf-8")


def timm_subset(name: str) -> tuple[list[str], list[int]]:
    """(WordNet ids, ImageNet-1k output index of each) of 'imagenet-a' or 'imagenet-r', from timm's bundled lists."""
    stem = _TIMM_SUBSETS[name]
    synsets = _timm_info(f"{stem}_synsets.txt").split()
    indices = [int(i) for i in _timm_info(f"{stem}_indices.txt").split()]
    if len(synsets) != len(indices):  # pragma: no cover - guards against a damaged timm install
        raise EvalSetError(f"timm's {stem}_synsets.txt and {stem}_indices.txt differ in length")
    return synsets, indices


def builtin_real_labels() -> list:
    """The ImageNet-ReaL labels timm ships (timm/data/_info/imagenet_real_labels.json): one list per val image."""
    return json.loads(_timm_info("imagenet_real_labels.json"))


def _known_subset(name: str) -> Optional[str]:
    """'imagenet-a' / 'imagenet-r' for the spellings of those names (ImageNet_A, imageneta, ...), else None."""
    key = re.sub(r"[-_\s.]", "", name.lower())
    return next((subset for subset in _TIMM_SUBSETS if subset.replace("-", "") == key), None)


def output_indices(name: str, root: str, folders: Sequence[str], num_classes: int,
                   model_classes: Optional[Sequence[str]] = None) -> Optional[list[int]]:
    """The model output each class folder of set `name` is scored against, in folder order; None: all, in order.

    `model_classes` are the class names the checkpoint records (None for a file that records none).
    """
    folders = list(folders)
    where = f"evaluation set {name!r} ({root!r})"
    if model_classes is not None and list(model_classes) == folders:
        return None
    subset = _known_subset(name) or next(
        (s for s in _TIMM_SUBSETS if len(folders) == 200 and folders == timm_subset(s)[0]), None)
    if subset is not None:
        synsets, indices = timm_subset(subset)
        if folders != synsets:
            first = next((f for f in folders if f not in synsets), None)
            detail = f"e.g. {first!r} is not one of them" if first is not None else "some are missing"
            raise EvalSetError(f"{where} has {len(folders)} class folders; {subset} has the {len(synsets)} WordNet "
                               f"ids of timm's {_TIMM_SUBSETS[subset]}_synsets.txt ({detail}): use the set's own "
                               "class folders")
        if num_classes != 1000:
            raise EvalSetError(f"{where}: {subset} is scored on ImageNet-1k outputs, but the model has {num_classes} "
                               "classes")
        if model_classes is not None:
            wrong = next((s for s, i in zip(synsets, indices) if model_classes[i] != s), None)
            if wrong is not None:
                raise EvalSetError(f"{where}: the checkpoint's classes are not ImageNet-1k's in timm's order (output "
                                   f"{indices[synsets.index(wrong)]} is {model_classes[indices[synsets.index(wrong)]]!r}"
                                   f", not {wrong!r}); {subset} cannot be scored by index")
        return indices
    if model_classes is not None and set(folders) <= set(model_classes):
        position = {c: i for i, c in enumerate(model_classes)}
        return [position[f] for f in folders]
    values = class_indices(folders)
    if values is not None:
        if max(values) < num_classes and len(set(values)) == len(values):
            return values if values != list(range(num_classes)) else None
    if model_classes is None and len(folders) == num_classes:
        return None
    known = "the checkpoint's class names, " if model_classes is not None else ""
    raise EvalSetError(
        f"{where} has {len(folders)} class folders (first {folders[0]!r}) that cannot be matched to the model's "
        f"{num_classes} outputs: expected {known}output indices 0..{num_classes - 1}, the WordNet ids of imagenet-a "
        f"or imagenet-r, or {num_classes} folders in output order")


class SubsetLogits(nn.Module):
    """The model's logits at `indices`, in that order: (B, num_classes) -> (B, len(indices))."""

    def __init__(self, model: nn.Module, indices: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("indices", torch.as_tensor(list(indices), dtype=torch.long), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).index_select(1, self.indices)


def load_eval_set(eval_set: EvalSet, transform: Callable, *, num_classes: int,
                  classes: Optional[Sequence[str]]) -> tuple[ImageFolderDataset, Optional[list[int]]]:
    """The set's class folders (DIR/val if there is one) read with `transform`, and the outputs they are scored on."""
    dataset = ImageFolderDataset(resolve_eval_dir(eval_set.root), transform)
    dataset.bad_image_hint = ""  # every image must count: no skipping here
    return dataset, output_indices(eval_set.name, dataset.root, dataset.classes, num_classes, classes)


def evaluate_sets(models: dict[str, nn.Module], sets: Sequence[tuple[str, ImageFolderDataset, Optional[list[int]]]],
                  *, batch_size: int, workers: int, device: torch.device, amp: str = "none",
                  dist: Optional[DistInfo] = None) -> dict[str, float]:
    """Each (name, dataset, output indices) set scored by every model, sharded over the ranks without padding.

    Returns {f"{model name}{set name}_top1": ..., ..._top5, ..._loss, ..._count}: the columns training adds to
    its last row (eval.extra_sets), model names being prefixes such as "" and "ema_".
    """
    columns: dict[str, float] = {}
    for name, dataset, indices in sets:
        loader = build_eval_loader(dataset, batch_size=batch_size, workers=workers,
                                   num_replicas=dist.world_size if dist is not None else 1,
                                   rank=dist.rank if dist is not None else 0, pin_memory=device.type == "cuda")
        scored = {prefix: SubsetLogits(model, indices) if indices is not None else model
                  for prefix, model in models.items()}
        for prefix, metrics in evaluate_models(scored, loader, device=device, amp=amp, dist=dist,
                                               log_prefix=f"{name}: ").items():
            columns.update({f"{prefix}{name}_{key}": metrics[key] for key in ("top1", "top5", "loss", "count")})
    return columns
