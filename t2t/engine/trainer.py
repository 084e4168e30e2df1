"""The Trainer: the optimizer step in plain code, the epoch around it, the epoch loop, and its state.

`train_step` is the whole algorithm of one step; `train_epoch` adds meters, logging and the
stop/save decisions after each step; `fit` is the epoch loop with evaluation and end-of-epoch
checkpoints. `state_dict` / `load_state_dict` are one pair: what is saved is what is restored.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
import torch.nn as nn

from ..progress import format_duration
from .checkpoint import clean_state_dict
from .collectives import all_reduce_sum, sum_over_ranks
from .distributed import DistInfo
from .evaluate import evaluate_models
from .losses import TrainLoss
from ..errors import EXIT_NONFINITE, T2TError
from .optim import LRSchedule, set_lr
from .precision import amp_context
from .stopping import StopPolicy

_logger = logging.getLogger("t2t.train")

Batch = tuple[torch.Tensor, torch.Tensor]  # (images, class indices) of one micro-batch


class NonFiniteLossError(T2TError, RuntimeError):
    """The loss became NaN or infinite: the run stops, the last good checkpoint stays as it is."""

    exit_status = EXIT_NONFINITE


@dataclass
class TrainState:
    """The Trainer's own state: its position in the run, running meters, best metric and history."""

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
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainState":
        """Every field from `values` (none may be missing or unknown: the two sides cannot drift apart)."""
        names = [f.name for f in dataclasses.fields(cls)]
        odd = sorted(set(values) - set(names)) + [n for n in names if n not in values]
        if odd:
            raise ValueError(f"train_state entries {odd} do not match the fields {names}")
        return cls(**{name: values[name] for name in names})


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

    def add_skipped(self, grad_norm: torch.Tensor) -> None:
        """Count an fp16 step whose gradient norm is not finite (the GradScaler skips it)."""
        self.skipped += (~torch.isfinite(grad_norm)).to(self.skipped.device, torch.int64)

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


@dataclass
class StepResult:
    losses: list[tuple[torch.Tensor, int]]  # each micro-batch's mean loss (on the device) and image count
    grad_norm: Optional[torch.Tensor]  # global gradient norm, when it was computed (device tensor)


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients, as a device tensor (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))


