"""Write a small, learnable ImageNet-layout dataset of JPEGs: DIR/{train,val}/<class>/*.jpg.

Ten classes, each a pattern (a shape or a stripe/checker texture) in a colour from its own hue band,
with random position, size, rotation, background, blur and noise; neighbouring hue bands overlap, so
colour alone does not decide the class. A tiny T2T-ViT separates them in a few CPU minutes.

    python scripts/make_demo_data.py --out data/demo            # 10 x (100 train + 20 val), 64 px
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from t2t.tools.demo_data import PATTERNS, make_demo_dataset  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
