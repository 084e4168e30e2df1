"""Token layers of the Tokens-to-Token module and the fixed sinusoid position table."""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from torch.utils.weak import WeakIdKeyDictionary

_LOG2_E = math.log2(math.e)


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """1-D sine/cosine table of shape (1, num_positions, dim), computed in float64."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angles = position / torch.pow(10000.0, exponent)  # (P, D)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float().unsqueeze(0)


def autograd_records(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on these tensors (grad mode on and one of them needs a
    gradient): where the layers here must not overwrite their inputs or outputs in place."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def token_grid(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tokens (B, H*W, C) as a channels-last grid (B, C, H, W), without a copy."""
    return x.view(x.shape[0], height, width, x.shape[2]).permute(0, 3, 1, 2)


def grid_tokens(grid: torch.Tensor) -> torch.Tensor:
    """A grid (B, C, H, W) as tokens (B, H*W, C), row-major: without a copy when it is channels-last."""
    return grid.permute(0, 2, 3, 1).flatten(1, 2)


def _fold_norm(norm: nn.LayerNorm, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of linear(norm(x)) acting on the unscaled, unshifted normalised x."""
    bias = linear.weight @ norm.bias
    if linear.bias is not None:
        bias = bias + linear.bias
    return linear.weight * norm.weight, bias


def norm_linear(
        x: torch.Tensor, norm: nn.LayerNorm, linear: nn.Linear, feature_order: torch.Tensor | None = None
) -> torch.Tensor:
    """linear(norm(x)) with the norm's scale and shift folded into the linear weights.

    The same function, but the normalised (B, T, dim) input carries no parameters: when x needs no
    gradient (the image patches) the backward skips the input-gradient product and the norm's
    backward, and the forward skips one pass over the normalised input. With feature_order, x holds
    the features the modules expect in that order: x[..., i] is feature feature_order[i].
    """
    weight, bias = _fold_norm(norm, linear)
    if feature_order is not None:
        weight = weight[:, feature_order]
    return F.linear(F.layer_norm(x, norm.normalized_shape, eps=norm.eps), weight, bias)


def patch_norm_linear(
        grid: torch.Tensor, norm: nn.LayerNorm, linear: nn.Linear, kernel: int, stride: int, padding: int
) -> torch.Tensor:
    """norm_linear of every kernel x kernel patch of a grid (B, C, H, W), as one convolution.

    Returns tokens (B, H' * W', out_features), row-major over the H' x W' patches: the same as
    nn.Unfold(kernel, padding=padding, stride=stride) followed by norm_linear, without gathering the
    patches or writing a normalised copy of them. Centring the weight rows removes each patch's mean,
    LN(p) W^T = rstd * (p - mean) W^T = rstd * p (W - W.mean(1))^T, so the convolution runs on the grid
    itself and the norm leaves only a per-patch 1/std to apply after it. The patch statistics (zero
    padding included, as nn.Unfold pads) come from each pixel's channel mean and variance pooled over the
    window, combined in float64 so that a patch whose mean is large against its spread loses nothing.
    Exact in float32; a reduced-precision convolution of the uncentred patches would not be, so this
    is for float32 only. The convolution reads a channels-last copy of the grid unless it is one
    already, and its output is then in token order; the statistics read the grid as it is laid out.
    """
    channels = grid.shape[1]
    weight, bias = _fold_norm(norm, linear)
    weight = (weight - weight.mean(dim=1, keepdim=True)).view(-1, channels, kernel, kernel)
    grid_cl = grid.contiguous(memory_format=torch.channels_last)
    tokens = grid_tokens(F.conv2d(grid_cl, weight, stride=stride, padding=padding))

    # Per pixel over the channels, two passes (torch.var_mean is several times slower on the CPU).
    pixel_mean = grid.mean(dim=1, keepdim=True)
    pixel_var = (grid - pixel_mean).square().mean(dim=1)  # (B, H, W)
    pixel_mean = pixel_mean.squeeze(1).double()
    pool = partial(F.avg_pool2d, kernel_size=kernel, stride=stride, padding=padding)  # zeros counted
    mean = pool(pixel_mean)
    var = pool(pixel_var.double() + pixel_mean.square()) - mean.square()  # E[p^2] - E[p]^2, in float64
    rstd = (var + norm.eps).rsqrt().to(tokens.dtype).flatten(1).unsqueeze(-1)  # (B, H' * W', 1)
    if autograd_records(tokens, rstd):
        return torch.addcmul(bias, tokens, rstd)
    return tokens.mul_(rstd).add_(bias)  # in place: no fresh (B, T', out) buffer


def cpu_float32(x: torch.Tensor) -> bool:
    """Whether x is a float32 CPU tensor outside autocast, with oneDNN available: the case the
    convolution-based paths here are written for (exact in float32, oneDNN's kernels)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available())


# weight -> (its version, its data pointer, the weight in oneDNN's packed layout), for inference.
_PACKED_WEIGHTS = WeakIdKeyDictionary()


def _packed_weight(weight: torch.Tensor, rows: int) -> torch.Tensor | None:
    """weight reordered for oneDNN's inner product, kept until the weight changes; None where torch
    lacks the ops."""
    key = (weight._version, weight.data_ptr())
    cached = _PACKED_WEIGHTS.get(weight)
    if cached is None or cached[:2] != key:
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
        except (AttributeError, RuntimeError):
            return None
        _PACKED_WEIGHTS[weight] = cached = (*key, packed)
    return cached[2]


class Linear(nn.Linear):
    """nn.Linear that, on the CPU in float32, runs on oneDNN instead of MKL.

    Without autograd (inference), oneDNN's inner product with the weight packed once in its own
    layout; with autograd, a 1x1 convolution over the rows (M, in), seen as a channels-last
    (1, in, M, 1) grid without a copy, whose backward is oneDNN's too. On this project's AMD EPYC
    (2 cores, backbone shapes), against F.linear: 13-34% faster packed, 15-30% faster convolved
    forward and 5-19% forward plus backward. The same parameters and state dict; other devices,
    dtypes and autocast use F.linear.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not cpu_float32(x):
            return super().forward(x)
        rows = x.reshape(-1, self.in_features)
        if not rows.is_contiguous() or rows.shape[0] == 0:
            return super().forward(x)
        # Not under torch.compile (inductor wants packed weights as graph constants) nor for weights made in
        # inference mode, which keep no version counter to tell when the packed copy is stale.
        if not autograd_records(x, self.weight) and not torch.compiler.is_compiling() \
                and not self.weight.is_inference():
            packed = _packed_weight(self.weight, rows.shape[0])
            if packed is not None:
                out = torch.ops.mkldnn._linear_pointwise(rows, packed, self.bias, "none", [], "")
                return out.view(*x.shape[:-1], self.out_features)
        grid = token_grid(rows.unsqueeze(0), rows.shape[0], 1)  # (1, in, M, 1)
        out = F.conv2d(grid, self.weight.view(self.out_features, self.in_features, 1, 1), self.bias)
        return grid_tokens(out).view(*x.shape[:-1], self.out_features)


def use_cpu_linears(module: nn.Module) -> nn.Module:
    """Turn every plain nn.Linear in module into a Linear (same parameters), in place."""
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = Linear
    return module


class GELU(nn.GELU):
    """nn.GELU that overwrites its input when no gradient flows through it (inference, no_grad, frozen
    layers): one pass over the hidden activations instead of a read plus a write to fresh memory
    (t2t_vit_14 inference, 2 cores: +9% images/s). As with nn.ReLU(inplace=True), a forward hook that
    keeps the previous layer's output sees it changed.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if autograd_records(x):
            return super().forward(x)
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


class Dropout(nn.Dropout):
    """nn.Dropout whose float32 CPU training mask is made from 16 random bits per element.

    torch's CPU generator fills an int64 tensor (four 16-bit draws per value) about 5x faster than
    F.dropout draws its float mask (t2t_vit_7's Performer dropouts: ~5% of a training step on 2 cores
    with F.dropout). Each element is dropped with probability round(p * 2^16) / 2^16 (0.1 -> 0.100006)
    and the kept ones are scaled by the inverse of their share, so the expectation is unchanged. Other
    devices and dtypes use F.dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or x.dtype != torch.float32 or self.inplace:
            return super().forward(x)
        threshold = round(self.p * 65536)
        if threshold in (0, 65536):
            return x if threshold == 0 else torch.zeros_like(x)
        bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-2**63, None)
        mask = bits.view(torch.int16)[:x.numel()].view(x.shape).to(torch.float32)  # uniform on [-2^15, 2^15)
        return x * mask.ge_(threshold - 32768).mul_(65536 / (65536 - threshold))


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
        self.dp = Dropout(drop)
        self.proj = nn.Linear(out_dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = nn.Sequential(
            nn.Linear(out_dim, out_dim),
            GELU(),
            nn.Linear(out_dim, out_dim),
            Dropout(drop),
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
        """phi(x) = exp(w.x - |x|^2 / 2) / sqrt(m) for x of shape (B, T, E), as (B, T, m).

        Computed as 2^(log2(e) (w.x - |x|^2 / 2) - log2(m) / 2), the factor folded into w and the
        shift: the same values to float32 rounding, and exp2 runs about 3x faster than exp on the CPU.
        """
        flat = x.reshape(-1, x.shape[-1])  # a strided view of the kqv rows, no copy
        sq_norm = torch.linalg.vector_norm(flat, dim=-1, keepdim=True).square()
        shift = sq_norm * (-0.5 * _LOG2_E) - 0.5 * math.log2(self.num_features)  # (B*T, 1)
        return torch.addmm(shift, flat, self.w.float().t() * _LOG2_E).exp2_().view(*x.shape[:-1], -1)

    @property
    def in_proj(self) -> nn.Linear:
        """The Linear that norm1 feeds."""
        return self.kqv

    def forward(self, x: torch.Tensor, feature_order: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, dim) -> (B, T, out_dim); feature_order as in norm_linear."""
        return self.mix(norm_linear(x, self.norm1, self.kqv, feature_order))

    def mix(self, kqv: torch.Tensor) -> torch.Tensor:
        """The layer after in_proj(norm1(x)): attention, v-skip and MLP on the (B, T, 3*out_dim) kqv."""
        y, v = self._linear_attention(kqv)
        x = v + self.dp(self.proj(y))
        return x + self.mlp(self.norm2(x))


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
        return self.attend(self.qkv(x))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention output plus v, from the (B, T, 3*out_dim) projection."""
        q, k, v = qkv.unsqueeze(1).split(self.out_dim, dim=-1)  # (B, 1, T, E) views: the backward is one cat
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return v.squeeze(1) + self.proj(y.squeeze(1))


class TokenTransformer(nn.Module):
    """Token layer of the T2T-ViT-t variants: softmax attention with a v-skip, then an MLP."""

    def __init__(self, dim: int, out_dim: int = 64) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(in_features=out_dim, hidden_features=out_dim, out_features=out_dim, act_layer=GELU)

    @property
    def in_proj(self) -> nn.Linear:
        """The Linear that norm1 feeds."""
        return self.attn.qkv

    def forward(self, x: torch.Tensor, feature_order: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, dim) -> (B, T, out_dim); feature_order as in norm_linear."""
        return self.mix(norm_linear(x, self.norm1, self.attn.qkv, feature_order))

    def mix(self, qkv: torch.Tensor) -> torch.Tensor:
        """The layer after in_proj(norm1(x)): attention, v-skip and MLP on the (B, T, 3*out_dim) qkv."""
        x = self.attn.attend(qkv)
        return x + self.mlp(self.norm2(x))
