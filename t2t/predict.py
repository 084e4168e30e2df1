#!/usr/bin/env python3
"""Top-k predictions of a trained T2T-ViT for image files, written as CSV or JSON.

    python predict.py --checkpoint runs/x/best.pth --images photos/ extra.jpg --topk 5 --output preds.csv
    python predict.py --checkpoint 81.5_T2T_ViT_14.pth.tar --model t2t_vit_14 --images img.jpg --output p.json

The class names and the eval transform come from the checkpoint (our runs store the config and the
class names; official ImageNet weights get timm's ImageNet names and the paper's eval transform).
EMA weights are used when the file has them. Unreadable images are reported and skipped; the exit
status is then 1. Problems with the inputs: one line on stderr, exit status 2. --output is never one
of the inputs; an existing file is replaced only with --overwrite, and only once the new one is
complete. Ctrl-C stops with exit status 130 and writes nothing.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any, Optional, Sequence

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch's first large allocation; t2t/runtime.py

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .cli import EXIT_USAGE, ArgumentParser, run_main, split_overrides
from .data.dataset import list_images
from .data.decode import to_rgb
from .data.loader import init_loader_worker
from .engine.distributed import resolve_device
from .inference import load_model
from .outputs import CtrlC, atomic_output, check_output_file, workers_stopped

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(prog="t2t-predict", description=__doc__.split("\n")[0], epilog=SETTINGS_HELP)
    p.add_argument("--checkpoint", required=True, help="our checkpoint, an official release file or .safetensors")
    p.add_argument("--images", required=True, nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("-c", "--config", help="a config.yaml whose keys override the checkpoint's stored config")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. eval.crop_pct=1.0 model.img_size=384")
    p.add_help_config()
    p.add_argument("--topk", type=int, default=5, help="predictions per image (default 5; at most the class count)")
    p.add_argument("--output", help="CSV file, or JSON when the name ends in .json (default: CSV on stdout)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output (kept until the new file is complete)")
    p.add_argument("--model", help="model.name, for files that record none (official weights), e.g. t2t_vit_14")
    p.add_argument("--img-size", type=int, help="model.img_size: input size (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, help=f"eval.batch_size (default {DEFAULTS['eval']['batch_size']})")
    p.add_argument("--workers", type=int, help=f"data.workers: image-decoding processes (default "
                   f"{DEFAULTS['data']['workers']})")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--no-ema", action="store_true", help="use the model weights even if EMA weights exist")
    args = p.parse_intermixed_args(argv)
    args.images, extra = split_overrides(args.images)
    args.overrides = [*args.overrides, *extra]
    return args


class ImageFiles(Dataset):
    """Transformed images; an unreadable file gives (None, index, reason) instead of raising."""

    def __init__(self, paths: list[str], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Optional[torch.Tensor], int, str]:
        try:
            with Image.open(self.paths[index]) as img:
                img.load()
                return self.transform(to_rgb(img)), index, ""
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            return None, index, f"{type(e).__name__}: {e}"


def _collate(items: list) -> tuple[Optional[torch.Tensor], list[int], list[tuple[int, str]]]:
    good = [(x, i) for x, i, _ in items if x is not None]
    bad = [(i, why) for x, i, why in items if x is None]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], bad


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // total
    end = "\n" if done == total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images", end=end, file=sys.stderr, flush=True)


# predict.py's own defaults for the run-time keys (a run's config does not decide them here).
DEFAULTS = {"eval": {"batch_size": 32}, "data": {"workers": 2}}
SETTINGS_HELP = ("Settings, in increasing priority: the checkpoint's stored config (model, eval crop and "
                 "interpolation, normalisation), the -c file, section.key=value overrides, then the flags "
                 "(--model, --img-size, --batch-size, --workers are model.name, model.img_size, eval.batch_size, "
                 "data.workers). Without a setting, the model's pretrained cfg gives the eval crop and "
                 "interpolation (T2T-ViT: 0.9, bicubic).")


@torch.no_grad()
def predict(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """(rows of {path, labels, probs}, skipped (path, reason)) for every image, in input order."""
    for flag, value, least, what in (("--topk", args.topk, 1, "predictions per image"),
                                     ("--batch-size", args.batch_size, 1, "images per batch"),
                                     ("--workers", args.workers, 0, "image-decoding processes")):
        if value is not None and value < least:
            raise ValueError(f"{flag} {value}: expected a number of {what} >= {least}")
    paths = list_images(args.images)
    check_output(args, paths)
    device = resolve_device(args.device)
    loaded = load_model(args.checkpoint, use_ema=not args.no_ema, config_file=args.config, overrides=args.overrides,
                        flags={"model.name": (args.model, "--model"), "model.img_size": (args.img_size, "--img-size"),
                               "eval.batch_size": (args.batch_size, "--batch-size"),
                               "data.workers": (args.workers, "--workers")}, defaults=DEFAULTS)
    batch_size, workers = loaded.config.eval.batch_size, loaded.config.data.workers
    model = loaded.model.to(device)
    k = min(args.topk, len(loaded.classes))
    if k < args.topk:  # the default 5 with a model of fewer classes, or a larger --topk: all classes, ranked
        print(f"t2t-predict: --topk {args.topk} is more than the {len(loaded.classes)} classes of "
              f"{args.checkpoint}: {k} predictions per image", file=sys.stderr)
    print(f"{loaded.model_name} @{loaded.img_size}, {loaded.weights} weights of {args.checkpoint}, "
          f"{len(loaded.classes)} classes, {len(paths)} images on {device}", file=sys.stderr)
    # Workers ignore Ctrl-C: the main process stops them, so the interruption is one line, not their tracebacks.
    loader = DataLoader(ImageFiles(paths, loaded.transform), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, worker_init_fn=init_loader_worker)
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    done = 0
    with CtrlC() as ctrl_c, workers_stopped(loader) as batches:
        # A Ctrl-C that Python swallows (at a worker's start) still stops at the next batch; workers are
        # stopped before the process exits (else the fd-sharing thread can print a traceback at exit).
        for images, indices, bad in batches:
            ctrl_c.check()
            for i, why in bad:
                skipped.append((paths[i], why))
                print(f"\nt2t-predict: skipped unreadable image {paths[i]!r}: {why}", file=sys.stderr)
            if images is not None:
                probs = model(images.to(device)).float().softmax(dim=-1)
                top_p, top_i = probs.topk(k, dim=-1)
                for i, p_row, i_row in zip(indices, top_p.tolist(), top_i.tolist()):
                    rows.append({"path": paths[i], "labels": [loaded.classes[c] for c in i_row], "probs": p_row})
            done += len(indices) + len(bad)
            _progress(done, len(paths))
        ctrl_c.check()
    return rows, skipped


def write_results(rows: list[dict[str, Any]], k: int, output: Optional[str]) -> None:
    """CSV (path,label_1,prob_1,...,label_k,prob_k) or, for a .json name, a list of {path, predictions}."""
    if not output:
        _write_csv(rows, k, sys.stdout)
        return
    with atomic_output(output) as tmp:
        with open(tmp, "w", newline="") as f:
            if output.endswith(".json"):
                data = [{"path": r["path"], "predictions": [{"label": lab, "prob": p}
                                                            for lab, p in zip(r["labels"], r["probs"])]}
                        for r in rows]
                json.dump(data, f, indent=1)
                f.write("\n")
            else:
                _write_csv(rows, k, f)


def _write_csv(rows: list[dict[str, Any]], k: int, f) -> None:
    writer = csv.writer(f)
    writer.writerow(["path"] + [f"{kind}_{j}" for j in range(1, k + 1) for kind in ("label", "prob")])
    for r in rows:
        writer.writerow([r["path"]] + [v for lab, p in zip(r["labels"], r["probs"]) for v in (lab, f"{p:.6f}")])


def check_output(args: argparse.Namespace, paths: Sequence[str]) -> None:
    """--output may be neither the checkpoint nor one of the images, nor an existing file without --overwrite."""
    if args.output:
        inputs = [("--checkpoint", args.checkpoint), ("-c/--config", args.config)] + [("--images", p) for p in paths]
        check_output_file(args.output, inputs=inputs, overwrite=args.overwrite)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return run_main("t2t-predict", lambda: _predict_and_write(args), extra={ValueError: EXIT_USAGE},
                    interrupted=lambda: "no predictions written" + (
                        f"; {args.output!r} is as it was" if args.output and os.path.exists(args.output) else ""))


def _predict_and_write(args: argparse.Namespace) -> int:
    rows, skipped = predict(args)
    k = len(rows[0]["labels"]) if rows else args.topk
    write_results(rows, k, args.output)
    if args.output:
        print(f"wrote {len(rows)} predictions to {args.output}", file=sys.stderr)
    if skipped:
        print(f"t2t-predict: {len(skipped)} of {len(rows) + len(skipped)} images could not be read and were skipped",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
