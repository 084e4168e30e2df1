"""Top-1 / top-5 / loss over a data loader, exact under data-parallel sharding.

Each rank evaluates its own shard (no padded duplicates); the sums are all-reduced in float64 and
divided once, so the distributed result equals the single-process one.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..progress import Progress
from .collectives import all_reduce_sum
from .distributed import DistInfo
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
        real_labels: torch.Tensor | None = None,
        sample_indices: Sequence[int] | None = None,
        progress: Progress | None = None,
) -> dict[str, dict]:
    """Evaluate several models (e.g. the model and its EMA) on each decoded batch in turn.

    Returns {name: {top1, top5 (%), loss, count, images_per_sec}} over all ranks' shards. The loader
    is read once, and the host never waits for the device until the end.

    With `real_labels` ((N, L) class indices per dataset image, -1 for none; see t2t.engine.eval_suite) and
    `sample_indices` (the dataset index of each image the loader yields on this rank, in order), each result
    also has real_top1: the top-1 over the images with labels, counting a hit when the prediction is among
    them. Hits are kept per dataset image and summed over ranks, and each image must arrive exactly once.
    `progress` (t2t.progress.Progress) counts this rank's images as the batches arrive.
    """
    device = torch.device(device)
    for model in models.values():
        model.eval()
    # Running sums on the device, per model: correct@1, correct@5, summed cross-entropy.
    sums = torch.zeros(len(models), 3, dtype=torch.float64, device=device)
    count = 0  # images on this rank: known on the host
    real = _RealCounts(real_labels, sample_indices, len(models), device) if real_labels is not None else None
    start = time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        if batch_to_device is not None:
            images, targets = batch_to_device(images, targets)
        else:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
        count += targets.shape[0]
        if progress is not None:
            progress.update(targets.shape[0])
        for i, model in enumerate(models.values()):
            with amp_context(device, amp):
                logits = model(images)
            logits = logits.float()  # (B, num_classes)
            k = min(5, logits.shape[1])
            hits = logits.topk(k, dim=1).indices.eq(targets[:, None])  # (B, k)
            sums[i, 0] += hits[:, 0].sum()
            sums[i, 1] += hits.any(dim=1).sum()
            sums[i, 2] += F.cross_entropy(logits, targets, reduction="sum").double()
            if real is not None:
                real.add(i, count - targets.shape[0], logits.argmax(dim=1))
        if log_every and (step + 1) % log_every == 0 and (dist is None or dist.is_main):
            _logger.info("%sbatch %d: %d images on this rank", log_prefix, step + 1, count)
    totals = all_reduce_sum(torch.cat([sums.flatten(), sums.new_tensor([float(count)])])).tolist()
    total = totals[-1]
    real_results = real.totals() if real is not None else None
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
        if real_results is not None:
            results[name].update(real_results[i])
    return results


class _RealCounts:
    """Per-image ReaL hits of each model, keyed by dataset index, so the sum over ranks is exact."""

    def __init__(self, real_labels: torch.Tensor, sample_indices: Sequence[int] | None, num_models: int,
                 device: torch.device) -> None:
        if sample_indices is None:
            raise ValueError("real_labels needs sample_indices: the dataset index of each image the loader yields")
        self.labels = real_labels.to(device)  # (N, L), -1 where an image has fewer than L labels
        self.indices = torch.as_tensor(list(sample_indices), dtype=torch.long, device=device)
        num_images = real_labels.shape[0]
        self.hits = torch.zeros(num_models, num_images, dtype=torch.float64, device=device)
        self.seen = torch.zeros(num_images, dtype=torch.float64, device=device)

    def add(self, model: int, offset: int, predictions: torch.Tensor) -> None:
        """Record the top-1 `predictions` of model `model` for the loader's images offset .. offset + B."""
        index = self.indices[offset:offset + predictions.shape[0]]
        hit = (self.labels[index] == predictions[:, None]).any(dim=1)  # -1 never equals a class
        self.hits[model, index] = hit.double()
        if model == 0:
            self.seen.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))

    def totals(self) -> list[dict]:
        """Sum over ranks; {real_top1 (%), real_count} per model (real_top1 None when no image has labels)."""
        hits, seen = all_reduce_sum(torch.cat([self.hits, self.seen[None]])).split([self.hits.shape[0], 1])
        seen = seen[0]
        if not bool((seen == 1).all()):
            raise RuntimeError(f"ReaL counting saw {int((seen == 0).sum())} images never and "
                               f"{int((seen > 1).sum())} more than once: the loader does not cover the dataset "
                               "exactly once")
        labelled = (self.labels >= 0).any(dim=1)
        real_count = int(labelled.sum())
        correct = hits[:, labelled].sum(dim=1).tolist()
        return [{"real_top1": 100.0 * c / real_count if real_count else None, "real_count": real_count}
                for c in correct]


def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, amp: str = "none",
             dist: DistInfo | None = None, log_prefix: str = "", log_every: int = 50) -> dict:
    """Evaluate `model` on `loader` (this rank's shard) and return global top1/top5 (%), loss, count, images/s."""
    return evaluate_models({"model": model}, loader, device=device, amp=amp, dist=dist, log_prefix=log_prefix,
                           log_every=log_every)["model"]
