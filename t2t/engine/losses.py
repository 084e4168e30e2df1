"""The training loss, built in one place from the config.

A loss is called as ``loss_fn(outputs, targets, images)``:

- ``outputs``: the model's output for the step's micro-batch, ``(B, num_classes)`` logits (a model
  with a second head may return a tuple, which the matching loss unpacks);
- ``targets``: class indices ``(B,)``, or soft targets ``(B, num_classes)`` when mixup / cutmix made them;
- ``images``: the images the model saw (after mixup), so that a distillation loss can run its teacher
  on exactly those.

A new loss (BCE, distillation, token labeling) is a new class here and a new branch of ``build_loss``,
never a new parameter of the training step.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

from ..config import LossConfig

__all__ = ["SoftTargetLoss", "TrainLoss", "build_loss", "soft_targets"]


class TrainLoss(Protocol):
    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        ...


def soft_targets(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Class indices (B,) as label-smoothed one-hot rows (B, num_classes)."""
    return mixup_target(targets, num_classes, lam=1.0, smoothing=smoothing)


class SoftTargetLoss(nn.Module):
    """Cross-entropy against soft targets; class indices become label-smoothed one-hot rows first.

    One loss serves mixed batches (mixup already smoothed their targets) and plain ones alike.
    """

    def __init__(self, num_classes: int, smoothing: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.cross_entropy = SoftTargetCrossEntropy()

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        if targets.ndim == 1:  # class indices: (B,) -> (B, num_classes)
            targets = soft_targets(targets, self.num_classes, self.smoothing)
        return self.cross_entropy(outputs, targets)


def build_loss(cfg: LossConfig, num_classes: int) -> TrainLoss:
    """The training loss the `loss` section asks for (today: soft-target cross-entropy with `cfg.label_smoothing`)."""
    return SoftTargetLoss(num_classes, smoothing=cfg.label_smoothing)
