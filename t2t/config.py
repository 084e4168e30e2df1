"""Typed run configuration: dataclass defaults < YAML file < command-line `section.key=value`.

Unknown keys are errors that suggest the nearest valid key; values are checked for type and range
with messages that name the key, the value and where it came from. A field's range check sits
beside it (``checked``); ``validate`` walks the fields. Each section is what one part of the run
consumes: ``loss`` the training loss, ``mixup`` the Mixup / CutMix op, ``sched`` the lr schedule, ...
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, NamedTuple, Optional, Sequence

import yaml

from .errors import T2TError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_logger = logging.getLogger(__name__)

# The recipes shipped inside the package (t2t/configs/*.yaml): `-c NAME` finds one by name.
RECIPE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


class ConfigError(T2TError, ValueError):
    """A configuration value or key that cannot be used."""


class Check(NamedTuple):
    """A range check: `ok(value)` is true for a usable value; `expected` words the range for the error message."""

    ok: Callable[[Any], bool]
    expected: str


def checked(default: Any, check: Check) -> Any:
    """A dataclass field with its default and the range check `validate` applies to it."""
    return field(default=default, metadata={"check": check})


AT_LEAST_0 = Check(lambda v: v >= 0, ">= 0")
AT_LEAST_1 = Check(lambda v: v >= 1, ">= 1")
POSITIVE = Check(lambda v: v > 0, "> 0")
PROBABILITY = Check(lambda v: 0 <= v <= 1, "in [0, 1]")
BELOW_1 = Check(lambda v: 0 <= v < 1, "in [0, 1)")
AT_LEAST_1_OR_NULL = Check(lambda v: v is None or v >= 1, ">= 1 or null")
MAX_BATCH = 2 ** 31 - 1  # data loaders take a batch size that fits a C ssize_t slice bound; far above any memory
BATCH = Check(lambda v: 1 <= v <= MAX_BATCH, f">= 1 and <= {MAX_BATCH} images")
BATCH_OR_NULL = Check(lambda v: v is None or 1 <= v <= MAX_BATCH, f">= 1 and <= {MAX_BATCH} images, or null")
POSITIVE_MINUTES = Check(lambda v: 0 < v < float("inf"), "> 0 minutes")

# Resampling filters the transforms know (t2t.data.transforms), by name.
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
# What the fast JPEG decode path can resample with.
_FAST_DECODE_INTERPOLATIONS = ("random", "nearest", "bilinear", "bicubic")


@dataclass
class ModelConfig:
    name: str = "t2t_vit_14"
    img_size: int = checked(224, Check(lambda v: v > 0 and v % 16 == 0, "a positive multiple of 16"))
    # None: the number of class folders in the training set
    num_classes: Optional[int] = checked(None, Check(lambda v: v is None or v > 0, "a positive integer or null"))
    drop_rate: float = checked(0.0, BELOW_1)
    drop_path_rate: float = checked(0.1, BELOW_1)
    init_from: Optional[str] = None  # weights only (ours, an official release file or .safetensors), for fine-tuning
    grad_checkpointing: bool = False
    allow_any_timm_model: bool = False  # accept a model name that is not a T2T-ViT (any timm name)
    freeze: tuple[str, ...] = ()  # parts left out of training: names or prefixes, e.g. tokens_to_token, blocks.0-6
    cpu_backend: bool = False  # t2t.models.cpu.accelerate in float32 CPU runs (docs/speed.md: when it pays)
    token_label: bool = False  # add TokenLabeling's aux_head over the patch tokens (train with token_label.dir)


@dataclass
class DataConfig:
    workers: int = checked(8, AT_LEAST_0)
    scale: tuple[float, float] = checked((0.08, 1.0), Check(lambda v: 0 < v[0] <= v[1] <= 1, "0 < min <= max <= 1"))
    ratio: tuple[float, float] = checked((3 / 4, 4 / 3), Check(lambda v: 0 < v[0] <= v[1], "0 < min <= max"))
    hflip: float = checked(0.5, PROBABILITY)
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"
    color_jitter: float = checked(0.4, AT_LEAST_0)
    interpolation: str = checked("random", Check(lambda v: v == "random" or v in _INTERPOLATIONS,
                                                 "random or one of " + ", ".join(_INTERPOLATIONS)))
    reprob: float = checked(0.25, PROBABILITY)
    remode: Literal["pixel", "rand", "const"] = "pixel"
    recount: int = checked(1, AT_LEAST_1)
    repeated_aug: bool = False
    repeats: int = checked(3, AT_LEAST_1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = checked(IMAGENET_STD, Check(lambda v: all(s > 0 for s in v),
                                                                  "three numbers > 0"))
    skip_bad_images: bool = False
    fast_decode: bool = True
    # batches each loader worker prepares ahead (shared memory: see docs/clusters.md)
    prefetch_factor: int = checked(2, AT_LEAST_1)
    # pil: the training loader's workers write batches into shared buffers made once (workers x prefetch_factor
    # + 3 of them), not into new shared memory per batch (docs/data-feed.md); false: the DataLoader's usual way
    batch_buffers: bool = True
    # auto: an extracted CIFAR folder is read as CIFAR, DATA_DIR/train/*.tar as shards, else the ImageFolder layout;
    # DATA_DIR/train/*.parquet (or a Hugging Face download's DATA_DIR/data/train-*.parquet) as parquet;
    # shards: DATA_DIR/train/*.tar and DATA_DIR/val/*.tar in the webdataset layout (scripts/make_shards.py);
    # parquet: image bytes + label columns, the Hugging Face ImageNet layout (needs the extra t2t-vit[parquet])
    format: Literal["auto", "imagefolder", "cifar", "shards", "parquet"] = "auto"
    # global: one permutation of all images per epoch; block (shards, parquet): the shards (parquet row groups)
    # permuted per epoch and the images shuffled within windows of data.block_shards of them, so each is read
    # front to back
    shuffle: Literal["global", "block"] = "global"
    block_shards: int = checked(4, AT_LEAST_1)
    # imagenet: RandomResizedCrop + RandAugment + erasing (DeiT / T2T-ViT); cifar: resize, RandomCrop(padding=img_size // 8), flip;
    # src: DeiT III's simple random crop (resize, RandomCrop(padding=4, reflect), flip) + auto_augment
    train_transform: Literal["imagenet", "cifar", "src"] = "imagenet"
    # pil: decode and augment in loader worker processes (Pillow); dali: NVIDIA DALI (GPU decode and
    # augmentation on CUDA, its CPU operators elsewhere), needs the optional extra t2t[dali]
    backend: Literal["pil", "dali"] = "pil"
    # share of the training images held out as a minival (by a hash of each relative path; t2t/data/holdout.py):
    # never trained on, evaluated every epoch as minival_top1 (eval.metric can choose best.pth by it)
    holdout_fraction: float = checked(0.0, Check(lambda v: 0 <= v < 1, "in [0, 1) (0: no minival)"))


@dataclass
class MixupConfig:
    """What the Mixup / CutMix op consumes (its targets are smoothed with loss.label_smoothing)."""

    mixup_alpha: float = checked(0.8, AT_LEAST_0)
    cutmix_alpha: float = checked(1.0, AT_LEAST_0)
    prob: float = checked(1.0, PROBABILITY)
    switch_prob: float = checked(0.5, PROBABILITY)
    mode: Literal["batch", "pair", "elem"] = "batch"
    off_epoch: int = checked(0, AT_LEAST_0)  # epoch from which mixup/cutmix stop (0: never)


@dataclass
class LossConfig:
    """The training loss (t2t.engine.losses): soft-target cross-entropy, or binary cross-entropy (DeiT III)."""

    type: Literal["ce", "bce"] = "ce"
    label_smoothing: float = checked(0.1, BELOW_1)  # also smooths the targets mixup / cutmix make
    # bce: soft targets (mixup / cutmix) above this become 1, the rest 0 (DeiT III: none); null: kept soft
    bce_target_threshold: Optional[float] = checked(None, Check(lambda v: v is None or 0 <= v < 1,
                                                                "in [0, 1) or null"))


@dataclass
class OptimConfig:
    # adamw and sgd are torch's (sgd: plain momentum, nesterov below); any other name is built by timm's
    # optimizer factory (lamb, lion, lars, adan, ...: timm.optim.list_optimizers()) over the same groups
    name: str = checked("adamw", Check(lambda v: v in ("adamw", "sgd") or _timm_knows_optimizer(v),
                                       "adamw, sgd or an optimizer timm knows (timm.optim.list_optimizers())"))
    lr: float = checked(5e-4, POSITIVE)
    # the global batch `lr` is meant for; other batches scale it linearly
    lr_base_batch_size: int = checked(512, POSITIVE)
    weight_decay: float = checked(0.05, AT_LEAST_0)
    betas: tuple[float, float] = checked((0.9, 0.999), Check(lambda v: all(0 <= b < 1 for b in v),
                                                             "two numbers in [0, 1)"))
    eps: float = checked(1e-8, POSITIVE)
    # max global grad norm; None: no clipping
    clip_grad: Optional[float] = checked(None, Check(lambda v: v is None or v > 0, "> 0 or null"))
    momentum: float = checked(0.9, BELOW_1)  # sgd
    nesterov: bool = False  # sgd
    # lr factor of everything but the classifier (the official transfer ratio: 0.01)
    backbone_lr_scale: float = checked(1.0, Check(POSITIVE.ok, "> 0 (to keep parts fixed, list them in model.freeze)"))
    # layer-wise lr decay (BEiT / timm): layer i of L gets decay ** (L - 1 - i)
    layer_decay: Optional[float] = checked(None, Check(lambda v: v is None or 0 < v <= 1, "in (0, 1] or null"))
    # further keyword arguments of the optimizer's constructor, e.g. {trust_clip: true} for lamb;
    # betas and eps above are AdamW's, momentum and nesterov SGD's (timm's optimizers get momentum too)
    kwargs: dict = field(default_factory=dict)


@dataclass
class SchedConfig:
    warmup_epochs: int = checked(10, AT_LEAST_0)
    warmup_lr: float = checked(1e-6, AT_LEAST_0)
    min_lr: float = checked(1e-5, AT_LEAST_0)
    # at min_lr after the cosine: the run lasts train.epochs + cooldown_epochs
    cooldown_epochs: int = checked(10, AT_LEAST_0)
    per_step: bool = True  # False: the official per-epoch lr steps


@dataclass
class TrainConfig:
    epochs: int = checked(300, AT_LEAST_1)
    batch_size: int = checked(64, BATCH)  # per process
    grad_accum_steps: int = checked(1, AT_LEAST_1)
    # Images per optimizer step over all processes. When set, grad_accum_steps is derived from it
    # (global_batch_size / (processes x batch_size)), so a run keeps its global batch, lr and data
    # position when it continues on another number of GPUs.
    global_batch_size: Optional[int] = checked(None, BATCH_OR_NULL)
    seed: int = checked(42, Check(lambda v: 0 <= v < 2 ** 63, "an integer in [0, 2**63)"))
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 elsewhere
    compile: bool = False
    device: str = checked("auto", Check(lambda v: re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", v) is not None,
                                        "auto, cpu, cuda[:N]"))
    # Steps between log lines, and so between the step's host reads (loss, NaN check) and stop checks.
    log_interval: int = checked(50, AT_LEAST_1)
    # stop after this many optimizer steps (smoke runs, tests)
    max_steps: Optional[int] = checked(None, AT_LEAST_1_OR_NULL)
    # Progressive resolution (docs/recipes.md): train at each of these sizes in turn, ascending, the last
    # model.img_size (evaluation and checkpoints stay at model.img_size); empty: model.img_size throughout.
    img_sizes: tuple[int, ...] = ()
    # The epoch at which each size of img_sizes starts (the first 0); empty: equal phases of the epochs.
    img_size_epochs: tuple[int, ...] = ()


@dataclass
class EMAConfig:
    """timm's ModelEmaV3: the decay, its optional warm-up, and how often the EMA is updated."""

    enabled: bool = True
    decay: float = checked(0.99996, BELOW_1)  # per update (the ceiling of the warm-up)
    # timm's warm-up: decay = min(decay, 1 - (1 + step / warmup_gamma) ** -warmup_power)
    warmup: bool = False
    warmup_gamma: float = checked(1.0, POSITIVE)
    warmup_power: float = checked(2 / 3, POSITIVE)
    interval: int = checked(1, AT_LEAST_1)  # update after every N-th optimizer step


