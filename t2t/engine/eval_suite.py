"""The evaluation suite behind validate.py: resolution sweeps, flip test-time augmentation, ImageNet-ReaL
labels, several checkpoints in one call, and the result rows as a table, JSON and CSV.

One row per (checkpoint, resolution, TTA mode); validate.py adds one set of rows per evaluation set
(t2t.engine.eval_sets). All the models that share a resolution (the
checkpoints, and each one's TTA variants) are evaluated on the same decoded batches, so the data is
read and decoded once per resolution; each row is still exact under data-parallel sharding
(t2t.engine.evaluate).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn as nn

from ..errors import UsageError
from ..outputs import OutputError, check_output_file, same_file, write_text
from ..progress import Progress
from .distributed import DistInfo
from .eval_sets import builtin_real_labels
from .evaluate import evaluate_models

__all__ = ["BUILTIN_REAL_LABELS", "TTA_MODES", "FlipTTA", "RealLabelsError", "Resolution", "SuiteJob", "check_output_files", "format_table",
           "load_real_labels", "parse_list", "parse_tta", "resolutions", "rows_to_csv", "rows_to_json", "run_suite",
           "tta_models", "write_rows"]

TTA_MODES = ("none", "flip")
BUILTIN_REAL_LABELS = "builtin"  # --real-labels builtin: timm's bundled ImageNet-ReaL labels


@dataclass(frozen=True)
class Resolution:
    """One setting of a sweep: the eval image size and its centre-crop fraction."""

    img_size: int
    crop_pct: float


def parse_list(text: str, kind: type, flag: str) -> list:
    """'224,288,384' -> [224, 288, 384] (int or float); UsageError naming `flag` on anything else."""
    items = [item.strip() for item in str(text).split(",")]
    try:
        values = [kind(item) for item in items]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected a comma-separated list of {kind.__name__} values") from None
    if not values:
        raise UsageError(f"{flag} {text!r}: expected at least one value")
    return values


def resolutions(sizes: Sequence[int], crops: Sequence[float] | None, default_crop: float) -> list[Resolution]:
    """Pair each size with its crop: one --crop-pct for every size, one per size, or `default_crop` for all."""
    if not crops:
        crops = [default_crop] * len(sizes)
    elif len(crops) == 1:
        crops = list(crops) * len(sizes)
    elif len(crops) != len(sizes):
        raise UsageError(f"--crop-pct {','.join(map(str, crops))}: {len(crops)} values for {len(sizes)} sizes "
                         f"(--img-size {','.join(map(str, sizes))}); give one value for all, or one per size")
    result = []
    for size, crop in zip(sizes, crops):
        if size <= 0 or size % 16:
            raise UsageError(f"--img-size {size}: expected a positive multiple of 16")
        if not 0 < crop <= 1:
            raise UsageError(f"--crop-pct {crop}: expected a fraction in (0, 1]")
        result.append(Resolution(int(size), float(crop)))
    if len(set(result)) != len(result):
        repeated = [(r.img_size, r.crop_pct) for r in result]
        raise UsageError(f"--img-size/--crop-pct: a setting is repeated in {repeated}")
    return result


def parse_tta(text: str) -> list[str]:
    """'none,flip' -> ['none', 'flip']; UsageError on an unknown mode."""
    modes = parse_list(text, str, "--tta")
    for mode in modes:
        if mode not in TTA_MODES:
            raise UsageError(f"--tta {text!r}: unknown mode {mode!r}; expected a comma-separated list of "
                             f"{', '.join(TTA_MODES)}")
    if len(set(modes)) != len(modes):
        raise UsageError(f"--tta {text!r}: a mode is repeated")
    return modes


class FlipTTA(nn.Module):
    """The mean of the logits of the image and of its left-right mirror (computed in float32)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # images (B, C, H, W) -> logits (B, num_classes)
        return (self.model(images).float() + self.model(images.flip(-1)).float()) / 2


