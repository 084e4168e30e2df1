"""Top-1 / top-5 / loss over a data loader, exact under data-parallel sharding.

Each rank evaluates its own shard (no padded duplicates); the sums are all-reduced in float64 and
divided once, so the distributed result equals the single-process one.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import DistInfo, all_reduce_sum
from .precision import amp_context

_logger = logging.getLogger(__name__)

@torch.no_grad()
def evaluate_models(
        models: dict[str, nn.Module],
        loader: Iterable,
        *,
        device: torch.device,
        amp: str = "none",
        dist: DistInfo | None = None,
        log_prefix: str = "",
        log_every: int = 50,
        batch_to_device: Callable | None = None,
) -> dict[str, dict]:
    """Evaluate several models (e.g. the model and its EMA) on each decoded batch in turn.

    Returns {name: {top1, top5 (%), loss, count, images_per_sec}} over all ranks' shards. The loader
    is read once, and the host never waits for the device until the end.
    """
    device = torch.device(device)
    for model in models.values():
        model.eval()
    # Running sums on the device, per model: correct@1, correct@5, summed cross-entropy.
    sums = torch.zeros(len(models), 3, dtype=torch.float64, device=device)
    count = 0  # images on this rank: known on the host
    start = time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        if batch_to_device is not None:
            images, targets = batch_to_device(images, targets)
        else:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
        count += targets.shape[0]
        for i, model in enumerate(models.values()):
            with amp_context(device, amp):
                logits = model(images)
            logits = logits.float()  # (B, num_classes)
            k = min(5, logits.shape[1])
            hits = logits.topk(k, dim=1).indices.eq(targets[:, None])  # (B, k)
            sums[i, 0] += hits[:, 0].sum()
            sums[i, 1] += hits.any(dim=1).sum()
            sums[i, 2] += F.cross_entropy(logits, targets, reduction="sum").double()
        if log_every and (step + 1) % log_every == 0 and (dist is None or dist.is_main):
            _logger.info("%sbatch %d: %d images on this rank", log_prefix, step + 1, count)
    totals = all_reduce_sum(torch.cat([sums.flatten(), sums.new_tensor([float(count)])])).tolist()
    total = totals[-1]
    elapsed = time.perf_counter() - start  # after the all-reduce: the slowest rank's time
    if total == 0:
        raise ValueError(f"{log_prefix}evaluation saw no images: the loader is empty")
    results = {}
    for i, name in enumerate(models):
        correct1, correct5, loss_sum = totals[3 * i:3 * i + 3]
        results[name] = {
            "top1": 100.0 * correct1 / total,
            "top5": 100.0 * correct5 / total,
            "loss": loss_sum / total,
            "count": int(total),
            "images_per_sec": total / elapsed if elapsed > 0 else float("nan"),
        }
    return results


def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, amp: str = "none",
             dist: DistInfo | None = None, log_prefix: str = "", log_every: int = 50) -> dict:
    """Evaluate `model` on `loader` (this rank's shard) and return global top1/top5 (%), loss, count, images/s."""
    return evaluate_models({"model": model}, loader, device=device, amp=amp, dist=dist, log_prefix=log_prefix,
                           log_every=log_every)["model"]