@dataclass
class EvalConfig:
    interval: int = checked(1, AT_LEAST_0)  # epochs between evaluations; 0: only after the last epoch
    # None: the model's pretrained cfg (T2T-ViT: 0.9 and bicubic, the paper's evaluation)
    crop_pct: Optional[float] = checked(None, Check(lambda v: v is None or 0 < v <= 1, "in (0, 1] or null (the model's)"))
    interpolation: Optional[str] = checked(None, Check(lambda v: v is None or v in _INTERPOLATIONS,
                                                       "null (the model's) or one of " + ", ".join(_INTERPOLATIONS)))
    batch_size: int = checked(100, BATCH)
    # the value best.pth is chosen by; minival_*: on data.holdout_fraction's held-out images, not on the val set
    metric: Literal["top1", "ema_top1", "top5", "ema_top5", "minival_top1", "ema_minival_top1"] = "ema_top1"
    # NAME=DIR evaluation sets (as validate.py --eval-set) scored after the last epoch, e.g. v2=/data/imagenetv2
    extra_sets: tuple[str, ...] = ()


@dataclass
class CheckpointConfig:
    every_steps: int = checked(0, AT_LEAST_0)  # mid-epoch checkpoints every N optimizer steps (0: off)
    every_minutes: float = checked(0.0, AT_LEAST_0)  # and/or every N minutes (0: off)
    # also keep the last K end-of-epoch checkpoints (0: only last.pth / best.pth)
    keep_epochs: int = checked(0, AT_LEAST_0)
    # also keep the K best end-of-epoch checkpoints by eval.metric, as best-epoch-N-<metric>-<value>.pth (0: off)
    keep_best: int = checked(0, AT_LEAST_0)


