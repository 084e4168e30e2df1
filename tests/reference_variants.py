"""The official SE, Dense and Ghost T2T-ViT definitions (models/t2t_vit_se.py, t2t_vit_dense.py,
t2t_vit_ghost.py of the official repository), transcribed as plain data and equations for cross-checking.

- `official_shapes(name)`: every tensor the official model holds, by its official key, with its shape,
  following the official constructors (the T2T module, Performer token layers, and each variant's blocks);
- `random_state_dict(name)`: random tensors of those keys and shapes, i.e. an official-layout state dict;
- `reference_forward(name, sd, x)`: the logits computed step by step from such a state dict, as the
  official forward passes do (explicit attention matrices, the SE gate on the token mean, the ghost
  cheap operations as per-channel scalings, dense concatenation);
- `official_macs(name)`: multiply-accumulates of one image, counted operation by operation (every
  matmul, einsum, attention product and depthwise scaling).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reference_t2t import _linear, _ln, _performer

# name -> constructor arguments of the official factory
OFFICIAL = {
    "t2t_vit_14_se": dict(kind="se", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "t2t_vit_16_ghost": dict(kind="ghost", embed_dim=384, depth=16, num_heads=6, mlp_ratio=3.0),
    "t2t_vit_dense": dict(kind="dense", embed_dim=128, num_heads=8, mlp_ratio=2.0, growth_rate=64,
                          block_config=(3, 6, 6, 4)),
}


def _ln_shapes(p, dim):
    return {f"{p}.weight": (dim,), f"{p}.bias": (dim,)}


def _lin_shapes(p, i, o, bias=True):
    return {f"{p}.weight": (o, i), **({f"{p}.bias": (o,)} if bias else {})}


def _performer_shapes(p, dim):
    return {**_ln_shapes(f"{p}.norm1", dim), **_lin_shapes(f"{p}.kqv", dim, 192), **_lin_shapes(f"{p}.proj", 64, 64),
            **_ln_shapes(f"{p}.norm2", 64), **_lin_shapes(f"{p}.mlp.0", 64, 64), **_lin_shapes(f"{p}.mlp.2", 64, 64),
            f"{p}.w": (32, 64)}


def _vit_block_shapes(p, dim, hidden):
    return {**_ln_shapes(f"{p}.norm1", dim), **_lin_shapes(f"{p}.attn.qkv", dim, 3 * dim, bias=False),
            **_lin_shapes(f"{p}.attn.proj", dim, dim), **_ln_shapes(f"{p}.norm2", dim),
            **_lin_shapes(f"{p}.mlp.fc1", dim, hidden), **_lin_shapes(f"{p}.mlp.fc2", hidden, dim)}


def dense_widths(cfg: dict) -> list[tuple[str, int]]:
    """('block' | 'transition', input width) of each entry of the official `blocks` list."""
    out, start = [], cfg["embed_dim"]
    stages = cfg["block_config"]
    for i, n in enumerate(stages):
        for j in range(n):
            out.append(("block", start + j * cfg["growth_rate"]))
        if i != len(stages) - 1:
            out.append(("transition", start + n * cfg["growth_rate"]))
            start = (start + n * cfg["growth_rate"]) // 2
    return out


def official_shapes(name: str, img_size: int = 224, num_classes: int = 1000) -> dict[str, tuple]:
    cfg = OFFICIAL[name]
    D = cfg["embed_dim"]
    n = (img_size // 16) ** 2
    shapes = {**_performer_shapes("tokens_to_token.attention1", 147),
              **_performer_shapes("tokens_to_token.attention2", 576),
              **_lin_shapes("tokens_to_token.project", 576, D),
              "cls_token": (1, 1, D), "pos_embed": (1, n + 1, D)}
    if cfg["kind"] == "dense":
        g = cfg["growth_rate"]
        for i, (kind, c) in enumerate(dense_widths(cfg)):
            if kind == "block":
                shapes.update(_vit_block_shapes(f"blocks.{i}", c, int(c * cfg["mlp_ratio"])))
                shapes.update(_lin_shapes(f"blocks.{i}.dense_linear", c, g))
                out = c + g
            else:
                shapes.update(_lin_shapes(f"blocks.{i}.linear", c, c // 2))
                out = c // 2
        D = out
    else:
        hidden = int(D * cfg["mlp_ratio"])
        for i in range(cfg["depth"]):
            p = f"blocks.{i}"
            if cfg["kind"] == "se":
                shapes.update(_vit_block_shapes(p, D, hidden))
                shapes.update(_lin_shapes(f"{p}.attn.se_layer.fc.0", D, D // 16, bias=False))
                shapes.update(_lin_shapes(f"{p}.attn.se_layer.fc.2", D // 16, D, bias=False))
            else:  # ghost
                h = D // 2
                shapes.update(_ln_shapes(f"{p}.norm1", D))
                for t in "qkv":
                    shapes.update(_lin_shapes(f"{p}.attn.{t}", D, h, bias=False))
                    shapes[f"{p}.attn.cheap_operation_{t}.weight"] = (h, 1, 1)
                shapes.update(_lin_shapes(f"{p}.attn.proj", D, D))
                shapes.update(_ln_shapes(f"{p}.norm2", D))
                shapes.update(_lin_shapes(f"{p}.mlp.fc1", D, D))
                shapes.update(_lin_shapes(f"{p}.mlp.fc2", hidden, D))
                shapes[f"{p}.mlp.cheap_operation2.weight"] = (D, 1, 1)
                shapes[f"{p}.mlp.cheap_operation3.weight"] = (D, 1, 1)
    shapes.update(_ln_shapes("norm", D))
    shapes.update(_lin_shapes("head", D, num_classes))
    return shapes


def random_state_dict(name: str, img_size: int = 224, num_classes: int = 1000, seed: int = 0) -> dict:
    """An official-layout state dict of random values (layer norms near 1, weights small)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official_shapes(name, img_size, num_classes).items():
        t = torch.randn(shape, generator=g)
        if key.endswith(".w"):
            sd[key] = t  # the Performer projection: unit-scale rows
        elif key.endswith("norm.weight") or key.endswith((".norm1.weight", ".norm2.weight")):
            sd[key] = 1 + 0.1 * t
        elif "cheap_operation" in key:
            sd[key] = 1 + 0.2 * t
        else:
            sd[key] = 0.05 * t
    return sd


