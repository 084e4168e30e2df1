"""Parameter and multiply-accumulate counts, the paper's way (attention products included).

Importing this module teaches torch.utils.flop_counter.FlopCounterMode the CPU kernel of
scaled_dot_product_attention, which it otherwise counts as zero: with it, FlopCounterMode on any
model (with or without no_grad) counts the attention products as on CUDA.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

aten = torch.ops.aten


def _attention_flops(q_shape: torch.Size, k_shape: torch.Size, v_shape: torch.Size) -> int:
    """FLOPs of softmax(q k^T) v for (..., L, E) queries: two batched products, 2 FLOPs per MAC."""
    *batch, q_len, head_dim = q_shape
    return 2 * math.prod(batch) * q_len * k_shape[-2] * (head_dim + v_shape[-1])


def _cpu_sdpa_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(q_shape, k_shape, v_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """Four products: the scores' gradient and dv, then dq and dk: twice the forward."""
    return 2 * _attention_flops(q_shape, k_shape, v_shape)


for _op, _formula in ((getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None), _cpu_sdpa_flops),
                      (getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None),
                       _cpu_sdpa_backward_flops)):
    if _op is not None and _op not in flop_registry:  # a torch that counts it already wins
        register_flop_formula(_op)(_formula)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all, trainable): all includes the fixed buffers saved with the weights (pos_embed, the
    Performer projections), as the official model holds them as parameters."""
    saved = sum(t.numel() for t in model.state_dict().values())  # parameters and persistent buffers
    return saved, sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int = 224, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass on one image: every matmul, einsum and attention product."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, in_chans, img_size, img_size, device=device)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