@dataclass
class DistConfig:
    # any collective: a stuck rank idles every GPU this long; > rank 0's slowest save
    timeout_minutes: float = checked(15.0, POSITIVE_MINUTES)
    # forming the process group: how long a rank waits for its peers
    init_timeout_minutes: float = checked(10.0, POSITIVE_MINUTES)


@dataclass
class LogConfig:
    """Where rank 0 sends the scalars besides log.jsonl / summary.csv (docs/trackers.md)."""

    tensorboard: bool = True
    wandb: bool = False  # Weights & Biases (the optional extra t2t[wandb])
    mlflow: bool = False  # MLflow (the optional extra t2t[mlflow])
    # wandb project / MLflow experiment; None: WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME, else "t2t"
    project: Optional[str] = None
    run_name: Optional[str] = None  # None: WANDB_NAME for wandb, else the run folder's name
    tags: tuple[str, ...] = ()
    wandb_entity: Optional[str] = None  # None: WANDB_ENTITY, else the account's default entity
    # None: WANDB_MODE, else online; offline writes under <run>/wandb/ for `wandb sync`
    wandb_mode: Optional[Literal["online", "offline"]] = None
    mlflow_tracking_uri: Optional[str] = None  # None: MLFLOW_TRACKING_URI, else MLflow's default


