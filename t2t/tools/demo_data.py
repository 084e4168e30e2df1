"""A small, learnable ImageNet-layout dataset of JPEGs: DIR/{train,val}/<class>/*.jpg.

Ten classes, each a pattern (a shape or a stripe/checker texture) in a colour from its own hue band,
with random position, size, rotation, background, blur and noise; neighbouring hue bands overlap, so
colour alone does not decide the class. A tiny T2T-ViT separates them in a few CPU minutes.

    python -m t2t.tools.demo_data --out data/demo      # 10 x (100 train + 20 val), 64 px
"""
from __future__ import annotations

import argparse
import colorsys
import os
import sys
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

# name -> mask function of (u, v, rng): u, v are centred, rotated, scaled coordinates in about [-1, 1].
_Mask = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _edge(d: np.ndarray, width: float = 0.08) -> np.ndarray:
    """Soft inside (1) / outside (0) from a signed distance (negative inside)."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


def _stripes(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    period = rng.uniform(0.25, 0.5)
    return (np.cos(2 * np.pi * t / period) > 0).astype(np.float32)


PATTERNS: dict[str, _Mask] = {
    "disc": lambda u, v, rng: _edge(np.hypot(u, v) - 1.0),
    "square": lambda u, v, rng: _edge(np.maximum(abs(u), abs(v)) - 0.85),
    "triangle": lambda u, v, rng: _edge(np.maximum(np.maximum(-v - 0.5, 0.866 * u + 0.5 * v - 0.5), -0.866 * u + 0.5 * v - 0.5)),
    "ring": lambda u, v, rng: _edge(abs(np.hypot(u, v) - 0.75) - 0.22),
    "cross": lambda u, v, rng: _edge(np.minimum(np.maximum(abs(u) - 1.0, abs(v) - 0.25), np.maximum(abs(u) - 0.25, abs(v) - 1.0))),
    "hstripes": lambda u, v, rng: _stripes(v, rng) * _edge(np.maximum(abs(u), abs(v)) - 1.3),
    "vstripes": lambda u, v, rng: _stripes(u, rng) * _edge(np.maximum(abs(u), abs(v)) - 1.3),
    "dstripes": lambda u, v, rng: _stripes((u + v) / np.sqrt(2), rng) * _edge(np.maximum(abs(u), abs(v)) - 1.3),
    "checker": lambda u, v, rng: ((np.floor(u / 0.4) + np.floor(v / 0.4)) % 2) * _edge(np.maximum(abs(u), abs(v)) - 1.2),
    "dots": lambda u, v, rng: _edge(np.hypot((u / 0.5 + 0.5) % 1 - 0.5, (v / 0.5 + 0.5) % 1 - 0.5) - 0.22, 0.15)
    * _edge(np.maximum(abs(u), abs(v)) - 1.2),
}
# Textures keep their orientation (it is the class); shapes rotate freely.
_ORIENTED = {"hstripes", "vstripes", "dstripes", "checker", "dots"}


def render_demo_image(class_index: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class ``class_index`` (an index into PATTERNS), ``size`` x ``size``."""
    name = list(PATTERNS)[class_index]
    n = len(PATTERNS)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size * 2 - 1  # (H, W) in [-1, 1)
    cx, cy = rng.uniform(-0.35, 0.35, size=2)
    radius = rng.uniform(0.35, 0.65)
    angle = rng.uniform(-0.17, 0.17) if name in _ORIENTED else rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    u = (c * (xs - cx) + s * (ys - cy)) / radius
    v = (-s * (xs - cx) + c * (ys - cy)) / radius
    mask = PATTERNS[name](u, v, rng)[..., None]  # (H, W, 1)

    hue = (class_index / n + rng.uniform(-0.7, 0.7) / n) % 1.0  # overlaps the neighbouring classes' bands
    fg = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0)))
    bg = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.5), rng.uniform(0.0, 0.45)))
    if rng.uniform() < 0.3:  # sometimes a light background, so brightness is no cue either
        bg = 1.0 - bg * 0.5
    gradient = (rng.uniform(-0.15, 0.15) * xs + rng.uniform(-0.15, 0.15) * ys)[..., None]
    image = bg + gradient + (fg - bg) * mask
    image = image + rng.normal(0.0, rng.uniform(0.02, 0.08), size=image.shape)
    pil = Image.fromarray(np.uint8(np.clip(image, 0, 1) * 255 + 0.5))
    if rng.uniform() < 0.5:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return pil


def make_demo_dataset(
    out_dir: str,
    *,
    classes: int = 10,
    train_per_class: int = 100,
    val_per_class: int = 20,
    size: int = 64,
    seed: int = 0,
    quality: int = 90,
) -> dict[str, str]:
    """Write the dataset under ``out_dir``; the same arguments always give the same files. Returns the split dirs."""
    if not 2 <= classes <= len(PATTERNS):
        raise ValueError(f"classes must be between 2 and {len(PATTERNS)}, got {classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(f"need at least one image per class and split, got {train_per_class} and {val_per_class}")
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    names = list(PATTERNS)[:classes]
    splits = {"train": train_per_class, "val": val_per_class}
    for split_id, (split, count) in enumerate(splits.items()):
        for class_index, name in enumerate(names):
            class_dir = os.path.join(out_dir, split, name)
            os.makedirs(class_dir, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, class_index, i])
                image = render_demo_image(class_index, size, rng)
                image.save(os.path.join(class_dir, f"{name}_{i:05d}.jpg"), quality=quality)
    return {split: os.path.join(out_dir, split) for split in splits}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m t2t.tools.demo_data", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    p.add_argument("--classes", type=int, default=10, help=f"number of classes, 2-{len(PATTERNS)} (default 10)")
    p.add_argument("--train-per-class", type=int, default=100, help="training images per class (default 100)")
    p.add_argument("--val-per-class", type=int, default=20, help="validation images per class (default 20)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        dirs = make_demo_dataset(
            args.out, classes=args.classes, train_per_class=args.train_per_class,
            val_per_class=args.val_per_class, size=args.size, seed=args.seed,
        )
    except ValueError as e:
        p.error(str(e))
    print(f"wrote {args.classes} classes x ({args.train_per_class} train + {args.val_per_class} val) "
          f"{args.size}px JPEGs to {dirs['train']} and {dirs['val']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
