#!/usr/bin/env python3
"""Export a trained T2T-ViT and check the exported model against eager PyTorch.

    python scripts/export.py --checkpoint runs/x/best.pth --format onnx --output model.onnx
    python scripts/export.py --checkpoint runs/x/best.pth --format torchscript --output model.ts
    python scripts/export.py --checkpoint runs/x/best.pth --format export --output model.pt2   # torch.export
    python scripts/export.py --checkpoint runs/x/best.pth --format safetensors --output model.safetensors

EMA weights are exported when the file has them (--no-ema for the raw model). The exported model
(loaded back from the written file) and the eager model run the same random batch; the largest
absolute difference of the logits is printed, and the exit status is 1 when it is over --atol.
The ONNX check runs in onnxruntime (`pip install -e ".[export]"`). The batch dimension is dynamic
in every format. A .safetensors file carries the model name, the run's config and the class names
in its metadata, so validate.py, predict.py and model.init_from read it like a checkpoint.

The file is written under a temporary name next to --output and renamed onto it only after the
parity check passed: a failed or interrupted export (Ctrl-C: exit status 130) leaves the previous
file as it was. --output may not be the checkpoint; an existing file is replaced only with
--overwrite. Problems with the inputs: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from .cli import EXIT_USAGE, ArgumentParser, one_line, run_main
from .errors import EXIT_FAILED, T2TError
from .inference import check_batch_fits, inspect_checkpoint, load_model
from .outputs import atomic_output, check_output_file
from .progress import Progress

FORMATS = ("onnx", "torchscript", "export", "safetensors")
# torch's ONNX exporter (dynamo=True) builds opset 18 and converts to the opset asked for; older ones fail
# on this model (no Pad adapter below 18), and when a conversion fails the exporter only logs a traceback
# and keeps 18, so the opset of the written file is checked as well.
MIN_ONNX_OPSET = 18


class ExportError(T2TError, RuntimeError):
    """A model that the chosen exporter could not convert."""


# Beyond the errors' own statuses: a missing exporter (onnx), values the exporters reject.
EXTRA_USER_ERRORS = {ImportError: EXIT_USAGE, ValueError: EXIT_USAGE}


class ParityError(T2TError, RuntimeError):
    """The exported model computes something else than the eager one (beyond --atol); nothing was written."""

    exit_status = EXIT_FAILED

    def __init__(self, diff: float) -> None:
        super().__init__(f"largest |exported - eager| logit difference {diff:.3g}")
        self.diff = diff


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(prog="t2t-export", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="our checkpoint, an official release file or .safetensors")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--output", required=True, help="file to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output (kept until the new file is complete and checked)")
    p.add_argument("--model", help="model name, for files that record none (official weights)")
    p.add_argument("--img-size", type=int, help="input size (default: the checkpoint's)")
    p.add_argument("--no-ema", action="store_true", help="export the model weights even if EMA weights exist")
    p.add_argument("--batch-size", type=int, default=2, help="batch of the parity check")
    p.add_argument("--atol", type=float, default=1e-4, help="largest absolute logit difference accepted")
    p.add_argument("--opset", type=int, default=18,
                   help=f"ONNX opset, >= {MIN_ONNX_OPSET} (default 18); the file written is checked to carry it")
    return p.parse_args(argv)


def _run_onnx(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError("the ONNX check needs onnxruntime: pip install -e '.[export]'") from e
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


@contextlib.contextmanager
def _captured_logs(*names: str):
    """Collect the records of these loggers instead of printing them (the ONNX exporter logs tracebacks)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield records
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate


def export_onnx(model: nn.Module, example: torch.Tensor, path: str, opset: int) -> Callable:
    import onnx

    batch = torch.export.Dim("batch")
    with _captured_logs("onnxscript", "torch.onnx") as records:
        torch.onnx.export(model, (example,), path, input_names=["images"], output_names=["logits"],
                          opset_version=opset, dynamo=True, dynamic_shapes={"x": {0: batch}}, external_data=False,
                          verbose=False)
    written = {o.domain: o.version for o in onnx.load(path, load_external_data=False).opset_import}.get("")
    if written != opset:
        reasons = [r.exc_info[1] for r in records if r.exc_info and r.exc_info[1] is not None]
        why = f": {one_line(reasons[-1]).split(': ')[-1]}" if reasons else ""
        raise ExportError(f"the ONNX exporter could not write opset {opset} (the model came out as opset {written}"
                          f"{why}); use --opset {written}")
    return _run_onnx(path)


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str) -> Callable:
    with warnings.catch_warnings():  # torch.jit.script's deprecation notice; TorchScript still serves C++ runtimes
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), path)
        return torch.jit.load(path)


def export_program(model: nn.Module, example: torch.Tensor, path: str) -> Callable:
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, path)
    return torch.export.load(path).module()


