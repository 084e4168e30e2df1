"""A whole training run: set-up, resume, the epoch loop, evaluation, checkpoints and faults."""
from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Any, Optional

import timm
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .. import models  # noqa: F401  (registers the T2T-ViT family with timm)
from ..config import Config, ConfigError, config_from_dict, dump_config
from ..data import setup as data_setup
from ..data.dataset import check_classes_match
from ..models import cpu as cpu_backend
from ..models.weights import load_pretrained_weights
from .background_save import BackgroundCheckpointWriter, writes_finished
from .checkpoint import CheckpointWriter, check_checkpoint_fits, clean_state_dict, find_resume_checkpoint, \
    library_versions, load_training_checkpoint, remove_stale_temporaries
from .distributed import DistInfo, broadcast_object, cleanup_distributed, env_int, gather_objects, \
    init_distributed, settle_bucket_layout, setup_logging, sum_over_ranks
from .ema import CachedModelEma
from .evaluate import evaluate_models
from .metrics import RunLogger
from .optim import build_optimizer, build_schedule, freeze_parameters, scaled_lr
from .precision import amp_context, resolve_amp
from .train_loop import DeviceMeters, StepControl, TrainState, train_one_epoch

_logger = logging.getLogger("t2t.train")

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving; run again with --resume auto
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: stopped by Ctrl-C after saving
CHECKPOINT_FORMAT = 1


class RunError(RuntimeError):
    """A run that cannot start as asked (existing folder, missing checkpoint...)."""


@dataclass
class RunResult:
    output: str
    state: TrainState
    preempted: bool = False
    interrupted: bool = False  # stopped by SIGINT (Ctrl-C) after saving


def _folder_holds_run(folder: str) -> bool:
    return os.path.isdir(folder) and any(
        name == "config.yaml" or (name.endswith(".pth") and not name.startswith(".tmp-"))
        for name in os.listdir(folder))


def _folder_has_checkpoints(folder: str) -> bool:
    return os.path.isdir(folder) and any(
        name.endswith(".pth") and not name.startswith(".tmp-") for name in os.listdir(folder))


