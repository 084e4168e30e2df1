"""Parameter and multiply-accumulate counts, the paper's way (attention products included)."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _sdpa_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, out_val=None, **kwargs) -> int:
    """FLOPs of softmax(q k^T) v: two batched products, 2 FLOPs per multiply-accumulate."""
    *batch, q_len, head_dim = query.shape
    k_len, v_dim = key.shape[-2], value.shape[-1]
    n = 1
    for b in batch:
        n *= b
    return 2 * n * q_len * k_len * (head_dim + v_dim)


def _onednn_linear_flops(x: torch.Tensor, weight: torch.Tensor, *args, out_val=None, **kwargs) -> int:
    """FLOPs of oneDNN's linear (t2t.models.layers.Linear without autograd): weight is (out, in)."""
    return 2 * (x.numel() // x.shape[-1]) * weight.shape[0] * weight.shape[1]


_sdpa_flops._get_raw = True  # FlopCounterMode passes the tensors themselves, not shapes
_onednn_linear_flops._get_raw = True

# The CPU and math kernels of scaled_dot_product_attention, and oneDNN's linear, have no formula in
# torch's counter.
_EXTRA_FORMULAS = {
    op: _sdpa_flops
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math")
    if (op := getattr(aten, name, None)) is not None
}
if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
    _EXTRA_FORMULAS[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flops


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all, trainable): all includes the fixed pos_embed and Performer projections."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int = 224, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass on one image: every matmul, einsum and attention product."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, in_chans, img_size, img_size, device=device)
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    try:
        with counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
