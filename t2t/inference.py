"""A trained model ready to use: weights, class names and the eval transform its recipe used.

Works with our checkpoints (config and class names stored with them), the official release files
(ImageNet-1k: timm's ImageNet class names and the paper's eval transform) and the ``.safetensors``
files ``t2t-export`` writes (config and class names in the file's metadata).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, Sequence

import timm
import torch
import torch.nn as nn
from safetensors import safe_open
from timm.data import ImageNetInfo

from . import models  # noqa: F401  (registers the T2T-ViT family with timm)
from .config import Config, ConfigError, apply_values, config_from_dict, load_config, parse_override, read_yaml, \
    validate
from .checkpoint_schema import TrainingCheckpoint
from .errors import T2TError
from .models.factory import EvalPreprocessing, create_model, resolve_eval_preprocessing
from .models.weights import CheckpointError, extract_state_dict, load_pretrained_weights, read_checkpoint

__all__ = ["BatchSizeError", "CheckpointInfo", "LoadedModel", "available_memory", "check_batch_fits",
           "check_model_name", "class_names", "eval_preprocessing", "inspect_checkpoint", "load_model", "read_metadata",
           "resolve_eval_config"]

_logger = logging.getLogger(__name__)


@dataclass
class CheckpointInfo:
    """What a checkpoint tells about the model it belongs to."""

    num_classes: int | None
    img_size: int | None
    arch: str | None  # the model name the checkpoint records, if any
    config: dict[str, Any] | None = None  # the run's config (our checkpoints, exported .safetensors)
    classes: list[str] | None = None  # the run's class names


def read_metadata(path: str, checkpoint: Any = None) -> dict[str, Any]:
    """The checkpoint's dict (ours, official files: `checkpoint` if given) or a .safetensors file's metadata."""
    if not path.endswith(".safetensors"):
        checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
        return checkpoint if isinstance(checkpoint, dict) else {}
    try:
        with safe_open(path, framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"checkpoint {path!r} could not be read as a safetensors file: {e}") from e
    meta: dict[str, Any] = {}
    for key in ("config", "classes"):
        if key in raw:
            try:
                meta[key] = json.loads(raw[key])
            except ValueError as e:
                raise CheckpointError(f"checkpoint {path!r}: its metadata entry {key!r} is not valid JSON ({e}); "
                                      "export the file again with t2t-export") from e
    if "arch" in raw:
        meta["arch"] = raw["arch"]
    if "classes" in meta:
        meta["run"] = {"classes": meta.pop("classes")}
    return meta


def check_model_name(name: str, where: str = "--model") -> None:
    """ConfigError unless `name` is a registered T2T-ViT (optionally with a pretrained tag).

    The inference tools build the model with the T2T-ViT arguments (img_size) and read its size from
    the position table; other timm models (which train.py accepts with model.allow_any_timm_model)
    are refused here in one line rather than failing inside timm.
    """
    base = name.partition(".")[0]
    known = (*models.MODEL_ARCHS, *models.VARIANTS, *models.DISTILLED_ARCHS)
    if base in known:
        return
    if timm.is_model(name):
        raise ConfigError(f"model {name!r} ({where}) is a timm model but not a T2T-ViT; this tool works with T2T-ViT "
                          f"models only: {', '.join(known)}")
    raise ConfigError(f"model {name!r} ({where}): unknown model; expected one of {', '.join(known)}")


def inspect_checkpoint(path: str, use_ema: bool = True) -> CheckpointInfo:
    """Class count (head rows), image size (position grid x 16), model name, config and class names."""
    checkpoint = read_checkpoint(path)
    if isinstance(checkpoint, dict) and "train_state" in checkpoint:  # ours: read through the checkpoint schema
        ours = TrainingCheckpoint.from_dict(checkpoint, path=path)
        checkpoint = {"state_dict_ema": ours.trainer["state_dict_ema"], "model": ours.weights}
        meta: dict[str, Any] = {"arch": ours.arch, "config": ours.config, "run": ours.run}
    else:  # an official release file, a bare state dict, an exported .safetensors file
        meta = read_metadata(path, checkpoint)
    state_dict, _ = extract_state_dict(checkpoint, use_ema=use_ema, source=f"checkpoint {path!r}")
    head = state_dict.get("head.weight")
    pos_embed = state_dict.get("pos_embed")
    img_size = None
    if pos_embed is not None and pos_embed.ndim == 3:
        grid = math.isqrt(pos_embed.shape[1] - 1)
        img_size = grid * 16 if grid * grid == pos_embed.shape[1] - 1 else None
    arch = meta.get("arch")
    config = meta.get("config") if isinstance(meta.get("config"), dict) else None
    if config is not None and isinstance(config.get("model"), dict):
        arch = config["model"].get("name", arch)
    run = meta.get("run")
    classes = run.get("classes") if isinstance(run, dict) else None
    return CheckpointInfo(
        num_classes=int(head.shape[0]) if head is not None and head.ndim == 2 else None,
        img_size=img_size, arch=arch if isinstance(arch, str) else None, config=config,
        classes=list(classes) if isinstance(classes, list) else None)


def class_names(info: CheckpointInfo) -> list[str]:
    """The run's class names; ImageNet's for 1000 classes without names; else class_0, class_1, ..."""
    n = info.num_classes or 0
    if info.classes is not None and len(info.classes) == n:
        return info.classes
    if n == 1000:
        return list(ImageNetInfo().label_descriptions())  # e.g. 'tench, Tinca tinca', from timm's package data
    _logger.warning("The checkpoint names no classes: labels are class_0 ... class_%d", n - 1)
    return [f"class_{i}" for i in range(n)]


def resolve_eval_config(path: str, info: CheckpointInfo, *, config_file: Optional[str] = None,
                        overrides: Sequence[str] = (), flags: Optional[Mapping[str, tuple[Any, str]]] = None,
                        defaults: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Config:
    """The config a checkpoint is evaluated with, in increasing priority: the tool's `defaults`; what the checkpoint
    records (its stored model section, eval crop and interpolation and normalisation; else its model name and the
    image size of its position table); the -c `config_file`; `section.key=value` `overrides`; then `flags`
    ({"section.key": (value or None, flag name)}, e.g. {"model.img_size": (384, "--img-size")}).
    """
    flags = {k: v for k, v in (flags or {}).items() if v[0] is not None}
    stored = config_from_dict(info.config, origin=f"checkpoint {path!r}") if info.config is not None else None
    name, where = _model_name(path, info, stored, config_file, overrides, flags)
    base = Config()
    for section, values in (defaults or {}).items():
        apply_values(base, {section: dict(values)}, origin="the tool's defaults")
    if stored is not None:  # what defines the model and its inputs; run-time settings stay the tool's
        base.model = replace(stored.model, cpu_backend=base.model.cpu_backend)
        base.eval.crop_pct, base.eval.interpolation = stored.eval.crop_pct, stored.eval.interpolation
        base.data.mean, base.data.std = stored.data.mean, stored.data.std
    elif info.img_size is not None:
        base.model.img_size = info.img_size
    base.model.name = name
    cfg = load_config(config_file, overrides, base=base)
    for key, (value, flag) in flags.items():
        section, _, field = key.partition(".")
        apply_values(cfg, {section: {field: value}}, origin=flag)
    try:
        validate(cfg)
    except ConfigError as e:  # name the flag a bad value came from: "eval.batch_size=0 (--batch-size): ..."
        for key, (value, flag) in flags.items():
            if str(e).startswith(f"{key}="):
                head, _, rest = str(e).partition(": ")
                raise ConfigError(f"{head} ({flag}): {rest}") from None
        raise
    return cfg


def _model_name(path: str, info: CheckpointInfo, stored: Optional[Config], config_file: Optional[str],
                overrides: Sequence[str], flags: Mapping[str, tuple[Any, str]]) -> tuple[str, str]:
    """(the model name, where it came from), by the priority of resolve_eval_config; checked to be a T2T-ViT."""
    name = where = None
    if "model.name" in flags:
        name, where = flags["model.name"]
    for text in overrides if name is None else ():
        section, key, value = parse_override(text)
        if (section, key) == ("model", "name"):
            name, where = value, f"command line {text!r}"
    if name is None and config_file is not None:
        model = read_yaml(config_file).get("model")
        if isinstance(model, dict) and "name" in model:
            name, where = model["name"], f"model.name in {config_file!r}"
    if name is None and (stored is not None or info.arch):
        name = stored.model.name if stored is not None else str(info.arch).lower()
        where = f"recorded in checkpoint {path!r}"
    if name is None:
        raise ConfigError(f"checkpoint {path!r} records no model name: give it with --model NAME (e.g. t2t_vit_14) "
                          "or a run's config with -c CONFIG")
    check_model_name(str(name), str(where))
    return str(name), str(where)


def eval_preprocessing(model: nn.Module, cfg: Config) -> EvalPreprocessing:
    """The eval transform settings of `model` built from `cfg`: the config's where it sets them, else the model's."""
    return resolve_eval_preprocessing(model, img_size=cfg.model.img_size, crop_pct=cfg.eval.crop_pct,
                                      interpolation=cfg.eval.interpolation, mean=cfg.data.mean, std=cfg.data.std)


@dataclass
class LoadedModel:
    model: nn.Module
    transform: Callable
    classes: list[str]
    model_name: str
    img_size: int
    weights: str  # the checkpoint entry used: state_dict_ema, model, ...
    config: Optional[Config] = None  # the config it was built from (resolve_eval_config)


def load_model(path: str, *, model_name: Optional[str] = None, img_size: Optional[int] = None,
               use_ema: bool = True, config_file: Optional[str] = None, overrides: Sequence[str] = (),
               flags: Optional[Mapping[str, tuple[Any, str]]] = None,
               defaults: Optional[Mapping[str, Mapping[str, Any]]] = None) -> LoadedModel:
    """The checkpoint's model in eval mode with its weights, class names and eval transform (resolve_eval_config)."""
    info = inspect_checkpoint(path, use_ema)
    flags = {"model.name": (model_name, "--model"), "model.img_size": (img_size, "--img-size"), **(flags or {})}
    cfg = resolve_eval_config(path, info, config_file=config_file, overrides=overrides, flags=flags,
                              defaults=defaults)
    if info.num_classes is None:
        raise CheckpointError(f"checkpoint {path!r} has no classifier (head.weight): nothing to predict with")
    model = create_model(cfg.model, info.num_classes, grad_checkpointing=False)
    weights = load_pretrained_weights(model, path, use_ema=use_ema)
    transform = eval_preprocessing(model, cfg).transform()
    return LoadedModel(model=model.eval(), transform=transform, classes=class_names(info), model_name=cfg.model.name,
                       img_size=cfg.model.img_size, weights=weights, config=cfg)


class BatchSizeError(T2TError, ValueError):
    """A batch that cannot fit in the device's memory."""


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes free for tensors on `device` (CUDA: the driver's free memory; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_fits(batch_size: int, img_size: int, device: torch.device, *, copies: int = 1,
                     flag: str = "--batch-size") -> None:
    """BatchSizeError if `batch_size` images of `img_size` certainly do not fit in `device`'s free memory.

    A lower bound, counted before anything is allocated: the float32 input and the first token layer's
    activations ((img_size/4)^2 tokens of 147 + 3 x 64 + 64 values per image), times `copies` (batches held
    at once). Batches under it can still run out of memory; those above it cannot run at all.
    """
    tokens = (img_size // 4) ** 2
    needed = 4 * batch_size * (3 * img_size * img_size + tokens * (147 + 3 * 64 + 64)) * copies
    free = available_memory(device)
    if free is not None and needed > free:
        raise BatchSizeError(f"{flag} {batch_size}: {img_size} px images need at least {needed / 2**30:,.1f} GiB, more "
                         f"than the {free / 2**30:,.1f} GiB free on {device}; use a smaller batch")