def _heads(t, num_heads):
    B, N, C = t.shape
    return t.reshape(B, N, num_heads, C // num_heads).permute(0, 2, 1, 3)


def _softmax_attention(q, k, v, num_heads):
    B, N, C = q.shape
    q, k, v = (_heads(t, num_heads) for t in (q, k, v))
    attn = ((q @ k.transpose(-2, -1)) * (C // num_heads) ** -0.5).softmax(dim=-1)
    return (attn @ v).transpose(1, 2).reshape(B, N, C)


def _mlp(x, sd, p):
    return _linear(F.gelu(_linear(x, sd, f"{p}.fc1")), sd, f"{p}.fc2")


def _se_block(x, sd, p, num_heads):
    C = x.shape[-1]
    h = _ln(x, sd, f"{p}.norm1")
    q, k, v = _linear(h, sd, f"{p}.attn.qkv", bias=False).split(C, dim=-1)
    y = _linear(_softmax_attention(q, k, v, num_heads), sd, f"{p}.attn.proj")
    pooled = y.transpose(1, 2).mean(dim=2)  # AdaptiveAvgPool1d(1) over tokens: (B, C)
    gate = torch.sigmoid(_linear(F.relu(_linear(pooled, sd, f"{p}.attn.se_layer.fc.0", bias=False)), sd,
                                 f"{p}.attn.se_layer.fc.2", bias=False))
    x = x + y * gate.unsqueeze(1)
    return x + _mlp(_ln(x, sd, f"{p}.norm2"), sd, f"{p}.mlp")


def _cheap(t, weight):
    """Depthwise Conv1d with kernel 1 and no bias over channels of (B, N, C): a per-channel scaling."""
    return t * weight.reshape(1, 1, -1)


def _ghost_block(x, sd, p, num_heads):
    h = _ln(x, sd, f"{p}.norm1")
    qkv = []
    for t in "qkv":
        half = _linear(h, sd, f"{p}.attn.{t}", bias=False)
        qkv.append(torch.cat([half, _cheap(half, sd[f"{p}.attn.cheap_operation_{t}.weight"])], dim=2))
    x = x + _linear(_softmax_attention(*qkv, num_heads), sd, f"{p}.attn.proj")
    h = _ln(x, sd, f"{p}.norm2")
    x1 = F.gelu(_linear(h, sd, f"{p}.mlp.fc1"))
    x2 = F.gelu(_cheap(x1, sd[f"{p}.mlp.cheap_operation2.weight"]))
    x3 = F.gelu(_cheap(x1, sd[f"{p}.mlp.cheap_operation3.weight"]))
    return x + _linear(torch.cat([x1, x2, x3], dim=2), sd, f"{p}.mlp.fc2")


def _dense_block(x, sd, p, num_heads):
    C = x.shape[-1]
    h = _ln(x, sd, f"{p}.norm1")
    q, k, v = _linear(h, sd, f"{p}.attn.qkv", bias=False).split(C, dim=-1)
    y = x + _linear(_softmax_attention(q, k, v, num_heads), sd, f"{p}.attn.proj")
    y = y + _mlp(_ln(y, sd, f"{p}.norm2"), sd, f"{p}.mlp")
    return torch.cat([x, _linear(y, sd, f"{p}.dense_linear")], dim=2)


@torch.no_grad()
def reference_forward(name: str, sd: dict, x: torch.Tensor) -> torch.Tensor:
    """Logits of the official variant `name` with weights `sd` (official keys) on images x (B, 3, H, W)."""
    cfg = OFFICIAL[name]
    B, _, H, W = x.shape
    t = F.unfold(x, 7, stride=4, padding=2).transpose(1, 2)
    t = _performer(t, sd, "tokens_to_token.attention1").transpose(1, 2).reshape(B, 64, H // 4, W // 4)
    t = F.unfold(t, 3, stride=2, padding=1).transpose(1, 2)
    t = _performer(t, sd, "tokens_to_token.attention2").transpose(1, 2).reshape(B, 64, H // 8, W // 8)
    t = _linear(F.unfold(t, 3, stride=2, padding=1).transpose(1, 2), sd, "tokens_to_token.project")
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], dim=1) + sd["pos_embed"]
    if cfg["kind"] == "dense":
        for i, (kind, _) in enumerate(dense_widths(cfg)):
            if kind == "block":
                t = _dense_block(t, sd, f"blocks.{i}", cfg["num_heads"])
            else:
                t = F.gelu(_linear(t, sd, f"blocks.{i}.linear"))
    else:
        block = _se_block if cfg["kind"] == "se" else _ghost_block
        for i in range(cfg["depth"]):
            t = block(t, sd, f"blocks.{i}", cfg["num_heads"])
    return _linear(_ln(t, sd, "norm")[:, 0], sd, "head")


def _performer_macs(tokens: int, dim: int) -> int:
    m, e = 32, 64
    return tokens * (dim * 3 * e       # kqv
                     + 2 * e * m       # random features of k and q
                     + m               # denominator q' . sum(k')
                     + 2 * m * e       # k'^T v, then q' (k'^T v)
                     + 3 * e * e)      # proj, mlp.0, mlp.2


def _attention_macs(n: int, dim: int) -> int:
    return 2 * n * n * dim  # q k^T and attn v over all heads


def official_macs(name: str, img_size: int = 224, num_classes: int = 1000) -> int:
    """Multiply-accumulates of one image through the official model, operation by operation."""
    cfg = OFFICIAL[name]
    D = cfg["embed_dim"]
    n = (img_size // 16) ** 2
    N = n + 1  # with the class token
    macs = _performer_macs(16 * n, 147) + _performer_macs(4 * n, 576) + n * 576 * D
    if cfg["kind"] == "dense":
        g = cfg["growth_rate"]
        for kind, c in dense_widths(cfg):
            if kind == "block":
                hidden = int(c * cfg["mlp_ratio"])
                macs += N * c * 3 * c + _attention_macs(N, c) + N * c * c + 2 * N * c * hidden + N * c * g
                D = c + g
            else:
                macs += N * c * (c // 2)
                D = c // 2
    else:
        hidden = int(D * cfg["mlp_ratio"])
        for _ in range(cfg["depth"]):
            if cfg["kind"] == "se":
                macs += N * D * 3 * D + _attention_macs(N, D) + N * D * D + 2 * N * D * hidden
                macs += 2 * D * (D // 16)  # the SE gate: two matmuls on the token mean
            else:
                h = D // 2
                macs += 3 * N * D * h + 3 * N * h + _attention_macs(N, D) + N * D * D  # attention
                macs += N * D * D + 2 * N * D + N * hidden * D  # fc1, two cheap operations, fc2
    return macs + D * num_classes


def official_param_count(name: str, img_size: int = 224, num_classes: int = 1000) -> int:
    return sum(math.prod(s) for s in official_shapes(name, img_size, num_classes).values())
