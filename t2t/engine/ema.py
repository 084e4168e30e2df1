"""Model EMA whose per-step update is one fused multi-tensor lerp over cached tensor lists.

timm's ModelEmaV3 (foreach path) builds the `state_dict()` of the model and of the EMA at every
update: two ordered dicts of hundreds of entries and their hooks, host time on every step. This
subclass collects the tensors once (the same ones state_dict() returns, which share storage with
the parameters and buffers) and then updates with one `torch._foreach_lerp_` for the floating-point
tensors and one `torch._foreach_copy_` for the others. The EMA's module, its state dict keys and
the decay schedule are timm's, so checkpoints are unchanged.

`interval` updates the EMA after every N-th optimizer step only (step + 1 a multiple of N); with
timm's warm-up (`use_warmup`, `warmup_gamma`, `warmup_power`) the decay of an update is
`get_decay(step)` of the optimizer step, so both are functions of the step and exact on resume.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from timm.utils import ModelEmaV3

from ..config import EMAConfig


class CachedModelEma(ModelEmaV3):
    """ModelEmaV3 with the update's tensor lists built once per model object."""

    def __init__(self, model: nn.Module, *, interval: int = 1, **kwargs) -> None:
        super().__init__(model, **kwargs)
        if interval < 1:
            raise ValueError(f"EMA interval={interval!r}: expected an integer >= 1 (optimizer steps between updates)")
        self.interval = interval
        self._cache_key: Optional[tuple[int, int]] = None
        self._lists: tuple[list[torch.Tensor], ...] = ([], [], [], [])

    def _tensor_lists(self, model: nn.Module) -> tuple[list[torch.Tensor], ...]:
        key = (id(model), id(self.module))
        if key != self._cache_key:
            ema_state, model_state = self.module.state_dict(), model.state_dict()
            if len(ema_state) != len(model_state):
                raise ValueError(f"EMA of {len(ema_state)} tensors cannot follow a model of {len(model_state)}")
            float_ema, float_model, other_ema, other_model = [], [], [], []
            for ema_v, model_v in zip(ema_state.values(), model_state.values()):
                if ema_v.is_floating_point():
                    float_ema.append(ema_v)
                    float_model.append(model_v)
                else:
                    other_ema.append(ema_v)
                    other_model.append(model_v)
            self._lists = (float_ema, float_model, other_ema, other_model)
            self._cache_key = key
        return self._lists

    @torch.no_grad()
    def update(self, model: nn.Module, step: Optional[int] = None) -> None:
        """Average `model` in after optimizer step `step` (0-based) if it is due (every `interval` steps)."""
        if step is not None and (step + 1) % self.interval:
            return
        cacheable = self.foreach and not self.exclude_buffers and self.device is None and self.dtype is None
        if not cacheable:
            return super().update(model, step=step)
        decay = self.get_decay(step)
        float_ema, float_model, other_ema, other_model = self._tensor_lists(model)
        self._foreach_lerp_(float_ema, float_model, weight=1.0 - decay)
        if other_ema:
            torch._foreach_copy_(other_ema, other_model)

    def _apply(self, fn, recurse=True):  # .to() / .cuda() may replace tensors: collect them again
        self._cache_key = None
        return super()._apply(fn, recurse)

    def load_state_dict(self, *args, **kwargs):
        self._cache_key = None
        return super().load_state_dict(*args, **kwargs)


def build_ema(model: nn.Module, cfg: EMAConfig) -> CachedModelEma:
    """The run's EMA of `model` as `cfg` (the ema: section) says: decay, timm's warm-up, update interval."""
    return CachedModelEma(model, decay=cfg.decay, use_warmup=cfg.warmup, warmup_gamma=cfg.warmup_gamma,
                          warmup_power=cfg.warmup_power, interval=cfg.interval)
