"""What the training input pipeline costs the training process, per backend: CPU time per sample, GIL contention.

Two figures per backend (``data.backend: pil | dali``), from the training loader of each:

* ``<backend>_main_cpu_us_per_sample``: CPU time of the training process (all its threads; worker
  processes excluded) per sample while the loader feeds alone, as fast as it can. For DALI this is
  the feed side only (``DaliTrainLoader.batch_plans``: reading, header parsing, the augmentation
  draws and the assembly of the pipeline's inputs), not DALI's decode and augmentation, which a GPU
  runs (and which DALI's CPU operators would add here, in their own threads).
* ``<backend>_step_loop_slowdown``: a loop shaped like a training step's kernel launches (a small
  model's forward, backward and optimizer step: hundreds of small torch operations, each holding
  the interpreter lock between kernels) runs on the main thread, alone and while the loader feeds
  in a thread beside it; the ratio of its wall times (median over rounds that alternate the two).

Wall-clock ratios move with other load on the machine: run it on idle cores, with workers <= the
cores left free beside the loop, and quote ``uptime``. With ``pin`` the training process's threads
are held to the first allowed core and the loader's worker processes to the others (as a GPU node
gives the training process its own cores): the slowdown then shows what the feed costs the loop
through the training process itself (the interpreter lock, its own threads), not a core shared with
the workers' decoding.
"""
from __future__ import annotations

import functools
import os
import statistics
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn

from ..data.dataset import ImageFolderDataset
from ..data.loader import build_train_loader, set_loader_epoch
from ..data.sampler import TrainSampler
from ..data.transforms import build_train_transform
from .data_bench import _augment_kwargs, _dali_loader, _one_torch_thread, _train_root

__all__ = ["FEED_BACKENDS", "make_step_loop", "run_feed_benchmark"]

FEED_BACKENDS = ("pil", "dali")


def make_step_loop(width: int = 64, depth: int = 8, batch: int = 16) -> Callable[[], None]:
    """One step of a small MLP (forward, backward, SGD): ~10 torch operations per layer, each too small to
    leave the interpreter for long, as a GPU training step's kernel launches."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
                            for _ in range(depth)])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, foreach=True)
    inputs = torch.randn(batch, width)

    def step() -> None:
        loss = model(inputs).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _pil_feed(root: str, img_size: int, aug: dict[str, Any], *, batch_size: int, workers: int, seed: int,
              batch_buffers: bool = True) -> tuple[Callable[[int], Iterator[Any]], int]:
    """(epoch -> the Pillow backend's training batches, samples per epoch): DataLoader workers, uint8 out,
    into batch buffers as a training run's loader (data.batch_buffers) unless `batch_buffers` is false."""
    transform = build_train_transform(img_size, fast_decode=True, use_prefetcher=True, re_prob=0.0, **aug)
    dataset = ImageFolderDataset(root, transform, seed=seed)
    sampler = TrainSampler(len(dataset), seed=seed)
    loader = build_train_loader(dataset, batch_size=batch_size, sampler=sampler, workers=workers,
                                prefetch_factor=2 if workers else None,
                                batch_bytes=batch_size * (3 * img_size * img_size + 1024) if batch_buffers else None)

    def batches(epoch: int) -> Iterator[Any]:
        set_loader_epoch(loader, epoch)
        return iter(loader)
    return batches, len(loader) * batch_size


def _dali_feed(root: str, img_size: int, aug: dict[str, Any], *, batch_size: int, workers: int,
               seed: int) -> tuple[Callable[[int], Iterator[Any]], int]:
    """(epoch -> the DALI training loader's batch plans, samples per epoch): the feed without DALI's own stage."""
    count = len(ImageFolderDataset(root, seed=seed))
    loader = _dali_loader(root, img_size, aug, batch_size=batch_size, seed=seed, threads=workers, count=count)

    def plans(epoch: int) -> Iterator[Any]:
        loader.dataset.set_epoch(epoch)
        return loader.batch_plans()
    return plans, len(loader) * loader.batch_size


def _feed_alone(batches: Callable[[int], Iterator[Any]], samples: int, rounds: int,
                main_cores: set[int] | None = None) -> dict[str, float]:
    """Main-process CPU microseconds per sample and samples per wall second, over `rounds` epochs.

    `main_cores`: after the warm-up has started the (persistent) workers on the cores this thread had, this
    thread, and the threads it starts from then on, run on these cores only."""
    for _ in batches(0):  # warm-up: workers started, pipelines built, files in the page cache
        pass
    if main_cores:
        os.sched_setaffinity(0, main_cores)  # this thread only (Linux): the workers keep the other cores
    cpu = wall = 0.0
    for epoch in range(1, rounds + 1):
        c, w = time.process_time(), time.perf_counter()
        for _ in batches(epoch):
            pass
        cpu += time.process_time() - c
        wall += time.perf_counter() - w
    return {"main_cpu_us_per_sample": 1e6 * cpu / (rounds * samples),
            "images_per_sec_wall": rounds * samples / max(wall, 1e-9)}


class _Feeder:
    """A thread that runs the feed epoch after epoch until stopped (the loader working ahead of the steps)."""

    def __init__(self, batches: Callable[[int], Iterator[Any]]) -> None:
        self.batches = batches
        self.stop = threading.Event()
        self.started = threading.Event()
        self.fed = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="t2t-feed-bench", daemon=True)

    def _run(self) -> None:
        try:
            epoch = 1
            while not self.stop.is_set():
                iterator = self.batches(epoch)
                for _ in iterator:
                    self.fed += 1
                    self.started.set()
                    if self.stop.is_set():
                        break
                del iterator
                epoch += 1
        except BaseException as exc:  # reported by the measuring thread
            self.error = exc
            self.started.set()

    def __enter__(self) -> "_Feeder":
        self.thread.start()
        self.started.wait()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        if self.error is not None:
            raise self.error


