"""T2T-ViT: Tokens-to-Token vision transformers (Yuan et al., ICCV 2021), registered with timm."""
from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block

from .layers import (GELU, TokenPerformer, TokenTransformer, cpu_float32, grid_tokens, patch_norm_linear,
                     sinusoid_table, token_grid, use_cpu_linears)

TokensType = Literal["performer", "transformer"]


def _image_patches(x: torch.Tensor) -> torch.Tensor:
    """Soft split 7x7 stride 4 pad 2 of an image (B, C, H, W) into tokens (B, H/4 * W/4, 7*7*C).

    Features in (kh, kw, c) order, gathered from a channels-last copy of the image in runs of 7*C
    contiguous values: about twice as fast as nn.Unfold's (c, kh, kw) order (see T2TModule.image_order).
    """
    grid = F.pad(x.permute(0, 2, 3, 1), (0, 0, 2, 2, 2, 2))  # (B, H+4, W+4, C), one copy
    patches = grid.unfold(1, 7, 4).unfold(2, 7, 4)  # (B, H/4, W/4, C, 7, 7)
    return patches.permute(0, 1, 2, 4, 5, 3).flatten(3).flatten(1, 2)


class _TokenSoftSplit(torch.autograd.Function):
    """Soft split 3x3 stride 2 pad 1 of a channels-last grid (B, H, W, C) into patches (B, H/2, W/2, 3*3*C).

    Patch features come out in (kh, kw, c) order, three contiguous runs of memory per patch: about
    twice as fast to gather as nn.Unfold's (c, kh, kw) order, so the layers reading the patches index
    their weights with T2TModule.patch_order instead. The backward adds the nine taps back with
    strided slices, a few times faster than autograd's unfold_backward.
    """

    @staticmethod
    def forward(ctx: Any, grid: torch.Tensor) -> torch.Tensor:
        ctx.grid_shape = grid.shape
        taps = F.pad(grid, (0, 0, 1, 1, 1, 1)).unfold(1, 3, 2).unfold(2, 3, 2)  # (B, H/2, W/2, C, 3, 3)
        return taps.permute(0, 1, 2, 4, 5, 3).flatten(3)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        B, H, W, C = ctx.grid_shape
        taps = grad.reshape(B, H // 2, W // 2, 3, 3, C)
        padded = grad.new_zeros(B, H + 2, W + 2, C)
        for i in range(3):
            for j in range(3):
                padded[:, i:i + H:2, j:j + W:2] += taps[:, :, :, i, j]
        return padded[:, 1:-1, 1:-1]


def _token_patches(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Soft split of tokens (B, H*W, C) on an HxW grid into (B, H/2 * W/2, 3*3*C), in (kh, kw, c) order."""
    return _TokenSoftSplit.apply(x.view(x.shape[0], height, width, x.shape[2])).flatten(1, 2)


def _patch_order(channels: int, kernel: int) -> torch.Tensor:
    """Index of nn.Unfold's (c, kh, kw) feature for each (kh, kw, c) feature of a kernel x kernel patch."""
    return torch.arange(channels * kernel * kernel).view(channels, kernel, kernel).permute(1, 2, 0).flatten()


_TOKENS_PER_CHUNK = 8 * 56 * 56  # first-layer tokens per chunk when running without autograd


class T2TModule(nn.Module):
    """Tokens-to-Token: soft split 7x7/4, token layer, 3x3/2 re-split twice, project to embed_dim."""

    def __init__(
            self,
            img_size: int = 224,
            tokens_type: TokensType = "performer",
            in_chans: int = 3,
            embed_dim: int = 768,
            token_dim: int = 64,
    ) -> None:
        super().__init__()
        if tokens_type == "performer":
            layer = TokenPerformer
        elif tokens_type == "transformer":
            layer = TokenTransformer
        else:
            raise ValueError(f"tokens_type={tokens_type!r}: expected 'performer' or 'transformer'")
        self.attention1 = layer(in_chans * 7 * 7, token_dim)
        self.attention2 = layer(token_dim * 3 * 3, token_dim)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)
        self.grid_size = img_size // 16
        self.num_patches = self.grid_size ** 2
        # Patches come in (kh, kw, c) order; the weights that read them are indexed to match.
        self.register_buffer("image_order", _patch_order(in_chans, 7), persistent=False)
        self.register_buffer("patch_order", _patch_order(token_dim, 3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # On the CPU, a few images at a time: the memory-bound layers over H/4 * W/4 tokens then work on
        # tensors small enough (< 32 MiB) to come from the allocator's free lists instead of fresh pages
        # (t2t_vit_7, batch 32, 2 cores: no page faults, where the whole batch faulted in ~330 MiB a pass). Every
        # operation here is per image, so the result is the same; under autograd the chunks' activations
        # are all kept, as the whole batch's would be.
        chunk = max(1, _TOKENS_PER_CHUNK * 16 // (x.shape[-2] * x.shape[-1]))
        if x.shape[0] > chunk and x.device.type == "cpu":
            return torch.cat([self._forward(images) for images in x.split(chunk)])
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_float32(x):
            return self._forward_convolved(x)
        return self._forward_gathered(x)

    def _forward_convolved(self, x: torch.Tensor) -> torch.Tensor:
        """Each soft split and the Linear after it as one convolution over a channels-last grid.

        The same function as _forward_gathered. On the CPU in float32, oneDNN's convolutions beat
        gathering the patches and multiplying (t2t_vit_7, 8 images, 2 cores: 7.5 against 12.3 ms for
        the second split), and patch_norm_linear writes no normalised copy of the patches.
        """
        H, W = x.shape[-2:]
        a1, a2 = self.attention1, self.attention2
        x = a1.mix(patch_norm_linear(x, a1.norm1, a1.in_proj, 7, 4, 2))
        x = a2.mix(patch_norm_linear(token_grid(x, H // 4, W // 4), a2.norm1, a2.in_proj, 3, 2, 1))
        grid = token_grid(x, H // 8, W // 8)
        weight = self.project.weight.view(-1, grid.shape[1], 3, 3)  # Unfold's (c, kh, kw) order is a conv's
        return grid_tokens(F.conv2d(grid, weight, self.project.bias, stride=2, padding=1))

    def _forward_gathered(self, x: torch.Tensor) -> torch.Tensor:
        """Each soft split gathers its patches, then the token layer or Linear reads them."""
        H, W = x.shape[-2:]
        x = self.attention1(_image_patches(x), self.image_order)  # (B, H/4 * W/4, token_dim)
        x = self.attention2(_token_patches(x, H // 4, W // 4), self.patch_order)  # (B, H/8 * W/8, token_dim)
        x = _token_patches(x, H // 8, W // 8)  # (B, H/16 * W/16, 9 * token_dim)
        return F.linear(x, self.project.weight[:, self.patch_order], self.project.bias)  # (..., embed_dim)


class T2TViT(nn.Module):
    """T2T-ViT classifier with the official parameter names, so released weights load strictly."""

    def __init__(
            self,
            img_size: int = 224,
            tokens_type: TokensType = "performer",
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = False,
            drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            token_dim: int = 64,
            global_pool: str = "token",
    ) -> None:
        super().__init__()
        if isinstance(img_size, (tuple, list)):
            if len(set(img_size)) != 1:
                raise ValueError(f"img_size={img_size}: T2T-ViT expects a square input")
            img_size = img_size[0]
        if img_size <= 0 or img_size % 16:
            raise ValueError(f"img_size={img_size}: expected a positive multiple of 16")
        if global_pool not in ("token", ""):
            raise ValueError(f"global_pool={global_pool!r}: expected 'token' or ''")
        self.img_size = img_size
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False

        self.tokens_to_token = T2TModule(img_size, tokens_type, in_chans, embed_dim, token_dim)
        num_patches = self.tokens_to_token.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed sinusoid table: a parameter only so that it lives in the state dict as in the release.
        self.pos_embed = nn.Parameter(sinusoid_table(num_patches + 1, embed_dim), requires_grad=False)
        self.pos_drop = nn.Dropout(drop_rate)
        drop_path = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=drop_path[i],
                norm_layer=nn.LayerNorm,
                act_layer=GELU,
            )
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)
        use_cpu_linears(self)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^cls_token|pos_embed|tokens_to_token", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        use_cpu_linears(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) to normalised tokens (B, 1 + N, D), class token first."""
        x = self.tokens_to_token(x)  # (B, N, D)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "token":
            x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "classifier": "head",
        "license": "bsd-3-clause-clear",
        "paper_ids": "arXiv:2101.11986",
        **kwargs,
    }


# Released ImageNet-1k weights (RELEASE_FILES). Nothing is downloaded: pass a file with
# pretrained_cfg_overlay=dict(file=PATH) or load it with t2t.load_pretrained_weights.
default_cfgs = generate_default_cfgs({
    "t2t_vit_7.in1k": _cfg(),
    "t2t_vit_10.in1k": _cfg(),
    "t2t_vit_12.in1k": _cfg(),
    "t2t_vit_14.in1k": _cfg(),
    "t2t_vit_14.in1k_384": _cfg(input_size=(3, 384, 384)),
    "t2t_vit_19.in1k": _cfg(),
    "t2t_vit_24.in1k": _cfg(),
    "t2t_vit_t_14.in1k": _cfg(),
    "t2t_vit_t_19.in1k": _cfg(),
    "t2t_vit_t_24.in1k": _cfg(),
    "t2t_vit_14_resnext": _cfg(),
    "t2t_vit_14_wide": _cfg(),
})

RELEASE_FILES: dict[str, str] = {
    "t2t_vit_7.in1k": "71.7_T2T_ViT_7.pth.tar",
    "t2t_vit_10.in1k": "75.2_T2T_ViT_10.pth.tar",
    "t2t_vit_12.in1k": "76.5_T2T_ViT_12.pth.tar",
    "t2t_vit_14.in1k": "81.5_T2T_ViT_14.pth.tar",
    "t2t_vit_14.in1k_384": "83.3_T2T_ViT_14.pth.tar",
    "t2t_vit_19.in1k": "81.9_T2T_ViT_19.pth.tar",
    "t2t_vit_24.in1k": "82.3_T2T_ViT_24.pth.tar",
    "t2t_vit_t_14.in1k": "81.7_T2T_ViTt_14.pth.tar",
    "t2t_vit_t_19.in1k": "82.4_T2T_ViTt_19.pth.tar",
    "t2t_vit_t_24.in1k": "82.6_T2T_ViTt_24.pth.tar",
}

# name -> (tokens_type, embed_dim, depth, num_heads, mlp_ratio), as in the paper's model table.
MODEL_ARCHS: dict[str, tuple[TokensType, int, int, int, float]] = {
    "t2t_vit_7": ("performer", 256, 7, 4, 2.0),
    "t2t_vit_10": ("performer", 256, 10, 4, 2.0),
    "t2t_vit_12": ("performer", 256, 12, 4, 2.0),
    "t2t_vit_14": ("performer", 384, 14, 6, 3.0),
    "t2t_vit_19": ("performer", 448, 19, 7, 3.0),
    "t2t_vit_24": ("performer", 512, 24, 8, 3.0),
    "t2t_vit_t_14": ("transformer", 384, 14, 6, 3.0),
    "t2t_vit_t_19": ("transformer", 448, 19, 7, 3.0),
    "t2t_vit_t_24": ("transformer", 512, 24, 8, 3.0),
    "t2t_vit_14_resnext": ("performer", 384, 14, 32, 3.0),
    "t2t_vit_14_wide": ("performer", 768, 4, 12, 3.0),
}


def _create_t2t_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> T2TViT:
    from .weights import checkpoint_filter_fn

    tokens_type, embed_dim, depth, num_heads, mlp_ratio = MODEL_ARCHS[variant]
    arch = dict(tokens_type=tokens_type, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
    return build_model_with_cfg(
        T2TViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **{**arch, **kwargs}
    )


@register_model
def t2t_vit_7(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_7: performer tokens, width 256, depth 7; ImageNet top-1 71.7%."""
    return _create_t2t_vit("t2t_vit_7", pretrained, **kwargs)


@register_model
def t2t_vit_10(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_10: performer tokens, width 256, depth 10; ImageNet top-1 75.2%."""
    return _create_t2t_vit("t2t_vit_10", pretrained, **kwargs)


@register_model
def t2t_vit_12(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_12: performer tokens, width 256, depth 12; ImageNet top-1 76.5%."""
    return _create_t2t_vit("t2t_vit_12", pretrained, **kwargs)


@register_model
def t2t_vit_14(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_14: performer tokens, width 384, depth 14; ImageNet top-1 81.5 (83.3 at 384)%."""
    return _create_t2t_vit("t2t_vit_14", pretrained, **kwargs)


@register_model
def t2t_vit_19(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_19: performer tokens, width 448, depth 19; ImageNet top-1 81.9%."""
    return _create_t2t_vit("t2t_vit_19", pretrained, **kwargs)


@register_model
def t2t_vit_24(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_24: performer tokens, width 512, depth 24; ImageNet top-1 82.3%."""
    return _create_t2t_vit("t2t_vit_24", pretrained, **kwargs)


@register_model
def t2t_vit_t_14(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_t_14: transformer tokens, width 384, depth 14; ImageNet top-1 81.7%."""
    return _create_t2t_vit("t2t_vit_t_14", pretrained, **kwargs)


@register_model
def t2t_vit_t_19(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_t_19: transformer tokens, width 448, depth 19; ImageNet top-1 82.4%."""
    return _create_t2t_vit("t2t_vit_t_19", pretrained, **kwargs)


@register_model
def t2t_vit_t_24(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_t_24: transformer tokens, width 512, depth 24; ImageNet top-1 82.6%."""
    return _create_t2t_vit("t2t_vit_t_24", pretrained, **kwargs)


@register_model
def t2t_vit_14_resnext(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_14_resnext: 32 narrow heads, width 384, depth 14; no released weights."""
    return _create_t2t_vit("t2t_vit_14_resnext", pretrained, **kwargs)


@register_model
def t2t_vit_14_wide(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_14_wide: wide and shallow, width 768, depth 4; no released weights."""
    return _create_t2t_vit("t2t_vit_14_wide", pretrained, **kwargs)
