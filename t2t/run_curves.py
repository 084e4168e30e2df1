"""Training curves of one or more runs as one picture: train loss, val top-1 (model and EMA) and lr per epoch.

Reads each run folder's log.jsonl (one JSON object per epoch, written by t2t.engine.metrics), or its
summary.csv when there is no log.jsonl. scripts/plot_runs.py is its command line.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
from typing import Any, Optional, Sequence

from .cli import EXIT_USAGE, ArgumentParser, UsageError, run_main
from .outputs import check_output_file
from .visualize import _pyplot, save_png

__all__ = ["read_history", "plot_runs", "main"]

# (column, panel title, y label)
PANELS = (("train_loss", "train loss", "loss"), ("val_top1", "val top-1", "top-1 (%)"), ("lr", "learning rate", "lr"))


def _number(value: Any) -> float:
    """A float, or NaN for what a row leaves empty (epochs without evaluation)."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_history(run: str) -> list[dict[str, float]]:
    """The per-epoch rows of a run folder (log.jsonl, else summary.csv), or of one of those files."""
    if os.path.isdir(run):
        for name in ("log.jsonl", "summary.csv"):
            if os.path.isfile(os.path.join(run, name)):
                path = os.path.join(run, name)
                break
        else:
            raise UsageError(f"run folder {run!r} has no log.jsonl or summary.csv: is it a training run's --output?")
    elif os.path.isfile(run):
        path = run
    else:
        raise UsageError(f"run {run!r}: no such folder or file")
    rows: list[dict[str, Any]] = []
    with open(path, newline="") as f:
        if path.endswith(".jsonl"):
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UsageError(f"{path}, line {number}: not JSON ({e.msg}); "
                                     "expected one object per epoch") from None
                if not isinstance(row, dict):
                    raise UsageError(f"{path}, line {number}: expected a JSON object per epoch, "
                                     f"got {type(row).__name__}")
                rows.append(row)
        else:
            rows = list(csv.DictReader(f))
    if not rows:
        raise UsageError(f"{path}: no epochs logged yet")
    if "epoch" not in rows[0]:
        raise UsageError(f"{path}: no 'epoch' field; expected the log.jsonl or summary.csv of a training run")
    fields = list(dict.fromkeys(k for row in rows for k in row))  # a field some epochs lack is NaN there
    return [{k: _number(row.get(k)) for k in fields} for row in rows]


def _labels(runs: Sequence[str]) -> list[str]:
    """Each run's folder name; the whole path where two would share one."""
    names = [os.path.basename(os.path.normpath(r if os.path.isdir(r) else os.path.dirname(r) or r)) for r in runs]
    return [r if names.count(n) > 1 else n for r, n in zip(runs, names)]


def plot_runs(histories: Sequence[list[dict[str, float]]], labels: Sequence[str], title: Optional[str] = None):
    """A figure of three panels (train loss, val top-1 with EMA dashed, lr) with one colour per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (rows, label) in enumerate(zip(histories, labels)):
        colour = colours[i % len(colours)]
        epochs = [r["epoch"] + 1 for r in rows]  # epochs completed
        for ax, (key, _, _) in zip(axes, PANELS):
            values = [r.get(key, math.nan) for r in rows]
            if all(math.isnan(v) for v in values):
                continue
            ax.plot(epochs, values, "-", marker=".", color=colour, label=label)
            if key == "val_top1":
                ema = [r.get("ema_val_top1", math.nan) for r in rows]
                if not all(math.isnan(v) for v in ema):
                    ax.plot(epochs, ema, "--", marker=".", color=colour, label=f"{label} (EMA)")
    for ax, (_, panel_title, ylabel) in zip(axes, PANELS):
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(prog="t2t-plot", description=(
        "Train loss, val top-1 (model solid, EMA dashed) and lr against epochs for one or more training runs, "
        "overlaid in one PNG."))
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (or their log.jsonl / summary.csv)")
    p.add_argument("--output", required=True, help="the PNG to write, e.g. curves.png")
    p.add_argument("--labels", help="comma-separated legend names, one per run (default: the folder names)")
    p.add_argument("--title", help="a title above the panels")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    if not args.output.lower().endswith(".png"):
        raise UsageError(f"--output {args.output!r}: expected a .png file name")
    logs = [os.path.join(r, n) for r in args.runs for n in ("log.jsonl", "summary.csv")] if args.runs else []
    inputs = [("RUN_DIR", r) for r in args.runs] + [("RUN_DIR", p) for p in logs if os.path.exists(p)]
    check_output_file(args.output, inputs=inputs, overwrite=args.overwrite)
    labels = _labels(args.runs)
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(args.runs):
            raise UsageError(f"--labels {args.labels!r}: {len(labels)} names for {len(args.runs)} runs")
    histories = [read_history(r) for r in args.runs]
    _pyplot()
    save_png(plot_runs(histories, labels, args.title), args.output, dpi=90)
    return args.output


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)

    def plot() -> int:
        print(run(args))
        return 0
    return run_main("t2t-plot", plot, extra={ValueError: EXIT_USAGE}, interrupted=f"{args.output!r} not written")
