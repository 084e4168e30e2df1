"""The teacher of a distillation run: loaded once, frozen, in eval mode, never wrapped in DDP or saved.

It reads every file the project reads (a t2t run checkpoint, an official release file, a timm or
torchvision state dict, `.safetensors`) through t2t.models.weights, so wrapper prefixes, EMA entries
and position-grid sizes are handled in one place. Its identity (path, size, sha256) is recorded in
the run's checkpoints, and a resume with another file is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Mapping, Optional, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..errors import T2TError
from ..data.dataset import _class_difference as class_difference
from ..models import DISTILLED_ARCHS, MODEL_ARCHS, VARIANTS
from ..models.factory import create_model
from ..models.weights import CheckpointError, checkpoint_filter_fn, describe_mismatch, extract_state_dict, \
    read_checkpoint, strip_prefixes

_logger = logging.getLogger("t2t.train")

__all__ = ["Teacher", "TeacherError", "check_same_teacher", "check_teacher_classes", "file_identity", "load_teacher"]


class TeacherError(T2TError, ValueError):
    """A teacher file or model name that cannot be used; the message names the value and the fix."""


def file_identity(path: str, chunk: int = 1 << 23) -> dict[str, Any]:
    """{'path', 'size', 'sha256'} of a file (read in 8 MiB pieces)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return {"path": os.path.abspath(path), "size": os.path.getsize(path), "sha256": digest.hexdigest()}


def check_same_teacher(saved: Optional[Mapping[str, Any]], current: Mapping[str, Any], checkpoint: str) -> None:
    """Refuse to resume a run with a teacher file other than the one it was trained with."""
    if saved is None:
        raise TeacherError(f"{checkpoint} was trained without a teacher; this launch has distill.teacher="
                           f"{current['path']!r}: resume without distill.teacher, or start a new run")
    if saved.get("sha256") != current["sha256"]:
        raise TeacherError(
            f"distill.teacher={current['path']!r} (sha256 {current['sha256'][:12]}, {current['size']} bytes) is not "
            f"the teacher {checkpoint} was trained with: {saved.get('path')!r} (sha256 {str(saved.get('sha256'))[:12]}, "
            f"{saved.get('size')} bytes); resume with that file, or start a new run")


def _is_t2t(name: str) -> bool:
    base = name.partition(".")[0]
    return base in MODEL_ARCHS or base in DISTILLED_ARCHS or base in VARIANTS


def _name_from_checkpoint(checkpoint: Any) -> Optional[str]:
    """The model name a t2t checkpoint (or an official release file) records, if timm knows it."""
    if not isinstance(checkpoint, Mapping):
        return None
    arch = checkpoint.get("arch")
    if not isinstance(arch, str):
        config = checkpoint.get("config")
        arch = config.get("model", {}).get("name") if isinstance(config, Mapping) else None
    if not isinstance(arch, str):
        return None
    for candidate in (arch, arch.lower()):  # the official files say 'T2t_vit_14'
        if timm.is_model(candidate.partition(".")[0]):
            return candidate
    return None


def _recorded_classes(path: str, checkpoint: Any) -> Optional[list[str]]:
    """The class names a t2t checkpoint (its run) or an exported .safetensors file (its metadata) records."""
    names = None
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                names = json.loads((f.metadata() or {}).get("classes", "null"))
        except ValueError:  # metadata that is not JSON: names unknown (the weights were read already)
            names = None
    elif isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("run"), Mapping):
        names = checkpoint["run"].get("classes")
    return [str(c) for c in names] if isinstance(names, list) else None


def check_teacher_classes(recorded: Optional[Sequence[str]], classes: Sequence[str], source: str) -> None:
    """Refuse a teacher whose recorded class names differ from the data's (same count, other names or order)."""
    if recorded is None or list(recorded) == list(classes):
        return
    detail = class_difference(list(recorded), list(classes), "the teacher", "the data")
    raise TeacherError(f"{source} was trained on other classes than the data's ({len(recorded)} named in the "
                       f"teacher, {len(classes)} in the data): {detail}; its class i would be taken for the data's "
                       "class i. Use a teacher trained on these class folders")


class Teacher:
    """A frozen classifier called on the student's batch: resized to its input size, under no_grad.

    Deliberately not an nn.Module, so it can never become part of the student's module tree, its
    state dict, its optimizer or its DDP wrapper.
    """

    def __init__(self, model: nn.Module, *, name: str, img_size: Optional[int], identity: Mapping[str, Any]) -> None:
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.img_size = img_size
        self.identity = dict(identity, model=name, img_size=img_size)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.model.training:  # guards against a caller's .train() on it
            self.model.eval()
        if self.img_size is not None and tuple(images.shape[-2:]) != (self.img_size, self.img_size):
            images = F.interpolate(images, size=(self.img_size, self.img_size), mode="bicubic", align_corners=False)
        out = self.model(images)
        return out[0] if isinstance(out, (tuple, list)) else out

    def to(self, device: torch.device) -> "Teacher":
        self.model.to(device)
        return self