def _time_steps(step: Callable[[], None], steps: int) -> tuple[float, float]:
    """(wall s, this thread's CPU s) of `steps` steps."""
    w, c = time.perf_counter(), time.thread_time()
    for _ in range(steps):
        step()
    return time.perf_counter() - w, time.thread_time() - c


def _step_loop_slowdown(batches: Callable[[int], Iterator[Any]], step: Callable[[], None], *, steps: int,
                        rounds: int) -> dict[str, Any]:
    """The step loop's wall time beside the feed over its time alone, per round (alternating), and the median."""
    wall_ratios, cpu_ratios, alone_ms = [], [], []
    for _ in range(rounds):
        alone, alone_cpu = _time_steps(step, steps)
        with _Feeder(batches) as feeder:
            busy, busy_cpu = _time_steps(step, steps)
            fed = feeder.fed
        if fed < 2:
            raise RuntimeError(f"the feed delivered {fed} batches while {steps} steps ran: use more steps or images")
        wall_ratios.append(busy / alone)
        cpu_ratios.append(busy_cpu / max(alone_cpu, 1e-9))
        alone_ms.append(1000 * alone / steps)
    return {"step_loop_slowdown": statistics.median(wall_ratios), "step_loop_slowdown_rounds": wall_ratios,
            "step_loop_thread_cpu_ratio": statistics.median(cpu_ratios),
            "step_loop_ms_alone": statistics.median(alone_ms)}


def run_feed_benchmark(data_dir: str, backends: Sequence[str] = FEED_BACKENDS, *, augment: str = "full",
                       img_size: int = 224, batch_size: int = 64, workers: int = 1, rounds: int = 3,
                       steps: int = 300, auto_augment: str = "rand-m9-mstd0.5-inc1", seed: int = 0,
                       pin: bool = False, batch_buffers: bool = True) -> dict[str, Any]:
    """Per backend: the training process's CPU time per sample, and the step loop's slowdown beside the feed
    (with `pin`, the loop's process on one core and the loader's workers on the others)."""
    unknown = [b for b in backends if b not in FEED_BACKENDS]
    if unknown:
        raise ValueError(f"unknown data backend {unknown[0]!r} for the feed benchmark; expected some of "
                         f"{', '.join(FEED_BACKENDS)}")
    root = _train_root(data_dir)
    aug = _augment_kwargs(augment, auto_augment)
    results: dict[str, Any] = {"feed_workers": workers, "batch_size": batch_size, "augment": augment,
                               "img_size": img_size, "step_loop_steps": steps, "pinned": pin,
                               "pil_batch_buffers": batch_buffers}
    allowed = sorted(os.sched_getaffinity(0))
    if pin and (len(allowed) < 2 or not workers):
        raise ValueError(f"pinning needs workers > 0 and 2 or more cores; this process may use {len(allowed)}")
    main_cores, worker_cores = ({allowed[0]}, set(allowed[1:])) if pin else (None, None)
    with _one_torch_thread():
        step = make_step_loop()
        _time_steps(step, max(1, steps // 10))  # warm-up
        for backend in backends:
            make = functools.partial(_pil_feed, batch_buffers=batch_buffers) if backend == "pil" else _dali_feed
            if worker_cores:
                os.sched_setaffinity(0, worker_cores)  # the workers the warm-up starts inherit these
            batches, samples = make(root, img_size, aug, batch_size=batch_size, workers=workers, seed=seed)
            results[f"{backend}_samples_per_epoch"] = samples
            for key, value in _feed_alone(batches, samples, rounds, main_cores).items():
                results[f"{backend}_{key}"] = value
            for key, value in _step_loop_slowdown(batches, step, steps=steps, rounds=rounds).items():
                results[f"{backend}_{key}"] = value
    if pin:
        os.sched_setaffinity(0, set(allowed))
    return results
