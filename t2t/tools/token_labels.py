"""Dense token labels from a teacher (scripts/generate_token_labels.py): its classifier at every location."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..engine.teacher import TeacherError

__all__ = ["dense_logits"]


def dense_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class scores at every location of the model's last feature map: (B, num_classes, H, W)."""
    features = model.forward_features(images)
    if features.ndim == 3:  # tokens (B, prefix + N, D)
        prefix = getattr(model, "num_prefix_tokens", 1)
        tokens = features[:, prefix:]
        grid = math.isqrt(tokens.shape[1])
        if grid * grid != tokens.shape[1]:
            raise TeacherError(f"the teacher gives {tokens.shape[1]} patch tokens, not a square grid")
        head = getattr(model, "aux_head", None) or model.get_classifier()
        scores = head(tokens)  # (B, N, C)
        return scores.transpose(1, 2).reshape(scores.shape[0], -1, grid, grid)
    if features.ndim == 4:  # (B, D, H, W)
        head = model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise TeacherError(f"the teacher's classifier is a {type(head).__name__}; expected a Linear layer")
        return torch.einsum("bdhw,cd->bchw", features, head.weight) + head.bias[None, :, None, None]
    raise TeacherError(f"the teacher's forward_features gives a {features.ndim}-d tensor; expected tokens or a map")
