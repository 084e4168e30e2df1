"""A whole training run, assembled: folder and resume choice, data, model, Trainer, checkpoints."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .. import models, rng  # noqa: F401  (models: registers the T2T-ViT family with timm)
from ..config import Config, ConfigError, dump_config, rename_old_keys
from ..data import setup as data_setup
from ..data.dataset import DatasetError
from ..data.transforms import build_eval_transform
from ..models import T2TViTDistilled
from ..models.factory import create_model, resolve_eval_preprocessing
from ..models.positions import PositionTables
from ..models.weights import load_pretrained_weights
from ..outputs import write_text
from .background_save import BackgroundCheckpointWriter, writes_finished
from .checkpoint import Checkpointer, CheckpointWriter, check_checkpoint_fits, load_training_checkpoint
from ..checkpoint_schema import TrainingCheckpoint
from .collectives import broadcast_object, gather_objects, settle_bucket_layout
from .distributed import DistInfo, cleanup_distributed, init_distributed, setup_logging
from .ema import build_ema
from .eval_sets import evaluate_sets, load_eval_set, parse_eval_sets
from .losses import build_loss
from .metrics import RunLogger
from .optim import build_optimizer, build_schedule, freeze_parameters
from .plan import RunPlan, global_batch
from .precision import amp_context, resolve_amp
from .run_folder import RunError, agreed, choose_resume, resolve_output, resume_config
from .stopping import StopPolicy
from .teacher import TeacherError, check_same_teacher, load_teacher
from .trackers import TrackerStart, Trackers, check_installed
from .trainer import TrainState, Trainer

__all__ = ["INTERRUPTED_EXIT_CODE", "PREEMPTED_EXIT_CODE", "RunError", "RunResult", "resume_config", "run"]

_logger = logging.getLogger("t2t.train")

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving; run again with --resume auto
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: stopped by Ctrl-C after saving


@dataclass
class RunResult:
    output: str
    state: TrainState
    preempted: bool = False
    interrupted: bool = False  # stopped by SIGINT (Ctrl-C) after saving


def run(cfg: Config, *, data_dir: str, output: Optional[str] = None, resume: Optional[str] = None) -> RunResult:
    """Train as `cfg` says; resume from `resume` ('auto' or a path) if given."""
    dist = init_distributed(cfg.train.device, timeout_minutes=cfg.dist.timeout_minutes,
                            init_timeout_minutes=cfg.dist.init_timeout_minutes)
    try:
        return _run(cfg, dist, data_dir=data_dir, output=output, resume=resume)
    finally:
        cleanup_distributed()


def _build_model(cfg: Config, num_classes: int) -> nn.Module:
    return create_model(cfg.model, num_classes)


def _build_teacher(cfg: Config, classes: list[str], device: torch.device):
    """The frozen teacher of a distillation run (None without one), built without touching the global RNGs."""
    if cfg.distill.type == "none":
        return None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            return load_teacher(cfg.distill.teacher, model_name=cfg.distill.teacher_model, num_classes=len(classes),
                                img_size=cfg.distill.teacher_img_size or cfg.model.img_size, device=device,
                                classes=classes)
        except TeacherError as e:
            raise RunError(str(e)) from None


def _check_teacher_on_resume(path: str, saved: Optional[dict[str, Any]], teacher) -> None:
    """A run continues with the teacher it started with, or without one if it had none."""
    if teacher is None:
        if saved is not None:
            raise RunError(f"{path} was trained with the teacher {saved.get('path')!r} (sha256 "
                           f"{str(saved.get('sha256'))[:12]}); this launch has none (distill.type=none): resume with "
                           "the same distill settings, or start a new run")
        return
    try:
        check_same_teacher(saved, teacher.identity, path)
    except TeacherError as e:
        raise RunError(str(e)) from None


_LABEL_KEYS = ("sha256", "model", "topk", "img_size")  # what makes two label folders hold the same maps


def _token_label_identity(cfg: Config) -> Optional[dict[str, Any]]:
    """The label folder of a token-label run and what its labels.json says made it (checked by the dataset)."""
    if not cfg.token_label.dir:
        return None
    with open(os.path.join(cfg.token_label.dir, "labels.json")) as f:
        record = json.load(f)
    return {"dir": os.path.abspath(cfg.token_label.dir), "teacher": record.get("path"),
            **{key: record.get(key) for key in _LABEL_KEYS}}


def _check_labels_on_resume(path: str, saved: Optional[dict[str, Any]], labels: Optional[dict[str, Any]]) -> None:
    """A token-label run continues with labels of the same teacher and settings (the folder may have moved)."""
    if saved is None and labels is None:
        return
    if saved is None or labels is None:
        had = f"with the token labels of {saved['dir']!r}" if saved else "without token labels"
        now = f"token_label.dir={labels['dir']!r}" if labels else "no token_label.dir"
        raise RunError(f"{path} was trained {had}; this launch has {now}: resume with the same token_label.dir, "
                       "or start a new run")
    differs = [f"{key} {saved.get(key)!r} -> {labels.get(key)!r}" for key in _LABEL_KEYS
               if saved.get(key) != labels.get(key)]
    if differs:
        raise RunError(f"token_label.dir={labels['dir']!r} holds other labels than the ones {path} was trained with "
                       f"({saved['dir']!r}): {'; '.join(differs)}; resume with that folder, or start a new run")
    if saved.get("dir") != labels["dir"]:
        _logger.info("Token labels now read from %s: the same teacher and settings as %s", labels["dir"], saved.get("dir"))


def _open_resume(dist: DistInfo, output: str, resume: Optional[str]) -> Optional[tuple[str, TrainingCheckpoint]]:
    """The checkpoint every rank resumes from (rank 0 chooses), or None for a new run."""
    loaded: dict[str, Any] = {}
    path = agreed(dist, lambda: choose_resume(output, resume, loaded))
    if path is None:
        return None
    return path, loaded.pop(path, None) or load_training_checkpoint(path)


def _run(cfg: Config, dist: DistInfo, *, data_dir: str, output: Optional[str], resume: Optional[str]) -> RunResult:
    setup_logging(dist.is_main)
    check_installed(cfg.log)  # a tracker asked for but not installed: one line on every rank, before any work
    output = agreed(dist, lambda: resolve_output(cfg, output, resume))
    found = _open_resume(dist, output, resume)
    if dist.is_main:
        os.makedirs(output, exist_ok=True)
    setup_logging(dist.is_main, os.path.join(output, "train.log") if dist.is_main else None)
    device = dist.device
    amp = resolve_amp(cfg.train.amp, device)
    if found is not None:
        _logger.info("Resuming from %s (epoch %d, step %d)", found[0], found[1].epoch, found[1].global_step)
        _warn_config_changes(cfg, found[1].config)
        found[1].warn_if_versions_differ(found[0])
    batch, _ = global_batch(cfg.train, dist.world_size)
    # The model's pretrained cfg gives the eval crop and interpolation the config leaves unset (null).
    evaluation = resolve_eval_preprocessing(cfg.model.name, img_size=cfg.model.img_size, crop_pct=cfg.eval.crop_pct,
                                            interpolation=cfg.eval.interpolation)

    spec = data_setup.DataSpec.from_config(cfg, global_batch_size=batch, eval_crop_pct=evaluation.crop_pct,
                                           eval_interpolation=evaluation.interpolation, device=device)
    data = data_setup.build_train_and_val(spec, data_dir, num_replicas=dist.world_size, rank=dist.rank,
                                          gather=gather_objects, broadcast=broadcast_object, list_cache_dir=output)
    plan = RunPlan.build(cfg, world_size=dist.world_size, steps_per_epoch=data.steps_per_epoch,
                         classes=data.classes, data_dir=data_dir, minival_images=data.minival_len)
    if found is not None and found[1].run is not None:
        plan.check_resume(RunPlan.from_dict(found[1].run), path=found[0], train_dir=data.train_dir)
    if cfg.model.num_classes is not None and cfg.model.num_classes != plan.num_classes:
        raise ConfigError(f"model.num_classes={cfg.model.num_classes}, but {data.train_dir!r} "
                          f"has {plan.num_classes} class folders")

    extra_sets = _load_extra_sets(cfg, plan, evaluation)  # checked now, evaluated after the last epoch
    teacher = None if cfg.distill.type == "none" else _build_teacher(cfg, list(data.classes), device)
    if teacher is not None:
        plan = dataclasses.replace(plan, teacher=teacher.identity)
    if found is not None:
        _check_teacher_on_resume(found[0], (found[1].run or {}).get("teacher"), teacher)
    labels = _token_label_identity(cfg)
    if labels is not None:
        plan = dataclasses.replace(plan, token_labels=labels)
    if found is not None and found[1].run is not None and "token_labels" in found[1].run:  # older runs lack it
        _check_labels_on_resume(found[0], found[1].run["token_labels"], labels)
    trainer = _build_trainer(cfg, dist, plan, data, amp, resuming=found is not None, teacher=teacher)
    if found is not None:
        check_checkpoint_fits(found[1], trainer.model, path=found[0], model_name=cfg.model.name)
        trainer.load_state_dict(found[1].trainer)
    _logger.info("Config:\n%s", dump_config(cfg))
    _logger.info("Run plan: %s", plan.describe(device))
    if spec.resolution is not None:
        _logger.info("Progressive resolution: %s; the same batch and lr at every size; evaluation and checkpoints at "
                     "%d px", spec.resolution.describe(), cfg.model.img_size)
    if dist.is_main:  # written whole or not at all: a full disk never leaves a truncated config.yaml
        write_text(os.path.join(output, "config.yaml"), dump_config(cfg))
    _wrap_for_training(trainer, cfg, dist, amp)

    # Only rank 0 reports: TensorBoard and the trackers. A resumed run's reports start after its checkpoint's
    # step: TensorBoard purges what the stopped process logged after it, the trackers continue their runs.
    resumed_step = found[1].global_step if found is not None else None
    trackers = None
    if dist.is_main and (cfg.log.wandb or cfg.log.mlflow):
        trackers = Trackers(cfg.log, TrackerStart(folder=output, config=cfg.to_dict(), plan=plan.to_dict(),
                                                  resumed_step=resumed_step),
                            run_ids=found[1].trackers if found is not None else None)
    logger = RunLogger(output if dist.is_main else None, tensorboard=cfg.log.tensorboard, resumed_step=resumed_step,
                       trackers=trackers)
    trainer.on_log = logger.scalars if dist.is_main else None
    # Rank 0 writes in the background: training waits only for the snapshot (and for a previous write).
    writer = BackgroundCheckpointWriter(CheckpointWriter(output, keep_epochs=cfg.checkpoint.keep_epochs,
                                                         keep_best=cfg.checkpoint.keep_best),
                                        pin_memory=device.type == "cuda",
                                        on_written=logger.checkpointed) if dist.is_main else None

    checkpointer = Checkpointer(writer, arch=cfg.model.name, config=cfg.to_dict(), run=plan.to_dict(),
                                trackers=trackers.run_ids if trackers is not None else None)
    stop = StopPolicy(steps_per_epoch=plan.steps_per_epoch, every_steps=cfg.checkpoint.every_steps,
                      every_minutes=cfg.checkpoint.every_minutes, max_steps=cfg.train.max_steps,
                      distributed=dist.is_distributed)
    try:
        with stop, writes_finished(writer):  # every exit waits for the pending write
            trainer.fit(data, total_epochs=plan.total_epochs, global_batch_size=plan.global_batch_size, stop=stop,
                        checkpointer=checkpointer, eval_interval=cfg.eval.interval, eval_metric=cfg.eval.metric,
                        write_epochs=logger.write_epochs)
            if extra_sets and trainer.state.epoch >= plan.total_epochs and not (stop.preempted or stop.interrupted):
                _evaluate_extra_sets(trainer, extra_sets, cfg, dist, amp, logger)
    except BaseException:
        logger.close(failed=True)
        raise
    logger.close()
    return RunResult(output=output, state=trainer.state, preempted=stop.preempted, interrupted=stop.interrupted)


def _load_extra_sets(cfg: Config, plan: RunPlan, evaluation: Any) -> list[tuple[str, Any, Optional[list[int]]]]:
    """eval.extra_sets as (name, dataset, model outputs scored): their folders are matched to the classes now."""
    if not cfg.eval.extra_sets:
        return []
    transform = build_eval_transform(cfg.model.img_size, evaluation.crop_pct, evaluation.interpolation,
                                     mean=tuple(cfg.data.mean), std=tuple(cfg.data.std))
    loaded = []
    for eval_set in parse_eval_sets(cfg.eval.extra_sets, "eval.extra_sets"):
        try:
            dataset, indices = load_eval_set(eval_set, transform, num_classes=plan.num_classes, classes=plan.classes)
        except DatasetError as e:
            raise ConfigError(f"eval.extra_sets {eval_set.name}={eval_set.root}: {e}") from None
        loaded.append((eval_set.name, dataset, indices))
        _logger.info("eval.extra_sets: %s = %s, %d images in %d classes%s", eval_set.name, dataset.root, len(dataset),
                     len(dataset.classes), "" if indices is None else " (scored on their outputs only)")
    return loaded


def _evaluate_extra_sets(trainer: Trainer, sets: list, cfg: Config, dist: DistInfo, amp: str,
                         logger: RunLogger) -> None:
    """Score the final model (and its EMA) on eval.extra_sets; the columns join the last row of summary.csv."""
    nets = {"": trainer.model} if trainer.ema is None else {"": trainer.model, "ema_": trainer.ema.module}
    columns = evaluate_sets(nets, sets, batch_size=cfg.eval.batch_size, workers=cfg.data.workers,
                            device=dist.device, amp=amp, dist=dist)
    for name, _, _ in sets:
        _logger.info("%s: top-1 %.2f top-5 %.2f%s on %d images", name, columns[f"{name}_top1"],
                     columns[f"{name}_top5"], f", EMA top-1 {columns[f'ema_{name}_top1']:.2f}"
                     if f"ema_{name}_top1" in columns else "", columns[f"{name}_count"])
    trainer.state.history[-1].update(columns)
    logger.write_epochs(trainer.state.history, scalar_keys=columns)


def _build_trainer(cfg: Config, dist: DistInfo, plan: RunPlan, data: Any, amp: str, *, resuming: bool,
                   teacher: Any = None) -> Trainer:
    """Model (initialised, frozen), EMA, optimizer, scaler, schedule, loss and mixup, as a Trainer."""
    device = dist.device
    torch.manual_seed(cfg.train.seed)  # the same initial weights (and Performer projections) on every rank
    model = _build_model(cfg, plan.num_classes)
    if cfg.model.cpu_backend:  # the backend module is loaded only for runs that ask for it
        from ..models import cpu as cpu_backend

        cpu_backend.apply_backend(model, True, device, amp)
    if cfg.model.init_from and not resuming:
        if not os.path.isfile(cfg.model.init_from):
            raise ConfigError(f"model.init_from={cfg.model.init_from!r}: no such file (expected an official release "
                              "file, one of our checkpoints or a .safetensors file)")
        used = load_pretrained_weights(model, cfg.model.init_from)
        _logger.info("Initialised weights from %s (%s)", cfg.model.init_from, used)
    if cfg.model.freeze:  # before the optimizer and DDP, which then leave these parameters out
        frozen = freeze_parameters(model, cfg.model.freeze)
        _logger.info("Frozen (model.freeze %s): %d tensors", list(cfg.model.freeze), len(frozen))
    model.to(device)
    # MixToken replaces mixup / CutMix when the targets are token labels
    mixup = data_setup.build_mix_token_fn(cfg.token_label, cfg.mixup) if cfg.token_label.dir is not None else \
        data_setup.build_mixup_fn(cfg.mixup, plan.num_classes, label_smoothing=cfg.loss.label_smoothing)
    return Trainer(
        model, optimizer=build_optimizer(model, cfg.optim, plan.lr, fused=device.type == "cuda"),
        schedule=build_schedule(cfg.sched, base_lr=plan.lr, epochs=cfg.train.epochs,
                                steps_per_epoch=plan.steps_per_epoch),
        loss_fn=build_loss(cfg.loss, plan.num_classes, token_label=cfg.token_label if cfg.model.token_label else None,
                           distill=cfg.distill, teacher=teacher, two_heads=isinstance(model, T2TViTDistilled),
                           device=device), device=device,
        scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16"),
        ema=build_ema(model, cfg.ema) if cfg.ema.enabled else None, amp=amp,
        accum_steps=plan.grad_accum_steps, clip_grad=cfg.optim.clip_grad,
        mixup=mixup, mixup_off_epoch=cfg.mixup.off_epoch,
        reseed=lambda i: rng.reseed_step(cfg.train.seed, i, dist.rank), to_device=data.feed.train,
        log_interval=cfg.train.log_interval, dist=dist,
        positions=PositionTables(model).at if cfg.train.img_sizes else None)


def _wrap_for_training(trainer: Trainer, cfg: Config, dist: DistInfo, amp: str) -> None:
    """torch.compile and DDP around the model for the step; the Trainer keeps the plain model for the rest."""
    train_model: nn.Module = trainer.model
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    if dist.is_distributed:
        device = dist.device
        # The fixed tensors (position table, Performer projections) never change: no buffer broadcast
        # before every forward; gradients live in DDP's buckets, saving a copy of them.
        train_model = DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False, gradient_as_bucket_view=True)
        # The same bucket layout from the first step of every start, so a restart reduces as before.
        settle_bucket_layout(train_model, torch.zeros(cfg.train.batch_size, 3, cfg.model.img_size,
                                                      cfg.model.img_size, device=device), amp_context(device, amp))
    trainer.train_model = train_model


def _warn_config_changes(cfg: Config, saved: dict[str, Any]) -> None:
    now = cfg.to_dict()
    saved = rename_old_keys(saved, "the checkpoint", warn=False)  # a renamed key is not a change
    # a key the checkpoint's version did not have yet holds its default there: not a change either
    saved = {s: {**entries, **saved.get(s, {})} for s, entries in Config().to_dict().items()}
    changed = [f"{s}.{k}: {saved.get(s, {}).get(k)!r} -> {v!r}"
               for s, entries in now.items() for k, v in entries.items() if saved.get(s, {}).get(k) != v]
    if changed:
        _logger.warning("Resuming with a config that differs from the checkpoint's: %s", "; ".join(changed))
