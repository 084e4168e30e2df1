#!/usr/bin/env python
"""Print parameters (all / trainable), MACs and GFLOPs of registered T2T-ViT models.

    python scripts/model_info.py t2t_vit_14 [--img-size 384]
    python scripts/model_info.py all --markdown      # the README's model table

MACs count every multiply-accumulate of one forward pass on one image, attention products and
einsums included (the paper's convention); GFLOPs = 2 x MACs.
"""
from __future__ import annotations

import argparse
import sys

import os

import timm
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import t2t  # noqa: E402
from t2t.cli import ArgumentParser  # noqa: E402
from t2t.models.factory import create_model, named_model_config  # noqa: E402
from t2t.inference import BatchSizeError, check_batch_fits  # noqa: E402

PAPER_TOP1 = {"t2t_vit_7": "71.7", "t2t_vit_10": "75.2", "t2t_vit_12": "76.5", "t2t_vit_14": "81.5",
              "t2t_vit_19": "81.9", "t2t_vit_24": "82.3", "t2t_vit_t_14": "81.7", "t2t_vit_t_19": "82.4",
              "t2t_vit_t_24": "82.6", "t2t_vit_14_se": "81.6", "t2t_vit_16_ghost": "79.5", "t2t_vit_dense": "80.6"}


def describe(name: str, img_size: int) -> dict:
    model = create_model(named_model_config(name, img_size))
    n_all, n_trainable = t2t.count_params(model)
    macs = t2t.count_macs(model, img_size)
    return dict(model=name, img_size=img_size, params=n_all, trainable=n_trainable, macs=macs, gflops=2 * macs / 1e9)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="registered names, or 'all'")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    if args.img_size < 16 or args.img_size % 16:
        parser.error(f"--img-size {args.img_size}: expected a positive multiple of 16 (T2T-ViT's token grid)")
    try:  # counting runs one forward pass of one image
        check_batch_fits(1, args.img_size, torch.device("cpu"))
    except BatchSizeError as e:  # "--batch-size 1: <size> px images need ...; use a smaller batch"
        need = str(e).split(": ", 1)[1].rsplit("; ", 1)[0]
        parser.error(f"--img-size {args.img_size}: {need}; use a smaller --img-size")
    names = timm.list_models("t2t_vit*") if args.models == ["all"] else args.models
    unknown = [n for n in names if n not in timm.list_models("t2t_vit*")]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; registered: {', '.join(timm.list_models('t2t_vit*'))}")
    if args.markdown:
        print("| model | img | params (all / trainable) | MACs | GFLOPs | paper top-1 |")
        print("|---|---|---|---|---|---|")
    for name in names:
        info = describe(name, args.img_size)
        if args.markdown:
            print(f"| {name} | {info['img_size']} | {info['params'] / 1e6:.3f}M / {info['trainable'] / 1e6:.3f}M "
                  f"| {info['macs'] / 1e9:.3f} G | {info['gflops']:.2f} | {PAPER_TOP1.get(name, '-')} |")
        else:
            print(f"{name} @ {info['img_size']}: params {info['params']:,} all / {info['trainable']:,} trainable, "
                  f"MACs {info['macs'] / 1e9:.3f} G, GFLOPs {info['gflops']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
