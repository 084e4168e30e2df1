"""Mixup / CutMix (timm's), drawing from NumPy's global RNG (reseeded per step: t2t.rng.reseed_step)."""
from __future__ import annotations

from timm.data import Mixup

__all__ = ["build_mixup"]


def build_mixup(
    *,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: str = "batch",
    label_smoothing: float = 0.1,
    num_classes: int,
) -> Mixup | None:
    """timm's Mixup with soft, label-smoothed targets; None when both alphas are 0.

    The returned callable maps (images, int targets) to (mixed images, (B, num_classes) soft targets)
    and needs an even batch size. When it is None, apply label smoothing in the loss instead.
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha} and {cutmix_alpha}")
    if not 0.0 <= prob <= 1.0 or not 0.0 <= switch_prob <= 1.0:
        raise ValueError(f"prob and switch_prob must be in [0, 1], got {prob} and {switch_prob}")
    if mode not in ("batch", "pair", "elem"):
        raise ValueError(f"mixup mode must be 'batch', 'pair' or 'elem', got {mode!r}")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return None
    return Mixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        switch_prob=switch_prob,
        mode=mode,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )
