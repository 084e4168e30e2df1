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
    """Hooks the run gives the loop.

    `after_step(state, synced)` runs after every optimizer step and returns True to stop the epoch;
    `synced` says whether this step was a log step, where the loop has already waited for the device.
    """

    after_step: Callable[[TrainState, bool], bool] = lambda state, synced: False


class DeviceMeters:
    """Loss sums, the first non-finite step and skipped fp16 steps, kept on the device.

    Nothing here makes the host wait for the GPU until `flush` is called (at log steps, before a
    checkpoint is written and at the end of an epoch).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.window_sum = torch.zeros((), dtype=torch.float64, device=device)  # since the last log
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)  # first non-finite loss, -1: none
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0  # images: known on the host
        self.window_count = 0

    def add(self, loss: torch.Tensor, n: int, step: int) -> None:
        value = loss.detach().double() * n
        self.loss_sum += value
        self.window_sum += value
        self.count += n
        self.window_count += n
        bad = ~torch.isfinite(loss.detach())
        self.bad_step.copy_(torch.where(bad & (self.bad_step < 0), step, self.bad_step))

    def flush(self, state: TrainState, with_window: bool = False) -> tuple[float, float]:
        """Move the sums into `state`; raise on every rank if any rank saw a NaN or infinite loss.

        A collective (every rank must call it at the same step) and the one host sync of a log step.
        Returns the loss sum and image count since the last log over all ranks when `with_window`,
        and starts a new window; (0, 0) otherwise.
        """
        shared = torch.stack([(self.bad_step >= 0).double(), self.window_sum,
                              self.window_sum.new_tensor(float(self.window_count))])
        if not with_window:
            shared = shared[:1]
        local = torch.stack([self.loss_sum, self.bad_step.double(), self.skipped.double()])
        reduced = all_reduce_sum(shared).tolist()
        loss_sum, bad_step, skipped = local.tolist()
        if reduced[0] > 0:
            where = f"optimizer step {int(bad_step)}" if bad_step >= 0 else "on another rank"
            raise NonFiniteLossError(
                f"the loss became NaN or infinite at epoch {state.epoch}, {where}; stopping with the last "
                "checkpoint intact (lower optim.lr, set optim.clip_grad, or use train.amp=bf16)")
        state.loss_sum += loss_sum
        state.loss_count += self.count
        state.skipped_steps += int(skipped)
        self.loss_sum.zero_()
        self.skipped.zero_()
        self.count = 0
        if not with_window:
            return 0.0, 0.0
        self.window_sum.zero_()
        self.window_count = 0
        return reduced[1], reduced[2]


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
        meters: Optional[DeviceMeters] = None,
        criterion: Optional[Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]] = None,
) -> bool:
    """Train for the epoch's `num_batches` micro-batches; return False if `control` asked to stop early.

    `batches` yields micro-batches starting at `state.step_in_epoch * accum_steps`; an optimizer
    step is taken every `accum_steps` of them, and the epoch ends after its last whole step (a
    partial group of micro-batches is never backpropagated). `reseed(micro_index)` makes mixup,
    dropout and drop-path a function of the position in the run, so a resumed run draws the same
    numbers. The host waits for the device only at log steps (every `log_interval` steps and the
    epoch's last), where a NaN or infinite loss stops the run.

    `criterion(outputs, target, images)` replaces the soft-target cross-entropy when given (a
    distillation loss runs its teacher there, on the same augmented and mixed batch, under the same
    autocast); its `timer`, if any, gives the teacher's share of the step time at log steps.
    """
    base_criterion = SoftTargetCrossEntropy()
    teacher_timer = getattr(criterion, "timer", None) if criterion is not None else None
    model.train()
    meters = meters if meters is not None else DeviceMeters(device)
    steps_in_epoch = num_batches // accum_steps
    data_wait = compute = 0.0
    steps_since_log = 0
    t_last = time.perf_counter()
    t_log = t_last
    micro = 0
    if state.step_in_epoch >= steps_in_epoch:
        return True
    for images, target in batches:
        t_data = time.perf_counter()
        data_wait += t_data - t_last
        if reseed is not None:
            reseed(state.global_step * accum_steps + micro)
        if batch_to_device is not None:
            images, target = batch_to_device(images, target)
        else:
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
        if mixup is not None:
            images, target = mixup(images, target)
        else:
            target = soft_targets(target, num_classes, label_smoothing)
        is_last_micro = micro == accum_steps - 1
        sync = contextlib.nullcontext() if is_last_micro or ddp_no_sync is None else ddp_no_sync()
        with sync:
            with amp_context(device, amp):
                if criterion is None:
                    loss = base_criterion(model(images), target)
                else:
                    loss = criterion(model(images), target, images)
            scaler.scale(loss / accum_steps).backward()
        meters.add(loss, images.shape[0], state.global_step)
        micro += 1
        if is_last_micro:
            micro = 0
            log_now = (state.step_in_epoch + 1) % log_interval == 0 or state.step_in_epoch + 1 == steps_in_epoch
            grad_norm = _optimizer_step(model, optimizer, scaler, schedule, state, clip_grad, meters,
                                        measure_norm=log_now)
            if ema is not None:
                ema.update(model, step=state.global_step)
            state.global_step += 1
            state.step_in_epoch += 1
            steps_since_log += 1
            t_now = time.perf_counter()
            compute += t_now - t_data
            if log_now:
                # The host waits for the device here (once per log interval), and a NaN stops the run.
                loss_sum, images_seen = meters.flush(state, with_window=True)
                elapsed = max(t_now - t_log, 1e-9)
                values = {
                    "train/loss": loss_sum / max(images_seen, 1.0),
                    "train/lr": optimizer.param_groups[0]["lr"],
                    "train/images_per_sec": images_seen / elapsed,
                    "train/data_wait": data_wait / max(data_wait + compute, 1e-9),
                }
                if grad_norm is not None and math.isfinite(norm := float(grad_norm)):
                    values["train/grad_norm"] = norm
                if teacher_timer is not None:
                    values["train/teacher_share"] = teacher_timer.take() / max(t_now - t_log, 1e-9)
                eta = (steps_in_epoch - state.step_in_epoch) * elapsed / steps_since_log
                _logger.info(
                    "epoch %d step %d/%d  loss %.4f  lr %.3e  %.1f img/s  data %.0f%%%s  eta %s",
                    state.epoch, state.step_in_epoch, steps_in_epoch, values["train/loss"],
                    values["train/lr"], values["train/images_per_sec"], 100 * values["train/data_wait"],
                    f"  teacher {100 * values['train/teacher_share']:.0f}%" if teacher_timer is not None else "",
                    format_duration(eta))  # eta: to the end of this epoch
                if on_log is not None:
                    on_log(values, state.global_step)
                data_wait = compute = 0.0
                steps_since_log = 0
                t_log = time.perf_counter()
            if control.after_step(state, log_now):
                return False
            if state.step_in_epoch >= steps_in_epoch:
                break  # leftover micro-batches of an incomplete step are not used
        t_last = time.perf_counter()
    return True


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients, as a device tensor (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))


def _optimizer_step(model, optimizer, scaler, schedule: LRSchedule, state: TrainState,
                    clip_grad: Optional[float], meters: DeviceMeters,
                    measure_norm: bool = False) -> Optional[torch.Tensor]:
    """Set the lr for this step, unscale, clip, step (or skip on inf/NaN under fp16), zero grads.

    Returns the global gradient norm (a device tensor) when it was computed: when clipping, under
    fp16 (where a non-finite norm is a step the scaler skips) or when `measure_norm` asks for it.
    """
    set_lr(optimizer, schedule.lr_at(state.global_step))
    grad_norm = None
    if clip_grad is not None or measure_norm or scaler.is_enabled():
        scaler.unscale_(optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        if clip_grad is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
        else:
            grad_norm = _grad_norm(params)
        if scaler.is_enabled():
            meters.skipped += (~torch.isfinite(grad_norm)).to(meters.skipped.device, torch.int64)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
