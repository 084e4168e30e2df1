"""Token layers of the Tokens-to-Token module and the fixed sinusoid position table."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """1-D sine/cosine table of shape (1, num_positions, dim), computed in float64."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angles = position / torch.pow(10000.0, exponent)  # (P, D)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float().unsqueeze(0)


class TokenPerformer(nn.Module):
    """Single-head Performer token layer: positive random features, linear attention, v-skip.

    The random-feature maths runs in float32 even under autocast: exp() of the projected
    keys overflows in float16.
    """

    def __init__(self, dim: int, out_dim: int = 64, kernel_ratio: float = 0.5, drop: float = 0.1) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.num_features = int(out_dim * kernel_ratio)
        self.epsilon = 1e-8
        self.norm1 = nn.LayerNorm(dim)
        self.kqv = nn.Linear(dim, 3 * out_dim)
        self.dp = nn.Dropout(drop)
        self.proj = nn.Linear(out_dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = nn.Sequential(
            nn.Linear(out_dim, out_dim),
            nn.GELU(),
            nn.Linear(out_dim, out_dim),
            nn.Dropout(drop),
        )
        # Fixed orthogonal projection, saved with the weights but never trained.
        w = nn.init.orthogonal_(torch.empty(self.num_features, out_dim)) * math.sqrt(self.num_features)
        self.w = nn.Parameter(w, requires_grad=False)

    def _linear_attention(self, kqv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (attention output, v), both float32, from the (B, T, 3*out_dim) projection."""
        with torch.autocast(device_type=kqv.device.type, enabled=False):
            return self._linear_attention_fp32(kqv.float())

    def _linear_attention_fp32(self, kqv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, q, v = kqv.split(self.out_dim, dim=-1)  # (B, T, E) views into kqv: no copies
        kp, qp = self._random_features(k), self._random_features(q)  # (B, T, m)
        denom = torch.bmm(qp, kp.sum(dim=1).unsqueeze(-1))  # (B, T, 1)
        kptv = torch.bmm(kp.transpose(1, 2), v)  # (B, m, E)
        # Normalise the m-wide features rather than the E-wide output: same sums, half the work.
        y = torch.bmm(qp / (denom + self.epsilon), kptv)  # (B, T, E)
        return y, v

    def _random_features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x) = exp(w.x - |x|^2 / 2) / sqrt(m) for x of shape (B, T, E), as (B, T, m)."""
        flat = x.reshape(-1, x.shape[-1])  # a strided view of the kqv rows, no copy
        shift = torch.linalg.vector_norm(flat, dim=-1, keepdim=True).square() * -0.5 - 0.5 * math.log(self.num_features)
        return torch.addmm(shift, flat, self.w.float().t()).exp_().view(*x.shape[:-1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, v = self._linear_attention(self.kqv(self.norm1(x)))
        x = self.dp(self.proj(y)).add_(v)  # in place on a fresh tensor that autograd does not keep
        return self.mlp(self.norm2(x)).add_(x)


class TokenAttention(nn.Module):
    """Single-head softmax attention from `dim` to `out_dim` channels with a v-skip.

    The scale is dim^-0.5 (the input width), as in the released T2T-ViT-t weights.
    """

    def __init__(self, dim: int, out_dim: int = 64) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.scale = dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * out_dim, bias=False)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, 1, self.out_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, 1, T, E)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        v, y = v.squeeze(1), y.squeeze(1)
        return v + self.proj(y)


class TokenTransformer(nn.Module):
    """Token layer of the T2T-ViT-t variants: softmax attention with a v-skip, then an MLP."""

    def __init__(self, dim: int, out_dim: int = 64) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(in_features=out_dim, hidden_features=out_dim, out_features=out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