@dataclass
class DistillConfig:
    teacher: Optional[str] = None  # a t2t checkpoint, an official release file, a timm/torchvision state dict, .safetensors
    teacher_model: Optional[str] = None  # any timm name; None: the name the teacher checkpoint records
    # None: model.img_size (the batch is resized for the teacher)
    teacher_img_size: Optional[int] = checked(None, Check(lambda v: v is None or v > 0,
                                                          "a positive size or null (the student's)"))
    type: Literal["none", "soft", "hard"] = "none"
    # weight of the teacher term: 0 = plain training, 1 = the teacher only
    alpha: float = checked(0.5, Check(PROBABILITY.ok, "in [0, 1] (0: plain training, 1: the teacher only)"))
    tau: float = checked(1.0, POSITIVE)  # temperature of the soft term


@dataclass
class TokenLabelConfig:
    dir: Optional[str] = None  # LABELDIR (labels.json, blocks/) of scripts/generate_token_labels.py or its import
    cls_weight: float = checked(1.0, AT_LEAST_0)  # TokenLabeling's defaults
    dense_weight: float = checked(1.0, AT_LEAST_0)
    mix_token_alpha: float = checked(1.0, AT_LEAST_0)  # MixToken's Beta(alpha, alpha); 0: off


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    token_label: TokenLabelConfig = field(default_factory=TokenLabelConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, numbers, strings), safe for YAML and torch.load(weights_only=True)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# Keys that moved to the section that consumes them: old name -> new name. YAML files, overrides and the
# configs stored in older checkpoints that use an old name keep working, with a one-line warning.
RENAMED_KEYS = {"mixup.label_smoothing": "loss.label_smoothing"}


