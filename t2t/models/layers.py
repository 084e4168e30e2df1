"""Token layers of the Tokens-to-Token module and the fixed sinusoid position table."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.jit import Final
from timm.layers import Mlp, register_notrace_module, use_fused_attn


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """1-D sine/cosine table of shape (1, num_positions, dim), computed in float64."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angles = position / torch.pow(10000.0, exponent)  # (P, D)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float().unsqueeze(0)


@register_notrace_module  # FX keeps it whole: its autocast region takes the device type from a tensor
class TokenPerformer(nn.Module):
    """Single-head Performer token layer: positive random features, linear attention, v-skip, MLP.

    The random-feature maths runs in float32 even under autocast: exp() of the projected keys
    overflows in float16 (official issue #65, NaN losses with AMP).
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
        # Fixed orthogonal projection (m, out_dim), never trained; a buffer saved with the weights.
        w = nn.init.orthogonal_(torch.empty(self.num_features, out_dim)) * math.sqrt(self.num_features)
        self.register_buffer("w", w)

    def random_features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x) = exp(w x - |x|^2 / 2) / sqrt(m): (B, T, E) -> (B, T, m)."""
        sq_norm = x.square().sum(dim=-1, keepdim=True) / 2  # (B, T, 1)
        return torch.exp(torch.matmul(x, self.w.t()) - sq_norm) / math.sqrt(self.num_features)

    def linear_attention(self, kqv: torch.Tensor) -> torch.Tensor:
        """Linear attention with the v-skip, from the (B, T, 3*out_dim) projection: (B, T, out_dim)."""
        k, q, v = kqv.float().split(self.out_dim, dim=-1)  # (B, T, E) each
        kp, qp = self.random_features(k), self.random_features(q)  # (B, T, m)
        denom = torch.matmul(qp, kp.sum(dim=1).unsqueeze(-1))  # (B, T, 1)
        kptv = torch.matmul(kp.transpose(1, 2), v)  # (B, m, E)
        y = torch.matmul(qp, kptv) / (denom + self.epsilon)  # (B, T, E)
        return v + self.dp(self.proj(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T, out_dim)."""
        kqv = self.kqv(self.norm1(x))  # (B, T, 3 * out_dim)
        if torch.jit.is_scripting():  # TorchScript does not script an autocast region; it runs without one
            x = self.linear_attention(kqv)
        else:
            with torch.autocast(device_type=kqv.device.type, enabled=False):  # float32: exp() overflows in fp16
                x = self.linear_attention(kqv)
        return x + self.mlp(self.norm2(x))


class TokenAttention(nn.Module):
    """Single-head softmax attention from `dim` to `out_dim` channels with a v-skip.

    The scale is dim^-0.5 (the input width), as in the released T2T-ViT-t weights.
    """

    fused_attn: Final[bool]

    def __init__(self, dim: int, out_dim: int = 64) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.scale = dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, 3 * out_dim, bias=False)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T, out_dim): attention output plus v."""
        q, k, v = self.qkv(x).unsqueeze(1).split(self.out_dim, dim=-1)  # (B, 1, T, E) each: one head
        if self.fused_attn:
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            y = (q * self.scale @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return (v + self.proj(y)).squeeze(1)


class TokenTransformer(nn.Module):
    """Token layer of the T2T-ViT-t variants: softmax attention with a v-skip, then an MLP."""

    def __init__(self, dim: int, out_dim: int = 64) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(in_features=out_dim, hidden_features=out_dim, out_features=out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T, out_dim)."""
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
