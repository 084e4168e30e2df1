"""One mixed-precision path: the amp setting names an autocast dtype, or none for float32."""
from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(amp: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on CUDA devices that support it, else 'none' (fp32)."""
    if amp != "auto":
        return amp
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "none"


def amp_dtype(amp: str) -> torch.dtype:
    """The compute dtype for 'none' | 'bf16' | 'fp16'."""
    try:
        return AMP_DTYPES[amp]
    except KeyError:
        raise ValueError(f"amp={amp!r}: expected one of {sorted(AMP_DTYPES)}") from None


def amp_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """torch.autocast for bf16/fp16, a disabled autocast for 'none'."""
    return torch.autocast(device_type=device.type, dtype=amp_dtype(amp), enabled=amp != "none")
