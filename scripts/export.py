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
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t2t.config import ConfigError  # noqa: E402
from t2t.inference import inspect_checkpoint, load_model  # noqa: E402
from t2t.models import CheckpointError  # noqa: E402

FORMATS = ("onnx", "torchscript", "export", "safetensors")
USER_ERRORS = (ConfigError, CheckpointError, OSError, ImportError, ValueError)


class ExportError(RuntimeError):
    """A model that the chosen exporter could not convert."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="our checkpoint, an official release file or .safetensors")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--output", required=True, help="file to write")
    p.add_argument("--model", help="model name, for files that record none (official weights)")
    p.add_argument("--img-size", type=int, help="input size (default: the checkpoint's)")
    p.add_argument("--no-ema", action="store_true", help="export the model weights even if EMA weights exist")
    p.add_argument("--batch-size", type=int, default=2, help="batch of the parity check")
    p.add_argument("--atol", type=float, default=1e-4, help="largest absolute logit difference accepted")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    return p.parse_args(argv)


def _run_onnx(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError("the ONNX check needs onnxruntime: pip install -e '.[export]'") from e
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def export_onnx(model: nn.Module, example: torch.Tensor, path: str, opset: int) -> Callable:
    batch = torch.export.Dim("batch")
    torch.onnx.export(model, (example,), path, input_names=["images"], output_names=["logits"], opset_version=opset,
                      dynamo=True, dynamic_shapes={"x": {0: batch}}, external_data=False, verbose=False)
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


def export_safetensors(checkpoint: str, model: nn.Module, path: str, use_ema: bool, weights: str) -> Callable:
    from safetensors.torch import save_file
    info = inspect_checkpoint(checkpoint, use_ema)
    metadata = {"arch": info.arch or "", "weights": weights, "source": os.path.basename(checkpoint)}
    if info.config is not None:
        metadata["config"] = json.dumps(info.config)
    if info.classes is not None:
        metadata["classes"] = json.dumps(info.classes)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, path, metadata=metadata)
    reloaded = load_model(path, model_name=info.arch or None).model  # the written file, read as predict.py reads it
    return reloaded


def export(args: argparse.Namespace) -> float:
    """Write args.output in args.format; return the largest |exported - eager| on a random batch."""
    if args.format == "export" and not args.output.endswith(".pt2"):
        raise ValueError(f"--output {args.output!r}: torch.export archives are read back only from .pt2 files")
    if args.batch_size < 1 or args.atol < 0:
        raise ValueError(f"--batch-size {args.batch_size} / --atol {args.atol}: expected >= 1 / >= 0")
    use_ema = not args.no_ema
    loaded = load_model(args.checkpoint, model_name=args.model, img_size=args.img_size, use_ema=use_ema)
    model = loaded.model
    print(f"{loaded.model_name} @{loaded.img_size}, {loaded.weights} weights of {args.checkpoint}", file=sys.stderr)
    example = torch.randn(args.batch_size, 3, loaded.img_size, loaded.img_size, generator=torch.Generator().manual_seed(0))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with torch.no_grad():
        expected = model(example)
        try:
            if args.format == "onnx":
                run = export_onnx(model, example, args.output, args.opset)
            elif args.format == "torchscript":
                run = export_torchscript(model, example, args.output)
            elif args.format == "export":
                run = export_program(model, example, args.output)
            else:
                run = export_safetensors(args.checkpoint, model, args.output, use_ema, loaded.weights)
        except (RuntimeError, TypeError, AttributeError, NotImplementedError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"{args.format} export of {loaded.model_name} failed: {type(e).__name__}: {first}") from e
        # Another batch size than the traced one, to check that the batch dimension stayed dynamic.
        again = torch.cat([example, example[:1]])
        got, got_again = run(example), run(again)
    expected_again = torch.cat([expected, expected[:1]])
    return max((got - expected).abs().max().item(), (got_again - expected_again).abs().max().item())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        diff = export(args)
    except USER_ERRORS + (ExportError,) as e:
        print(f"export.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    size_mb = os.path.getsize(args.output) / 2 ** 20
    ok = diff <= args.atol
    print(f"wrote {args.output} ({args.format}, {size_mb:.1f} MiB); largest |exported - eager| logit difference "
          f"{diff:.3g} ({'within' if ok else 'OVER'} --atol {args.atol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
