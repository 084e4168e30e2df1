"""An optional float32 CPU backend for T2T-ViT: `accelerate(model)` converts a model in place.

The model in t2t_vit.py is plain (nn.Linear, nn.GELU, nn.Unfold soft splits): it traces, scripts,
exports and counts like any timm model. This module swaps in execution tricks that compute the same
function with the same parameters and state dict, faster on some CPUs:

- linear: nn.Linear runs on oneDNN instead of MKL. Without autograd, oneDNN's inner product on a
  copy of the weight packed once in its layout (private ops `torch.ops.mkldnn._reorder_linear_weight`
  and `_linear_pointwise`, with a fallback when they are missing); with autograd, a 1x1 convolution
  over the rows, whose backward is oneDNN's too.
- gelu: GELU overwrites its input when no gradient flows through it (inference): one pass over the
  hidden activations instead of a read plus a write to fresh memory.
- t2t: the T2T module runs each soft split and the Linear after it as one convolution over a
  channels-last grid, with the LayerNorm folded into the convolution (no patches gathered, no
  normalised copy written), and on the CPU a few images at a time so the large token tensors come
  from the allocator's free lists instead of fresh pages. Its token layers become subclasses that
  can start from that projection (`forward_projected`).

Each trick applies only to float32 CPU tensors outside autocast; everywhere else the plain code runs.
Whether they pay off depends on the CPU (oneDNN against MKL, memory bandwidth): measure with
`t2t-benchmark --cpu-backend both` before switching it on. A converted model is not meant for
TorchScript, FX or export: convert after those, or keep a plain copy.

Nothing in t2t imports this module unless `model.cpu_backend` is on or a user calls it: the layers
in layers.py and t2t_vit.py know nothing of it.
"""
import logging
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import flop_registry, register_flop_formula
from torch.utils.weak import WeakIdKeyDictionary

from timm.models._manipulate import checkpoint

from .layers import TokenPerformer, TokenTransformer
from .t2t_vit import T2TModule

TRICKS = ("linear", "gelu", "t2t")
_logger = logging.getLogger(__name__)


def cpu_float32(x: torch.Tensor) -> bool:
    """Whether x is a float32 CPU tensor outside autocast, with oneDNN available: where the tricks apply."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available())


def autograd_records(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on these tensors: where nothing may be overwritten in place."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def token_grid(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tokens (B, H*W, C) as a channels-last grid (B, C, H, W), without a copy."""
    return x.view(x.shape[0], height, width, x.shape[2]).permute(0, 3, 1, 2)


def grid_tokens(grid: torch.Tensor) -> torch.Tensor:
    """A grid (B, C, H, W) as tokens (B, H*W, C), row-major: without a copy when it is channels-last."""
    return grid.permute(0, 2, 3, 1).flatten(1, 2)


# ---------------------------------------------------------------------------------------------------
# linear: oneDNN instead of MKL

def _onednn_op(name: str):
    """torch.ops.mkldnn.<name>, or None where this torch lacks it."""
    return getattr(torch.ops.mkldnn, name, None) if hasattr(torch.ops, "mkldnn") else None


# weight -> (its version, its data pointer, the weight in oneDNN's packed layout), for inference.
_PACKED_WEIGHTS = WeakIdKeyDictionary()


def _packed_weight(weight: torch.Tensor, rows: int) -> Optional[torch.Tensor]:
    """weight reordered for oneDNN's inner product, kept until the weight changes; None where the
    private reorder op is missing or refuses."""
    reorder = _onednn_op("_reorder_linear_weight")
    if reorder is None:
        return None
    key = (weight._version, weight.data_ptr())
    cached = _PACKED_WEIGHTS.get(weight)
    if cached is None or cached[:2] != key:
        try:
            packed = reorder(weight.detach(), rows)
        except RuntimeError:
            return None
        _PACKED_WEIGHTS[weight] = cached = (*key, packed)
    return cached[2]


