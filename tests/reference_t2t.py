"""A direct, unoptimised transcription of the published T2T-ViT equations, for cross-checking.

It reads its weights from a state dict with the official key names and computes the logits
step by step (explicit attention matrices, the official random-feature formula), so that the
optimised model in t2t.models can be compared with it on the same weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _linear(x, sd, name, bias=True):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias") if bias else None)


def _ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _performer(x, sd, p):
    x = _ln(x, sd, f"{p}.norm1")
    k, q, v = torch.split(_linear(x, sd, f"{p}.kqv"), 64, dim=-1)
    w = sd[f"{p}.w"]
    m = w.shape[0]

    def prm_exp(t):
        xd = (t * t).sum(dim=-1, keepdim=True).repeat(1, 1, m) / 2
        return torch.exp(torch.einsum("bti,mi->btm", t, w) - xd) / math.sqrt(m)

    kp, qp = prm_exp(k), prm_exp(q)
    d = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(2)
    kptv = torch.einsum("bin,bim->bnm", v, kp)
    y = torch.einsum("bti,bni->btn", qp, kptv) / (d.repeat(1, 1, 64) + 1e-8)
    x = v + _linear(y, sd, f"{p}.proj")
    h = _linear(F.gelu(_linear(_ln(x, sd, f"{p}.norm2"), sd, f"{p}.mlp.0")), sd, f"{p}.mlp.2")
    return x + h


def _token_transformer(x, sd, p):
    dim = x.shape[-1]
    x = _ln(x, sd, f"{p}.norm1")
    q, k, v = torch.split(_linear(x, sd, f"{p}.attn.qkv", bias=False), 64, dim=-1)
    attn = ((q * dim ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    x = v + _linear(attn @ v, sd, f"{p}.attn.proj")
    h = _linear(F.gelu(_linear(_ln(x, sd, f"{p}.norm2"), sd, f"{p}.mlp.fc1")), sd, f"{p}.mlp.fc2")
    return x + h


def _block(x, sd, p, num_heads):
    B, N, C = x.shape
    h = _ln(x, sd, f"{p}.norm1")
    qkv = _linear(h, sd, f"{p}.attn.qkv", bias=False).reshape(B, N, 3, num_heads, C // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (C // num_heads) ** -0.5).softmax(dim=-1)
    x = x + _linear((attn @ v).transpose(1, 2).reshape(B, N, C), sd, f"{p}.attn.proj")
    h = _linear(F.gelu(_linear(_ln(x, sd, f"{p}.norm2"), sd, f"{p}.mlp.fc1")), sd, f"{p}.mlp.fc2")
    return x + h


@torch.no_grad()
def reference_forward(sd: dict, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Logits of T2T-ViT with weights `sd` (official names) on images `x` (B, 3, H, W)."""
    token_layer = _performer if any(k.endswith("attention1.w") for k in sd) else _token_transformer
    B, _, H, W = x.shape
    t = F.unfold(x, 7, stride=4, padding=2).transpose(1, 2)
    t = token_layer(t, sd, "tokens_to_token.attention1")
    t = t.transpose(1, 2).reshape(B, 64, H // 4, W // 4)
    t = F.unfold(t, 3, stride=2, padding=1).transpose(1, 2)
    t = token_layer(t, sd, "tokens_to_token.attention2")
    t = t.transpose(1, 2).reshape(B, 64, H // 8, W // 8)
    t = F.unfold(t, 3, stride=2, padding=1).transpose(1, 2)
    t = _linear(t, sd, "tokens_to_token.project")
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], dim=1) + sd["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        t = _block(t, sd, f"blocks.{i}", num_heads)
    return _linear(_ln(t, sd, "norm")[:, 0], sd, "head")
