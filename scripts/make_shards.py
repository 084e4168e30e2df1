"""Write an ImageFolder root (train/ and val/) as tar shards in the webdataset layout, with their indices.

    python scripts/make_shards.py --data-dir /data/imagenet --output /data/imagenet-shards --shard-size 1000

OUT/train/train-NNNNNN.tar and OUT/val/val-NNNNNN.tar (<key>.<ext> + <key>.cls), each with its index
(<shard>.idx.npz), and OUT/classes.json; the same samples in the folder's order. Shards already
written with the same samples are kept, so a stopped run continues. Train on them with
data.format=shards --data-dir OUT (docs/data-at-scale.md).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from t2t.cli import ArgumentParser, run_main  # noqa: E402
from t2t.data.shards import make_shards  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="ImageFolder root with train/ and val/")
    p.add_argument("--output", required=True, help="folder for train/*.tar, val/*.tar and classes.json")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    p.add_argument("--skip-bad-images", action="store_true", help="leave unreadable images out (with a warning) "
                   "instead of stopping at the first")
    args = p.parse_args(argv)
    if args.shard_size < 1:
        p.error(f"--shard-size {args.shard_size}: expected a positive number of images per shard")
    if os.path.realpath(args.output) == os.path.realpath(args.data_dir):
        p.error(f"--output {args.output!r} is --data-dir: write the shards to another folder")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    def body() -> int:
        counts = make_shards(args.data_dir, args.output, shard_size=args.shard_size,
                             skip_bad_images=args.skip_bad_images)
        print(", ".join(f"{split}: {n} images" for split, n in counts.items()) + f" in {args.output}")
        return 0

    return run_main("make_shards.py", body)


if __name__ == "__main__":
    sys.exit(main())
