"""Optimizer, batch-scaled learning rate and the warm-up / cosine / cool-down schedule."""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from timm.models import group_parameters
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from ..config import ConfigError, OptimConfig, SchedConfig

_logger = logging.getLogger(__name__)


def scaled_lr(base_lr: float, global_batch_size: int, base_batch_size: int) -> float:
    """Linear scaling rule: the config's lr is for `base_batch_size` images per optimizer step."""
    return base_lr * global_batch_size / base_batch_size


_RANGE = re.compile(r"^(?P<prefix>.*?)(?P<first>\d+)-(?P<last>\d+)$")


def _expand_freeze_spec(spec: str) -> list[str]:
    """'blocks.0-6' -> ['blocks.0', ..., 'blocks.6'] (inclusive); other names as they are."""
    match = _RANGE.match(spec)
    if match is None:
        return [spec]
    first, last = int(match["first"]), int(match["last"])
    if first > last:
        raise ConfigError(f"model.freeze entry {spec!r}: the range {first}-{last} is empty (expected first <= last)")
    return [f"{match['prefix']}{i}" for i in range(first, last + 1)]


def freeze_parameters(model: nn.Module, specs: Sequence[str]) -> list[str]:
    """Set requires_grad=False on the parts `specs` names (parameter names or module prefixes); return their names.

    Frozen parameters then stay out of the optimizer (``param_groups``) and out of DDP's gradient buckets.
    """
    names = [n for n, _ in model.named_parameters()]
    frozen: list[str] = []
    for spec in specs:
        for part in _expand_freeze_spec(spec):
            hits = [n for n in names if n == part or n.startswith(part + ".")]
            if not hits:
                tops = sorted({n.split(".")[0] for n in names})
                raise ConfigError(f"model.freeze entry {spec!r}: {part!r} names no parameter of this model; "
                                  f"expected a parameter name or a module prefix such as {', '.join(tops)} "
                                  f"(blocks.N or blocks.A-B for blocks)")
            frozen.extend(h for h in hits if h not in frozen)
    params = dict(model.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    return frozen


def _layer_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """Per-parameter lr factor decay ** (L - 1 - layer) over the model's group_matcher layers (head: 1)."""
    if not hasattr(model, "group_matcher"):
        raise ConfigError(f"optim.layer_decay needs a model with group_matcher(); {type(model).__name__} has none")
    layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)  # name -> layer id
    last = max(layer_of.values())
    return {name: layer_decay ** (last - layer) for name, layer in layer_of.items()}


def param_groups(model: nn.Module, *, weight_decay: float, backbone_lr_scale: float = 1.0,
                 layer_decay: Optional[float] = None) -> list[dict[str, Any]]:
    """Parameter groups by (lr factor, weight decay), the classifier's first.

    No weight decay on 1-D tensors (biases, norms) and on ``model.no_weight_decay()`` names; parameters
    that do not require grad (frozen ones, fixed tables) are left out. The lr factor (``lr_scale``) of
    a parameter is ``backbone_lr_scale`` outside the classifier, times the layer-wise decay when
    ``layer_decay`` is set; ``set_lr`` multiplies the scheduled lr by it. Groups that hold classifier
    parameters come first, so ``param_groups[0]['lr']`` is the scheduled lr the logs show. With the
    defaults this is timm's grouping (no-decay group, then decay group), so older checkpoints resume.
    """
    no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    head = {id(p) for p in model.get_classifier().parameters()} if hasattr(model, "get_classifier") else set()
    layer_scale = _layer_scales(model, layer_decay) if layer_decay is not None else {}
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    has_head: set[tuple[float, float]] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = id(param) in head
        decay = 0.0 if param.ndim <= 1 or name.endswith(".bias") or name in no_decay else weight_decay
        scale = layer_scale.get(name, 1.0) * (1.0 if is_head else backbone_lr_scale)
        group = groups.setdefault((scale, decay), {
            "name": f"lr x{scale:.4g}{'' if decay else ' no-decay'}", "params": [], "lr_scale": scale,
            "weight_decay": decay})
        group["params"].append(param)
        if is_head:
            has_head.add((scale, decay))
    return [g for key, g in sorted(groups.items(), key=lambda item: item[0] not in has_head)]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW, SGD or any optimizer of timm's factory over ``param_groups`` (per-group lr factors, no decay on
    biases, norms, cls_token); ``optim.kwargs`` go to its constructor.

    ``fused`` (for CUDA) makes AdamW one kernel per parameter group and lets the fp16 GradScaler skip
    a step on the device, without reading its inf check back to the host. SGD stays unfused: torch's
    fused SGD allocates its momentum buffers uninitialised and, when the scaler skips the first step
    (common under fp16: the initial scale overflows), leaves them so and then reads them as momentum
    (seen with torch 2.14: NaN losses from the third step). Under fp16, SGD costs one host sync per step.
    """
    groups = param_groups(model, weight_decay=cfg.weight_decay, backbone_lr_scale=cfg.backbone_lr_scale,
                          layer_decay=cfg.layer_decay)
    if not groups:
        raise ConfigError("no trainable parameters: model.freeze leaves nothing to optimize")
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    try:
        optimizer = _create(cfg, groups, lr, fused)
    except TypeError as e:  # an argument the constructor does not take
        raise ConfigError(f"optim.kwargs={cfg.kwargs!r} (optim.name={cfg.name!r}): {e}") from None
    _logger.info("Optimizer %s, %d parameter groups: %s", cfg.name, len(groups), "; ".join(
        f"{g['name']} ({sum(p.numel() for p in g['params']):,} params, lr {g['lr']:.4g})" for g in groups))
    return optimizer


def _create(cfg: OptimConfig, groups: list[dict[str, Any]], lr: float, fused: bool) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        if cfg.nesterov and cfg.momentum == 0:
            raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **cfg.kwargs)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 **({"fused": True} if fused else {}), **cfg.kwargs)
    # timm's factory takes the groups as they are (its own no-decay filter and layer decay apply only to a
    # model); each group's weight_decay and lr_scale stay ours, weight_decay here is only its default.
    return create_optimizer_v2(groups, opt=cfg.name, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                               **cfg.kwargs)


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
