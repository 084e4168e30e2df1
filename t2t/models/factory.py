"""The one place a model and its evaluation preprocessing are made from a model config.

``create_model(model_cfg, num_classes)`` builds what training, validate.py, predict.py, export,
the benchmarks and the visualisations use, so a checkpoint's stored ``model`` section is enough
to rebuild the exact module it was trained as (token-labeling aux head, distilled heads included).
``resolve_eval_preprocessing`` follows timm's ``resolve_data_config``: the model's pretrained cfg
(input size, crop_pct, interpolation, mean, std) gives the defaults, settings the user made
override them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import timm
import torch.nn as nn

from ..config import ModelConfig
from .t2t_vit_teacher import create_token_label_model

__all__ = ["EvalPreprocessing", "create_model", "named_model_config", "resolve_eval_preprocessing"]


def create_model(model_cfg: ModelConfig, num_classes: Optional[int] = None, **overrides: Any) -> nn.Module:
    """The model `model_cfg` describes, with `num_classes` outputs (default: model_cfg.num_classes, else timm's).

    `overrides` replace the config's constructor arguments (img_size, drop_rate, drop_path_rate, ...); an
    override of None leaves the argument out (e.g. img_size=None for timm models without that argument).
    grad_checkpointing=False turns the config's gradient checkpointing off (evaluation needs no backward).
    """
    grad_checkpointing = overrides.pop("grad_checkpointing", model_cfg.grad_checkpointing)
    kwargs: dict[str, Any] = dict(img_size=model_cfg.img_size, drop_rate=model_cfg.drop_rate,
                                  drop_path_rate=model_cfg.drop_path_rate)
    classes = num_classes if num_classes is not None else model_cfg.num_classes
    if classes is not None:
        kwargs["num_classes"] = classes
    kwargs.update(overrides)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if model_cfg.token_label:  # a plain T2T-ViT plus TokenLabeling's aux_head over the patch tokens
        model = create_token_label_model(model_cfg.name, **kwargs)
    else:
        model = timm.create_model(model_cfg.name, **kwargs)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def named_model_config(name: str, img_size: int = 224, **fields: Any) -> ModelConfig:
    """The ModelConfig of a tool that is given only a model name: no dropout or drop-path (the modules' defaults)."""
    return ModelConfig(name=name, img_size=img_size, **{"drop_rate": 0.0, "drop_path_rate": 0.0, **fields})


@dataclass(frozen=True)
class EvalPreprocessing:
    """Resize the shorter side to floor(img_size / crop_pct) with `interpolation`, centre-crop img_size, normalise."""

    img_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def transform(self) -> Callable:
        """The torchvision transform of these settings (t2t.data.transforms.build_eval_transform)."""
        from ..data.transforms import build_eval_transform

        return build_eval_transform(self.img_size, self.crop_pct, self.interpolation, mean=self.mean, std=self.std)


def _pretrained_cfg(model: Union[nn.Module, str]) -> dict[str, Any]:
    """The pretrained cfg of a built model (timm attaches it) or of a registered name (with an optional tag)."""
    if isinstance(model, str):
        cfg = timm.models.get_pretrained_cfg(model, allow_unregistered=True)
        return cfg.to_dict() if cfg is not None else {}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return dict(cfg)


def resolve_eval_preprocessing(model: Union[nn.Module, str], *, img_size: Optional[int] = None,
                               crop_pct: Optional[float] = None, interpolation: Optional[str] = None,
                               mean: Optional[tuple[float, ...]] = None,
                               std: Optional[tuple[float, ...]] = None) -> EvalPreprocessing:
    """Evaluation settings: each argument given (not None) wins, else the model's pretrained cfg, else timm's
    defaults (input 224, crop 0.875, bicubic, ImageNet mean/std), as timm's resolve_data_config does.

    A built model that states its own `img_size` (every T2T-ViT does) gives that size before its cfg does: the
    cfg names the size the released weights were trained at, the module the size it was built for.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    cfg = _pretrained_cfg(model)
    if img_size is None and isinstance(model, nn.Module) and isinstance(getattr(model, "img_size", None), int):
        img_size = model.img_size
    if img_size is None:
        img_size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return EvalPreprocessing(
        img_size=int(img_size),
        crop_pct=float(crop_pct if crop_pct is not None else cfg.get("crop_pct") or 0.875),
        interpolation=interpolation or cfg.get("interpolation") or "bicubic",
        mean=tuple(float(v) for v in (mean if mean is not None else cfg.get("mean") or IMAGENET_DEFAULT_MEAN)),
        std=tuple(float(v) for v in (std if std is not None else cfg.get("std") or IMAGENET_DEFAULT_STD)))
