"""What a T2T-ViT attends to and computes, recomputed from each layer's own weights.

Hooks record the input of each attention layer during one ordinary forward pass; the attention
matrices are then computed from that layer's q and k, softmax(q k^T * scale), so the model can run
with fused attention (scaled_dot_product_attention never forms the matrix) and nothing is switched
globally. The Performer token layers of the T2T module never form one either: their implicit
attention phi(q) phi(k)^T, divided by its row sums (plus the layer's epsilon), is the matrix whose
product with v is the layer's linear-attention output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .layers import TokenPerformer, TokenTransformer

__all__ = ["ModelMaps", "attention_rollout", "block_attention", "capture", "performer_attention",
           "token_transformer_attention", "attention_blocks"]


def attention_blocks(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(index in model.blocks, block) for every block with self-attention (Dense transitions have none)."""
    return [(i, b) for i, b in enumerate(model.blocks) if hasattr(b, "attn")]


def _query_key(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys (B, H, N, head_dim) that attention module `attn` forms from its input x (B, N, C)."""
    if hasattr(attn, "query_key"):  # layers that build q and k their own way (the ghost variant)
        return attn.query_key(x)
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)  # timm's Attention layout
    q, k = qkv[0], qkv[1]
    return attn.q_norm(q), attn.k_norm(k)


def block_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Attention probabilities (B, H, N, N) of a multi-head attention module for its input x (B, N, C)."""
    q, k = _query_key(attn, x.float())
    return (q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)


def token_transformer_attention(layer: TokenTransformer, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention (B, T, T) of a T2T-ViT-t token layer for its input tokens x (B, T, dim)."""
    qkv = layer.attn.qkv(layer.norm1(x.float()))
    q, k, _ = qkv.split(layer.attn.out_dim, dim=-1)
    return (q * layer.attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)


def performer_attention(layer: TokenPerformer, x: torch.Tensor) -> torch.Tensor:
    """Implicit attention (B, T, T) of a Performer token layer for its input tokens x (B, T, dim):
    phi(q) phi(k)^T / (row sum + epsilon), so that its product with v is the layer's attention output."""
    kqv = layer.kqv(layer.norm1(x.float()))
    k, q, _ = kqv.split(layer.out_dim, dim=-1)
    kp, qp = layer.random_features(k), layer.random_features(q)  # (B, T, m)
    scores = qp @ kp.transpose(1, 2)  # (B, T, T)
    # The layer's denominator is phi(q) . sum_t phi(k_t), the same row sum in another order.
    return scores / (scores.sum(dim=-1, keepdim=True) + layer.epsilon)


def attention_rollout(attentions: Sequence[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): (B, N, N) flow of attention from the input to the last block.

    Each block's head-mean attention (B, H, N, N) is mixed with the identity for the residual path,
    residual * I + (1 - residual) * A, rows renormalised, and the blocks multiplied in order.
    """
    if not attentions:
        raise ValueError("attention_rollout needs at least one block's attention")
    rollout = None
    for attn in attentions:
        a = attn.mean(dim=1) if attn.dim() == 4 else attn  # (B, N, N)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = residual * eye + (1 - residual) * a
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


@dataclass
class ModelMaps:
    """What one forward pass of a batch gives: attention and features of the blocks and of the T2T module."""

    logits: torch.Tensor  # (B, classes)
    grid: int  # the patch grid is grid x grid (img_size / 16)
    block_indices: list[int] = field(default_factory=list)  # indices into model.blocks of `attention`
    attention: list[torch.Tensor] = field(default_factory=list)  # (B, H, N, N) per attention block, N = 1 + grid^2
    features: dict[int, torch.Tensor] = field(default_factory=dict)  # block index -> (B, C, grid, grid)
    t2t_attention: list[torch.Tensor] = field(default_factory=list)  # (B, T, T) at grids 4x and 2x `grid`
    t2t_kind: str = ""  # 'softmax' (T2T-ViT-t) or 'performer' (implicit kernel attention)

    def class_attention(self, position: int) -> torch.Tensor:
        """The class token's attention over the patches in block `attention[position]`: (B, H, grid, grid)."""
        a = self.attention[position][:, :, 0, 1:]
        return a.reshape(a.shape[0], a.shape[1], self.grid, self.grid)

    def rollout(self) -> torch.Tensor:
        """The class token's row of the attention rollout over the patches: (B, grid, grid)."""
        r = attention_rollout(self.attention)[:, 0, 1:]
        return r.reshape(r.shape[0], self.grid, self.grid)


@torch.no_grad()
def capture(model: nn.Module, images: torch.Tensor, *, attention: bool = True, t2t: bool = False,
            feature_blocks: Optional[Sequence[int]] = None) -> ModelMaps:
    """Run `model` (a T2TViT, eval mode) on `images` (B, 3, H, W) and recompute the maps asked for.

    feature_blocks: indices into model.blocks whose outputs to return as (B, C, grid, grid) maps.
    """
    if not hasattr(model, "blocks") or not hasattr(model, "tokens_to_token"):
        raise ValueError(f"{type(model).__name__} is not a T2T-ViT (no tokens_to_token / blocks)")
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    handles = []

    def keep_input(name):
        def hook(module, args):
            inputs[name] = args[0].detach()
        return hook

    def keep_output(index):
        def hook(module, args, out):
            outputs[index] = out.detach()
        return hook

    blocks = attention_blocks(model)
    try:
        if attention:
            for i, block in blocks:
                handles.append(block.attn.register_forward_pre_hook(keep_input(f"block{i}")))
        if t2t:
            for j in (1, 2):
                layer = getattr(model.tokens_to_token, f"attention{j}")
                handles.append(layer.register_forward_pre_hook(keep_input(f"t2t{j}")))
        for i in feature_blocks or ():
            handles.append(model.blocks[i].register_forward_hook(keep_output(i)))
        logits = model(images)
    finally:
        for h in handles:
            h.remove()

    grid = images.shape[-1] // 16
    maps = ModelMaps(logits=logits, grid=grid)
    if attention:
        for i, block in blocks:
            maps.block_indices.append(i)
            maps.attention.append(block_attention(block.attn, inputs[f"block{i}"]))
    if t2t:
        for j in (1, 2):
            layer = getattr(model.tokens_to_token, f"attention{j}")
            if isinstance(layer, TokenPerformer):
                maps.t2t_kind = "performer"
                maps.t2t_attention.append(performer_attention(layer, inputs[f"t2t{j}"]))
            else:
                maps.t2t_kind = "softmax"
                maps.t2t_attention.append(token_transformer_attention(layer, inputs[f"t2t{j}"]))
    for i in feature_blocks or ():
        tokens = outputs[i][:, model.num_prefix_tokens:].float()  # (B, grid^2, C)
        maps.features[i] = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)
    return maps