def _onednn_linear_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of oneDNN's linear on (..., in) rows with a packed (out, in) weight."""
    return 2 * (torch.Size(x_shape).numel() // x_shape[-1]) * weight_shape[0] * weight_shape[1]


_linear_pointwise = _onednn_op("_linear_pointwise")
if _linear_pointwise is not None and _linear_pointwise not in flop_registry:
    register_flop_formula(_linear_pointwise)(_onednn_linear_flops)  # so FlopCounterMode still counts them


class OneDnnLinear(nn.Linear):
    """nn.Linear on oneDNN for float32 CPU inputs: packed inner product without autograd, 1x1 convolution with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not cpu_float32(x):
            return super().forward(x)
        rows = x.reshape(-1, self.in_features)
        if not rows.is_contiguous() or rows.shape[0] == 0:
            return super().forward(x)
        # Not under torch.compile (inductor wants packed weights as graph constants) nor for weights made in
        # inference mode, which keep no version counter to tell when the packed copy is stale.
        linear = _onednn_op("_linear_pointwise")
        if linear is not None and not autograd_records(x, self.weight) and not torch.compiler.is_compiling() \
                and not self.weight.is_inference():
            packed = _packed_weight(self.weight, rows.shape[0])
            if packed is not None:
                out = linear(rows, packed, self.bias, "none", [], "")
                return out.view(*x.shape[:-1], self.out_features)
        grid = token_grid(rows.unsqueeze(0), rows.shape[0], 1)  # (1, in, M, 1)
        out = F.conv2d(grid, self.weight.view(self.out_features, self.in_features, 1, 1), self.bias)
        return grid_tokens(out).view(*x.shape[:-1], self.out_features)


# ---------------------------------------------------------------------------------------------------
# gelu: in place without autograd

class InplaceGELU(nn.GELU):
    """nn.GELU that overwrites its input when no gradient flows through it (inference, no_grad, frozen
    layers). As with nn.ReLU(inplace=True), a forward hook that keeps the previous layer's output sees
    it changed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if autograd_records(x):
            return super().forward(x)
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


# ---------------------------------------------------------------------------------------------------
# t2t: soft split + token-layer input projection as one convolution, LayerNorm folded

def _fold_norm(norm: nn.LayerNorm, linear: nn.Linear) -> tuple:
    """(weight, bias) of linear(norm(x)) acting on the unscaled, unshifted normalised x."""
    bias = linear.weight @ norm.bias
    if linear.bias is not None:
        bias = bias + linear.bias
    return linear.weight * norm.weight, bias


def patch_norm_linear(
        grid: torch.Tensor, norm: nn.LayerNorm, linear: nn.Linear, kernel: int, stride: int, padding: int
) -> torch.Tensor:
    """linear(norm(patches)) for every kernel x kernel patch of a grid (B, C, H, W), as one convolution.

    Returns tokens (B, H' * W', out_features), row-major: the same as nn.Unfold(kernel, padding=padding,
    stride=stride) followed by norm and linear. Centring the weight rows removes each patch's mean,
    LN(p) W^T = rstd * (p - mean) W^T = rstd * p (W - W.mean(1))^T, so the convolution runs on the grid
    itself and the norm leaves only a per-patch 1/std to apply after it. The patch statistics (zero
    padding included, as nn.Unfold pads) come from each pixel's channel mean and variance pooled over the
    window, combined in float64 so that a patch whose mean is large against its spread loses nothing.
    Exact in float32 only: a reduced-precision convolution of the uncentred patches would not be.
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
    mean = F.avg_pool2d(pixel_mean, kernel, stride, padding)  # zeros counted, as nn.Unfold pads
    var = F.avg_pool2d(pixel_var.double() + pixel_mean.square(), kernel, stride, padding) - mean.square()
    rstd = (var + norm.eps).rsqrt().to(tokens.dtype).flatten(1).unsqueeze(-1)  # (B, H' * W', 1)
    if autograd_records(tokens, rstd):
        return torch.addcmul(bias, tokens, rstd)
    return tokens.mul_(rstd).add_(bias)  # in place: no fresh (B, T', out) buffer


class ProjectedTokenPerformer(TokenPerformer):
    """TokenPerformer that can also start after its input projection, kqv(norm1(x)), computed elsewhere."""

    @property
    def in_proj(self) -> nn.Linear:
        """The Linear that norm1 feeds."""
        return self.kqv

    def forward_projected(self, kqv: torch.Tensor) -> torch.Tensor:
        """The layer after kqv(norm1(x)): attention in float32, v-skip and MLP; (B, T, 3E) -> (B, T, E)."""
        with torch.autocast(device_type=kqv.device.type, enabled=False):
            x = self.linear_attention(kqv)
        return x + self.mlp(self.norm2(x))


class ProjectedTokenTransformer(TokenTransformer):
    """TokenTransformer that can also start after its input projection, attn.qkv(norm1(x)), computed elsewhere."""

    @property
    def in_proj(self) -> nn.Linear:
        """The Linear that norm1 feeds."""
        return self.attn.qkv

    def forward_projected(self, qkv: torch.Tensor) -> torch.Tensor:
        """The layer after attn.qkv(norm1(x)): TokenAttention's equations from the projection on, then the MLP."""
        attn = self.attn
        q, k, v = qkv.unsqueeze(1).split(attn.out_dim, dim=-1)  # (B, 1, T, E) each: one head
        if attn.fused_attn:
            y = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        else:
            y = (q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        x = (v + attn.proj(y)).squeeze(1)
        return x + self.mlp(self.norm2(x))


# Token layers ConvolvedT2TModule can drive: each plain class and the subclass that starts after its projection.
PROJECTED_LAYERS = {TokenPerformer: ProjectedTokenPerformer, TokenTransformer: ProjectedTokenTransformer}

TOKENS_PER_CHUNK = 8 * 56 * 56  # first-layer tokens per chunk (8 images at 224)


class ConvolvedT2TModule(T2TModule):
    """T2TModule whose soft splits and the Linears after them run as convolutions on float32 CPU inputs.

    Its token layers are ProjectedTokenPerformer / ProjectedTokenTransformer (accelerate converts both).

    On 8 images at 224 (2-core AMD EPYC), oneDNN's convolution beats gathering the patches and
    multiplying (7.5 against 12.3 ms for the second split). Other inputs take the plain forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not cpu_float32(x):
            return super().forward(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(self._forward_chunked, x)  # keep only the images; recompute in backward
        return self._forward_chunked(x)

    def _forward_chunked(self, x: torch.Tensor) -> torch.Tensor:
        # A few images at a time: the memory-bound layers over H/4 * W/4 tokens then work on tensors small
        # enough (< 32 MiB) to come from the allocator's free lists instead of fresh pages. Every operation
        # here is per image, so the result is the same.
        chunk = max(1, TOKENS_PER_CHUNK * 16 // (x.shape[-2] * x.shape[-1]))
        if x.shape[0] > chunk:
            return torch.cat([self._forward_convolved(images) for images in x.split(chunk)])
        return self._forward_convolved(x)

    def _forward_convolved(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        a1, a2 = self.attention1, self.attention2
        x = a1.forward_projected(patch_norm_linear(x, a1.norm1, a1.in_proj, 7, 4, 2))
        x = a2.forward_projected(patch_norm_linear(token_grid(x, H // 4, W // 4), a2.norm1, a2.in_proj, 3, 2, 1))
        grid = token_grid(x, H // 8, W // 8)
        weight = self.project.weight.view(-1, grid.shape[1], 3, 3)  # nn.Unfold's (c, kh, kw) order is a conv's
        return grid_tokens(F.conv2d(grid, weight, self.project.bias, stride=2, padding=1))


# ---------------------------------------------------------------------------------------------------

def accelerate(model: nn.Module, tricks: tuple = TRICKS) -> nn.Module:
    """Convert `model` in place to run the given tricks on float32 CPU inputs; returns it.

    Modules change class only (same parameters, buffers and state dict); converting twice is harmless.
    """
    unknown = set(tricks) - set(TRICKS)
    if unknown:
        raise ValueError(f"tricks={tuple(tricks)}: unknown {sorted(unknown)}; expected some of {TRICKS}")
    swaps = {"linear": (nn.Linear, OneDnnLinear), "gelu": (nn.GELU, InplaceGELU),
             "t2t": (T2TModule, ConvolvedT2TModule)}
    for trick in tricks:
        plain, fast = swaps[trick]
        for m in model.modules():
            if type(m) is plain and (fast is not ConvolvedT2TModule or _convert_token_layers(m)):
                m.__class__ = fast
    return model


def _convert_token_layers(t2t: T2TModule) -> bool:
    """Give both token layers of `t2t` their projected subclass; False (nothing changed) if one is of another kind."""
    layers = (t2t.attention1, t2t.attention2)
    if not all(type(layer) in PROJECTED_LAYERS or type(layer) in PROJECTED_LAYERS.values() for layer in layers):
        return False
    for layer in layers:
        layer.__class__ = PROJECTED_LAYERS.get(type(layer), type(layer))
    return True


def apply_backend(model: nn.Module, enabled: bool, device: torch.device, amp: str) -> bool:
    """accelerate(model) where `enabled` (model.cpu_backend) and the run is float32 on the CPU; logs the
    choice and returns whether the backend was applied."""
    applied = enabled and device.type == "cpu" and amp == "none"
    if applied:
        accelerate(model)
        _logger.info("CPU backend on: %s (t2t.models.cpu)", ", ".join(TRICKS))
    elif enabled:
        _logger.info("CPU backend not applied: it serves float32 on the CPU, this run is %s on %s", amp, device)
    return applied


def restore(model: nn.Module) -> nn.Module:
    """Undo accelerate: every converted module back to its plain class, in place; returns it."""
    plain = {OneDnnLinear: nn.Linear, InplaceGELU: nn.GELU, ConvolvedT2TModule: T2TModule,
             **{fast: slow for slow, fast in PROJECTED_LAYERS.items()}}
    for m in model.modules():
        if type(m) in plain:
            m.__class__ = plain[type(m)]
    return model
