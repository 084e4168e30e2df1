"""Losses that learn from a teacher: DeiT distillation (soft / hard) and token labeling.

DeiT (Touvron et al., 2021): the teacher term is either
  soft: KL(log_softmax(student / tau) || log_softmax(teacher / tau)), summed, * tau^2 / numel
  hard: cross-entropy against the teacher's argmax
and the loss is (1 - alpha) * base + alpha * teacher term. A distilled model (a second token and
head) trains its class head on the labels and its distillation head on the teacher; a plain model
trains its one head on both (DeiT asks for two heads there; timm's logit distillation does this).
Without a teacher term (type 'none' or alpha 0) the loss is the class head's base loss alone, as in
DeiT's losses.py: the distillation head of a two-head model learns nothing then.

Token labeling (Jiang et al., "All Tokens Matter", 2021): cls_weight * soft cross-entropy of the
class token against the image's target + dense_weight * the mean soft cross-entropy of every patch
token against its own dense target.
"""
from __future__ import annotations

import time
from typing import Callable, Literal, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data.mixup import mixup_target

DistillType = Literal["none", "soft", "hard"]
ModelOutput = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]

__all__ = [
    "DistillationLoss", "TokenLabelLoss", "hard_distillation_loss", "soft_cross_entropy",
    "soft_distillation_loss", "token_label_loss",
]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum(target * log_softmax(logits)); logits and target (..., C)."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def soft_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """DeiT's soft term: KL(teacher || student) at temperature tau, summed, * tau^2 / student.numel()."""
    kl = F.kl_div(F.log_softmax(student.float() / tau, dim=1), F.log_softmax(teacher.float() / tau, dim=1),
                  reduction="sum", log_target=True)
    return kl * (tau * tau) / student.numel()


def hard_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """DeiT's hard term: cross-entropy against the teacher's top class."""
    return F.cross_entropy(student.float(), teacher.argmax(dim=1))


class TeacherTimer:
    """Time spent in the teacher's forward, read at log steps only (no host sync in the step)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._seconds = 0.0

    def run(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.cuda:  # events are recorded in the stream: the host does not wait here
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            self._events.append((start, end))
            return out
        t0 = time.perf_counter()
        out = fn()
        self._seconds += time.perf_counter() - t0
        return out

    def take(self) -> float:
        """Seconds since the last call (on CUDA, call where the host has waited for the device)."""
        seconds = self._seconds + sum(s.elapsed_time(e) for s, e in self._events) / 1000.0
        self._events.clear()
        self._seconds = 0.0
        return seconds


class DistillationLoss(nn.Module):
    """(1 - alpha) * base(class logits, target) + alpha * DeiT term(distillation logits, teacher(images)).

    `outputs` is the student's logits (both terms then read the same logits), or (class logits,
    distillation logits) from a distilled model. With alpha = 0 or type 'none' the loss is
    base(class logits, target) alone, DeiT's rule: the distillation logits enter only as 0 x their
    sum, which gives their head zero gradients and keeps it in the graph (DDP without
    find_unused_parameters waits for every parameter's gradient), and the teacher is never run (DeiT
    runs it and multiplies its term by 0; the value is the same).
    """

    def __init__(
            self,
            base: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            teacher: Optional[Callable[[torch.Tensor], torch.Tensor]],
            *,
            kind: DistillType = "soft",
            alpha: float = 0.5,
            tau: float = 1.0,
            timer: Optional[TeacherTimer] = None,
    ) -> None:
        super().__init__()
        if kind not in ("none", "soft", "hard"):
            raise ValueError(f"distillation type {kind!r}: expected 'none', 'soft' or 'hard'")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha}: expected a weight in [0, 1]")
        if tau <= 0:
            raise ValueError(f"tau={tau}: expected a temperature > 0")
        if kind != "none" and alpha > 0 and teacher is None:
            raise ValueError(f"distillation type {kind!r} with alpha={alpha} needs a teacher")
        self.base = base
        self.teacher = teacher
        self.kind = kind
        self.alpha = alpha
        self.tau = tau
        self.timer = timer

    @property
    def uses_teacher(self) -> bool:
        return self.kind != "none" and self.alpha > 0

    def forward(self, outputs: ModelOutput, target: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            cls_logits = dist_logits = outputs
        else:
            cls_logits, dist_logits = outputs
        base = self.base(cls_logits, target)
        if not self.uses_teacher:
            if dist_logits is not cls_logits:  # DeiT: the class head alone; the other head stays in the graph
                return base + 0.0 * dist_logits.float().sum()
            return base
        with torch.no_grad():
            teacher_logits = self.timer.run(lambda: self.teacher(images)) if self.timer else self.teacher(images)
        if self.kind == "soft":
            term = soft_distillation_loss(dist_logits, teacher_logits, self.tau)
        else:
            term = hard_distillation_loss(dist_logits, teacher_logits)
        return (1 - self.alpha) * base + self.alpha * term


def token_label_loss(
        cls_logits: torch.Tensor,
        aux_logits: torch.Tensor,
        cls_target: torch.Tensor,
        dense_target: torch.Tensor,
        *,
        cls_weight: float = 1.0,
        dense_weight: float = 1.0,
) -> torch.Tensor:
    """cls_weight * CE(class logits (B, C), cls_target (B, C)) + dense_weight * mean over the B x N tokens of
    CE(aux logits (B, N, C), dense_target (B, N, C))."""
    if aux_logits.shape != dense_target.shape:
        raise ValueError(f"aux logits {tuple(aux_logits.shape)} and dense target {tuple(dense_target.shape)} "
                         "differ: the label map must have one row per patch token")
    return cls_weight * soft_cross_entropy(cls_logits, cls_target) + \
        dense_weight * soft_cross_entropy(aux_logits.flatten(0, 1), dense_target.flatten(0, 1))


class TokenLabelLoss(nn.Module):
    """Token-labeling loss over a model's (class logits, aux logits) and a (cls target, dense target) pair.

    A model output that is a plain tensor (evaluation form) falls back to the class term alone.
    """

    def __init__(self, cls_weight: float = 1.0, dense_weight: float = 1.0, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing  # for class-index targets (batches without mixup): label-smoothed one-hot rows
        if cls_weight < 0 or dense_weight < 0 or cls_weight + dense_weight <= 0:
            raise ValueError(f"cls_weight={cls_weight}, dense_weight={dense_weight}: expected weights >= 0, "
                             "not both 0")
        self.cls_weight = cls_weight
        self.dense_weight = dense_weight

    def forward(self, outputs: ModelOutput, target: Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]],
                images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`target` is (cls target (B, C), dense target (B, N, C)), or one (B, C) target that every token
        shares (TokenLabeling's rule when no label maps are given)."""
        if isinstance(target, torch.Tensor):
            cls_target, dense_target = target, None
        else:
            cls_target, dense_target = target
        if cls_target.ndim == 1:  # class indices (B,) -> (B, C)
            num_classes = (outputs if isinstance(outputs, torch.Tensor) else outputs[0]).shape[-1]
            cls_target = mixup_target(cls_target, num_classes, lam=1.0, smoothing=self.smoothing)
        if isinstance(outputs, torch.Tensor):
            return soft_cross_entropy(outputs, cls_target)
        cls_logits, aux_logits = outputs
        if dense_target is None:
            dense_target = cls_target[:, None].expand_as(aux_logits)
        return token_label_loss(cls_logits, aux_logits, cls_target, dense_target,
                                cls_weight=self.cls_weight, dense_weight=self.dense_weight)
