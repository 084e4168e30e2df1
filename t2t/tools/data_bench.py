"""Benchmark the training input pipeline (JPEG decode + full DeiT augmentation) against timm's, per core.

Both pipelines run in this one process on one thread, over the same files:

* ours: ``ImageFolderDataset`` (per-sample reseeding included) with ``build_train_transform(fast_decode=True)``;
* timm: ``timm.data.ImageDataset`` with ``timm.data.create_transform(is_training=True, ...)``, the stock way.

By default both normalise and random-erase in the pipeline (float output, what training uses unless
it moves that work to the device); with ``prefetcher=True`` both return uint8 tensors and leave
normalisation and random erasing to the device, as timm's ``use_prefetcher=True`` does. Command line
(generates 300-500 px JPEGs in a temporary folder when none is given):

    python -m t2t.tools.data_bench [--data-dir DIR] [--img-size 224] [--num-images 200] [--rounds 3] [--prefetcher]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from ..data.dataset import ImageFolderDataset
from ..data.transforms import build_train_transform, guard_posterize
from ..rng import SEED_STREAM_SAMPLE, derive_seed, seed_global_rngs

__all__ = ["make_benchmark_images", "run_data_benchmark"]


def make_benchmark_images(
    out_dir: str,
    num_images: int = 200,
    *,
    min_size: int = 300,
    max_size: int = 500,
    seed: int = 0,
    quality: int = 90,
) -> str:
    """Write ``num_images`` natural-looking JPEGs (smooth colour fields, shapes, grain) to out_dir/images/."""
    class_dir = os.path.join(out_dir, "images")
    os.makedirs(class_dir, exist_ok=True)
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        w, h = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        coarse = rng.normal(128.0, 50.0, size=(h // 24 + 2, w // 24 + 2, 3))
        image = Image.fromarray(np.uint8(np.clip(coarse, 0, 255))).resize((w, h), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(4, 12))):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            rx, ry = (int(v) for v in rng.integers(8, max(min_size // 3, 9), size=2))
            fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
            if rng.uniform() < 0.5:
                draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=fill)
            else:
                draw.rectangle([x - rx, y - ry, x + rx, y + ry], fill=fill)
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 6.0, size=(h, w, 3))
        Image.fromarray(np.uint8(np.clip(pixels, 0, 255))).save(os.path.join(class_dir, f"{i:05d}.jpg"), quality=quality)
    return out_dir


def _timed_round(
    ours: ImageFolderDataset, timm: Any, pairs: Sequence[tuple[int, int]], epoch: int, seed: int
) -> list[float]:
    """[ours CPU s, timm CPU s, ours wall s, timm wall s] for one pass, alternating image by image.

    Before each timm sample the global RNGs get the seed ours uses for that sample (untimed, so timm is
    not charged for it while ours is), so both pipelines do exactly the same augmentation work.
    """
    ours.set_epoch(epoch)
    totals = [0.0, 0.0, 0.0, 0.0]
    for i, j in pairs:
        cpu, wall = time.process_time(), time.perf_counter()
        ours[i]
        totals[0] += time.process_time() - cpu
        totals[2] += time.perf_counter() - wall
        seed_global_rngs(derive_seed(SEED_STREAM_SAMPLE, seed, epoch, i))
        cpu, wall = time.process_time(), time.perf_counter()
        timm[j]
        totals[1] += time.process_time() - cpu
        totals[3] += time.perf_counter() - wall
    return [max(t, 1e-9) for t in totals]


def run_data_benchmark(
    data_dir: str,
    *,
    img_size: int = 224,
    num_images: int = 200,
    prefetcher: bool = False,
    rounds: int = 3,
    auto_augment: str = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
    seed: int = 0,
) -> dict[str, Any]:
    """Images/s on one core of our training input pipeline and timm's on the same files, and the ratio.

    ``data_dir`` is a class-folder root or a dataset root with train/. Rates per core are images per
    CPU second of this (single-threaded) process, so waiting for other load on the machine does not
    count. The two pipelines alternate image by image, so both see the same conditions, and draw the
    same augmentation for each image (RandAugment's cost varies a lot between ops, so different draws
    would add noise); each round is a new epoch. Rates are summed over all rounds; ``speedup_best`` and
    ``speedup_median`` compare the best and median rounds, and wall-clock figures are reported too.
    ``mean_abs_diff_same_seed`` compares the two outputs for the same per-sample seed (in uint8 levels,
    or normalised units): they pick the same augmentation, so it is near 0.
    """
    ours_ds, timm_ds = _ours_and_timm_datasets(_train_root(data_dir), img_size, prefetcher=prefetcher,
                                               auto_augment=auto_augment, re_prob=re_prob, seed=seed)
    pairs = _paired_indices(ours_ds, timm_ds, num_images)
    count = len(pairs)
    with _one_torch_thread():
        diffs = _same_seed_diffs(ours_ds, timm_ds, pairs[:20], seed)
        _timed_round(ours_ds, timm_ds, pairs[: max(1, count // 10)], 0, seed)  # warm-up
        # A new epoch every round: fresh augmentation draws, the same for both pipelines.
        times = [_timed_round(ours_ds, timm_ds, pairs, epoch, seed) for epoch in range(1, rounds + 1)]
    return _comparison_results(times, diffs, prefetcher=prefetcher, count=count, rounds=rounds,
                               mean_image_size=_mean_image_size(ours_ds.samples[i][0] for i, _ in pairs))


def _train_root(data_dir: str) -> str:
    """data_dir/train where there is one (a dataset root), else data_dir (a class-folder root)."""
    return os.path.join(data_dir, "train") if os.path.isdir(os.path.join(data_dir, "train")) else data_dir


def _ours_and_timm_datasets(root: str, img_size: int, *, prefetcher: bool, auto_augment: str, re_prob: float,
                            seed: int) -> tuple[ImageFolderDataset, Any]:
    """Our dataset and timm's over `root`, with the same training augmentation (the recipes' full one)."""
    from timm.data import ImageDataset, create_transform

    aug = dict(
        scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), hflip=0.5, auto_augment=auto_augment,
        color_jitter=0.4, interpolation="random", re_prob=re_prob, re_mode="pixel", re_count=1,
    )
    ours_tf = build_train_transform(img_size, fast_decode=True, use_prefetcher=prefetcher, **aug)
    timm_tf = create_transform(img_size, is_training=True, use_prefetcher=prefetcher, **aug)
    # timm + recent Pillow crashes on RandAugment's 0-bit posterize; give timm the same guard so the run
    # completes (it changes no timing: the guard only replaces a raise by a black image).
    guard_posterize(timm_tf)
    return ImageFolderDataset(root, ours_tf, seed=seed), ImageDataset(root, transform=timm_tf)


def _paired_indices(ours_ds: ImageFolderDataset, timm_ds: Any, num_images: int) -> list[tuple[int, int]]:
    """(our index, timm's index) of the same file, for up to `num_images` files spread evenly over the folder."""
    timm_index = {os.path.abspath(path): i for i, (path, _) in enumerate(timm_ds.reader.samples)}
    count = min(num_images, len(ours_ds))
    ours_indices = np.linspace(0, len(ours_ds) - 1, count).round().astype(int).tolist()
    timm_indices = [timm_index[os.path.abspath(ours_ds.samples[i][0])] for i in ours_indices]
    return list(zip(ours_indices, timm_indices))


def _same_seed_diffs(ours_ds: ImageFolderDataset, timm_ds: Any, pairs: Sequence[tuple[int, int]],
                     seed: int) -> list[float]:
    """Mean absolute difference of the two pipelines' outputs per pair, both drawing with our per-sample seed."""
    # Agreement check (untimed): the same per-sample seed drives both pipelines, so they choose the
    # same crop, flip and RandAugment ops; the pixels differ only by resampling rounding.
    diffs = []
    for i, j in pairs:
        a = ours_ds[i][0]
        seed_global_rngs(derive_seed(SEED_STREAM_SAMPLE, seed, 0, i))
        b = timm_ds[j][0]
        diffs.append((a.float() - b.float()).abs().mean().item())
    return diffs


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Torch on one thread inside the block (the benchmarks measure per core); the thread count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _mean_image_size(paths: Iterable[str]) -> str:
    """The mean width x height of the images at `paths`, e.g. '441x441'."""
    sizes = []
    for path in paths:
        with Image.open(path) as im:
            sizes.append(im.size)
    return f"{np.mean([s[0] for s in sizes]):.0f}x{np.mean([s[1] for s in sizes]):.0f}"


def _comparison_results(times: Sequence[Sequence[float]], diffs: Sequence[float], *, prefetcher: bool, count: int,
                        rounds: int, mean_image_size: str) -> dict[str, Any]:
    """run_data_benchmark's figures from the rounds' [ours CPU s, timm CPU s, ours wall s, timm wall s]."""
    ours_cpu, timm_cpu, ours_wall, timm_wall = (sum(t[k] for t in times) for k in range(4))
    per_round = [t[1] / t[0] for t in times]
    return {
        "pipeline": "uint8 (normalise + erase on device)" if prefetcher else "float (normalise + erase in worker)",
        "images": count,
        "mean_image_size": mean_image_size,
        "rounds": rounds,
        "ours_images_per_sec_per_core": rounds * count / ours_cpu,
        "timm_images_per_sec_per_core": rounds * count / timm_cpu,
        "speedup": timm_cpu / ours_cpu,
        "speedup_best": max(per_round),
        "speedup_median": statistics.median(per_round),
        "speedup_worst": min(per_round),
        "ours_images_per_sec_wall": rounds * count / ours_wall,
        "timm_images_per_sec_wall": rounds * count / timm_wall,
        "speedup_wall": timm_wall / ours_wall,
        "mean_abs_diff_same_seed": float(np.mean(diffs)),
    }


# ---------------------------------------------------------------------------------------------
# Backends side by side: pil (ours, Pillow), dali (NVIDIA DALI, t2t/data/dali.py), timm (stock)

BACKENDS = ("pil", "dali", "timm")


def _augment_kwargs(augment: str, auto_augment: Optional[str]) -> dict[str, Any]:
    """The recipes' training augmentation ('full') or decode + random-resized crop + flip only ('crop')."""
    if augment not in ("full", "crop"):
        raise ValueError(f"augment must be 'full' or 'crop', got {augment!r}")
    full = augment == "full"
    return dict(scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), hflip=0.5,
                auto_augment=auto_augment if full else None, color_jitter=0.4 if full else None,
                interpolation="random")


