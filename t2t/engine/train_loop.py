"""One training epoch: accumulation, one mixed-precision path, per-step lr, EMA, resumable position."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn as nn
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

from .distributed import all_reduce_sum
from .metrics import format_duration
from .optim import LRSchedule, set_lr
from .precision import amp_context

_logger = logging.getLogger("t2t.train")

class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops, the last good checkpoint stays as it is."""


@dataclass
class TrainState:
    """Everything about the run's position that is not a module or optimizer state."""

    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps already taken in this epoch
    global_step: int = 0  # optimizer steps since the start of the run
    loss_sum: float = 0.0  # running sums over this epoch (this rank), for the epoch's train_loss
    loss_count: int = 0
    skipped_steps: int = 0  # fp16 steps the GradScaler skipped (inf/NaN gradients)
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainState":
        return cls(**values)


@dataclass
class StepControl:
    """Hooks the run gives the loop: called after every optimizer step; returns True to stop the epoch."""

    after_step: Callable[[TrainState], bool] = lambda state: False


def soft_targets(target: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Hard labels as label-smoothed one-hot rows, so one loss serves mixed and plain batches."""
    return mixup_target(target, num_classes, lam=1.0, smoothing=smoothing)


def train_one_epoch(
        model: nn.Module,
        *,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        num_batches: int,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        schedule: LRSchedule,
        state: TrainState,
        device: torch.device,
        num_classes: int,
        amp: str = "none",
        accum_steps: int = 1,
        clip_grad: Optional[float] = None,
        mixup: Optional[Callable] = None,
        label_smoothing: float = 0.0,
        ema: Optional[Any] = None,
        reseed: Optional[Callable[[int], None]] = None,
        control: StepControl = StepControl(),
        log_interval: int = 50,
        ddp_no_sync: Optional[Callable[[], contextlib.AbstractContextManager]] = None,
        batch_to_device: Optional[Callable] = None,
        on_log: Optional[Callable[[dict[str, float], int], None]] = None,
) -> bool:
    """Train until the epoch's batches run out; return False if `control` asked to stop early.

    `batches` yields micro-batches starting at `state.step_in_epoch * accum_steps`; an optimizer
    step is taken every `accum_steps` of them. `reseed(micro_index)` makes mixup, dropout and
    drop-path a function of the position in the run, so a resumed run draws the same numbers.
    """
    criterion = SoftTargetCrossEntropy()
    model.train()
    world_loss = torch.zeros(2, dtype=torch.float64, device=device)  # (sum, count) since last log
    data_wait = compute = 0.0
    steps_since_log = 0
    t_last = time.perf_counter()
    t_log = t_last
    micro = 0
    for images, target in batches:
        t_data = time.perf_counter()
        data_wait += t_data - t_last
        if batch_to_device is not None:
            images, target = batch_to_device(images, target)
        else:
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
        if reseed is not None:
            reseed(state.global_step * accum_steps + micro)
        if mixup is not None:
            images, target = mixup(images, target)
        else:
            target = soft_targets(target, num_classes, label_smoothing)
        is_last_micro = micro == accum_steps - 1
        sync = contextlib.nullcontext() if is_last_micro or ddp_no_sync is None else ddp_no_sync()
        with sync:
            with amp_context(device, amp):
                loss = criterion(model(images), target)
            loss_value = loss.item()  # one host sync per micro-batch: a NaN must stop before the step
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"loss is {loss_value} at epoch {state.epoch}, optimizer step {state.global_step}; "
                    "stopping with the last checkpoint intact")
            scaler.scale(loss / accum_steps).backward()
        n = images.shape[0]
        world_loss[0] += loss_value * n
        world_loss[1] += n
        state.loss_sum += loss_value * n
        state.loss_count += n
        micro += 1
        if is_last_micro:
            micro = 0
            steps_in_epoch = num_batches // accum_steps
            log_now = (state.step_in_epoch + 1) % log_interval == 0 or state.step_in_epoch + 1 == steps_in_epoch
            grad_norm = _optimizer_step(model, optimizer, scaler, schedule, state, clip_grad, measure_norm=log_now)
            if ema is not None:
                ema.update(model, step=state.global_step)
            state.global_step += 1
            state.step_in_epoch += 1
            steps_since_log += 1
            t_now = time.perf_counter()
            compute += t_now - t_data
            if log_now:
                stats = all_reduce_sum(world_loss.clone())  # (loss sum, images) over all ranks
                elapsed = max(t_now - t_log, 1e-9)
                values = {
                    "train/loss": (stats[0] / stats[1].clamp(min=1)).item(),
                    "train/lr": optimizer.param_groups[0]["lr"],
                    "train/images_per_sec": stats[1].item() / elapsed,
                    "train/data_wait": data_wait / max(data_wait + compute, 1e-9),
                }
                if grad_norm is not None:
                    values["train/grad_norm"] = grad_norm
                eta = (steps_in_epoch - state.step_in_epoch) * elapsed / steps_since_log
                _logger.info(
                    "epoch %d step %d/%d  loss %.4f  lr %.3e  %.1f img/s  data %.0f%%  eta %s",
                    state.epoch, state.step_in_epoch, num_batches // accum_steps, values["train/loss"],
                    values["train/lr"], values["train/images_per_sec"], 100 * values["train/data_wait"],
                    format_duration(eta))  # eta: to the end of this epoch
                if on_log is not None:
                    on_log(values, state.global_step)
                world_loss.zero_()
                data_wait = compute = 0.0
                steps_since_log = 0
                t_log = time.perf_counter()
            if control.after_step(state):
                return False
        t_last = time.perf_counter()
    return True


def _optimizer_step(model, optimizer, scaler, schedule: LRSchedule, state: TrainState,
                    clip_grad: Optional[float], measure_norm: bool = False) -> Optional[float]:
    """Set the lr for this step, unscale, clip, step (or skip on inf/NaN under fp16), zero grads.

    Returns the global gradient norm when clipping or when `measure_norm` asks for it (for the logs).
    """
    set_lr(optimizer, schedule.lr_at(state.global_step))
    grad_norm = None
    if clip_grad is not None or measure_norm:
        scaler.unscale_(optimizer)
        grads = [p for p in model.parameters() if p.grad is not None]
        max_norm = clip_grad if clip_grad is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(grads, max_norm).item()
    scale_before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    if scale_before is not None and scaler.get_scale() < scale_before:
        state.skipped_steps += 1  # the scaler found inf/NaN gradients and skipped this step
    optimizer.zero_grad(set_to_none=True)
    return grad_norm if grad_norm is None or math.isfinite(grad_norm) else None