def export_safetensors(checkpoint: str, model: nn.Module, path: str, use_ema: bool, weights: str,
                       model_name: str, img_size: int) -> Callable:
    from safetensors.torch import save_file
    info = inspect_checkpoint(checkpoint, use_ema)
    # The name and size this model was built with, also when the source records none (weights-only files).
    metadata = {"arch": model_name, "weights": weights, "source": os.path.basename(checkpoint)}
    if info.config is not None:
        config = json.loads(json.dumps(info.config))
        if isinstance(config.get("model"), dict):
            config["model"].update(name=model_name, img_size=img_size)
        metadata["config"] = json.dumps(config)
    if info.classes is not None:
        metadata["classes"] = json.dumps(info.classes)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, path, metadata=metadata)
    # The written file, read as predict.py reads it.
    return load_model(path, model_name=model_name, img_size=img_size).model


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before the model is loaded: nothing is written when one fails."""
    if args.format == "export" and not args.output.endswith(".pt2"):
        raise ValueError(f"--output {args.output!r}: torch.export archives are read back only from .pt2 files")
    if args.batch_size < 1 or not args.atol >= 0:
        raise ValueError(f"--batch-size {args.batch_size} / --atol {args.atol}: expected >= 1 / >= 0")
    if args.format == "onnx" and args.opset < MIN_ONNX_OPSET:
        raise ValueError(f"--opset {args.opset}: expected >= {MIN_ONNX_OPSET}; the ONNX exporter cannot convert "
                         f"this model to older opsets (it has no adapter for their Pad operator)")
    if args.img_size is not None and (args.img_size < 16 or args.img_size % 16):
        raise ValueError(f"--img-size {args.img_size}: expected a positive multiple of 16")
    check_output_file(args.output, inputs=[("--checkpoint", args.checkpoint)], overwrite=args.overwrite)


PARITY_CHUNK = 64  # images per call of the exported model in the parity check


def _in_chunks(run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, progress: Progress) -> torch.Tensor:
    """run(batch), as one call up to PARITY_CHUNK images, else in pieces of that size (the rows are independent)."""
    outputs = []
    for piece in batch.split(PARITY_CHUNK) if batch.shape[0] > PARITY_CHUNK else (batch,):
        outputs.append(run(piece))
        progress.update(piece.shape[0])
    return torch.cat(outputs)


def export(args: argparse.Namespace) -> float:
    """Write args.output in args.format once its parity check passes; return the largest |exported - eager|."""
    check_arguments(args)
    use_ema = not args.no_ema
    loaded = load_model(args.checkpoint, model_name=args.model, img_size=args.img_size, use_ema=use_ema)
    model = loaded.model
    # The check runs the batch and the batch + 1 through the model: refuse what cannot fit before allocating.
    check_batch_fits(args.batch_size, loaded.img_size, torch.device("cpu"), copies=3)
    print(f"{loaded.model_name} @{loaded.img_size}, {loaded.weights} weights of {args.checkpoint}", file=sys.stderr)
    example = torch.randn(args.batch_size, 3, loaded.img_size, loaded.img_size,
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), atomic_output(args.output) as tmp:
        expected = model(example)  # before the export: the traced batch, whole
        try:
            if args.format == "onnx":
                run = export_onnx(model, example, tmp, args.opset)
            elif args.format == "torchscript":
                run = export_torchscript(model, example, tmp)
            elif args.format == "export":
                run = export_program(model, example, tmp)
            else:
                run = export_safetensors(args.checkpoint, model, tmp, use_ema, loaded.weights, loaded.model_name,
                                         loaded.img_size)
        except (RuntimeError, TypeError, AttributeError, NotImplementedError, AssertionError) as e:
            if isinstance(e, ExportError):
                raise
            raise ExportError(f"{args.format} export of {loaded.model_name} failed: {type(e).__name__}: "
                              f"{one_line(e)}") from e
        # Another batch size than the traced one, to check that the batch dimension stayed dynamic. Batches
        # larger than PARITY_CHUNK run in pieces, with a rate and an ETA on a terminal.
        again = torch.cat([example, example[:1]])
        with Progress(2 * args.batch_size + 1, f"parity check ({args.format})",
                      enabled=2 * args.batch_size + 1 > PARITY_CHUNK) as progress:
            got, got_again = _in_chunks(run, example, progress), _in_chunks(run, again, progress)
        expected_again = torch.cat([expected, expected[:1]])
        diff = max((got - expected).abs().max().item(), (got_again - expected_again).abs().max().item())
        if not diff <= args.atol:
            raise ParityError(diff)  # leaves --output as it was
    return diff


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return run_main("t2t-export", lambda: _export_and_report(args), extra=EXTRA_USER_ERRORS,
                    interrupted=lambda: "nothing written" + (
                        f"; {args.output!r} is as it was" if os.path.exists(args.output) else ""))


def _export_and_report(args: argparse.Namespace) -> int:
    try:
        diff = export(args)
    except ParityError as e:
        kept = "the previous file is untouched" if os.path.exists(args.output) else "nothing was written"
        print(f"{args.output} not written ({args.format}): largest |exported - eager| logit difference {e.diff:.3g} "
              f"(OVER --atol {args.atol:g}); {kept}")
        return 1
    size_mb = os.path.getsize(args.output) / 2 ** 20
    print(f"wrote {args.output} ({args.format}, {size_mb:.1f} MiB); largest |exported - eager| logit difference "
          f"{diff:.3g} (within --atol {args.atol:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