def rename_old_keys(values: Any, origin: str, *, warn: bool = True) -> Any:
    """A copy of nested {section: {key: value}} with every old key (RENAMED_KEYS) under its new name."""
    if not isinstance(values, dict):
        return values
    values = {s: dict(e) if isinstance(e, dict) else e for s, e in values.items()}
    for old, new in RENAMED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        entries = values.get(old_section)
        if not isinstance(entries, dict) or old_key not in entries:
            continue
        value = entries.pop(old_key)
        target = values.setdefault(new_section, {})
        if not isinstance(target, dict):
            continue  # apply_values reports the bad section
        if new_key in target and target[new_key] != value:
            raise ConfigError(f"{old}={value!r} and {new}={target[new_key]!r} (from {origin}): {old} is the old "
                              f"name of {new}; give only {new}")
        target.setdefault(new_key, value)
        if warn:
            _logger.warning("%s (from %s) is read as %s, its new name", old, origin, new)
    return values


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str, origin: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where no information is lost."""
    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{key}={value!r} (from {origin}): expected {expected}")

    args = typing.get_args(tp)
    kind = typing.get_origin(tp)
    if kind is typing.Union:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, origin)
    if kind is Literal:
        if value not in args:
            fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if kind is tuple and len(args) == 2 and args[1] is Ellipsis:  # a list of any length
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            fail("a list")
        return tuple(_coerce(v, args[0], key, origin) for v in value)
    if kind is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            fail(f"a list of {len(args)} numbers")
        return tuple(_coerce(v, a, key, origin) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                fail("a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    if tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            fail("a mapping of names to values, e.g. {trust_clip: true}")
        return dict(value)
    raise TypeError(f"unsupported config annotation {tp} for {key}")


def _unknown_key(key: str, valid: Sequence[str], origin: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"unknown config key {key!r} (from {origin}){hint}")


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s, cls in _section_types().items() for k in _field_types(cls)]


def _section_types() -> dict[str, type]:
    return {name: tp for name, tp in _field_types(Config).items()}


def apply_values(cfg: Config, values: dict[str, Any], origin: str) -> None:
    """Set nested {section: {key: value}} onto cfg, checking names and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(values).__name__}")
    values = rename_old_keys(values, origin)
    sections = _section_types()
    for section, entries in values.items():
        if section not in sections:
            raise _unknown_key(str(section), list(sections), origin)
        if not isinstance(entries, dict):
            raise ConfigError(f"section {section!r} (from {origin}): expected a mapping of keys")
        types = _field_types(sections[section])
        target = getattr(cfg, section)
        for key, value in entries.items():
            if key not in types:
                raise _unknown_key(f"{section}.{key}", _all_keys(), origin)
            setattr(target, key, _coerce(value, types[key], f"{section}.{key}", origin))