def _resolve_output(cfg: Config, output: Optional[str], resume: Optional[str]) -> str:
    if output is None and resume not in (None, "auto"):
        return os.path.dirname(os.path.abspath(resume))
    if output is None:
        if resume == "auto":
            raise RunError("--resume auto needs --output: the folder to continue in")
        max_restarts = env_int("TORCHELASTIC_MAX_RESTARTS", 0)
        if max_restarts > 0:
            raise RunError(
                f"torchrun may restart this run (--max-restarts={max_restarts}), and a restart must find the "
                "run again: give the run folder with --output")
        safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.model.name).lstrip(".")  # never a path of its own
        output = os.path.join("runs", f"{safe_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    return output


def _same_folder(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _choose_resume(output: str, resume: Optional[str], loaded: Optional[dict[str, Any]] = None) -> Optional[str]:
    """Rank 0's choice of the checkpoint to resume from (None: a new run), or RunError.

    Every rank then loads the file chosen here: on a shared filesystem, ranks that each listed
    the folder could see different files. A checkpoint read while choosing is kept in `loaded`
    (path -> contents), so rank 0 does not read a large file twice.
    """
    restarted = env_int("TORCHELASTIC_RESTART_COUNT", 0) > 0
    if os.path.isdir(output):
        remove_stale_temporaries(output)
    if resume == "auto" or (restarted and resume is None):
        found = find_resume_checkpoint(output) if os.path.isdir(output) else None
        if found is not None:
            if loaded is not None:
                loaded[found[0]] = found[1]
            return found[0]
        if _folder_has_checkpoints(output):
            raise RunError(f"no checkpoint in {output!r} can be loaded (see the warnings above): not starting "
                           "over them; move them away to start a new run there")
        if _folder_holds_run(output):
            _logger.warning("%s holds a run that never saved a checkpoint: starting it from the beginning", output)
        else:
            _logger.info("No checkpoint in %s yet: starting a new run", output)
        return None
    if resume is not None:
        if not os.path.isfile(resume):
            raise RunError(f"--resume {resume!r}: no such checkpoint file")
        if not _same_folder(os.path.dirname(os.path.abspath(resume)), output) and _folder_holds_run(output):
            raise RunError(
                f"--output {output!r} already holds another run; resuming {resume!r} there would overwrite it. "
                "Choose an empty --output, or leave --output out to continue in the checkpoint's own folder")
        return resume
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


def _global_batch(cfg: Config, world_size: int) -> tuple[int, int]:
    """(global batch, gradient accumulation steps) for this launch."""
    per_step = cfg.train.batch_size * world_size
    wanted = cfg.train.global_batch_size
    if wanted is None:
        return per_step * cfg.train.grad_accum_steps, cfg.train.grad_accum_steps
    if wanted % per_step:
        raise ConfigError(
            f"train.global_batch_size={wanted} is not a multiple of {world_size} processes x "
            f"train.batch_size={cfg.train.batch_size} = {per_step}; choose a batch size that divides it")
    if cfg.train.grad_accum_steps not in (1, wanted // per_step):
        _logger.warning("train.grad_accum_steps=%d is ignored: train.global_batch_size=%d sets it to %d",
                        cfg.train.grad_accum_steps, wanted, wanted // per_step)
    return wanted, wanted // per_step


def _check_global_batch(ckpt: dict[str, Any], *, global_batch: int, world_size: int, path: str) -> None:
    """A resume must keep the global batch: lr and data position are counted in its steps."""
    saved = ckpt.get("run", {})
    saved_batch = saved.get("global_batch_size")
    if saved_batch is not None and saved_batch != global_batch:
        raise RunError(
            f"{path} was trained with a global batch of {saved_batch} images per step "
            f"({saved.get('world_size')} processes); this launch makes {global_batch} with {world_size}. "
            f"Set train.global_batch_size={saved_batch} to continue with the same batch, lr schedule and data "
            "position (gradient accumulation is derived from it)")


class _StopSignals:
    """SIGTERM and SIGINT set a flag; the loop saves at the next step boundary and exits.

    A second SIGINT (Ctrl-C twice) stops at once, without saving.
    """

    def __init__(self) -> None:
        self.terminate = False
        self.interrupt = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): no handler
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.interrupt:
                raise KeyboardInterrupt
            self.interrupt = True
            _logger.warning("Ctrl-C: saving at the end of this step (press it again to stop without saving)")
        else:
            self.terminate = True

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def run(cfg: Config, *, data_dir: str, output: Optional[str] = None, resume: Optional[str] = None) -> RunResult:
    """Train as `cfg` says; resume from `resume` ('auto' or a path) if given."""
    dist = init_distributed(cfg.train.device, timeout_minutes=cfg.dist.timeout_minutes,
                            init_timeout_minutes=cfg.dist.init_timeout_minutes)
    try:
        return _run(cfg, dist, data_dir=data_dir, output=output, resume=resume)
    finally:
        cleanup_distributed()


def _agreed(dist: DistInfo, fn) -> Any:
    """Rank 0 runs `fn`; every rank gets its result, or raises the RunError it raised."""
    outcome = None
    if dist.is_main:
        try:
            outcome = ("ok", fn())
        except (RunError, ConfigError) as e:
            outcome = ("error", str(e))
    outcome = broadcast_object(outcome)
    if outcome[0] == "error":
        raise RunError(outcome[1])
    return outcome[1]


def _run(cfg: Config, dist: DistInfo, *, data_dir: str, output: Optional[str], resume: Optional[str]) -> RunResult:
    setup_logging(dist.is_main)
    output = _agreed(dist, lambda: _resolve_output(cfg, output, resume))
    loaded: dict[str, Any] = {}
    resume_path = _agreed(dist, lambda: _choose_resume(output, resume, loaded))
    found = None
    if resume_path is not None:
        found = resume_path, loaded.pop(resume_path, None) or load_training_checkpoint(resume_path)
    if dist.is_main:
        os.makedirs(output, exist_ok=True)
    setup_logging(dist.is_main, os.path.join(output, "train.log") if dist.is_main else None)
    device = dist.device
    amp = resolve_amp(cfg.train.amp, device)
    if found is not None:
        _logger.info("Resuming from %s (epoch %d, step %d)", found[0], found[1]["train_state"]["epoch"],
                     found[1]["global_step"])
        _warn_config_changes(cfg, found[1]["config"])
    global_batch, accum = _global_batch(cfg, dist.world_size)

    # Data: datasets, class count, sampler and loaders.
    data = data_setup.build_train_and_val(
        cfg.data, data_dir, img_size=cfg.model.img_size, seed=cfg.train.seed, batch_size=cfg.train.batch_size,
        global_batch_size=global_batch, eval_batch_size=cfg.eval.batch_size, eval_crop_pct=cfg.eval.crop_pct,
        eval_interpolation=cfg.eval.interpolation, num_replicas=dist.world_size, rank=dist.rank,
        pin_memory=device.type == "cuda", device=device, gather=gather_objects, broadcast=broadcast_object,
        list_cache_dir=output)
    num_classes = data.num_classes
    if found is not None and found[1].get("run", {}).get("classes") is not None:
        check_classes_match(found[1]["run"]["classes"], data.classes, where=f"training folder {data.train_dir!r}",
                            fix=f" (checkpoint {found[0]!r}); resume with the data the run was trained on")
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise ConfigError(f"model.num_classes={cfg.model.num_classes}, but {data.train_dir!r} "
                          f"has {num_classes} class folders")
    if found is not None:
        _check_global_batch(found[1], global_batch=global_batch, world_size=dist.world_size, path=found[0])

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
    ema = CachedModelEma(model, decay=cfg.ema.decay) if cfg.ema.enabled else None
    lr = scaled_lr(cfg.optim.lr, global_batch, cfg.optim.lr_base_batch_size)
    optimizer = build_optimizer(model, cfg.optim, lr, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    steps_per_epoch = data.steps_per_epoch
    schedule = build_schedule(cfg.sched, base_lr=lr, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch)
    total_epochs = cfg.train.epochs + cfg.sched.cooldown_epochs
    state = TrainState()
    if found is not None:
        check_checkpoint_fits(found[1], model, path=found[0], model_name=cfg.model.name)
        state = _restore(found[1], model=model, ema=ema, optimizer=optimizer, scaler=scaler, dist=dist)

    _logger.info("Config:\n%s", dump_config(cfg))
    _logger.info(
        "world size %d, device %s, global batch %d (%d processes x %d per process x %d accumulation), lr %.4g "
        "(optim.lr %.4g scaled by %d/%d), %d steps per epoch, %d epochs (%d cosine + %d cool-down)",
        dist.world_size, device, global_batch, dist.world_size, cfg.train.batch_size, accum, lr, cfg.optim.lr,
        global_batch, cfg.optim.lr_base_batch_size, steps_per_epoch, total_epochs, cfg.train.epochs,
        cfg.sched.cooldown_epochs)
    run_info = dict(world_size=dist.world_size, global_batch_size=global_batch, batch_size=cfg.train.batch_size,
                    grad_accum_steps=accum, lr=lr, steps_per_epoch=steps_per_epoch, total_epochs=total_epochs,
                    num_classes=num_classes, classes=data.classes, data_dir=os.path.abspath(data_dir))
    if dist.is_main:  # written whole or not at all: a full disk never leaves a truncated config.yaml
        path = os.path.join(output, "config.yaml")
        with open(path + ".tmp", "w") as f:
            f.write(dump_config(cfg))
        os.replace(path + ".tmp", path)

    train_model: nn.Module = model
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    if dist.is_distributed:
        # The fixed tensors (position table, Performer projections) never change: no buffer broadcast
        # before every forward; gradients live in DDP's buckets, saving a copy of them.
        train_model = DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False, gradient_as_bucket_view=True)
        # The same bucket layout from the first step of every start, so a restart reduces as before.
        settle_bucket_layout(train_model, torch.zeros(cfg.train.batch_size, 3, cfg.model.img_size,
                                                      cfg.model.img_size, device=device), amp_context(device, amp))
    ddp_no_sync = train_model.no_sync if dist.is_distributed else None
    batch_to_device = None
    if data.on_device is not None:
        on_device = data.on_device

        def batch_to_device(images, target):
            return on_device(images), target.to(device, non_blocking=True)

    # Rank 0 writes in the background: training waits only for the snapshot (and for a previous write).
    writer = BackgroundCheckpointWriter(CheckpointWriter(output, keep_epochs=cfg.checkpoint.keep_epochs),
                                        pin_memory=device.type == "cuda") if dist.is_main else None
    logger = RunLogger(output if dist.is_main else None, tensorboard=cfg.log.tensorboard)
    meters = DeviceMeters(device)

    def checkpoint_state() -> dict[str, Any]:
        meters.flush(state)  # collective; a NaN loss stops here, before anything is written
        saved = TrainState(**state.to_dict())
        # Running meters of all ranks, so the epoch's train_loss survives a resume in any world size.
        saved.loss_sum, loss_count = sum_over_ranks(state.loss_sum, state.loss_count)
        saved.loss_count = int(loss_count)
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
            # Progress in samples of the global order: what a launch with another world size continues from.
            "samples_in_epoch": state.step_in_epoch * global_batch,
            "samples_seen": state.global_step * global_batch,
            "train_state": saved.to_dict(),
            "config": cfg.to_dict(),
            "run": run_info,
            "versions": library_versions(),
            "rng": {"torch": torch.get_rng_state(), "cuda": _cuda_rng_states()},
        }

    def save(end_of_epoch: bool, is_best: bool = False) -> None:
        ckpt = checkpoint_state()  # collective: every rank takes part
        if writer is not None:
            held = writer.save(ckpt, end_of_epoch=end_of_epoch, is_best=is_best)
            _logger.info("Checkpoint of epoch %d step %d taken in %.2f s; writing it in the background",
                         state.epoch, state.global_step, held)

    stop = {"preempted": False, "interrupted": False}
    last_save_time = time.monotonic()
    with _StopSignals() as signals, writes_finished(writer):  # every exit waits for the pending write
        def after_step(st: TrainState, synced: bool) -> bool:
            nonlocal last_save_time
            terminate = interrupt = minutes_due = False
            # Signals and the minutes timer are host-side, but ranks must act on them at the same
            # step: with several processes they are agreed on at log steps, where the host has
            # waited for the device anyway (a stop takes effect within train.log_interval steps).
            if synced or not dist.is_distributed:
                minutes_due = cfg.checkpoint.every_minutes > 0 and \
                    time.monotonic() - last_save_time >= 60 * cfg.checkpoint.every_minutes
                flags = sum_over_ranks(signals.terminate, signals.interrupt, minutes_due) \
                    if dist.is_distributed else [signals.terminate, signals.interrupt, minutes_due]
                terminate, interrupt, minutes_due = (v > 0 for v in flags)
            at_max = cfg.train.max_steps is not None and st.global_step >= cfg.train.max_steps
            end_of_epoch = st.step_in_epoch == steps_per_epoch
            every = cfg.checkpoint.every_steps
            stopping = terminate or interrupt
            due = (every > 0 and st.global_step % every == 0) or minutes_due or stopping or at_max
            if due and not end_of_epoch:
                save(end_of_epoch=False)
                last_save_time = time.monotonic()
            if stopping:
                stop["preempted" if terminate else "interrupted"] = True
                _logger.warning("%s: checkpoint saved at step %d; exiting", "SIGTERM" if terminate else "SIGINT",
                                st.global_step)
            return stopping or at_max

        control = StepControl(after_step=after_step)
        mixup = data_setup.build_mixup_fn(cfg.mixup, num_classes)
        while state.epoch < total_epochs:
            epoch = state.epoch
            mixup_on = mixup is not None and (cfg.mixup.off_epoch == 0 or epoch < cfg.mixup.off_epoch)
            t_epoch, steps_before = time.perf_counter(), state.step_in_epoch
            finished = train_one_epoch(
                train_model, batches=data.train_batches(epoch, state.step_in_epoch * global_batch),
                num_batches=steps_per_epoch * accum, optimizer=optimizer, scaler=scaler, schedule=schedule,
                state=state, device=device, num_classes=num_classes, amp=amp, accum_steps=accum,
                clip_grad=cfg.optim.clip_grad, mixup=mixup if mixup_on else None,
                label_smoothing=cfg.mixup.label_smoothing, ema=ema,
                reseed=lambda i: data_setup.reseed_step(cfg.train.seed, i, dist.rank), control=control,
                log_interval=cfg.train.log_interval, ddp_no_sync=ddp_no_sync, batch_to_device=batch_to_device,
                on_log=logger.scalars if dist.is_main else None, meters=meters)
            if not finished and state.step_in_epoch < steps_per_epoch:
                break
            meters.flush(state)
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
    return RunResult(output=output, state=state, **stop)


def _end_epoch(cfg: Config, state: TrainState, *, data, model, ema, dist: DistInfo, total_epochs: int,
               optimizer, amp: str) -> dict[str, Any]:
    """Evaluate (model and EMA) if due and return the epoch's row for the logs."""
    loss_sum, loss_count = sum_over_ranks(state.loss_sum, state.loss_count)
    epoch = state.epoch
    row: dict[str, Any] = {
        "epoch": epoch,
        "global_step": state.global_step,
        "train_loss": loss_sum / max(loss_count, 1.0),
        "lr": optimizer.param_groups[0]["lr"],
        "skipped_steps": state.skipped_steps,
    }
    last = epoch == total_epochs - 1
    interval = cfg.eval.interval
    if (interval > 0 and (epoch + 1) % interval == 0) or last:
        nets = {"": model} if ema is None else {"": model, "ema_": ema.module}
        # One pass over the validation set: each decoded batch goes through the model and the EMA.
        val_to_device = None
        if data.val_on_device is not None:  # uint8 batches from the workers, normalised on the device
            def val_to_device(images, targets):
                return data.val_on_device(images), targets.to(dist.device, non_blocking=True)
        results = evaluate_models(nets, data.val_loader, device=dist.device, amp=amp, dist=dist,
                                  batch_to_device=val_to_device)
        for prefix, metrics in results.items():
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