class Trainer:
    """Trains `model`: one optimizer step (`train_step`), one epoch (`train_epoch`), the run (`fit`).

    `train_model` is what runs the step (`model` wrapped by DDP and/or torch.compile; `model` itself
    when None); `model` is what is saved, evaluated and averaged into `ema`. `reseed(micro_index)`
    makes mixup, dropout and drop-path a function of the position in the run (exact resume).
    `positions(img_size)` (progressive resolution) is a context in which `model` takes images of that
    size: `PositionTables.at`, which lends it the resampled position table for the forward and backward.
    """

    def __init__(
            self,
            model: nn.Module,
            *,
            optimizer: torch.optim.Optimizer,
            schedule: LRSchedule,
            loss_fn: TrainLoss,
            device: torch.device,
            scaler: Optional[torch.amp.GradScaler] = None,
            train_model: Optional[nn.Module] = None,
            ema: Optional[Any] = None,
            amp: str = "none",
            accum_steps: int = 1,
            clip_grad: Optional[float] = None,
            mixup: Optional[Callable] = None,
            mixup_off_epoch: int = 0,
            reseed: Optional[Callable[[int], None]] = None,
            to_device: Optional[Callable[[torch.Tensor, torch.Tensor], Batch]] = None,
            log_interval: int = 50,
            on_log: Optional[Callable[[dict[str, float], int], None]] = None,
            dist: Optional[DistInfo] = None,
            positions: Optional[Callable[[int], contextlib.AbstractContextManager]] = None,
    ) -> None:
        self.model = model
        self.train_model = train_model if train_model is not None else model
        self.optimizer = optimizer
        self.schedule = schedule
        self.loss_fn = loss_fn
        self.device = device
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
        self.ema = ema
        self.amp = amp
        self.accum_steps = accum_steps
        self.clip_grad = clip_grad
        self.mixup = mixup
        self.mixup_off_epoch = mixup_off_epoch
        self.reseed = reseed
        self.to_device = to_device or self._to_device
        self.log_interval = log_interval
        self.on_log = on_log
        self.dist = dist
        self.positions = positions
        self.state = TrainState()
        self.meters = DeviceMeters(device)
        self._data_wait = 0.0  # seconds spent waiting for batches since the last log

    # ------------------------------------------------------------------------------------------
    # The optimizer step

    def train_step(self, micro_batches: Iterable[Batch], *, measure_grad_norm: bool = False) -> Optional[StepResult]:
        """One optimizer step over `accum_steps` micro-batches; None (and no step) if fewer came."""
        step, accum = self.state.global_step, self.accum_steps
        no_sync = getattr(self.train_model, "no_sync", None)  # DDP only
        mixup = self.mixup if self.mixup_off_epoch == 0 or self.state.epoch < self.mixup_off_epoch else None
        losses = []
        for micro, (images, targets) in enumerate(micro_batches):
            if self.reseed is not None:
                self.reseed(step * accum + micro)  # random draws depend on the position only: exact resume
            images, targets = self.to_device(images, targets)
            if mixup is not None:
                images, targets = mixup(images, targets)  # targets become soft: (B, num_classes)
            # DDP all-reduces the gradients once per step, in the last micro-batch's backward.
            last = micro == accum - 1
            # train.img_sizes: the model adds the position table of the batch's size (stored one restored after)
            positions = self.positions(images.shape[-1]) if self.positions is not None else contextlib.nullcontext()
            with contextlib.nullcontext() if last or no_sync is None else no_sync(), positions:
                with amp_context(self.device, self.amp):
                    loss = self.loss_fn(self.train_model(images), targets, images)
                self.scaler.scale(loss / accum).backward()  # the step's gradient: the mean of its micro-batches
            losses.append((loss, images.shape[0]))
        if len(losses) < accum:  # the data ran out mid-step: its partial gradient is never applied
            self.optimizer.zero_grad(set_to_none=True)
            return None
        set_lr(self.optimizer, self.schedule.lr_at(step))  # the lr is a pure function of the step
        grad_norm = None
        if self.clip_grad is not None or measure_grad_norm or self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)  # clip and measure the true gradients, not the fp16-scaled ones
            params = [p for p in self.model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad) if self.clip_grad is not None \
                else _grad_norm(params)
        self.scaler.step(self.optimizer)  # under fp16: skipped when a gradient is inf/NaN, without a host sync
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=step)
        self.state.global_step += 1
        self.state.step_in_epoch += 1
        return StepResult(losses=losses, grad_norm=grad_norm)

    def _to_device(self, images: torch.Tensor, targets: torch.Tensor) -> Batch:
        return images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------------------------------
    # The epoch

    def _timed(self, batches: Iterator[Batch], n: int) -> Iterator[Batch]:
        """The next `n` batches, fetched lazily (as the step asks for them), timing the wait for each."""
        for _ in range(n):
            t0 = time.perf_counter()
            batch = next(batches, None)
            self._data_wait += time.perf_counter() - t0
            if batch is None:
                return
            yield batch

    def train_epoch(self, batches: Iterable[Batch], steps_in_epoch: int, *,
                    stop: Optional[StopPolicy] = None,
                    save: Optional[Callable[[], None]] = None) -> bool:
        """Train from `state.step_in_epoch` to `steps_in_epoch`; False if `stop` ended the epoch early.

        `batches` yields micro-batches from the current position on. The host waits for the device
        only at log steps (every `log_interval` steps and the epoch's last), where a NaN or infinite
        loss stops the run. After each step `stop` decides whether to `save` a mid-epoch checkpoint.
        """
        self.train_model.train()
        batches = iter(batches)
        steps_since_log, busy, t_log = 0, 0.0, time.perf_counter()
        self._data_wait = 0.0
        while self.state.step_in_epoch < steps_in_epoch:
            t_step = time.perf_counter()
            step = self.state.global_step
            log_now = (self.state.step_in_epoch + 1) % self.log_interval == 0 or \
                self.state.step_in_epoch + 1 == steps_in_epoch
            result = self.train_step(self._timed(batches, self.accum_steps), measure_grad_norm=log_now)
            if result is None:
                break
            for loss, n in result.losses:
                self.meters.add(loss, n, step)
            if self.scaler.is_enabled():
                self.meters.add_skipped(result.grad_norm)
            steps_since_log += 1
            busy += time.perf_counter() - t_step
            if log_now:
                self._log(result, steps_in_epoch, time.perf_counter() - t_log, busy, steps_since_log)
                steps_since_log, busy, t_log = 0, 0.0, time.perf_counter()
                self._data_wait = 0.0
            if stop is not None:
                decision = stop.after_step(self.state.global_step, self.state.step_in_epoch, synced=log_now)
                if decision.save and save is not None:
                    save()
                    stop.saved()
                if decision.reason is not None:
                    _logger.warning("%s: checkpoint saved at step %d; exiting", decision.reason,
                                    self.state.global_step)
                if decision.stop:
                    return False
        return True

    def _log(self, result: StepResult, steps_in_epoch: int, elapsed: float, busy: float, steps: int) -> None:
        # The host waits for the device here (once per log interval), and a NaN stops the run.
        loss_sum, images_seen = self.meters.flush(self.state, with_window=True)
        elapsed = max(elapsed, 1e-9)
        values = {
            "train/loss": loss_sum / max(images_seen, 1.0),
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/images_per_sec": images_seen / elapsed,
            "train/data_wait": self._data_wait / max(busy, 1e-9),
        }
        if result.grad_norm is not None and math.isfinite(norm := float(result.grad_norm)):
            values["train/grad_norm"] = norm
        teacher_timer = getattr(self.loss_fn, "timer", None)  # a distillation loss times its teacher's forward
        if teacher_timer is not None:
            values["train/teacher_share"] = teacher_timer.take() / elapsed
        eta = (steps_in_epoch - self.state.step_in_epoch) * elapsed / steps  # to the end of this epoch
        _logger.info("epoch %d step %d/%d  loss %.4f  lr %.3e  %.1f img/s  data %.0f%%%s  eta %s",
                     self.state.epoch, self.state.step_in_epoch, steps_in_epoch, values["train/loss"],
                     values["train/lr"], values["train/images_per_sec"], 100 * values["train/data_wait"],
                     f"  teacher {100 * values['train/teacher_share']:.0f}%" if teacher_timer is not None else "",
                     format_duration(eta))
        if self.on_log is not None:
            self.on_log(values, self.state.global_step)

    # ------------------------------------------------------------------------------------------
    # The run

    def fit(self, data: Any, *, total_epochs: int, global_batch_size: int, stop: Optional[StopPolicy] = None,
            checkpointer: Optional[Any] = None, eval_interval: int = 1, eval_metric: str = "ema_top1",
            write_epochs: Optional[Callable[[list[dict[str, Any]]], None]] = None) -> None:
        """The epoch loop from the current position to `total_epochs`, or until `stop` ends it.

        `data.train_batches(epoch, start_sample)` gives an epoch's micro-batches and `data.val_loader`
        the validation set; `checkpointer.save(trainer, end_of_epoch=..., is_best=...)` saves the run.
        """
        steps_per_epoch = data.steps_per_epoch
        save_mid_epoch = (lambda: checkpointer.save(self, end_of_epoch=False)) if checkpointer is not None else None
        while self.state.epoch < total_epochs:
            t_epoch, steps_before = time.perf_counter(), self.state.step_in_epoch
            batches = data.train_batches(self.state.epoch, self.state.step_in_epoch * global_batch_size)
            finished = self.train_epoch(batches, steps_per_epoch, stop=stop, save=save_mid_epoch)
            if not finished and self.state.step_in_epoch < steps_per_epoch:
                break  # stopped mid-epoch (the mid-epoch checkpoint is written)
            self.meters.flush(self.state)
            row = self.end_of_epoch_row(data.val_loader, last=self.state.epoch == total_epochs - 1,
                                        eval_interval=eval_interval, batch_to_device=data.feed.eval,
                                        minival_loader=getattr(data, "minival_loader", None))
            row["images_per_sec"] = (self.state.step_in_epoch - steps_before) * global_batch_size / max(
                time.perf_counter() - t_epoch, 1e-9)  # this session's share of the epoch, evaluation included
            score = self.score(row, eval_metric)
            is_best = self._update_best(score)
            self.state.history.append(row)
            self.state.epoch += 1
            self.state.step_in_epoch = 0
            self.state.loss_sum, self.state.loss_count = 0.0, 0
            if checkpointer is not None:
                checkpointer.save(self, end_of_epoch=True, is_best=is_best, score=score)
            if write_epochs is not None:
                write_epochs(self.state.history)
            if stop is not None:
                stop.saved()
            if not finished:
                break

    def end_of_epoch_row(self, val_loader: Iterable, *, last: bool, eval_interval: int,
                         batch_to_device: Optional[Callable[[Any, Any], Batch]] = None,
                         minival_loader: Optional[Iterable] = None) -> dict[str, Any]:
        """Evaluate (model and EMA) if due and return the epoch's row for the logs.

        `batch_to_device` moves a validation batch to the device (`DeviceFeed.eval`: uint8 batches are
        normalised there, the workers sending a quarter of the bytes); None: a plain copy.
        `minival_loader` (data.holdout_fraction's held-out training images) adds minival_* columns.
        """
        loss_sum, loss_count = sum_over_ranks(self.state.loss_sum, self.state.loss_count)
        epoch = self.state.epoch
        row: dict[str, Any] = {
            "epoch": epoch,
            "global_step": self.state.global_step,
            "train_loss": loss_sum / max(loss_count, 1.0),
            "lr": self.optimizer.param_groups[0]["lr"],
            "skipped_steps": self.state.skipped_steps,
        }
        if (eval_interval > 0 and (epoch + 1) % eval_interval == 0) or last:
            nets = {"": self.model} if self.ema is None else {"": self.model, "ema_": self.ema.module}
            # One pass over the validation set: each decoded batch goes through the model and the EMA.
            for split, loader in (("val", val_loader), ("minival", minival_loader)):
                if loader is None:
                    continue
                results = evaluate_models(nets, loader, device=self.device, amp=self.amp, dist=self.dist,
                                          batch_to_device=batch_to_device)
                for prefix, metrics in results.items():
                    row.update({f"{prefix}{split}_loss": metrics["loss"], f"{prefix}{split}_top1": metrics["top1"],
                                f"{prefix}{split}_top5": metrics["top5"]})
            _logger.info("epoch %d: val top-1 %.2f top-5 %.2f%s", epoch, row["val_top1"], row["val_top5"],
                         f", EMA top-1 {row['ema_val_top1']:.2f} top-5 {row['ema_val_top5']:.2f}"
                         if "ema_val_top1" in row else "")
            if "minival_top1" in row:
                _logger.info("epoch %d: minival top-1 %.2f%s", epoch, row["minival_top1"],
                             f", EMA top-1 {row['ema_minival_top1']:.2f}" if "ema_minival_top1" in row else "")
        return row

    @staticmethod
    def score(row: dict[str, Any], metric: str) -> Optional[tuple[str, float]]:
        """(row key, value) of `metric` (eval.metric) in an epoch's row; None for an epoch without evaluation."""
        key = {"top1": "val_top1", "top5": "val_top5", "ema_top1": "ema_val_top1", "ema_top5": "ema_val_top5",
               "minival_top1": "minival_top1", "ema_minival_top1": "ema_minival_top1"}[metric]
        if key not in row and key.startswith("ema_") and key[len("ema_"):] in row:
            key = key[len("ema_"):]  # EMA switched off: follow the model's own metric
        value = row.get(key)
        return None if value is None else (key, float(value))

    def _update_best(self, score: Optional[tuple[str, float]]) -> bool:
        if score is None:
            return False
        if self.state.best_metric is None or score[1] > self.state.best_metric:
            self.state.best_metric, self.state.best_epoch = score[1], self.state.epoch
            return True
        return False

    # ------------------------------------------------------------------------------------------
    # State

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs; a collective (the running meters are summed over ranks).

        A NaN or infinite loss seen since the last log stops the run here, before anything is written.
        """
        self.meters.flush(self.state)
        state = TrainState.from_dict(self.state.to_dict())
        # Running meters of all ranks, so the epoch's train_loss survives a resume in any world size.
        state.loss_sum, loss_count = sum_over_ranks(self.state.loss_sum, self.state.loss_count)
        state.loss_count = int(loss_count)
        return {
            "model": clean_state_dict(self.model),
            "state_dict_ema": clean_state_dict(self.ema.module) if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_state": state.to_dict(),
            # Every micro-step reseeds all generators (`reseed`); the CPU one is kept for what runs before it.
            "rng": {"torch": torch.get_rng_state()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (on every rank)."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            if state["state_dict_ema"] is not None:
                self.ema.module.load_state_dict(state["state_dict_ema"])
            else:
                _logger.warning("Checkpoint has no EMA weights: the EMA restarts from the model's weights")
                self.ema.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if state["rng"]["torch"] is not None:
            torch.set_rng_state(state["rng"]["torch"])
        self.state = TrainState.from_dict(state["train_state"])
        if self.dist is not None and not self.dist.is_main:  # rank 0 carries the all-reduced running meters
            self.state.loss_sum, self.state.loss_count = 0.0, 0