_TEACHER_FILES = "a t2t checkpoint, an official release file, a timm/torchvision state dict or a .safetensors file"


def _not_a_teacher_file(path: str, source: str, model_source: str) -> str:
    """Why `path` cannot be read as the teacher's weights: a folder (naming the files in it that could be), a
    model name, or nothing."""
    if os.path.isdir(path):
        try:
            names = os.listdir(path)
        except OSError:
            names = []
        found = sorted((n for n in names if n.endswith((".pth", ".pt", ".bin", ".safetensors"))),
                       key=lambda n: (n not in ("best.pth", "last.pth"), n))  # a run folder's usual choices first
        inside = f"; it holds {', '.join(found[:4])}{', ...' if len(found) > 4 else ''}: name one" if found else ""
        return f"{source}={path!r} is a folder; expected a file ({_TEACHER_FILES}){inside}"
    if timm.is_model(path.partition(".")[0]):
        return (f"{source}={path!r} is a model name and no such file exists; expected the teacher's weights as a "
                f"file ({_TEACHER_FILES}), its model in {model_source} (nothing is downloaded)")
    return f"{source}={path!r}: no such file (expected {_TEACHER_FILES})"


def load_teacher(
        path: str,
        *,
        model_name: Optional[str] = None,
        num_classes: int,
        img_size: int,
        device: torch.device = torch.device("cpu"),
        source: str = "distill.teacher",
        classes: Optional[Sequence[str]] = None,
        model_source: str = "distill.teacher_model",
) -> Teacher:
    """Build `model_name` (default: the name the checkpoint records) and load `path` into it, strictly.

    With `classes` (the data's class names), a teacher file that records its own class names must list
    the same ones in the same order.
    """
    if not os.path.isfile(path):
        raise TeacherError(_not_a_teacher_file(path, source, model_source))
    try:
        checkpoint = read_checkpoint(path)
        state_dict, where = extract_state_dict(checkpoint, use_ema=True, source=f"{source}={path!r}")
    except CheckpointError as e:
        raise TeacherError(str(e)) from None
    name = model_name or _name_from_checkpoint(checkpoint)
    if name is None:
        raise TeacherError(f"{source}={path!r} records no model name timm knows: set {model_source} "
                           "(e.g. t2t_vit_14, resnet50)")
    if not timm.is_model(name.partition(".")[0]):
        raise TeacherError(f"{model_source}={name!r}: not a model timm knows")
    if classes is not None:
        check_teacher_classes(_recorded_classes(path, checkpoint), classes, f"{source}={path!r}")
    state_dict = strip_prefixes(state_dict)
    head = state_dict.get("head.weight", state_dict.get("fc.weight"))
    if head is not None and head.ndim == 2 and head.shape[0] != num_classes:
        raise TeacherError(f"{source}={path!r} classifies {head.shape[0]} classes, the training data has "
                           f"{num_classes}: a teacher must predict the student's classes")
    try:  # any timm model, with the constructor's own dropout defaults; img_size only where the model takes it
        model = create_model(ModelConfig(name=name, allow_any_timm_model=True), num_classes,
                             img_size=img_size if _is_t2t(name) else None, drop_rate=None, drop_path_rate=None)
    except Exception as e:  # timm raises several types for bad kwargs
        raise TeacherError(f"{model_source}={name!r} cannot be built: {e}") from None
    state_dict = checkpoint_filter_fn(state_dict, model)
    target = model.state_dict()
    for key in [k for k in state_dict if k.startswith(("aux_head.", "head_dist.", "dist_token")) and k not in target]:
        del state_dict[key]  # parts of a token-labeling or distilled model the teacher's form does not use
    mismatch = describe_mismatch(state_dict, target)
    if mismatch:
        raise TeacherError(f"{source}={path!r} ({where}) does not fit the teacher model {name}: {mismatch}; "
                           f"set {model_source} to the model the file was trained as")
    model.load_state_dict(state_dict, strict=True)
    identity = file_identity(path)
    teacher = Teacher(model, name=name, img_size=img_size, identity=identity).to(device)
    _logger.info("Teacher %s from %s (%s; %d bytes, sha256 %s), input %dpx", name, path, where, identity["size"],
                 identity["sha256"][:12], img_size)
    return teacher
