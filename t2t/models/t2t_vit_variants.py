"""The paper's other T2T-ViT backbones (its Table 4), registered with timm: SE, Dense and Ghost blocks.

Each keeps the Tokens-to-Token module, class token and sinusoid positions of T2TViT and swaps the
blocks, with the parameter names of the official t2t_vit_se.py, t2t_vit_dense.py and t2t_vit_ghost.py,
so state dicts in the official layout load strictly:

- t2t_vit_14_se: a squeeze-and-excitation layer on the attention output (`blocks.N.attn.se_layer.fc.{0,2}`);
- t2t_vit_dense: DenseNet-style blocks that append `growth_rate` channels each (`blocks.N.dense_linear`),
  with transitions (`blocks.N.linear`) halving the width between stages; 4 stages of (3, 6, 6, 4) blocks;
- t2t_vit_16_ghost: half-width q/k/v projections completed by depthwise "cheap operations", and an MLP
  whose hidden layer is fc1's output and two cheap copies of it.

No weights were released for these models.
"""
from typing import Any, Optional, Sequence, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.jit import Final
from timm.layers import Attention, maybe_add_mask, resolve_self_attn_mask, use_fused_attn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block

from .t2t_vit import T2TViT, TokensType, _cfg


class SELayer(nn.Module):
    """Squeeze-and-excitation over tokens: channel gates from the token mean, (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(dim // reduction, dim, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=1)).unsqueeze(1)  # gates (B, 1, C)


class SEAttention(Attention):
    """timm's multi-head attention with a squeeze-and-excitation layer after the output projection."""

    def __init__(self, dim: int, num_heads: int = 8, **kwargs: Any) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.se_layer = SELayer(dim)

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, head_dim) each
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0,
                is_causal=is_causal)
        else:
            attn = q * self.scale @ k.transpose(-2, -1)
            attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
        return self.proj_drop(self.se_layer(self.proj(x)))