def tta_models(model: nn.Module, modes: Sequence[str]) -> dict[str, nn.Module]:
    """{mode: model as evaluated under that mode}; the variants share the weights."""
    return {mode: FlipTTA(model) if mode == "flip" else model for mode in modes}


class RealLabelsError(UsageError):
    """A ReaL label file that cannot be used with this dataset."""


def load_real_labels(path: str, image_paths: Sequence[str], num_classes: Optional[int] = None,
                     model: str = "the model") -> torch.Tensor:
    """Read an ImageNet-ReaL real.json and return its labels in the dataset's order: (N, L) int64, -1 padded.

    real.json is a JSON list with one entry per validation image, in the order of the sorted file names
    (ILSVRC2012_val_00000001.JPEG first), each a list of the correct class indices (below `num_classes`, the
    classes of `model`, when given), possibly empty. The
    dataset's images may sit in class folders: they are matched to the entries by sorting their file names.
    `path` 'builtin' reads the copy timm ships (t2t.engine.eval_sets.builtin_real_labels).
    """
    try:
        if path == BUILTIN_REAL_LABELS:
            entries = builtin_real_labels()
        else:
            with open(path, encoding="utf-8") as f:
                entries = json.load(f)
    except OSError as e:
        raise RealLabelsError(f"--real-labels {path!r} cannot be read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RealLabelsError(f"--real-labels {path!r} is not a JSON file: {e}") from None
    if not isinstance(entries, list):
        raise RealLabelsError(f"--real-labels {path!r} holds a JSON {type(entries).__name__}: expected a list with "
                              "one list of class indices per validation image (ImageNet-ReaL real.json)")
    if len(entries) != len(image_paths):
        raise RealLabelsError(f"--real-labels {path!r} has {len(entries)} entries but the evaluation set has "
                              f"{len(image_paths)} images: expected one entry per image, in sorted file-name order")
    for i, entry in enumerate(entries):
        if not isinstance(entry, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                  for c in entry):
            raise RealLabelsError(f"--real-labels {path!r}: entry {i} is {entry!r}: expected a list of class "
                                  "indices (integers >= 0), possibly empty")
        if num_classes is not None and any(c >= num_classes for c in entry):
            raise RealLabelsError(f"--real-labels {path!r}: entry {i} names class {max(entry)}, but {model} has "
                                  f"{num_classes} classes (0 to {num_classes - 1}): the file is for another label set")
    names = [os.path.basename(p) for p in image_paths]
    order = sorted(range(len(names)), key=lambda i: names[i])
    for a, b in zip(order, order[1:]):
        if names[a] == names[b]:
            raise RealLabelsError(f"--real-labels {path!r}: images {image_paths[a]!r} and {image_paths[b]!r} share "
                                  "a file name, so the order of the label file cannot be matched to them")
    width = max(1, max((len(e) for e in entries), default=1))
    labels = torch.full((len(entries), width), -1, dtype=torch.long)
    for position, index in enumerate(order):  # the dataset's image `index` is the `position`-th by file name
        entry = entries[position]
        if entry:
            labels[index, :len(entry)] = torch.tensor(entry)
    return labels


def check_output_files(outputs: Iterable[tuple[str, str | None]], inputs: Sequence[tuple[str, str]],
                       overwrite: bool) -> None:
    """Each (flag, path) output: not an input, not another output, not an existing file without --overwrite."""
    seen: list[tuple[str, str]] = []
    for flag, path in outputs:
        if path:
            for other_flag, other in seen:
                if same_file(path, other):  # the second write would replace the first output
                    raise OutputError(f"{flag} {path!r} is also the file of {other_flag} {other!r}: each output "
                                      f"needs its own file; choose another {flag}")
            check_output_file(path, inputs=inputs, overwrite=overwrite, flag=flag)
            seen.append((flag, path))


def rows_to_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), indent=2) + "\n"


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_rows(rows: Sequence[dict[str, Any]], *, json_path: str | None = None, csv_path: str | None = None) -> None:
    """Write the rows as a JSON list and/or a CSV table, each atomically (see t2t.outputs)."""
    if json_path:
        write_text(json_path, rows_to_json(rows))
    if csv_path:
        write_text(csv_path, rows_to_csv(rows))


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table: one line per row."""
    columns = [("set", "eval_set", None)] if any("eval_set" in row for row in rows) else []
    columns += [("checkpoint", "checkpoint", None), ("model", "model", None), ("weights", "weights", None),
               ("size", "img_size", None), ("crop", "crop_pct", 3), ("tta", "tta", None), ("top1", "top1", 3),
               ("top5", "top5", 3)]
    if any("real_top1" in row for row in rows):
        columns += [("real_top1", "real_top1", 3), ("real_n", "real_count", None)]
    columns += [("loss", "loss", 4), ("images", "count", None), ("img/s", "images_per_sec", 1)]
    names = {row["checkpoint"]: os.path.basename(row["checkpoint"]) for row in rows}
    if len(set(names.values())) < len(names):  # same file name in two folders: show the paths
        names = {path: path for path in names}
    cells = [[names[row[key]] if key == "checkpoint" else _cell(row.get(key), digits if digits else 3)
              for _, key, digits in columns] for row in rows]
    widths = [max(len(title), *(len(line[i]) for line in cells)) for i, (title, _, _) in enumerate(columns)]
    left = {"eval_set", "checkpoint", "model", "weights", "tta"}

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if columns[i][1] in left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    return "\n".join([line([title for title, _, _ in columns]), line(["-" * w for w in widths]),
                      *(line(c) for c in cells)])


@dataclass
class SuiteJob:
    """One checkpoint at one resolution: `build()` returns its model (weights loaded, on the device) and the
    row's descriptive fields (checkpoint, model, weights, ...)."""

    resolution: Resolution
    build: Callable[[], tuple[nn.Module, dict[str, Any]]]


