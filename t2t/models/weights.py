"""Reading T2T-ViT weights from our checkpoints and from every official release layout.

This is the single place where foreign checkpoints are translated (the timm `checkpoint_filter_fn`
convention): wrapper prefixes are stripped, the position grid is resized to the model, and the
classifier is dropped when the class count differs.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
import re
from typing import Any, Mapping

import torch
import torch.nn as nn
from safetensors.torch import load_file as load_safetensors
from timm.layers import resample_abs_pos_embed

from ..checkpoint_schema import weight_entries
from ..errors import CheckpointError

_logger = logging.getLogger(__name__)

# Where the weights sit in a checkpoint dict, in the order they are looked for. The EMA keys come
# first; they are skipped when use_ema=False.
EMA_KEYS = ("state_dict_ema", "model_ema")
MODEL_KEYS = ("state_dict", "model", "net")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
HEAD_KEYS = ("head.weight", "head.bias")
# Parts that only some variants have: TokenLabeling's aux head, DeiT's distillation token and head.
# A file without them loads into a model that has them (they keep their initialisation), and a file
# with them loads into a model without them (they are left out); both are logged.
OPTIONAL_PREFIXES = ("aux_head.", "head_dist.", "dist_token")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load a checkpoint (or read a .safetensors file) on the CPU without running arbitrary pickled code;
    CheckpointError says why it fails."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a folder: give the checkpoint file inside it (e.g. best.pth)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):  # a bare state dict (t2t-export --format safetensors writes one)
        try:
            return load_safetensors(path, device="cpu")
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise CheckpointError(f"checkpoint {path!r} could not be read as a safetensors file: {e}") from e
    try:
        # Official training checkpoints store their command line as an argparse.Namespace.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path!r} cannot be read: {_load_failure(path, e)}") from e


def _load_failure(path: str, error: Exception) -> str:
    """Why torch.load failed, in one line (torch's own messages span lines and carry terminal escapes)."""
    text = str(error)
    if os.path.getsize(path) == 0:
        return "the file is empty (0 bytes)"
    if isinstance(error, EOFError) or "central directory" in text:
        return "the file is truncated (an interrupted write or copy)"
    if "not a ZIP archive" in text:
        return "it is not a torch checkpoint, or its start is damaged"
    if isinstance(error, pickle.UnpicklingError) and ("Weights only load failed" in text or
                                                      "WeightsUnpickler error:" in text):
        # torch's message advises retrying with weights_only=False, which would run whatever the file holds:
        # say what was found instead, and never pass that advice on.
        found = re.search(r"GLOBAL ([\w.]+)", text)
        opcode = re.search(r"Unsupported operand (\d+)", text)
        if found:
            what = f"a reference to the Python object {found.group(1)}"
        elif opcode:
            what = f"pickle instruction {opcode.group(1)}, which plain weights never use"
        else:
            what = "Python objects other than tensors, numbers, strings, lists and dicts"
        return (f"it holds pickled Python objects or code ({what}), which safe loading refuses because "
                "loading it could run code; it was not loaded. Use a weights-only file: a state dict of "
                "tensors, or a .safetensors file")
    first = text.strip().splitlines()[0] if text.strip() else "no details"
    return f"it is not a torch checkpoint, or it is damaged ({type(error).__name__}: {first})"


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes, in any order."""
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def extract_state_dict(checkpoint: Any, use_ema: bool = True, source: str = "checkpoint") -> tuple[dict, str]:
    """Return (state dict, where it was found): EMA weights first unless use_ema=False."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source} holds a {type(checkpoint).__name__}, expected a dict of weights")
    keys = (EMA_KEYS if use_ema else ()) + MODEL_KEYS
    for key in keys:
        if _is_state_dict(checkpoint.get(key)):
            return strip_prefixes(checkpoint[key]), key
    if _is_state_dict(checkpoint):
        return strip_prefixes(checkpoint), "state dict"
    raise CheckpointError(
        f"{source} holds no weights: expected one of the keys {list(keys)} or a bare state dict, "
        f"found keys {sorted(map(str, checkpoint))[:10]}")


