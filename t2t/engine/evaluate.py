"""Top-1 / top-5 / loss over a data loader, exact under data-parallel sharding.

Each rank evaluates its own shard (no padded duplicates); the sums are all-reduced in float64 and
divided once, so the distributed result equals the single-process one.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import DistInfo, all_reduce_sum
from .precision import amp_context

_logger = logging.getLogger(__name__)

@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: Iterable,
        *,
        device: torch.device,
        amp: str = "none",
        dist: DistInfo | None = None,
        log_prefix: str = "",
        log_every: int = 50,
) -> dict:
    """Evaluate `model` on `loader` (this rank's shard) and return global top1/top5 (%), loss, count, images/s."""
    device = torch.device(device)
    model.eval()
    # Running sums on the device (no per-batch host sync): correct@1, correct@5, summed CE, images.
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    start = time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with amp_context(device, amp):
            logits = model(images)
        logits = logits.float()  # (B, num_classes)
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices.eq(targets[:, None])  # (B, k)
        sums += torch.stack([
            hits[:, 0].sum(),
            hits.any(dim=1).sum(),
            F.cross_entropy(logits, targets, reduction="sum"),
            torch.tensor(targets.shape[0], device=device),
        ]).double()
        if log_every and (step + 1) % log_every == 0 and (dist is None or dist.is_main):
            _logger.info("%sbatch %d: %d images on this rank", log_prefix, step + 1, int(sums[3]))
    all_reduce_sum(sums)
    correct1, correct5, loss_sum, count = sums.tolist()
    elapsed = time.perf_counter() - start  # after the all-reduce: the slowest rank's time
    if count == 0:
        raise ValueError(f"{log_prefix}evaluation saw no images: the loader is empty")
    return {
        "top1": 100.0 * correct1 / count,
        "top5": 100.0 * correct5 / count,
        "loss": loss_sum / count,
        "count": int(count),
        "images_per_sec": count / elapsed if elapsed > 0 else float("nan"),
    }