def _dali_loader(root: str, img_size: int, aug: dict[str, Any], *, batch_size: int, seed: int, threads: int,
                 count: int) -> Any:
    from ..data.dali import DaliTrainLoader, SamplePlanner, parse_rand_policy
    from ..data.sampler import TrainSampler

    dataset = ImageFolderDataset(root, seed=seed)
    planner = SamplePlanner(img_size, scale=aug["scale"], ratio=aug["ratio"], hflip=aug["hflip"],
                            interpolation=aug["interpolation"], policy=parse_rand_policy(aug["auto_augment"]),
                            color_jitter=aug["color_jitter"] or 0.0)
    sampler = TrainSampler(len(dataset), seed=seed, shuffle=False, drop_last=False)
    sampler.total = sampler.samples_per_epoch = count  # the first `count` images, in folder order
    # The loader keeps full batches only: take the largest batch size <= batch_size that divides count.
    batch_size = max(b for b in range(1, min(batch_size, count) + 1) if count % b == 0)
    return DaliTrainLoader(dataset, sampler, planner, batch_size=batch_size, workers=threads)


def run_backend_benchmark(
    data_dir: str,
    backends: Sequence[str] = BACKENDS,
    *,
    augment: str = "full",
    img_size: int = 224,
    num_images: int = 200,
    rounds: int = 3,
    auto_augment: str = "rand-m9-mstd0.5-inc1",
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Images per CPU-second (all threads of this process) of each backend's training augmentation.

    Every backend delivers uint8 images (normalisation and random erasing belong to the device for
    all of them: BatchNormalizeErase, timm's prefetcher), one thread each: the Pillow backend and timm
    in this process as a loader worker would run them, DALI with one pipeline thread (plus the host
    thread that reads files and draws the augmentation, counted too). Rounds alternate between the
    backends, each round a new epoch; ``<backend>_images_per_sec_per_core`` sums all rounds.
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown data backend {unknown[0]!r}; expected some of {', '.join(BACKENDS)}")
    root = _train_root(data_dir)
    aug = _augment_kwargs(augment, auto_augment)
    pil_ds = ImageFolderDataset(root, build_train_transform(img_size, fast_decode=True, use_prefetcher=True,
                                                            re_prob=0.0, **aug), seed=seed)
    count = min(num_images, len(pil_ds))
    runners = _backend_runners(backends, root, pil_ds, aug, img_size=img_size, count=count, batch_size=batch_size,
                               seed=seed)
    with _one_torch_thread():
        cpu, wall = _timed_backend_rounds(runners, rounds)
    results: dict[str, Any] = {
        "augment": augment, "auto_augment": aug["auto_augment"], "img_size": img_size, "images": count,
        "rounds": rounds, "pipeline": "uint8 out (normalise + erase on the device)",
        "mean_image_size": _mean_image_size(path for path, _ in pil_ds.samples[:count]),
        "cpu_cores": os.cpu_count(),
    }
    results.update(_backend_rates(cpu, wall, images=rounds * count))
    return results


def _backend_runners(backends: Sequence[str], root: str, pil_ds: ImageFolderDataset, aug: dict[str, Any], *,
                     img_size: int, count: int, batch_size: int, seed: int) -> dict[str, Callable[[int], None]]:
    """For each of `backends`, in the order pil, timm, dali: epoch -> one pass over the first `count` images."""
    runners: dict[str, Callable[[int], None]] = {}
    if "pil" in backends:
        def run_pil(epoch: int) -> None:
            pil_ds.set_epoch(epoch)
            for i in range(count):
                pil_ds[i]
        runners["pil"] = run_pil
    if "timm" in backends:
        runners["timm"] = _timm_runner(root, pil_ds, aug, img_size=img_size, count=count, seed=seed)
    if "dali" in backends:
        loader = _dali_loader(root, img_size, aug, batch_size=batch_size, seed=seed, threads=1, count=count)

        def run_dali(epoch: int) -> None:
            loader.dataset.set_epoch(epoch)
            for _ in loader:
                pass
        runners["dali"] = run_dali
    return runners


def _timm_runner(root: str, pil_ds: ImageFolderDataset, aug: dict[str, Any], *, img_size: int, count: int,
                 seed: int) -> Callable[[int], None]:
    """Epoch -> timm's stock pipeline over the Pillow backend's first `count` files, with its augmentation draws."""
    from timm.data import ImageDataset, create_transform

    timm_tf = create_transform(img_size, is_training=True, use_prefetcher=True, re_prob=0.0, **aug)
    guard_posterize(timm_tf)
    timm_ds = ImageDataset(root, transform=timm_tf)
    timm_index = {os.path.abspath(path): i for i, (path, _) in enumerate(timm_ds.reader.samples)}
    order = [timm_index[os.path.abspath(pil_ds.samples[i][0])] for i in range(count)]

    def run_timm(epoch: int) -> None:
        for i, j in enumerate(order):
            seed_global_rngs(derive_seed(SEED_STREAM_SAMPLE, seed, epoch, i))  # the same draws as ours
            timm_ds[j]
    return run_timm


def _timed_backend_rounds(runners: dict[str, Callable[[int], None]],
                          rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """({backend: CPU s}, {backend: wall s}) summed over epochs 1..rounds, each round running every backend once."""
    cpu = {name: 0.0 for name in runners}
    wall = {name: 0.0 for name in runners}
    for name, run in runners.items():  # warm-up: pipeline build, first decodes, caches
        run(0)
    for epoch in range(1, rounds + 1):
        for name, run in runners.items():
            c, w = time.process_time(), time.perf_counter()
            run(epoch)
            cpu[name] += time.process_time() - c
            wall[name] += time.perf_counter() - w
    return cpu, wall


def _backend_rates(cpu: dict[str, float], wall: dict[str, float], *, images: int) -> dict[str, float]:
    """Per backend: images per CPU second and per wall second, CPU ms per image; DALI over Pillow where both ran."""
    rates: dict[str, float] = {}
    for name in cpu:
        rates[f"{name}_images_per_sec_per_core"] = images / max(cpu[name], 1e-9)
        rates[f"{name}_cpu_ms_per_image"] = 1000 * cpu[name] / images
        rates[f"{name}_images_per_sec_wall"] = images / max(wall[name], 1e-9)
    if "pil" in cpu and "dali" in cpu:
        rates["dali_over_pil_per_core"] = rates["dali_images_per_sec_per_core"] / rates["pil_images_per_sec_per_core"]
    return rates


def augmentation_statistics(data_dir: str, *, img_size: int = 224, epochs: int = 2, seed: int = 0,
                            auto_augment: str = "rand-m9-mstd0.5-inc1") -> dict[str, dict[str, Any]]:
    """Per sample, for the Pillow and DALI backends over the same images and epochs: the crop area fraction,
    log aspect ratio (w/h) and flip the augmentation drew, and the per-channel mean/std of the output image
    (uint8 levels). {backend: {"draws": {key: array}, "images": {"channel_mean": (N, 3), "channel_std": (N, 3)}}}.

    The Pillow backend's draws are re-drawn as its dataset does (seed_global_rngs, then timm's crop
    parameters, interpolation choice and torch's flip draw), without decoding.
    """
    from timm.data.transforms import RandomResizedCropAndInterpolation

    if os.path.isdir(os.path.join(data_dir, "train")):
        data_dir = os.path.join(data_dir, "train")
    aug = _augment_kwargs("full", auto_augment)
    pil_ds = ImageFolderDataset(data_dir, build_train_transform(img_size, fast_decode=True, use_prefetcher=True,
                                                                re_prob=0.0, **aug), seed=seed)
    count = len(pil_ds)
    loader = _dali_loader(data_dir, img_size, aug, batch_size=16, seed=seed, threads=1, count=count)
    sizes = []
    for path, _ in pil_ds.samples:
        with Image.open(path) as im:
            sizes.append(im.size)
    out: dict[str, dict[str, Any]] = {}
    draws = {"pil": [], "dali": []}
    images = {"pil": [], "dali": []}
    for epoch in range(epochs):
        pil_ds.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        for i, (width, height) in enumerate(sizes):
            sample_seed = derive_seed(SEED_STREAM_SAMPLE, seed, epoch, i)
            seed_global_rngs(sample_seed)
            _, _, h, w = RandomResizedCropAndInterpolation.get_params(Image.new("L", (width, height)),
                                                                     aug["scale"], aug["ratio"])
            random.choice((0, 1))  # the interpolation draw
            flip = float(torch.rand(1) < aug["hflip"])
            draws["pil"].append((w * h / (width * height), math.log(w / h), flip))
            d = loader.planner.draw(sample_seed, width, height)
            draws["dali"].append((d.box[2] * d.box[3] / (width * height), math.log(d.box[2] / d.box[3]),
                                  float(d.flip)))
            images["pil"].append(pil_ds[i][0])
        images["dali"].extend(x for batch, _ in loader for x in batch)
    for name in ("pil", "dali"):
        arr = np.array(draws[name])
        pixels = torch.stack(images[name]).float()  # (N, 3, S, S)
        out[name] = {
            "draws": {"area_fraction": arr[:, 0], "log_aspect": arr[:, 1], "flip": arr[:, 2]},
            "images": {"channel_mean": pixels.mean(dim=(2, 3)).numpy(), "channel_std": pixels.std(dim=(2, 3)).numpy()},
        }
    return out


def summarise_statistics(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The report's figures: mean crop area fraction, std of log aspect, flip rate, per-channel mean/std."""
    summary = {}
    for name, s in stats.items():
        summary[name] = {
            "samples": int(len(s["draws"]["flip"])),
            "mean_crop_area_fraction": float(s["draws"]["area_fraction"].mean()),
            "log_aspect_std": float(s["draws"]["log_aspect"].std()),
            "flip_rate": float(s["draws"]["flip"].mean()),
            "channel_mean": [round(float(v), 2) for v in s["images"]["channel_mean"].mean(axis=0)],
            "channel_std": [round(float(v), 2) for v in s["images"]["channel_std"].mean(axis=0)],
        }
    if "pil" in stats and "dali" in stats:
        diff = np.abs(stats["pil"]["images"]["channel_mean"] - stats["dali"]["images"]["channel_mean"])
        summary["paired_mean_abs_channel_mean_diff"] = [round(float(v), 2) for v in diff.mean(axis=0)]
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="class-folder images (default: generate 300-500 px JPEGs in a temp dir)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prefetcher", action="store_true", help="uint8 output; normalise and erase left to the device")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or make_benchmark_images(tmp, args.num_images)
        results = run_data_benchmark(
            data_dir, img_size=args.img_size, num_images=args.num_images,
            prefetcher=args.prefetcher, rounds=args.rounds,
        )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