class GhostAttention(nn.Module):
    """Multi-head attention whose q, k, v are half a projection and half a per-channel scaling of it.

    q = [W_q x, c_q * (W_q x)] (the depthwise 1x1 Conv1d `cheap_operation_q`), likewise k and v;
    heads split the concatenation, so the first half of the heads sees the projection, the rest its copy.
    """

    fused_attn: Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            proj_bias: bool = True,
            **kwargs: Any,  # timm's Block passes options this layer does not have (qk_norm, norm_layer)
    ) -> None:
        super().__init__()
        if dim % 2 or dim % num_heads:
            raise ValueError(f"dim={dim}: expected an even multiple of num_heads={num_heads}")
        if kwargs.get("qk_norm") or kwargs.get("scale_norm"):
            raise ValueError("GhostAttention has no qk_norm or scale_norm")
        half = dim // 2
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.q = nn.Linear(dim, half, bias=qkv_bias)
        self.k = nn.Linear(dim, half, bias=qkv_bias)
        self.v = nn.Linear(dim, half, bias=qkv_bias)
        self.cheap_operation_q = nn.Conv1d(half, half, kernel_size=1, groups=half, bias=False)
        self.cheap_operation_k = nn.Conv1d(half, half, kernel_size=1, groups=half, bias=False)
        self.cheap_operation_v = nn.Conv1d(half, half, kernel_size=1, groups=half, bias=False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split_heads(self, half: torch.Tensor, cheap: torch.Tensor) -> torch.Tensor:
        """Projection and its cheap copy, (B, N, C/2) each -> (B, H, N, head_dim) of their concatenation."""
        B, N, _ = half.shape
        return torch.cat((half, cheap), dim=2).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def query_key(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys (B, H, N, head_dim) of the normalised tokens x (B, N, C)."""
        q, k = self.q(x), self.k(x)
        q = self._split_heads(q, self.cheap_operation_q(q.transpose(1, 2)).transpose(1, 2))
        k = self._split_heads(k, self.cheap_operation_k(k.transpose(1, 2)).transpose(1, 2))
        return q, k

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        B, N, C = x.shape
        q, k = self.query_key(x)
        v = self.v(x)
        v = self._split_heads(v, self.cheap_operation_v(v.transpose(1, 2)).transpose(1, 2))
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0,
                is_causal=is_causal)
        else:
            attn = q * self.scale @ k.transpose(-2, -1)
            attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class GhostMlp(nn.Module):
    """MLP whose hidden layer is act(fc1 x) and two activated per-channel scalings of it: hidden = 3 x dim."""

    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            drop: float = 0.0,
            bias: bool = True,
            **kwargs: Any,  # norm_layer from timm's Block: none here
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or 3 * in_features
        if hidden_features != 3 * in_features:
            raise ValueError(f"hidden_features={hidden_features}: the ghost MLP needs 3 x in_features "
                             f"({3 * in_features}), i.e. mlp_ratio=3")
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, in_features, bias=bias)
        self.act = act_layer()
        self.cheap_operation2 = nn.Conv1d(in_features, in_features, kernel_size=1, groups=in_features, bias=False)
        self.cheap_operation3 = nn.Conv1d(in_features, in_features, kernel_size=1, groups=in_features, bias=False)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.act(self.fc1(x))  # (B, N, C)
        x2 = self.act(self.cheap_operation2(x1.transpose(1, 2)).transpose(1, 2))
        x3 = self.act(self.cheap_operation3(x1.transpose(1, 2)).transpose(1, 2))
        x = self.drop(torch.cat((x1, x2, x3), dim=2))  # (B, N, 3C)
        return self.drop(self.fc2(x))


class DenseBlock(Block):
    """A ViT block whose output is projected to `growth_rate` channels and appended to its input:
    (B, N, dim) -> (B, N, dim + growth_rate)."""

    def __init__(self, dim: int, growth_rate: int, **kwargs: Any) -> None:
        super().__init__(dim, **kwargs)
        self.dense_linear = nn.Linear(dim, growth_rate)

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        y = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        y = y + self.drop_path2(self.ls2(self.mlp(self.norm2(y))))
        return torch.cat((x, self.dense_linear(y)), dim=2)


class Transition(nn.Module):
    """Between dense stages: GELU(Linear) to half the width."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


class T2TViTBlocks(T2TViT):
    """T2T-ViT with another attention or MLP layer in its blocks (the SE and Ghost variants)."""

    def __init__(
            self,
            attn_layer: Type[nn.Module] = Attention,
            mlp_layer: Optional[Type[nn.Module]] = None,
            depth: int = 12,
            **kwargs: Any,
    ) -> None:
        super().__init__(depth=0, **kwargs)
        embed_dim = self.embed_dim
        num_heads, mlp_ratio = kwargs.get("num_heads", 12), kwargs.get("mlp_ratio", 4.0)
        drop_rate, drop_path_rate = kwargs.get("drop_rate", 0.0), kwargs.get("drop_path_rate", 0.0)
        drop_path = torch.linspace(0, drop_path_rate, depth).tolist()
        block_kwargs = dict(mlp_layer=mlp_layer) if mlp_layer is not None else {}
        self.blocks = nn.Sequential(*[
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=kwargs.get("qkv_bias", False),
                proj_drop=drop_rate,
                attn_drop=kwargs.get("attn_drop_rate", 0.0),
                drop_path=drop_path[i],
                norm_layer=nn.LayerNorm,
                act_layer=nn.GELU,
                attn_layer=attn_layer,
                **block_kwargs,
            )
            for i in range(depth)
        ])
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=16) for i in range(depth)]
        self.blocks.apply(self._init_weights)


