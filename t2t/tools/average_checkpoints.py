"""Average the weights (EMA or model) of several checkpoints into one weights file.

scripts/average_checkpoints.py is its command line. The output holds the averaged state dict under
`state_dict`, with the model name, the run's config and class names of the first input, so
validate.py, predict.py, export.py and model.init_from read it like a checkpoint. It is written
atomically (a temporary file renamed into place), never over one of the inputs, and over an existing
file only with --overwrite.
"""
from __future__ import annotations

import argparse
import glob
import os
from typing import Any, Optional, Sequence

import torch

from ..cli import ArgumentParser, UsageError, run_main
from ..checkpoint_schema import TrainingCheckpoint
from ..models.weights import CheckpointError, read_checkpoint, strip_prefixes
from ..outputs import atomic_output, check_output_file

__all__ = ["average_state_dicts", "read_weights", "average_checkpoints", "main"]


def average_state_dicts(state_dicts: Sequence[dict[str, torch.Tensor]],
                        names: Optional[Sequence[str]] = None) -> dict[str, torch.Tensor]:
    """The mean of each floating-point tensor (summed in float64, stored in its own dtype); other tensors (integer
    buffers) must be equal in every input. The inputs must have the same keys and shapes."""
    if not state_dicts:
        raise UsageError("no checkpoints to average")
    names = list(names) if names is not None else [f"input {i}" for i in range(len(state_dicts))]
    first = state_dicts[0]
    for sd, name in zip(state_dicts[1:], names[1:]):
        if list(sd) != list(first):
            odd = sorted(set(sd) ^ set(first))[:5]
            raise CheckpointError(f"{name} has other weights than {names[0]} (keys {odd or 'in another order'}): "
                                  "only checkpoints of one model can be averaged")
        for key, value in sd.items():
            if value.shape != first[key].shape:
                raise CheckpointError(f"{name}: {key} has shape {tuple(value.shape)}, {names[0]} "
                                      f"{tuple(first[key].shape)}: only checkpoints of one model can be averaged")
    out = {}
    for key, ref in first.items():
        if ref.is_floating_point():
            total = torch.zeros(ref.shape, dtype=torch.float64)
            for sd in state_dicts:
                total += sd[key].double()
            out[key] = (total / len(state_dicts)).to(ref.dtype)
        else:
            for sd, name in zip(state_dicts[1:], names[1:]):
                if not torch.equal(sd[key], ref):
                    raise CheckpointError(f"{name}: the integer tensor {key} differs from {names[0]}'s; "
                                          "it cannot be averaged")
            out[key] = ref.clone()
    return out


def read_weights(path: str, weights: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The EMA or model weights ('ema' / 'model') of one of our training checkpoints, and what describes its run."""
    raw = read_checkpoint(path)
    if not (isinstance(raw, dict) and "train_state" in raw):
        raise CheckpointError(f"checkpoint {path!r} is not a t2t training checkpoint (no train_state): expected "
                              "files of a training run (last.pth, best.pth, epoch-N.pth, best-epoch-*.pth)")
    ckpt = TrainingCheckpoint.from_dict(raw, path=path)
    state = ckpt.trainer["state_dict_ema"] if weights == "ema" else ckpt.weights
    if state is None:
        raise CheckpointError(f"checkpoint {path!r} has no EMA weights (ema.enabled was false): use --weights model")
    meta = {"arch": ckpt.arch, "config": ckpt.config, "run": ckpt.run, "epoch": ckpt.epoch}
    return strip_prefixes(state), meta


def average_checkpoints(paths: Sequence[str], output: str, *, weights: str = "ema",
                        overwrite: bool = False) -> dict[str, Any]:
    """Average `weights` of the checkpoints at `paths` into `output` (atomic); returns what was written, less the
    weights."""
    check_output_file(output, inputs=[("checkpoint", p) for p in paths], overwrite=overwrite)
    loaded = [read_weights(p, weights) for p in paths]
    state = average_state_dicts([sd for sd, _ in loaded], names=[repr(p) for p in paths])
    meta = loaded[0][1]
    described = {"arch": meta["arch"], "config": meta["config"], "run": meta["run"], "weights": weights,
                 "averaged_from": [os.path.basename(p) for p in paths],
                 "averaged_epochs": [m["epoch"] for _, m in loaded]}
    with atomic_output(output, suffix=".pth") as tmp, open(tmp, "wb") as f:
        torch.save({"state_dict": state, **described}, f)
    return described


def _expand(inputs: Sequence[str]) -> list[str]:
    """Files as given, or the matches of a glob pattern (sorted); a folder's kept-best checkpoints."""
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "best-epoch-*.pth")))
            if not found:
                raise UsageError(f"folder {item!r} has no best-epoch-*.pth files (train with checkpoint.keep_best=K "
                                 "or name the checkpoint files)")
            paths += found
        elif any(c in item for c in "*?["):
            found = sorted(glob.glob(item))
            if not found:
                raise UsageError(f"{item!r} matches no files")
            paths += found
        elif not os.path.isfile(item):
            raise UsageError(f"checkpoint {item!r} does not exist")
        else:
            paths.append(item)
    if len(set(map(os.path.realpath, paths))) != len(paths):
        raise UsageError("a checkpoint is named twice: each file counts once in the average")
    return paths


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(prog="average_checkpoints.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+",
                   help="checkpoint files, glob patterns, or a run folder (its best-epoch-*.pth files)")
    p.add_argument("--output", required=True, help="the averaged weights file to write (.pth)")
    p.add_argument("--weights", choices=("ema", "model"), default="ema",
                   help="which weights of each checkpoint to average (default: the EMA's)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        paths = _expand(args.checkpoints)
        if len(paths) < 2:
            raise UsageError(f"got {len(paths)} checkpoint: averaging needs two or more")
        done = average_checkpoints(paths, args.output, weights=args.weights, overwrite=args.overwrite)
        print(f"wrote {args.output}: the {args.weights} weights of {len(paths)} checkpoints averaged "
              f"(epochs {', '.join(map(str, done['averaged_epochs']))})")
        return 0
    return run_main("average_checkpoints.py", body, interrupted=f"{args.output!r} not written")