def parse_override(text: str) -> tuple[str, str, Any]:
    """'section.key=value' -> (section, key, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} (from the command line): expected section.key=value")
    dotted, raw = text.split("=", 1)
    if dotted.count(".") != 1:
        raise _unknown_key(dotted, _all_keys(), "the command line")
    section, key = dotted.split(".")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r} (from the command line): the value is not valid YAML: {e}") from e
    return section, key, value


def validate(cfg: Config) -> None:
    """Check every value that needs no context beyond the config itself, so that bad ones fail before a run starts."""
    for section, section_type in _section_types().items():
        for key, tp in _field_types(section_type).items():
            value = getattr(getattr(cfg, section), key)
            numbers = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise ConfigError(f"{section}.{key}={value!r}: expected a finite number")
    for section in _section_types():
        for f in dataclasses.fields(getattr(cfg, section)):
            check = f.metadata.get("check")
            value = getattr(getattr(cfg, section), f.name)
            if check is not None and not check.ok(value):
                raise ConfigError(f"{section}.{f.name}={value!r}: expected {check.expected}")
    if cfg.data.fast_decode and cfg.data.interpolation not in _FAST_DECODE_INTERPOLATIONS:
        raise ConfigError(f"data.interpolation={cfg.data.interpolation!r} with data.fast_decode=true: expected one "
                          f"of {', '.join(_FAST_DECODE_INTERPOLATIONS)} (or set data.fast_decode=false)")
    mixing = cfg.mixup.mixup_alpha > 0 or cfg.mixup.cutmix_alpha > 0
    if mixing and cfg.train.batch_size % 2:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size}: mixup / cutmix need an even batch size "
                          "(or set mixup.mixup_alpha=0 mixup.cutmix_alpha=0)")
    if cfg.eval.metric.endswith("minival_top1") and cfg.data.holdout_fraction == 0:
        raise ConfigError(f"eval.metric={cfg.eval.metric!r} needs a minival: set data.holdout_fraction (e.g. 0.01) "
                          "or choose another metric")
    for entry in cfg.eval.extra_sets:
        if "=" not in entry:
            raise ConfigError(f"eval.extra_sets entry {entry!r}: expected NAME=DIR, e.g. v2=/data/imagenetv2")
    _check_auto_augment(cfg.data.auto_augment)
    check_data_settings(cfg)
    _check_model_name(cfg.model.name, cfg.model.allow_any_timm_model)
    check_progressive_settings(cfg)
    _check_teacher_settings(cfg)
    if cfg.token_label.dir is not None and (cfg.mixup.mixup_alpha > 0 or cfg.mixup.cutmix_alpha > 0):
        raise ConfigError(f"token_label.dir with mixup.mixup_alpha={cfg.mixup.mixup_alpha} and mixup.cutmix_alpha="
                          f"{cfg.mixup.cutmix_alpha}: MixToken replaces mixup and CutMix; set both to 0")
    if cfg.loss.bce_target_threshold is not None and cfg.loss.type != "bce":
        raise ConfigError(f"loss.bce_target_threshold={cfg.loss.bce_target_threshold} is used by loss.type=bce only "
                          f"(loss.type={cfg.loss.type!r}): set loss.type=bce or remove it")


def _check_teacher_settings(cfg: Config) -> None:
    """Distillation needs a teacher file; token labeling needs its label folder and a T2T-ViT with an aux head."""
    if cfg.distill.type != "none" and not cfg.distill.teacher:
        raise ConfigError(f"distill.type={cfg.distill.type!r} needs distill.teacher: the teacher's checkpoint file "
                          "(or set distill.type=none)")
    if cfg.distill.type == "none" and cfg.distill.teacher:
        raise ConfigError(f"distill.teacher={cfg.distill.teacher!r} with distill.type=none: the teacher would not be "
                          "used; set distill.type=hard or soft to distil from it, or distill.teacher=null")
    if cfg.token_label.cls_weight + cfg.token_label.dense_weight <= 0:
        raise ConfigError("token_label.cls_weight and token_label.dense_weight are both 0: expected a positive sum")
    if cfg.token_label.dir is not None and not cfg.model.token_label:
        raise ConfigError(f"token_label.dir={cfg.token_label.dir!r} with model.token_label=false: the dense targets "
                          "train the aux head; set model.token_label=true")
    from .models import MODEL_ARCHS

    if cfg.model.token_label and cfg.model.name.partition(".")[0] not in MODEL_ARCHS:
        raise ConfigError(f"model.token_label=true with model.name={cfg.model.name!r}: token labeling takes a plain "
                          f"T2T-ViT ({', '.join(MODEL_ARCHS)})")


def _check_auto_augment(policy: Optional[str]) -> None:
    """data.auto_augment must be a policy string timm parses ('rand-m9-mstd0.5-inc1', 'augmix-m5', 'v0', ...)."""
    if not policy:
        return
    from timm.data import auto_augment as aa  # late import: timm is heavy and config must stay importable alone

    hparams = dict(translate_const=100, img_mean=(124, 116, 104))
    build = aa.rand_augment_transform if policy.startswith("rand") else \
        aa.augment_and_mix_transform if policy.startswith("augmix") else aa.auto_augment_transform
    try:
        build(policy, hparams)
    except Exception as e:  # timm reports a bad policy with asserts, KeyError or ValueError
        detail = f": {e}" if str(e) else ""
        raise ConfigError(f"data.auto_augment={policy!r}: timm cannot parse this policy{detail}; expected e.g. "
                          "'rand-m9-mstd0.5-inc1', 'augmix-m5-w3', 'v0' or null") from e


# Pixels per token side of a T2T-ViT (soft splits of stride 4, 2, 2): the token grid is img_size / 16.
TOKEN_STRIDE = 16


def check_transform_settings(data: DataConfig) -> None:
    """Settings the chosen training transform does not use are refused, naming them."""
    if data.train_transform == "cifar":
        if data.auto_augment:
            raise ConfigError(f"data.auto_augment={data.auto_augment!r} is not used by data.train_transform=cifar: "
                              "set it to null")
        if data.interpolation == "random":
            raise ConfigError("data.interpolation='random' is for data.train_transform=imagenet: "
                              "choose bilinear or bicubic for the cifar resize")
    if data.train_transform == "src" and data.interpolation == "random":
        raise ConfigError("data.interpolation='random' is for data.train_transform=imagenet: "
                          "choose bilinear or bicubic for the src resize")


def check_data_settings(cfg: Config) -> None:
    """The data settings that must agree with each other (and with the model size, for token labels).

    Part of `validate`; the data layer's DataSpec runs it again for configs changed after loading.
    """
    check_transform_settings(cfg.data)
    if cfg.data.backend == "dali":
        _check_dali_config(cfg.data)
    if cfg.data.shuffle == "block" and cfg.data.format in ("imagefolder", "cifar"):
        raise ConfigError(f"data.shuffle=block with data.format={cfg.data.format}: block order reads shards or parquet row "
                          "groups; set data.format=shards, parquet (or auto) or data.shuffle=global")
    if cfg.data.holdout_fraction and cfg.data.format in ("cifar", "shards", "parquet"):
        raise ConfigError(f"data.holdout_fraction={cfg.data.holdout_fraction} with data.format={cfg.data.format}: the "
                          "minival is held out of a class-folder training set (data.format=imagefolder) by the images' "
                          "paths; set data.holdout_fraction=0")
    _check_token_label_settings(cfg)


def _check_token_label_settings(cfg: Config) -> None:
    """Token labels follow RandomResizedCrop (drawn on the host by both backends), on a token grid that divides the image."""
    label_dir = cfg.token_label.dir
    if label_dir is None:
        return
    if cfg.data.train_transform != "imagenet":
        raise ConfigError(f"token_label.dir={label_dir!r} with data.train_transform={cfg.data.train_transform!r}: "
                          "the label maps follow RandomResizedCrop; set data.train_transform=imagenet")
    if cfg.model.img_size % TOKEN_STRIDE:
        raise ConfigError(f"token_label.dir with model.img_size={cfg.model.img_size}: expected a multiple of "
                          f"{TOKEN_STRIDE} (the token grid MixToken cuts along)")
    if cfg.data.holdout_fraction:
        raise ConfigError(f"token_label.dir={label_dir!r} with data.holdout_fraction={cfg.data.holdout_fraction}: a "
                          "minival is not held out of a training set read with its label maps; set "
                          "data.holdout_fraction=0 (and evaluate on the validation set)")


def img_size_phase_starts(train: TrainConfig) -> tuple[int, ...]:
    """The epoch at which each size of train.img_sizes starts: train.img_size_epochs, else equal phases."""
    if train.img_size_epochs:
        return tuple(train.img_size_epochs)
    n = len(train.img_sizes)
    return tuple(i * train.epochs // n for i in range(n))


def check_progressive_settings(cfg: Config) -> None:
    """train.img_sizes / train.img_size_epochs: T2T-ViT token grids, ascending to model.img_size, phases in the run."""
    sizes, starts, train = cfg.train.img_sizes, cfg.train.img_size_epochs, cfg.train
    if not sizes:
        if starts:
            raise ConfigError(f"train.img_size_epochs={list(starts)} without train.img_sizes: set the sizes too, "
                              "or leave both empty")
        return
    odd = [s for s in sizes if s <= 0 or s % TOKEN_STRIDE]
    if odd:
        raise ConfigError(f"train.img_sizes={list(sizes)}: {odd[0]} is not a positive multiple of {TOKEN_STRIDE} "
                          f"(the T2T module's soft splits have strides 4, 2, 2)")
    if any(a >= b for a, b in zip(sizes, sizes[1:])):
        raise ConfigError(f"train.img_sizes={list(sizes)}: expected strictly ascending sizes")
    if sizes[-1] != cfg.model.img_size:
        raise ConfigError(f"train.img_sizes={list(sizes)}: the last size must be model.img_size={cfg.model.img_size} "
                          "(the size the model is evaluated and saved at)")
    if starts and len(starts) != len(sizes):
        raise ConfigError(f"train.img_size_epochs={list(starts)}: expected one start epoch per size of "
                          f"train.img_sizes={list(sizes)} ({len(sizes)})")
    if starts and (starts[0] != 0 or any(a >= b for a, b in zip(starts, starts[1:]))):
        raise ConfigError(f"train.img_size_epochs={list(starts)}: expected strictly ascending epochs starting at 0")
    phase_starts = img_size_phase_starts(train)
    if phase_starts[-1] >= train.epochs or len(set(phase_starts)) != len(phase_starts):
        raise ConfigError(f"train.img_sizes={list(sizes)} starting at epochs {list(phase_starts)}: every size needs "
                          f"at least one of the train.epochs={train.epochs} epochs")
    from .models import DISTILLED_ARCHS, MODEL_ARCHS, VARIANTS

    if cfg.model.name.partition(".")[0] not in (*MODEL_ARCHS, *VARIANTS, *DISTILLED_ARCHS):
        raise ConfigError(f"train.img_sizes with model.name={cfg.model.name!r}: progressive resolution resamples a "
                          "T2T-ViT's position table; expected a T2T-ViT model")
    if cfg.data.backend == "dali":
        raise ConfigError(f"train.img_sizes={list(sizes)} with data.backend=dali: the DALI pipeline is built for one "
                          "size; set data.backend=pil")
    if cfg.token_label.dir is not None:
        raise ConfigError(f"train.img_sizes={list(sizes)} with token_label.dir: the label maps are cut on the "
                          "model.img_size token grid; leave train.img_sizes empty")


def _check_dali_config(data: DataConfig) -> None:
    """What data.backend=dali cannot express is refused here, naming the value (DALI itself is not imported)."""
    from .data.rand_policy import parse_rand_policy  # pure string parsing: DALI is imported only to run

    if data.format == "cifar" or data.train_transform != "imagenet":
        raise ConfigError(f"data.backend='dali' reads ImageFolder JPEG/PNG folders with the imagenet transform, "
                          f"not data.format={data.format!r} / data.train_transform={data.train_transform!r}: "
                          "set data.backend=pil")
    if data.interpolation not in ("random", "bilinear", "bicubic"):
        raise ConfigError(f"data.interpolation={data.interpolation!r} with data.backend=dali: expected random, "
                          "bilinear or bicubic")
    try:
        parse_rand_policy(data.auto_augment)
    except ValueError as e:
        raise ConfigError(f"data.auto_augment={data.auto_augment!r} with data.backend=dali: {e}") from None


def _timm_knows_optimizer(name: str) -> bool:
    from timm.optim import list_optimizers

    return name in list_optimizers()


def _check_model_name(name: str, allow_any: bool) -> None:
    """A registered T2T-ViT (with an optional pretrained tag), or any timm model if explicitly allowed."""
    import timm
    from timm.models import get_pretrained_cfg

    from .models import DISTILLED_ARCHS, MODEL_ARCHS, VARIANTS

    base, _, tag = name.partition(".")
    if base in MODEL_ARCHS or base in VARIANTS or base in DISTILLED_ARCHS:
        try:
            get_pretrained_cfg(name, allow_unregistered=False)
        except Exception:  # timm raises RuntimeError for an unknown tag
            raise ConfigError(f"model.name={name!r}: {base} has no pretrained tag {tag!r}") from None
        return
    if not allow_any:
        raise ConfigError(f"model.name={name!r}: expected a T2T-ViT model ({', '.join((*MODEL_ARCHS, *VARIANTS))}); "
                          "set model.allow_any_timm_model=true to train another timm model")
    if not (name.startswith(("hf-hub:", "local-dir:")) or timm.is_model(name)):
        raise ConfigError(f"model.name={name!r}: not a model timm knows (model.allow_any_timm_model is set)")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str) -> dict[str, Any]:
    """The mapping in a UTF-8 YAML config file; ConfigError if it is missing, empty, not UTF-8 or not valid YAML."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.load(f, Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}): save it as UTF-8") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {' '.join(str(e).split())}") from e
    if values is None:
        raise ConfigError(f"config file {path!r} is empty: expected sections such as model:, data:, train:")
    return values


