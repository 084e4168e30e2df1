"""RunPlan: the values a run derives from its config, its world size and its data, computed once.

They are logged as one block at the start, stored in every checkpoint (as its ``run`` entry) and
compared with the stored ones on resume.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ..config import Config, ConfigError, TrainConfig
from ..data.dataset import check_classes_match
from .optim import scaled_lr
from .run_folder import RunError

_logger = logging.getLogger("t2t.train")


def global_batch(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(global batch, gradient accumulation steps) for `world_size` processes."""
    per_step = cfg.batch_size * world_size
    wanted = cfg.global_batch_size
    if wanted is None:
        return per_step * cfg.grad_accum_steps, cfg.grad_accum_steps
    if wanted % per_step:
        raise ConfigError(
            f"train.global_batch_size={wanted} is not a multiple of {world_size} processes x "
            f"train.batch_size={cfg.batch_size} = {per_step}; choose a batch size that divides it")
    if cfg.grad_accum_steps not in (1, wanted // per_step):
        _logger.warning("train.grad_accum_steps=%d is ignored: train.global_batch_size=%d sets it to %d",
                        cfg.grad_accum_steps, wanted, wanted // per_step)
    return wanted, wanted // per_step


@dataclass(frozen=True)
class RunPlan:
    world_size: int
    global_batch_size: int  # images per optimizer step over all processes
    batch_size: int  # per process and micro-batch
    grad_accum_steps: int
    lr: float  # optim.lr scaled to the global batch
    steps_per_epoch: int  # optimizer steps: training images // global batch
    total_epochs: int  # cosine epochs + cool-down
    num_classes: int
    classes: list[str]
    data_dir: str
    # Not stored by checkpoints written before the plan existed (None there).
    base_lr: Optional[float] = None  # optim.lr, for lr_base_batch_size images
    lr_base_batch_size: Optional[int] = None
    cooldown_epochs: Optional[int] = None
    teacher: Optional[dict[str, Any]] = None  # a distillation run's teacher file: path, size, sha256
    holdout_fraction: Optional[float] = None  # data.holdout_fraction (None: a checkpoint from before it, i.e. 0)
    minival_images: Optional[int] = None  # images it held out of the training folder
    token_labels: Optional[dict[str, Any]] = None  # a token-label run's label folder: dir, teacher sha256, topk, size

    @classmethod
    def build(cls, cfg: Config, *, world_size: int, steps_per_epoch: int, classes: Sequence[str],
              data_dir: str, minival_images: int = 0) -> "RunPlan":
        batch, accum = global_batch(cfg.train, world_size)
        return cls(world_size=world_size, global_batch_size=batch, batch_size=cfg.train.batch_size,
                   grad_accum_steps=accum, lr=scaled_lr(cfg.optim.lr, batch, cfg.optim.lr_base_batch_size),
                   steps_per_epoch=steps_per_epoch, total_epochs=cfg.train.epochs + cfg.sched.cooldown_epochs,
                   num_classes=len(classes), classes=list(classes), data_dir=os.path.abspath(data_dir),
                   base_lr=cfg.optim.lr, lr_base_batch_size=cfg.optim.lr_base_batch_size,
                   cooldown_epochs=cfg.sched.cooldown_epochs, holdout_fraction=cfg.data.holdout_fraction,
                   minival_images=minival_images)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunPlan":
        """The plan a checkpoint stored; old checkpoints lack the fields that have defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown run plan entries {unknown}")
        return cls(**{name: values[name] for name in names if name in values})

    def describe(self, device: Any) -> str:
        """The plan as one log block."""
        scaled = "" if self.base_lr is None else \
            f" (optim.lr {self.base_lr:.4g} scaled by {self.global_batch_size}/{self.lr_base_batch_size})"
        cooldown = self.cooldown_epochs or 0
        return (f"world size {self.world_size}, device {device}, global batch {self.global_batch_size} "
                f"({self.world_size} processes x {self.batch_size} per process x {self.grad_accum_steps} "
                f"accumulation), lr {self.lr:.4g}{scaled}, {self.steps_per_epoch} steps per epoch, "
                f"{self.total_epochs} epochs ({self.total_epochs - cooldown} cosine + {cooldown} cool-down), "
                f"{self.num_classes} classes")

    def check_resume(self, saved: "RunPlan", *, path: str, train_dir: str) -> None:
        """Refuse a resume that cannot continue the saved run; warn about derived values that changed.

        The classes, the global batch and the held-out fraction must stay (labels; lr and data position are
        counted in steps of the global batch; the minival split is a function of the fraction and each image's
        path, so the same fraction keeps it); the world size may change (gradient accumulation follows).
        """
        check_classes_match(saved.classes, self.classes, where=f"training folder {train_dir!r}",
                            fix=f" (checkpoint {path!r}); resume with the data the run was trained on")
        if saved.global_batch_size != self.global_batch_size:
            raise RunError(
                f"{path} was trained with a global batch of {saved.global_batch_size} images per step "
                f"({saved.world_size} processes); this launch makes {self.global_batch_size} with {self.world_size}. "
                f"Set train.global_batch_size={saved.global_batch_size} to continue with the same batch, lr "
                "schedule and data position (gradient accumulation is derived from it)")
        held_before, held_now = saved.holdout_fraction or 0.0, self.holdout_fraction or 0.0
        if held_before != held_now:
            raise RunError(
                f"{path} was trained with data.holdout_fraction={held_before:g}; this launch asks for {held_now:g}, "
                "which would train on images the minival held out (or evaluate on images trained on): resume with "
                f"data.holdout_fraction={held_before:g}, or start a new run")
        changed = [f"{name} {getattr(saved, name)!r} -> {getattr(self, name)!r}"
                   for name in ("lr", "steps_per_epoch", "total_epochs", "minival_images")
                   if getattr(saved, name) not in (None, getattr(self, name))]
        if changed:
            _logger.warning("Resuming %s with a different plan: %s", path, "; ".join(changed))