class T2TViTDense(T2TViT):
    """T2T-ViT-Dense: stages of DenseBlocks joined by Transitions; the width grows inside a stage.

    `blocks` holds the blocks and transitions in order (the official indices), so forward_intermediates
    and features_only return every one of them, each with its own width (feature_info); norm=True
    there fits only the last width. Drop-path is as in the official file: the blocks of stage s get
    linspace(0, drop_path_rate, depth)[s].
    """

    def __init__(
            self,
            growth_rate: int = 32,
            block_config: Sequence[int] = (3, 4, 6, 3),
            embed_dim: int = 768,
            depth: int = 12,
            **kwargs: Any,
    ) -> None:
        super().__init__(embed_dim=embed_dim, depth=0, **kwargs)
        if len(block_config) > depth:
            raise ValueError(f"block_config={tuple(block_config)}: at most depth={depth} stages")
        num_heads, mlp_ratio = kwargs.get("num_heads", 12), kwargs.get("mlp_ratio", 4.0)
        drop_rate = kwargs.get("drop_rate", 0.0)
        drop_path = torch.linspace(0, kwargs.get("drop_path_rate", 0.0), depth).tolist()
        blocks: list[nn.Module] = []
        self.feature_info = []
        width = embed_dim
        for stage, num_blocks in enumerate(block_config):
            for _ in range(num_blocks):
                blocks.append(DenseBlock(
                    width,
                    growth_rate,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=kwargs.get("qkv_bias", False),
                    proj_drop=drop_rate,
                    attn_drop=kwargs.get("attn_drop_rate", 0.0),
                    drop_path=drop_path[stage],
                    norm_layer=nn.LayerNorm,
                    act_layer=nn.GELU,
                ))
                width += growth_rate
                self.feature_info.append(dict(module=f"blocks.{len(blocks) - 1}", num_chs=width, reduction=16))
            if stage != len(block_config) - 1:
                blocks.append(Transition(width, width // 2))
                width //= 2
                self.feature_info.append(dict(module=f"blocks.{len(blocks) - 1}", num_chs=width, reduction=16))
        self.blocks = nn.Sequential(*blocks)
        self.num_features = self.head_hidden_size = width
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.blocks.apply(self._init_weights)
        self.head.apply(self._init_weights)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


VARIANTS = ("t2t_vit_14_se", "t2t_vit_16_ghost", "t2t_vit_dense")

default_cfgs = generate_default_cfgs({
    "t2t_vit_14_se": _cfg(),
    "t2t_vit_dense": _cfg(),
    "t2t_vit_16_ghost": _cfg(),
})


def _create(cls: type, variant: str, pretrained: bool, arch: dict[str, Any], **kwargs: Any) -> T2TViT:
    from .weights import checkpoint_filter_fn

    out_indices = kwargs.pop("out_indices", 3)  # features_only: the last 3 blocks, as timm's ViTs
    return build_model_with_cfg(
        cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **{**arch, **kwargs})


TOKENS: TokensType = "performer"  # all three use the Performer token layer, as the official factories


@register_model
def t2t_vit_14_se(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_14_se: t2t_vit_14 with squeeze-and-excitation on each attention output; no released weights."""
    arch = dict(tokens_type=TOKENS, embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0, attn_layer=SEAttention)
    return _create(T2TViTBlocks, "t2t_vit_14_se", pretrained, arch, **kwargs)


@register_model
def t2t_vit_dense(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_dense: dense blocks (3, 6, 6, 4), width 128 growing by 64, 8 heads; no released weights."""
    arch = dict(tokens_type=TOKENS, growth_rate=64, block_config=(3, 6, 6, 4), embed_dim=128, num_heads=8,
                mlp_ratio=2.0)
    return _create(T2TViTDense, "t2t_vit_dense", pretrained, arch, **kwargs)


@register_model
def t2t_vit_16_ghost(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """t2t_vit_16_ghost: ghost attention and MLP, width 384, depth 16; no released weights."""
    arch = dict(tokens_type=TOKENS, embed_dim=384, depth=16, num_heads=6, mlp_ratio=3.0,
                attn_layer=GhostAttention, mlp_layer=GhostMlp)
    return _create(T2TViTBlocks, "t2t_vit_16_ghost", pretrained, arch, **kwargs)