def recipe_names() -> list[str]:
    """The names of the recipes shipped with the package, sorted (`-c NAME`)."""
    return sorted(name[:-5] for name in os.listdir(RECIPE_DIR) if name.endswith(".yaml"))


def find_recipe(name_or_path: str) -> str:
    """The YAML file `name_or_path` names: an existing file, else a shipped recipe (`t2t_vit_14`, `demo.yaml`)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    name = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    shipped = os.path.join(RECIPE_DIR, f"{name}.yaml")
    if os.sep not in name_or_path and "/" not in name_or_path and os.path.isfile(shipped):
        return shipped
    names = recipe_names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close and "/" not in name_or_path else ""
    raise ConfigError(f"config {name_or_path!r}: no such file, and not a recipe name{hint}; expected a YAML path "
                      f"or one of: {', '.join(names)}")


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (), base: Optional[Config] = None) -> Config:
    """Defaults (or `base`), then the YAML file or recipe at `path` (if any), then `section.key=value` overrides."""
    cfg = config_from_dict(base.to_dict(), origin="the stored config") if base is not None else Config()
    if path is not None:
        path = find_recipe(path)
        apply_values(cfg, read_yaml(path), origin=path)
    for text in overrides:
        section, key, value = parse_override(text)
        apply_values(cfg, {section: {key: value}}, origin=f"command line {text!r}")
    validate(cfg)
    return cfg


def config_from_dict(values: dict[str, Any], origin: str = "checkpoint") -> Config:
    """Rebuild a Config from Config.to_dict() output (e.g. the copy stored in a checkpoint)."""
    cfg = Config()
    apply_values(cfg, values, origin)
    validate(cfg)
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)