def run_suite(
        jobs: Sequence[SuiteJob],
        *,
        build_loader: Callable[[Resolution], tuple[Iterable, Sequence[int]]],
        tta: Sequence[str] = ("none",),
        device: torch.device,
        amp: str = "none",
        dist: DistInfo | None = None,
        real_labels: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Evaluate every job under every TTA mode; one row per (job, mode), in job order.

    Jobs at the same resolution are evaluated together on one pass over `build_loader(resolution)`, which
    returns this rank's loader and the dataset index of each image it yields, in order.
    """
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    by_resolution: dict[Resolution, list[int]] = {}
    for i, job in enumerate(jobs):
        by_resolution.setdefault(job.resolution, []).append(i)
    for number, (resolution, members) in enumerate(by_resolution.items(), start=1):
        loader, sample_indices = build_loader(resolution)
        models: dict[str, nn.Module] = {}
        fields: dict[int, dict[str, Any]] = {}
        for i in members:
            model, fields[i] = jobs[i].build()
            for mode, variant in tta_models(model, tta).items():
                models[f"{i}/{mode}"] = variant
        prefix = f"@{resolution.img_size} crop {resolution.crop_pct:g}: "
        # Rank 0 shows its share of the images with a rate and an ETA (a redrawn line on a terminal).
        label = f"[{number}/{len(by_resolution)}] @{resolution.img_size} crop {resolution.crop_pct:g}, " \
                f"{len(models)} model(s)" + (f", rank 0 of {dist.world_size}" if dist is not None and
                                             dist.is_distributed else "")
        with Progress(len(sample_indices), label, enabled=dist is None or dist.is_main) as progress:
            metrics = evaluate_models(models, loader, device=device, amp=amp, dist=dist, log_prefix=prefix,
                                      log_every=0, real_labels=real_labels, sample_indices=sample_indices,
                                      progress=progress)
        for i in members:
            for mode in tta:
                rows[i, mode] = {**metrics[f"{i}/{mode}"], **fields[i], "img_size": resolution.img_size,
                                 "crop_pct": resolution.crop_pct, "tta": mode, "models_per_pass": len(models)}
        del models  # free this resolution's models before the next are built
    return [rows[i, mode] for i in range(len(jobs)) for mode in tta]
