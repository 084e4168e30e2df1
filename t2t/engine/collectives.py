"""The collectives and DDP helpers a run uses once its process group exists (t2t.engine.distributed forms it).

Every torch.distributed call of the project goes through this module, and each helper puts the
tensors it sends on `collective_device()` itself: NCCL serves only CUDA tensors, so a caller that
built a CPU tensor would fail at its first collective on a GPU node, though gloo accepts it.
Everything here is a no-op in a single process, so callers never branch on world size themselves.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "all_reduce_sum", "barrier", "broadcast_object", "collective_device", "first_collective", "gather_objects",
    "set_collective_device", "settle_bucket_layout", "sum_over_ranks", "unwrap_model",
]

# The device whose tensors the process group's backend serves: cuda:LOCAL_RANK under NCCL, cpu under gloo.
# Every collective below puts its tensors there itself, so no caller can hand NCCL a CPU tensor.
_COLLECTIVE_DEVICE = torch.device("cpu")


def collective_device() -> torch.device:
    """Where tensors must live for this process's collectives (set by init_distributed)."""
    return _COLLECTIVE_DEVICE


def set_collective_device(device: torch.device) -> None:
    """Record the device the new process group's backend serves (called by init_distributed)."""
    global _COLLECTIVE_DEVICE
    _COLLECTIVE_DEVICE = device


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def first_collective() -> None:
    """One all-reduce that every rank must reach, so that the communicators form before the first step.

    It is waited for on the host (one sync at start). Its time limit is the group's own
    (dist.timeout_minutes, enforced under NCCL by the watchdog, which aborts the communicator and
    ends the process): `work.wait(timeout)` adds nothing, because under NCCL it only blocks the
    current stream and returns True.
    """
    buf = torch.ones(1, device=_COLLECTIVE_DEVICE)
    dist.all_reduce(buf)
    buf.cpu()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks and return the sum, on `t`'s device (returned as is in a single process).

    The reduction runs on `collective_device()`, whatever device `t` is on.
    """
    if not _active():
        return t
    buf = t.to(_COLLECTIVE_DEVICE, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def sum_over_ranks(*values: float) -> list[float]:
    """Sum each number over ranks (float64 on the group's device); returns plain numbers."""
    if not _active():
        return [float(v) for v in values]
    buf = torch.tensor(values, dtype=torch.float64, device=_COLLECTIVE_DEVICE)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank `src`'s `obj` on every rank (any picklable object)."""
    if not _active():
        return obj
    holder = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src, device=_COLLECTIVE_DEVICE)
    return holder[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (any picklable object), in rank order, on every rank."""
    if not _active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)  # on the current CUDA device under NCCL (set at init)
    return gathered


def settle_bucket_layout(model: DistributedDataParallel, example: torch.Tensor,
                         context: contextlib.AbstractContextManager) -> None:
    """Have DDP lay out its gradient buckets before the first real step of this process group.

    DDP reduces the first backward of a new group in a layout taken from the parameter order, and
    from the second step on in the order gradients became ready in that first backward. With more
    than two ranks the ring all-reduce adds the ranks' gradients in an order that depends on where
    an element sits in its bucket, so without this a group restarted at step k would reduce step k
    differently from a run that never stopped (two ranks are immune: a + b = b + a). One throwaway
    forward and backward of `example` (under `context`, the run's autocast) at the start of every
    run, fresh or resumed, records that order, and every real step of every run then reduces in the
    same layout. Weights, buffers, random state and gradients are left as they were; the cost is
    one step's compute and one all-reduce of the gradients, once per start.
    """
    module = unwrap_model(model)
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    was_training = module.training
    model.train()
    with torch.random.fork_rng(devices=[example.device] if example.device.type == "cuda" else []):
        with context:
            out = model(example)
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        torch.stack([o.float().sum() for o in outputs]).sum().backward()
    with torch.no_grad():
        for buf, saved in buffers:
            buf.copy_(saved)
    for p in module.parameters():
        p.grad = None
    model.train(was_training)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / DataParallel and torch.compile wrappers, in any nesting."""
    while True:
        if isinstance(model, (DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
