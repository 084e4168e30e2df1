"""A whole training run: set-up, resume, the epoch loop, evaluation, checkpoints and faults."""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Optional

import timm
import torch
import torch.nn as nn
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from .. import models  # noqa: F401  (registers the T2T-ViT family with timm)
from ..config import Config, ConfigError, config_from_dict, dump_config
from ..data import setup as data_setup
from ..models import cpu as cpu_backend
from ..models.weights import load_pretrained_weights
from .checkpoint import CheckpointWriter, clean_state_dict, find_resume_checkpoint, library_versions, \
    load_training_checkpoint
from .distributed import DistInfo, all_reduce_sum, broadcast_object, cleanup_distributed, init_distributed, \
    setup_logging
from .evaluate import evaluate
from .metrics import RunLogger
from .optim import build_optimizer, build_schedule, freeze_parameters, scaled_lr
from .precision import resolve_amp
from .train_loop import StepControl, TrainState, train_one_epoch

_logger = logging.getLogger("t2t.train")

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving; run again with --resume auto
CHECKPOINT_FORMAT = 1


class RunError(RuntimeError):
    """A run that cannot start as asked (existing folder, missing checkpoint...)."""


@dataclass
class RunResult:
    output: str
    state: TrainState
    preempted: bool = False


def _folder_holds_run(folder: str) -> bool:
    return os.path.isdir(folder) and any(
        name == "config.yaml" or name.endswith(".pth") for name in os.listdir(folder))


