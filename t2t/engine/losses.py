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

import logging
from typing import Any, Optional, Protocol

import torch
import torch.nn as nn
from timm.data.mixup import mixup_target
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

from ..config import ConfigError, DistillConfig, LossConfig, TokenLabelConfig
from .distill import DistillationLoss, TeacherTimer, TokenLabelLoss

__all__ = ["BinaryTargetLoss", "SoftTargetLoss", "TrainLoss", "build_loss", "soft_targets"]

_logger = logging.getLogger(__name__)


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


class BinaryTargetLoss(nn.Module):
    """Binary cross-entropy per class (DeiT III), timm's BinaryCrossEntropy: class indices become one-hot rows
    smoothed as timm smooths them for BCE (off = s / C, on = 1 - s + s / C); soft targets from mixup / cutmix
    (already smoothed there) are used as they are, or made 0/1 above `target_threshold`."""

    def __init__(self, smoothing: float = 0.0, target_threshold: Optional[float] = None) -> None:
        super().__init__()
        self.bce = BinaryCrossEntropy(smoothing=smoothing, target_threshold=target_threshold)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        return self.bce(outputs, targets)


def build_loss(cfg: LossConfig, num_classes: int, *, token_label: Optional[TokenLabelConfig] = None,
               distill: Optional[DistillConfig] = None, teacher: Any = None, two_heads: bool = False,
               device: Optional[torch.device] = None) -> TrainLoss:
    """The training loss: soft-target cross-entropy (or, with `cfg.type` bce, binary cross-entropy) with
    `cfg.label_smoothing`, alone or inside

    - token labeling (`token_label`: the section, given when the model has the aux head);
    - distillation (`distill`: the section) from `teacher` and/or a distilled model's two heads (`two_heads`).
    """
    distill = distill or DistillConfig()
    if token_label is not None:
        if cfg.type != "ce":
            raise ConfigError(f"loss.type={cfg.type!r} with model.token_label=true: token labeling's loss is "
                              "cross-entropy on the class and dense targets; use loss.type=ce")
        if teacher is not None:
            raise ConfigError(f"model.token_label=true with distill.type={distill.type!r}: use token labels or a "
                              "teacher, not both")
        return TokenLabelLoss(cls_weight=token_label.cls_weight, dense_weight=token_label.dense_weight,
                              smoothing=cfg.label_smoothing)
    base = BinaryTargetLoss(cfg.label_smoothing, cfg.bce_target_threshold) if cfg.type == "bce" else \
        SoftTargetLoss(num_classes, smoothing=cfg.label_smoothing)
    if teacher is None and not two_heads:
        return base
    if two_heads and (teacher is None or distill.type == "none" or distill.alpha == 0):
        _logger.warning("A distilled model without a teacher term (distill.type=%r, alpha=%s, teacher %s): as in "
                        "DeiT, only the class head learns; the distillation head keeps its initial weights and is "
                        "still averaged in at evaluation", distill.type, distill.alpha,
                        "given" if teacher is not None else "none")
    return DistillationLoss(base, teacher, kind=distill.type, alpha=distill.alpha, tau=distill.tau,
                            timer=TeacherTimer(device) if teacher is not None else None)
