"""T2T-ViT variants that learn from a teacher: a DeiT distillation token, or a token-labeling aux head.

`t2t_vit_*_distilled` (registered with timm): a second learnable token after the class token and a
second head over it, as in DeiT. In training the model returns (class logits, distillation logits);
in evaluation their average. The class token and the patches keep the plain model's fixed sinusoid
positions (so the plain variant's weights load unchanged); the distillation token gets none, since a
learned position added to a learned token is the same thing.

`create_token_label_model(name)` (the config's `model.token_label: true`): the plain variant plus
`aux_head`, a Linear over every patch token. In training the model returns (class logits (B, C),
token logits (B, N, C)); in evaluation TokenLabeling's rule: class logits + 0.5 * max over tokens
of the token logits.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .t2t_vit import MODEL_ARCHS, T2TViT, _cfg

__all__ = ["DISTILLED_ARCHS", "T2TViTDistilled", "T2TViTTokenLabel", "create_token_label_model"]

DISTILLED_SUFFIX = "_distilled"
# name -> the plain variant it extends
DISTILLED_ARCHS: dict[str, str] = {f"{name}{DISTILLED_SUFFIX}": name for name in MODEL_ARCHS}
AUX_SCORE_WEIGHT = 0.5  # TokenLabeling's evaluation rule: cls + 0.5 * max over tokens of the aux logits


class T2TViTDistilled(T2TViT):
    """T2T-ViT with DeiT's distillation token and head (`dist_token`, `head_dist`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_prefix_tokens = 2
        self.distilled_training = True  # training mode returns both heads' logits
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.head_dist = nn.Linear(self.embed_dim, self.num_classes) if self.num_classes > 0 else nn.Identity()
        trunc_normal_(self.dist_token, std=0.02)
        self.head_dist.apply(self._init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"dist_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^cls_token|dist_token|pos_embed|tokens_to_token",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        self.distilled_training = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        self.head_dist = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image to (B, 2 + N, D): class token and patches with their positions, the distillation token without."""
        x = self.tokens_to_token(x)  # (B, N, D)
        B = x.shape[0]
        cls = self.cls_token.expand(B, -1, -1) + self.pos_embed[:, :1]
        dist = self.dist_token.expand(B, -1, -1)
        return self.pos_drop(torch.cat((cls, dist, x + self.pos_embed[:, 1:]), dim=1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        x_cls, x_dist = x[:, 0], x[:, 1]
        if pre_logits:
            return (x_cls + x_dist) / 2
        x_cls, x_dist = self.head(x_cls), self.head_dist(x_dist)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x_cls, x_dist
        return (x_cls + x_dist) / 2


class T2TViTTokenLabel(T2TViT):
    """T2T-ViT with TokenLabeling's `aux_head` over the patch tokens."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.aux_head = nn.Linear(self.embed_dim, self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.aux_head.apply(self._init_weights)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        self.aux_head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        if pre_logits:
            return x[:, 0]
        cls_logits = self.head(x[:, 0])
        aux_logits = self.aux_head(x[:, self.num_prefix_tokens:])  # (B, N, C)
        if self.training and not torch.jit.is_scripting():
            return cls_logits, aux_logits
        return cls_logits + AUX_SCORE_WEIGHT * aux_logits.max(dim=1).values


def _build(cls: type, variant: str, base: str, pretrained: bool, **kwargs: Any) -> T2TViT:
    from .weights import checkpoint_filter_fn

    tokens_type, embed_dim, depth, num_heads, mlp_ratio = MODEL_ARCHS[base]
    arch = dict(tokens_type=tokens_type, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **{**arch, **kwargs})


def create_token_label_model(name: str, pretrained: bool = False, **kwargs: Any) -> T2TViTTokenLabel:
    """The T2T-ViT `name` (a registered plain variant, with an optional pretrained tag) with an aux head."""
    base = name.partition(".")[0]
    if base not in MODEL_ARCHS:
        raise ValueError(f"model {name!r} with token labeling: expected a plain T2T-ViT ({', '.join(MODEL_ARCHS)})")
    return _build(T2TViTTokenLabel, name, base, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({
    name: _cfg(classifier=("head", "head_dist"), first_conv="tokens_to_token.attention1." + (
        "kqv" if MODEL_ARCHS[base][0] == "performer" else "attn.qkv"))
    for name, base in DISTILLED_ARCHS.items()})


def _register(name: str, base: str) -> None:
    def factory(pretrained: bool = False, **kwargs: Any) -> T2TViTDistilled:
        return _build(T2TViTDistilled, name, base, pretrained, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{name}: {base} with a DeiT distillation token and head."
    factory.__module__ = __name__
    globals()[name] = register_model(factory)


for _name, _base in DISTILLED_ARCHS.items():
    _register(_name, _base)