def _resolve_output(cfg: Config, output: Optional[str], resume: Optional[str]) -> str:
    if output is None and resume not in (None, "auto"):
        return os.path.dirname(os.path.abspath(resume))
    if output is None:
        if resume == "auto":
            raise RunError("--resume auto needs --output: the folder to continue in")
        output = os.path.join("runs", f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    return output


def _load_resume_state(output: str, resume: Optional[str]) -> Optional[tuple[str, dict[str, Any]]]:
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    if resume == "auto" or (restarted and resume is None):
        found = find_resume_checkpoint(output) if os.path.isdir(output) else None
        if found is None and _folder_holds_run(output):
            raise RunError(f"no loadable checkpoint in {output!r}, which holds a run: not starting over it")
        if found is None:
            _logger.info("No checkpoint in %s yet: starting a new run", output)
        return found
    if resume is not None:
        if not os.path.isfile(resume):
            raise RunError(f"--resume {resume!r}: no such checkpoint file")
        return resume, load_training_checkpoint(resume)
    if _folder_holds_run(output):
        raise RunError(
            f"output folder {output!r} already holds a run; continue it with --resume auto, "
            "or choose another --output")
    return None


def _build_model(cfg: Config, num_classes: int) -> nn.Module:
    model = timm.create_model(
        cfg.model.name, num_classes=num_classes, img_size=cfg.model.img_size,
        drop_rate=cfg.model.drop_rate, drop_path_rate=cfg.model.drop_path_rate)
    if cfg.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


class _Preemption:
    """SIGTERM sets a flag; the loop saves at the next step boundary and exits."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_Preemption":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): no handler
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def run(cfg: Config, *, data_dir: str, output: Optional[str] = None, resume: Optional[str] = None) -> RunResult:
    """Train as `cfg` says; resume from `resume` ('auto' or a path) if given."""
    dist = init_distributed(cfg.train.device)
    try:
        return _run(cfg, dist, data_dir=data_dir, output=output, resume=resume)
    finally:
        cleanup_distributed()


def _run(cfg: Config, dist: DistInfo, *, data_dir: str, output: Optional[str], resume: Optional[str]) -> RunResult:
    output = broadcast_object(_resolve_output(cfg, output, resume) if dist.is_main else None)
    setup_logging(dist.is_main)
    found = _load_resume_state(output, resume)
    os.makedirs(output, exist_ok=True)
    setup_logging(dist.is_main, os.path.join(output, "train.log") if dist.is_main else None)
    device = dist.device
    amp = resolve_amp(cfg.train.amp, device)
    if found is not None:
        _logger.info("Resuming from %s (epoch %d, step %d)", found[0], found[1]["train_state"]["epoch"],
                     found[1]["global_step"])
        _warn_config_changes(cfg, found[1]["config"])

    # Data: datasets, class count, sampler and loaders.
    data = data_setup.build_train_and_val(
        cfg.data, data_dir, img_size=cfg.model.img_size, seed=cfg.train.seed, batch_size=cfg.train.batch_size,
        eval_batch_size=cfg.eval.batch_size, eval_crop_pct=cfg.eval.crop_pct,
        eval_interpolation=cfg.eval.interpolation, num_replicas=dist.world_size, rank=dist.rank,
        pin_memory=device.type == "cuda")
    num_classes = data.num_classes
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise ConfigError(f"model.num_classes={cfg.model.num_classes}, but {data.train_dir!r} "
                          f"has {num_classes} class folders")

    # Model, EMA, optimizer, scaler and schedule.
    torch.manual_seed(cfg.train.seed)  # the same initial weights (and Performer projections) on every rank
    model = _build_model(cfg, num_classes)
    cpu_backend.apply_backend(model, cfg.model.cpu_backend, device, amp)
    if cfg.model.init_from and found is None:
        if not os.path.isfile(cfg.model.init_from):
            raise ConfigError(f"model.init_from={cfg.model.init_from!r}: no such file (expected an official release "
                              "file, one of our checkpoints or a .safetensors file)")
        used = load_pretrained_weights(model, cfg.model.init_from)
        _logger.info("Initialised weights from %s (%s)", cfg.model.init_from, used)
    if cfg.model.freeze:  # before the optimizer and DDP, which then leave these parameters out
        frozen = freeze_parameters(model, cfg.model.freeze)
        _logger.info("Frozen (model.freeze %s): %d tensors", list(cfg.model.freeze), len(frozen))
    model.to(device)
    ema = ModelEmaV3(model, decay=cfg.ema.decay) if cfg.ema.enabled else None
    accum = cfg.train.grad_accum_steps
    global_batch = cfg.train.batch_size * dist.world_size * accum
    lr = scaled_lr(cfg.optim.lr, global_batch, cfg.optim.lr_base_batch_size)
    optimizer = build_optimizer(model, cfg.optim, lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    batches_per_epoch = data.batches_per_epoch
    steps_per_epoch = batches_per_epoch // accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} x grad_accum_steps={accum} x {dist.world_size} processes "
            f"is more than the {data.train_len} training images: not one optimizer step per epoch")
    schedule = build_schedule(cfg.sched, base_lr=lr, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch)
    total_epochs = cfg.train.epochs + cfg.sched.cooldown_epochs
    state = TrainState()
    if found is not None:
        state = _restore(found[1], model=model, ema=ema, optimizer=optimizer, scaler=scaler, dist=dist)

    _logger.info("Config:\n%s", dump_config(cfg))
    _logger.info(
        "world size %d, device %s, global batch %d (%d per process x %d accumulation), lr %.4g "
        "(optim.lr %.4g scaled by %d/%d), %d steps per epoch, %d epochs (%d cosine + %d cool-down)",
        dist.world_size, device, global_batch, cfg.train.batch_size, accum, lr, cfg.optim.lr, global_batch,
        cfg.optim.lr_base_batch_size, steps_per_epoch, total_epochs, cfg.train.epochs, cfg.sched.cooldown_epochs)
    run_info = dict(world_size=dist.world_size, global_batch_size=global_batch, lr=lr,
                    steps_per_epoch=steps_per_epoch, total_epochs=total_epochs, num_classes=num_classes,
                    classes=data.classes, data_dir=os.path.abspath(data_dir))
    if dist.is_main:
        with open(os.path.join(output, "config.yaml"), "w") as f:
            f.write(dump_config(cfg))

    train_model: nn.Module = model
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    if dist.is_distributed:
        train_model = DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    ddp_no_sync = train_model.no_sync if dist.is_distributed else None

    writer = CheckpointWriter(output, keep_epochs=cfg.checkpoint.keep_epochs) if dist.is_main else None
    logger = RunLogger(output if dist.is_main else None, tensorboard=cfg.log.tensorboard)

    def checkpoint_state() -> dict[str, Any]:
        saved = TrainState(**state.to_dict())
        # Running meters of all ranks, so the epoch's train_loss survives a resume in any world size.
        sums = all_reduce_sum(torch.tensor([state.loss_sum, state.loss_count], dtype=torch.float64))
        saved.loss_sum, saved.loss_count = sums[0].item(), int(sums[1].item())
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": cfg.model.name,
            "model": clean_state_dict(model),
            "state_dict_ema": clean_state_dict(ema.module) if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch,
            "global_step": state.global_step,
            "train_state": saved.to_dict(),
            "config": cfg.to_dict(),
            "run": run_info,
            "versions": library_versions(),
            "rng": {"torch": torch.get_rng_state(), "cuda": _cuda_rng_states()},
        }

    def save(end_of_epoch: bool, is_best: bool = False) -> None:
        ckpt = checkpoint_state()  # collective: every rank takes part
        if writer is not None:
            path = writer.save(ckpt, end_of_epoch=end_of_epoch, is_best=is_best)
            _logger.info("Saved %s (epoch %d, step %d)", path, state.epoch, state.global_step)

    preempted = False
    last_save_time = time.monotonic()
    with _Preemption() as preemption:
        def after_step(st: TrainState) -> bool:
            nonlocal preempted, last_save_time
            minutes_due = cfg.checkpoint.every_minutes > 0 and \
                time.monotonic() - last_save_time >= 60 * cfg.checkpoint.every_minutes
            # Ranks agree on time- and signal-driven decisions through one tiny all_reduce.
            flags = all_reduce_sum(torch.tensor([float(preemption.requested), float(minutes_due)]))
            stop_signal, minutes_due = flags[0].item() > 0, flags[1].item() > 0
            at_max = cfg.train.max_steps is not None and st.global_step >= cfg.train.max_steps
            end_of_epoch = st.step_in_epoch == steps_per_epoch
            every = cfg.checkpoint.every_steps
            due = (every > 0 and st.global_step % every == 0) or minutes_due or stop_signal or at_max
            if due and not end_of_epoch:
                save(end_of_epoch=False)
                last_save_time = time.monotonic()
            if stop_signal:
                preempted = True
                _logger.warning("SIGTERM: checkpoint saved at step %d; exiting", st.global_step)
            return stop_signal or at_max

        control = StepControl(after_step=after_step)
        mixup = data_setup.build_mixup_fn(cfg.mixup, num_classes)
        while state.epoch < total_epochs:
            epoch = state.epoch
            start = state.step_in_epoch * accum
            mixup_on = mixup is not None and (cfg.mixup.off_epoch == 0 or epoch < cfg.mixup.off_epoch)
            t_epoch, steps_before = time.perf_counter(), state.step_in_epoch
            finished = train_one_epoch(
                train_model, batches=data.train_batches(epoch, start), num_batches=steps_per_epoch * accum,
                optimizer=optimizer, scaler=scaler, schedule=schedule, state=state, device=device,
                num_classes=num_classes, amp=amp, accum_steps=accum, clip_grad=cfg.optim.clip_grad,
                mixup=mixup if mixup_on else None, label_smoothing=cfg.mixup.label_smoothing, ema=ema,
                reseed=lambda i: data_setup.reseed_step(cfg.train.seed, i, dist.rank), control=control,
                log_interval=cfg.train.log_interval, ddp_no_sync=ddp_no_sync,
                on_log=logger.scalars if dist.is_main else None)
            if not finished and state.step_in_epoch < steps_per_epoch:
                break
            row = _end_epoch(cfg, state, data=data, model=model, ema=ema, dist=dist, total_epochs=total_epochs,
                             optimizer=optimizer, amp=amp)
            row["images_per_sec"] = (state.step_in_epoch - steps_before) * global_batch / max(
                time.perf_counter() - t_epoch, 1e-9)  # this session's share of the epoch, evaluation included
            is_best = _update_best(cfg, state, row)
            state.history.append(row)
            state.epoch += 1
            state.step_in_epoch = 0
            state.loss_sum, state.loss_count = 0.0, 0
            save(end_of_epoch=True, is_best=is_best)
            logger.write_epochs(state.history)
            last_save_time = time.monotonic()
            if not finished:
                break
    logger.close()
    return RunResult(output=output, state=state, preempted=preempted)


def _end_epoch(cfg: Config, state: TrainState, *, data, model, ema, dist: DistInfo, total_epochs: int,
               optimizer, amp: str) -> dict[str, Any]:
    """Evaluate (model and EMA) if due and return the epoch's row for the logs."""
    sums = all_reduce_sum(torch.tensor([state.loss_sum, state.loss_count], dtype=torch.float64))
    epoch = state.epoch
    row: dict[str, Any] = {
        "epoch": epoch,
        "global_step": state.global_step,
        "train_loss": (sums[0] / sums[1].clamp(min=1)).item(),
        "lr": optimizer.param_groups[0]["lr"],
        "skipped_steps": state.skipped_steps,
    }
    last = epoch == total_epochs - 1
    interval = cfg.eval.interval
    if (interval > 0 and (epoch + 1) % interval == 0) or last:
        for prefix, net in (("", model), ("ema_", ema.module if ema is not None else None)):
            if net is None:
                continue
            metrics = evaluate(net, data.val_loader, device=dist.device, amp=amp, dist=dist)
            row.update({f"{prefix}val_loss": metrics["loss"], f"{prefix}val_top1": metrics["top1"],
                        f"{prefix}val_top5": metrics["top5"]})
        _logger.info("epoch %d: val top-1 %.2f top-5 %.2f%s", epoch, row["val_top1"], row["val_top5"],
                     f", EMA top-1 {row['ema_val_top1']:.2f} top-5 {row['ema_val_top5']:.2f}"
                     if "ema_val_top1" in row else "")
    return row


def _update_best(cfg: Config, state: TrainState, row: dict[str, Any]) -> bool:
    key = {"top1": "val_top1", "top5": "val_top5", "ema_top1": "ema_val_top1", "ema_top5": "ema_val_top5"}[
        cfg.eval.metric]
    if key not in row and key.startswith("ema_") and "val_top1" in row:
        key = key[len("ema_"):]  # EMA switched off: follow the model's own metric
    value = row.get(key)
    if value is None:
        return False
    if state.best_metric is None or value > state.best_metric:
        state.best_metric, state.best_epoch = value, row["epoch"]
        return True
    return False


def _restore(ckpt: dict[str, Any], *, model, ema, optimizer, scaler, dist: DistInfo) -> TrainState:
    model.load_state_dict(ckpt["model"])
    if ema is not None:
        if ckpt.get("state_dict_ema") is not None:
            ema.module.load_state_dict(ckpt["state_dict_ema"])
        else:
            _logger.warning("Checkpoint has no EMA weights: the EMA restarts from the model's weights")
            ema.module.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng") or {}
    if rng.get("torch") is not None:
        torch.set_rng_state(rng["torch"])
    state = TrainState.from_dict(ckpt["train_state"])
    if not dist.is_main:  # rank 0 carries the all-reduced running meters of the epoch
        state.loss_sum, state.loss_count = 0.0, 0
    return state


def _cuda_rng_states() -> Optional[list[torch.Tensor]]:
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def _warn_config_changes(cfg: Config, saved: dict[str, Any]) -> None:
    now = cfg.to_dict()
    changed = [f"{s}.{k}: {saved.get(s, {}).get(k)!r} -> {v!r}"
               for s, entries in now.items() for k, v in entries.items() if saved.get(s, {}).get(k) != v]
    if changed:
        _logger.warning("Resuming with a config that differs from the checkpoint's: %s", "; ".join(changed))


def resume_config(path_or_folder: str) -> Config:
    """The config stored with a run (its config.yaml or a checkpoint), for --resume without -c."""
    if os.path.isdir(path_or_folder):
        found = find_resume_checkpoint(path_or_folder)
        if found is None:
            raise RunError(f"no checkpoint in {path_or_folder!r} to take the config from")
        return config_from_dict(found[1]["config"], origin=found[0])
    return config_from_dict(load_training_checkpoint(path_or_folder)["config"], origin=path_or_folder)