def resize_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Resize a (1, 1 + N, D) table to 1 + num_patches rows: grid bicubic, class row kept."""
    old_grid, new_grid = math.isqrt(pos_embed.shape[1] - 1), math.isqrt(num_patches)
    if old_grid ** 2 != pos_embed.shape[1] - 1 or new_grid ** 2 != num_patches:
        raise CheckpointError(
            f"pos_embed with {pos_embed.shape[1]} rows cannot be resized to {num_patches + 1}: "
            "both must be 1 + a square")
    return resample_abs_pos_embed(
        pos_embed.float(), new_size=(new_grid, new_grid), old_size=(old_grid, old_grid),
        num_prefix_tokens=1, interpolation="bicubic", antialias=False,
    ).to(pos_embed.dtype)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapt an official or own state dict to `model`: unwrap, strip prefixes, resize pos_embed."""
    if not _is_state_dict(state_dict):  # timm hands over whole dicts it does not recognise (CIFAR 'net')
        state_dict, _ = extract_state_dict(state_dict)
    state_dict = strip_prefixes(state_dict)
    target = model.state_dict()
    pos_embed = state_dict.get("pos_embed")
    if pos_embed is not None and "pos_embed" in target and pos_embed.ndim == 3 and \
            pos_embed.shape[2] == target["pos_embed"].shape[2] and pos_embed.shape[1] != target["pos_embed"].shape[1]:
        old_rows, new_rows = pos_embed.shape[1], target["pos_embed"].shape[1]
        state_dict["pos_embed"] = resize_pos_embed(pos_embed, new_rows - 1)
        _logger.info("Resized pos_embed from %d to %d positions (grid bicubic, class row kept)", old_rows, new_rows)
    return state_dict


def describe_mismatch(state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> str:
    """Missing, unexpected and wrongly shaped keys of `state_dict` against `target`, the first few of each; '' if none."""
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(target[k].shape)}"
        for k in target if k in state_dict and state_dict[k].shape != target[k].shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
        if items:
            parts.append(f"{len(items)} {label} (first: {', '.join(items[:5])})")
    return "; ".join(parts)


def load_pretrained_weights(
        model: nn.Module,
        path: str | os.PathLike,
        use_ema: bool = True,
        strict: bool = True,
) -> str:
    """Load weights from `path` into `model` and return which entry was used ('state_dict_ema', ...).

    Accepts our checkpoints and every official layout. The position grid is interpolated to the
    model's size and the classifier is left at its initialisation when the class count differs.
    """
    path = os.fspath(path)
    checkpoint = weight_entries(read_checkpoint(path), path=path)
    state_dict, source = extract_state_dict(checkpoint, use_ema=use_ema, source=f"checkpoint {path!r}")
    state_dict = checkpoint_filter_fn(state_dict, model)
    target = model.state_dict()
    head_dropped = False
    if all(k in state_dict and k in target for k in HEAD_KEYS) and \
            state_dict["head.weight"].shape[1:] == target["head.weight"].shape[1:] and \
            state_dict["head.weight"].shape[0] != target["head.weight"].shape[0]:
        _logger.info(
            "Classifier not loaded from %s: it has %d classes, the model %d", path,
            state_dict["head.weight"].shape[0], target["head.weight"].shape[0])
        for k in HEAD_KEYS:
            del state_dict[k]
        head_dropped = True
    optional_missing = _reconcile_optional_parts(state_dict, target, path)
    if head_dropped:  # a new class count: the other classifiers cannot load either
        for key in [k for k in state_dict if k.startswith(("aux_head.", "head_dist."))]:
            if state_dict[key].shape != target[key].shape:
                del state_dict[key]
                optional_missing.append(key)
    target = {k: v for k, v in target.items() if k not in optional_missing}
    mismatch = describe_mismatch(state_dict, target)
    only_head_missing = head_dropped and all(
        k in HEAD_KEYS for k in target if k not in state_dict) and set(state_dict) <= set(target)
    if mismatch and not only_head_missing and strict:
        arch = type(model).__name__
        raise CheckpointError(f"checkpoint {path!r} ({source}) does not fit this {arch}: {mismatch}")
    model.load_state_dict(state_dict, strict=strict and not head_dropped and not optional_missing)
    _logger.info("Loaded %s weights from %s", source, path)
    return source


def _reconcile_optional_parts(state_dict: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                              path: str) -> list[str]:
    """Drop optional parts the model lacks; return those the model has and the file lacks (left initialised)."""
    unused = [k for k in state_dict if k.startswith(OPTIONAL_PREFIXES) and k not in target]
    for key in unused:
        del state_dict[key]
    if unused:
        _logger.info("Not loaded from %s (this model has no such part): %s", path, ", ".join(unused))
    missing = [k for k in target if k.startswith(OPTIONAL_PREFIXES) and k not in state_dict]
    if missing:
        _logger.info("Not in %s, left at their initialisation: %s", path, ", ".join(missing))
    return missing
