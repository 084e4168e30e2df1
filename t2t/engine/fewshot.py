"""Few-shot linear probe on frozen features: closed-form ridge regression onto +-1 one-hot targets.

The protocol big_vision uses for its few-shot evaluators: the pre-logits features of k images per
class are standardised (their mean and standard deviation), a constant column is appended for the
bias, and the weights solve min ||X W - Y||^2 + l2 ||W||^2 with Y the one-hot targets scaled to
{-1, +1}; a test image is given the class of its largest score. The solution is closed form: with N
examples of D features, (X^T X + l2 I)^-1 X^T Y when N >= D, else X^T (X X^T + l2 I)^-1 Y (the
same matrix, through the smaller system), in float64.

Which images are the shots is a function of the seed alone: one permutation per class, drawn from a
generator seeded with (seed, class index); the k-shot set takes its first k images, so the sets for
1, 5, 10 shots are nested. The features of every image are computed once, each rank its shard, and
summed over the ranks into one (N, D) table on every rank (exact: each row comes from one rank).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from .collectives import all_reduce_sum, sum_over_ranks
from .distributed import DistInfo
from .precision import amp_context

__all__ = ["FewShotSplit", "extract_features", "fewshot_accuracy", "ridge_weights", "shot_split"]

# Added as the last feature column: the bias, regularised like every other weight.
BIAS_FEATURE = 1.0


def ridge_weights(x: torch.Tensor, targets: torch.Tensor, l2: float) -> torch.Tensor:
    """argmin_W ||x W - targets||^2 + l2 ||W||^2 for x (N, D), targets (N, C): (D, C), solved in float64."""
    if l2 <= 0:
        raise ValueError(f"l2={l2}: expected > 0")
    x, targets = x.double(), targets.double()
    n, d = x.shape
    if n >= d:  # (D, D) system
        gram = x.T @ x + l2 * torch.eye(d, dtype=x.dtype, device=x.device)
        return torch.linalg.solve(gram, x.T @ targets)
    gram = x @ x.T + l2 * torch.eye(n, dtype=x.dtype, device=x.device)  # (N, N) system
    return x.T @ torch.linalg.solve(gram, targets)


def _design(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standardised features with the bias column: (N, D) -> (N, D + 1), float64."""
    x = (features.double() - mean) / std
    return torch.cat([x, x.new_full((x.shape[0], 1), BIAS_FEATURE)], dim=1)


def fewshot_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                     test_labels: torch.Tensor, num_classes: int, l2: float) -> float:
    """Top-1 (%) on the test features of the ridge probe fitted on the train features."""
    mean = train_features.double().mean(dim=0)
    std = train_features.double().std(dim=0, unbiased=False) + 1e-5  # a constant feature must not divide by 0
    targets = 2.0 * torch.nn.functional.one_hot(train_labels, num_classes).double() - 1.0
    weights = ridge_weights(_design(train_features, mean, std), targets, l2)
    predictions = (_design(test_features, mean, std) @ weights).argmax(dim=1)
    return 100.0 * float((predictions == test_labels.to(predictions.device)).double().mean())


@dataclass
class FewShotSplit:
    """Dataset positions: the shots of each k (nested), and the test images shared by every k."""

    shots: dict[int, list[int]]
    test: list[int]


def shot_split(labels: Sequence[int], num_classes: int, shots: Sequence[int], seed: int,
               test_labels_from_rest: bool = True) -> FewShotSplit:
    """k images per class for each k in `shots`, drawn by a per-class permutation seeded with (seed, class).

    With `test_labels_from_rest` the images after the first max(shots) of each class are the test set;
    otherwise the test set is empty (a separate split is tested).
    """
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for position, label in enumerate(labels):
        by_class[label].append(position)
    most = max(shots)
    chosen: dict[int, list[int]] = {k: [] for k in shots}
    test: list[int] = []
    for c, members in enumerate(by_class):
        need = most + (1 if test_labels_from_rest else 0)
        if len(members) < need:
            raise ValueError(f"class {c} has {len(members)} images; {most} shots"
                             f"{' and a test image' if test_labels_from_rest else ''} need {need}")
        generator = torch.Generator().manual_seed(seed * 1_000_003 + c)
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        for k in shots:
            chosen[k] += order[:k]
        if test_labels_from_rest:
            test += order[most:]
    return FewShotSplit({k: sorted(v) for k, v in chosen.items()}, sorted(test))


@torch.no_grad()
def extract_features(model: nn.Module, loader: Iterable, sample_indices: Sequence[int], num_images: int, *,
                     device: torch.device, amp: str = "none", dist: DistInfo | None = None) -> torch.Tensor:
    """The pre-logits features of every dataset image, (num_images, D) float32 on `device`, on every rank.

    `loader` yields this rank's images in the order of `sample_indices` (their dataset positions); the
    rows are placed by position and summed over the ranks, each image being read by exactly one rank.
    """
    model.eval()
    indices = torch.as_tensor(list(sample_indices), dtype=torch.long, device=device)
    table: torch.Tensor | None = None
    seen = torch.zeros(num_images, dtype=torch.float32, device=device)
    offset = 0
    for images, _ in loader:
        images = images.to(device, non_blocking=True)
        with amp_context(device, amp):
            features = model.forward_head(model.forward_features(images), pre_logits=True)
        features = features.float()  # (B, D)
        if table is None:
            table = torch.zeros(num_images, features.shape[1], dtype=torch.float32, device=device)
        rows = indices[offset:offset + features.shape[0]]
        table[rows] = features
        seen[rows] += 1
        offset += features.shape[0]
    if table is None or (dist is not None and dist.world_size > 1):  # a rank without images learns the width
        width_sum, ranks_with_images = sum_over_ranks(0 if table is None else table.shape[1], table is not None)
        if table is None:
            table = torch.zeros(num_images, int(width_sum) // int(ranks_with_images), dtype=torch.float32,
                                device=device)
    table = all_reduce_sum(table)
    seen = all_reduce_sum(seen)
    if not bool((seen == 1).all()):
        raise RuntimeError(f"few-shot features: {int((seen == 0).sum())} images were never read and "
                           f"{int((seen > 1).sum())} more than once: the loader does not cover the set exactly once")
    return table
