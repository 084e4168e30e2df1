"""Optimizer, batch-scaled learning rate and the warm-up / cosine / cool-down schedule."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from ..config import OptimConfig, SchedConfig

_logger = logging.getLogger(__name__)


def scaled_lr(base_lr: float, global_batch_size: int, base_batch_size: int) -> float:
    """Linear scaling rule: the config's lr is for `base_batch_size` images per optimizer step."""
    return base_lr * global_batch_size / base_batch_size


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW (or SGD) without weight decay on biases, norms, cls_token and pos_embed."""
    kwargs = dict(betas=tuple(cfg.betas), eps=cfg.eps) if cfg.name == "adamw" else dict(momentum=0.9)
    # timm groups 1-D tensors (biases, norm weights) and model.no_weight_decay() names without decay,
    # and leaves out parameters that do not require grad (pos_embed, the Performer projections).
    return create_optimizer_v2(model, opt=cfg.name, lr=lr, weight_decay=cfg.weight_decay,
                               filter_bias_and_bn=True, **kwargs)


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a pure function of the optimizer step (or of the epoch, as the official code)."""

    base_lr: float
    warmup_lr: float
    min_lr: float
    warmup_epochs: int
    epochs: int  # cosine length; the cool-down at min_lr follows
    steps_per_epoch: int
    per_step: bool = True

    def lr_at(self, step: int) -> float:
        """lr for optimizer step `step` (0-based count of steps already taken)."""
        if self.per_step:
            t, warmup, length = step, self.warmup_epochs * self.steps_per_epoch, self.epochs * self.steps_per_epoch
        else:
            t, warmup, length = step // self.steps_per_epoch, self.warmup_epochs, self.epochs
        if t < warmup:
            return self.warmup_lr + t * (self.base_lr - self.warmup_lr) / warmup
        if t >= length:
            return self.min_lr
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t / length))


def build_schedule(cfg: SchedConfig, *, base_lr: float, epochs: int, steps_per_epoch: int) -> LRSchedule:
    return LRSchedule(base_lr=base_lr, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
                      warmup_epochs=cfg.warmup_epochs, epochs=epochs, steps_per_epoch=steps_per_epoch,
                      per_step=cfg.per_step)


def reference_timm_scheduler(schedule: LRSchedule, optimizer: torch.optim.Optimizer) -> CosineLRScheduler:
    """timm's scheduler configured like `schedule` (used by the tests as an independent reference)."""
    scale = schedule.steps_per_epoch if schedule.per_step else 1
    return CosineLRScheduler(
        optimizer, t_initial=schedule.epochs * scale, lr_min=schedule.min_lr,
        warmup_t=schedule.warmup_epochs * scale, warmup_lr_init=schedule.warmup_lr,
        t_in_epochs=not schedule.per_step)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
