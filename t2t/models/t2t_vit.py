"""T2T-ViT: Tokens-to-Token vision transformers (Yuan et al., ICCV 2021), registered with timm."""

from typing import Any, List, Literal, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint
from timm.models.vision_transformer import Block

from .layers import TokenPerformer, TokenTransformer, sinusoid_table

TokensType = Literal["performer", "transformer"]


class T2TModule(nn.Module):
    """Tokens-to-Token: soft split 7x7/4, token layer, re-split 3x3/2, token layer, re-split 3x3/2, project.

    Each soft split is nn.Unfold over the image or over the tokens laid back on their grid:
    (B, C, H, W) -> (B, H/4 * W/4, 49 C) -> (B, H/8 * W/8, 9 token_dim) -> (B, H/16 * W/16, embed_dim).
    """

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
        self.soft_split0 = nn.Unfold(kernel_size=7, stride=4, padding=2)
        self.soft_split1 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.soft_split2 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.attention1 = layer(in_chans * 7 * 7, token_dim)
        self.attention2 = layer(token_dim * 3 * 3, token_dim)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)
        self.grid_size = img_size // 16
        self.num_patches = self.grid_size ** 2
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2], x.shape[3]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            # Keep only each token layer's input; the layers (about 30% of a step's activations at 224:
            # the 3136-token first layer above all) are recomputed in backward, dropout masks included.
            x = checkpoint(self.first_tokens, x)
            x = checkpoint(self.second_tokens, x, H, W)
        else:
            x = self.first_tokens(x)
            x = self.second_tokens(x, H, W)
        return self.project(self.soft_split2(x).transpose(1, 2))  # (B, H/16 * W/16, embed_dim)

    def first_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) -> first token layer's output (B, H/4 * W/4, token_dim)."""
        return self.attention1(self.soft_split0(x).transpose(1, 2))

    def second_tokens(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """First tokens (B, H/4 * W/4, token_dim) -> second token layer's output laid on its grid (B, token_dim, H/8, W/8)."""
        B = x.shape[0]
        x = x.transpose(1, 2).reshape(B, -1, H // 4, W // 4)
        x = self.attention2(self.soft_split1(x).transpose(1, 2))  # (B, H/8 * W/8, token_dim)
        return x.transpose(1, 2).reshape(B, -1, H // 8, W // 8)


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
        self.in_chans = in_chans  # timm's tasks (LogitDistillationTask, ...) read it
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False

        self.tokens_to_token = T2TModule(img_size, tokens_type, in_chans, embed_dim, token_dim)
        num_patches = self.tokens_to_token.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed sinusoid table, never trained: a buffer saved with the weights, as in the release.
        self.register_buffer("pos_embed", sinusoid_table(num_patches + 1, embed_dim))
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
                act_layer=nn.GELU,
            )
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=16) for i in range(depth)]

        trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

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
        """Recompute the blocks and the Tokens-to-Token layers in backward instead of keeping their activations."""
        self.grad_checkpointing = enable
        self.tokens_to_token.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) to tokens (B, 1 + N, D) with the class token and positions."""
        x = self.tokens_to_token(x)  # (B, N, D)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs as timm's ViTs give them: indices=n takes the last n blocks, a list takes those.

        output_fmt 'NCHW' lays the patch tokens on their (H/16, W/16) grid, 'NLC' keeps them as tokens;
        return_prefix_tokens pairs each with its class token; norm applies the final norm to each.
        Returns the intermediates, or (final features, intermediates) unless intermediates_only.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}: expected 'NCHW' or 'NLC'")
        taken, max_index = take_indices(len(self.blocks), indices)
        B, _, height, width = x.shape
        x = self._embed(x)
        if torch.jit.is_scripting() or not stop_early:  # TorchScript cannot slice a Sequential
            blocks = self.blocks
        else:
            blocks = self.blocks[:max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in taken:
                intermediates.append(self.norm(x) if norm else x)
        prefix_tokens = [y[:, :self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == "NCHW":  # (B, N, D) -> (B, D, H/16, W/16)
            intermediates = [y.reshape(B, height // 16, width // 16, -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]
        if not torch.jit.is_scripting() and return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the blocks after the last of `indices` (and the norm, the head); returns the kept indices."""
        taken, max_index = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return taken

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) to normalised tokens (B, 1 + N, D), class token first."""
        x = self._embed(x)
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


def take_indices(depth: int, indices: Optional[Union[int, List[int]]]) -> Tuple[List[int], int]:
    """Blocks to return, as timm counts them: None all, n the last n, a list those (negative from the end);
    and the largest."""
    if indices is None:
        indices = depth
    if isinstance(indices, int):
        if indices < 1 or indices > depth:
            raise ValueError(f"indices={indices}: expected the number of last blocks, 1 to {depth}")
        taken = [depth - indices + i for i in range(indices)]
    else:
        taken = [i + depth if i < 0 else i for i in indices]
        for i in taken:
            if i < 0 or i >= depth:
                raise ValueError(f"indices={indices}: block {i} is out of range for depth {depth}")
    return taken, max(taken)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "fixed_input_size": True,  # img_size is passed to the model from input_size
        "first_conv": "tokens_to_token.attention1.kqv",  # the first layer with weights on the image patches
        "classifier": "head",
        "license": "bsd-3-clause-clear",
        "paper_ids": "arXiv:2101.11986",
        **kwargs,
    }


# The official release files of the ImageNet-1k weights (the paper's top-1 is the start of each name).
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
RELEASE_PAGE = "https://github.com/yitu-opensource/T2T-ViT/releases"
PAPER = "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet"


def _release_cfg(tag: str, **kwargs: Any) -> dict[str, Any]:
    """The cfg of released weights: `file` is the release file's name, looked for in the working folder only.

    timm lists a cfg with a file as pretrained (`timm.list_pretrained('t2t_vit*')`); nothing is downloaded:
    `timm.create_model(tag, pretrained=True)` reads the file there, or the path given with
    pretrained_cfg_overlay=dict(file=PATH). The release page is where to download it by hand.
    """
    file = RELEASE_FILES[tag]
    size = kwargs.get("input_size", (3, 224, 224))[-1]
    return _cfg(file=file, origin_url=RELEASE_PAGE, paper_name=PAPER,
                description=f"{tag.split('.')[0]} trained on ImageNet-1k by the paper's authors at {size}px; "
                            f"top-1 {file.split('_')[0]}% in the paper (release file {file})", **kwargs)


default_cfgs = generate_default_cfgs({
    "t2t_vit_7.in1k": _release_cfg("t2t_vit_7.in1k"),
    "t2t_vit_10.in1k": _release_cfg("t2t_vit_10.in1k"),
    "t2t_vit_12.in1k": _release_cfg("t2t_vit_12.in1k"),
    "t2t_vit_14.in1k": _release_cfg("t2t_vit_14.in1k"),
    "t2t_vit_14.in1k_384": _release_cfg("t2t_vit_14.in1k_384", input_size=(3, 384, 384)),
    "t2t_vit_19.in1k": _release_cfg("t2t_vit_19.in1k"),
    "t2t_vit_24.in1k": _release_cfg("t2t_vit_24.in1k"),
    "t2t_vit_t_14.in1k": _release_cfg("t2t_vit_t_14.in1k", first_conv="tokens_to_token.attention1.attn.qkv"),
    "t2t_vit_t_19.in1k": _release_cfg("t2t_vit_t_19.in1k", first_conv="tokens_to_token.attention1.attn.qkv"),
    "t2t_vit_t_24.in1k": _release_cfg("t2t_vit_t_24.in1k", first_conv="tokens_to_token.attention1.attn.qkv"),
    "t2t_vit_14_resnext": _cfg(),
    "t2t_vit_14_wide": _cfg(),
})

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
    out_indices = kwargs.pop("out_indices", 3)  # features_only: the last 3 blocks, as timm's ViTs
    return build_model_with_cfg(
        T2TViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **{**arch, **kwargs}
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
