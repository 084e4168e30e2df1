"""Pictures of a T2T-ViT: attention, rollout, T2T-module attention, feature maps, and a run's first batch.

The maps come from t2t.models.attention_maps; this module lays them out (matplotlib, one labelled
PNG per image and view, plus .npy arrays of the raw maps) and builds the first training batch of a
config with the project's own data builders. Output is byte-for-byte deterministic: fixed PNG
metadata, no timestamps. scripts/visualize.py is its command line.
"""
from __future__ import annotations

import argparse
import io
import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .cli import EXIT_USAGE, ArgumentParser, UsageError, check_output_folder, run_main
from .data.dataset import list_images
from .outputs import atomic_output, check_output_folder_inputs

__all__ = ["VIEWS", "first_batch", "main", "parse_blocks", "save_png"]

_logger = logging.getLogger(__name__)

VIEWS = ("attention", "rollout", "t2t", "features", "batch")
IMAGE_VIEWS = ("attention", "rollout", "t2t", "features")


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend; a one-line error without the plot extra."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("matplotlib is not installed: pip install 't2t[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


# PNG text chunks matplotlib would add (its version as 'Software'): none, so the bytes depend on the pixels only.
PNG_METADATA = {"Software": None}


def save_png(fig: Any, path: str, dpi: int = 80) -> None:
    """Write `fig` to `path` as a PNG via a temporary file and a rename; close the figure."""
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, metadata=PNG_METADATA, bbox_inches="tight", pad_inches=0.05)
    finally:
        plt.close(fig)
    write_bytes(path, buffer.getvalue())


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` under a temporary name, renamed into place once complete (t2t.outputs)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def save_npy(path: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array))
    write_bytes(path, buffer.getvalue())


def parse_list(text: Optional[str], what: str, count: int) -> Optional[list[int]]:
    """'all' / None -> None (all); '0,3,-1' -> [0, 3, count - 1]; a one-line UsageError when out of range."""
    if text is None or text.strip().lower() == "all":
        return None
    out = []
    for part in text.split(","):
        try:
            i = int(part)
        except ValueError:
            raise UsageError(f"{what} {text!r}: expected 'all' or comma-separated integers, e.g. 0,3,-1") from None
        j = i + count if i < 0 else i
        if not 0 <= j < count:
            raise UsageError(f"{what} {text!r}: {i} is out of range for {count} (0 to {count - 1}, or negative "
                             "from the end)")
        if j not in out:
            out.append(j)
    return out


def parse_blocks(text: Optional[str], depth: int) -> Optional[list[int]]:
    return parse_list(text, "--blocks", depth)


# ---------------------------------------------------------------------------------------------
# Figures


def _to_display(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (3, H, W) tensor -> (H, W, 3) floats in [0, 1]."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (image.float().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


def _upsample(grid_map: torch.Tensor, size: int) -> np.ndarray:
    """(g, g) map -> (size, size), bilinear, scaled to [0, 1] for the overlay."""
    up = F.interpolate(grid_map[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    lo, hi = up.min(), up.max()
    return ((up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)).numpy()


def _grid_figure(rows: int, cols: int, panel: float = 1.35):
    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel, rows * panel + 0.35), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    return fig, axes


def _overlay(ax: Any, picture: np.ndarray, heat: Optional[np.ndarray], title: str) -> None:
    ax.imshow(picture, interpolation="nearest")
    if heat is not None:
        ax.imshow(heat, cmap="inferno", alpha=0.55, interpolation="nearest")
    ax.set_title(title, fontsize=7, pad=2)


def attention_figure(picture: np.ndarray, class_attention: list[torch.Tensor], block_indices: list[int],
                     heads: Optional[list[int]], title: str):
    """Rows: blocks; columns: the image, each head's class-token attention, and the head mean."""
    num_heads = class_attention[0].shape[0]
    heads = list(range(num_heads)) if heads is None else heads
    size = picture.shape[0]
    fig, axes = _grid_figure(len(block_indices), len(heads) + 2)
    for r, (index, maps) in enumerate(zip(block_indices, class_attention)):
        _overlay(axes[r, 0], picture, None, f"block {index}")
        for c, h in enumerate(heads):
            _overlay(axes[r, c + 1], picture, _upsample(maps[h], size), f"block {index} head {h}")
        _overlay(axes[r, -1], picture, _upsample(maps.mean(dim=0), size), f"block {index} mean")
    fig.suptitle(title, fontsize=8)
    return fig


def rollout_figure(picture: np.ndarray, rollout: torch.Tensor, title: str):
    fig, axes = _grid_figure(1, 3, panel=2.0)
    size = picture.shape[0]
    _overlay(axes[0, 0], picture, None, "input")
    _overlay(axes[0, 1], picture, _upsample(rollout, size), "rollout overlay")
    axes[0, 2].imshow(rollout.numpy(), cmap="inferno", interpolation="nearest")
    axes[0, 2].set_title(f"rollout ({rollout.shape[0]}x{rollout.shape[1]})", fontsize=7, pad=2)
    fig.suptitle(title, fontsize=8)
    return fig


def t2t_queries(grid: int) -> list[tuple[int, int]]:
    """Query positions shown for a token layer: the centre and the centres of the four quadrants."""
    q, h = grid // 4, grid // 2
    return [(h, h), (q, q), (q, 3 * q), (3 * q, q), (3 * q, 3 * q)]


def t2t_figure(picture: np.ndarray, attentions: list[torch.Tensor], kind: str, title: str):
    """Rows: the two token layers (grids 4x and 2x the patch grid); columns: the image, the mean attention
    each token receives, then the attention rows of five query tokens (marked with a dot)."""
    queries_per_row = [t2t_queries(math.isqrt(a.shape[-1])) for a in attentions]
    fig, axes = _grid_figure(len(attentions), 2 + max(len(q) for q in queries_per_row))
    size = picture.shape[0]
    for r, (attn, queries) in enumerate(zip(attentions, queries_per_row)):
        g = math.isqrt(attn.shape[-1])
        name = f"layer {r + 1} ({g}x{g}, {kind})"
        _overlay(axes[r, 0], picture, None, name)
        received = attn.mean(dim=0).reshape(g, g)
        axes[r, 1].imshow(received.numpy(), cmap="inferno", interpolation="nearest")
        axes[r, 1].set_title("mean received", fontsize=7, pad=2)
        for c, (y, x) in enumerate(queries):
            row = attn[y * g + x].reshape(g, g)
            _overlay(axes[r, c + 2], picture, _upsample(row, size), f"query ({y},{x})")
            scale = size / g
            axes[r, c + 2].plot([(x + 0.5) * scale - 0.5], [(y + 0.5) * scale - 0.5], "o", color="cyan",
                                markersize=3)
    fig.suptitle(title, fontsize=8)
    return fig


def features_figure(picture: np.ndarray, features: dict[int, torch.Tensor], channels: int, title: str):
    """Rows: blocks; columns: the image, then the first `channels` channels of the block's output tokens
    laid on the patch grid, each scaled to its own range (the paper's Fig. 2)."""
    fig, axes = _grid_figure(len(features), channels + 1, panel=1.1)
    for r, (index, fmap) in enumerate(features.items()):
        _overlay(axes[r, 0], picture, None, f"block {index}")
        for c in range(channels):
            ax = axes[r, c + 1]
            if c < fmap.shape[0]:
                ax.imshow(fmap[c].numpy(), cmap="viridis", interpolation="nearest")
                ax.set_title(f"ch {c}", fontsize=7, pad=2)
    fig.suptitle(title, fontsize=8)
    return fig


def batch_figure(pictures: list[np.ndarray], labels: list[str], title: str):
    cols = min(8, len(pictures))
    rows = math.ceil(len(pictures) / cols)
    fig, axes = _grid_figure(rows, cols, panel=1.5)
    for i, (picture, label) in enumerate(zip(pictures, labels)):
        _overlay(axes[i // cols, i % cols], picture, None, label)
    fig.suptitle(title, fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# The first training batch of a config


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W), normalised, as the model receives them
    targets: torch.Tensor  # (B, classes): soft targets (mixup/cutmix and label smoothing applied)
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mixup: bool


def first_batch(cfg: Any, data_dir: str, *, rank: int = 0, world_size: int = 1, uint8_pipeline: bool = False) -> Batch:
    """The first micro-batch rank `rank` of `world_size` trains on in a run of `cfg` on `data_dir`.

    The same builders as training (transform, dataset, sampler, mixup, per-step reseeding): each sample's
    augmentation is a function of (seed, epoch, index), so the batch does not depend on the worker count.
    `uint8_pipeline` reproduces the GPU input path (uint8 batches, normalisation and random erasing in the
    main process); its erasing is drawn on this machine's CPU generator, not a GPU's.
    """
    from . import rng
    from .data import setup as data_setup
    from .data.loader import build_train_loader, set_loader_epoch
    from .data.transforms import BatchNormalizeErase
    from .models.factory import resolve_eval_preprocessing
    from .engine.losses import soft_targets

    if not 0 <= rank < world_size:
        raise UsageError(f"--rank {rank}: expected 0 to --world-size {world_size} - 1")
    per_step = cfg.train.batch_size * world_size
    global_batch = cfg.train.global_batch_size or per_step * cfg.train.grad_accum_steps
    if global_batch % per_step:
        raise UsageError(f"train.global_batch_size={global_batch} is not a multiple of {world_size} processes x "
                         f"train.batch_size={cfg.train.batch_size}")
    uint8 = uint8_pipeline and cfg.data.train_transform == "imagenet"
    train_tf = data_setup.build_train_tf(cfg.data, cfg.model.img_size, use_prefetcher=uint8)
    eval_tf = resolve_eval_preprocessing(cfg.model.name, img_size=cfg.model.img_size, crop_pct=cfg.eval.crop_pct,
                                         interpolation=cfg.eval.interpolation, mean=cfg.data.mean,
                                         std=cfg.data.std).transform()
    train_ds, _, train_dir = data_setup.build_datasets(cfg.data, data_dir, train_tf, eval_tf, cfg.train.seed)
    steps_per_epoch = len(train_ds) // global_batch
    if steps_per_epoch < 1:
        raise UsageError(f"the global batch of {global_batch} images is more than the {len(train_ds)} training "
                         f"images in {train_dir!r}")
    sampler = data_setup.build_train_sampler(cfg.data, train_ds, steps_per_epoch * global_batch, seed=cfg.train.seed,
                                             num_replicas=world_size, rank=rank)
    loader = build_train_loader(train_ds, batch_size=cfg.train.batch_size, sampler=sampler, workers=0)
    set_loader_epoch(loader, 0)
    images, target = next(iter(loader))
    num_classes = len(train_ds.classes)
    rng.reseed_step(cfg.train.seed, 0, rank)  # as the engine does before its first micro-step
    if uint8:
        images = BatchNormalizeErase(tuple(cfg.data.mean), tuple(cfg.data.std), re_prob=cfg.data.reprob,
                                     re_mode=cfg.data.remode, re_count=cfg.data.recount)(images)
    mixup = data_setup.build_mixup_fn(cfg.mixup, num_classes, label_smoothing=cfg.loss.label_smoothing)
    if mixup is not None:  # the first epoch is before any mixup.off_epoch
        images, targets = mixup(images, target)
    else:
        targets = soft_targets(target, num_classes, cfg.loss.label_smoothing)
    return Batch(images=images, targets=targets, classes=list(train_ds.classes), mean=tuple(cfg.data.mean),
                 std=tuple(cfg.data.std), mixup=mixup is not None)


def _batch_label(target: torch.Tensor, classes: list[str]) -> str:
    """The one or two classes with the largest target weights, one per line, e.g. "disc 0.62\\nring 0.38"."""
    weights, index = target.topk(min(2, target.numel()))
    parts = [f"{classes[i]} {w:.2f}" for w, i in zip(weights.tolist(), index.tolist())
             if w >= 0.1 or i == index[0].item()]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(prog="t2t-visualize", description=(
        "Attention maps, attention rollout, T2T-module attention and feature maps of a T2T-ViT on images, "
        "and the first training batch of a config: one labelled PNG per image and view, plus .npy arrays."))
    p.add_argument("--checkpoint", help="our checkpoint, an official release file or .safetensors")
    p.add_argument("--model", help="model name (with --weights, or alone for untrained weights); also for "
                                   "checkpoints that record none")
    p.add_argument("--weights", help="weights file for --model")
    p.add_argument("--images", nargs="+", default=[], help="image files and/or folders (searched recursively)")
    p.add_argument("--output", required=True, help="folder for the PNG and .npy files")
    p.add_argument("--what", default="attention,rollout,t2t,features",
                   help=f"comma-separated views: {', '.join(VIEWS)} (default: the four image views)")
    p.add_argument("--blocks", help="blocks for attention/features: 'all' or e.g. 0,3,-1 (default: all for "
                                    "attention, four spread over the depth for features)")
    p.add_argument("--heads", help="heads for attention: 'all' (default) or e.g. 0,2")
    p.add_argument("--channels", type=int, default=12, help="feature channels shown per block (default 12)")
    p.add_argument("--no-ema", action="store_true", help="use the model weights even if EMA weights exist")
    p.add_argument("--config", help="batch: the run's YAML config (default: the checkpoint's)")
    p.add_argument("--data-dir", help="batch: the training data (default: the folder the checkpoint's run read)")
    p.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                   help="batch: config overrides, as t2t-train takes them (--help-config lists the keys; e.g. mixup.mixup_alpha=0.8 data.reprob=0.25)")
    p.add_help_config()
    p.add_argument("--rank", type=int, default=0, help="batch: the process whose batch to show (default 0)")
    p.add_argument("--world-size", type=int, default=1, help="batch: processes of the run (default 1)")
    p.add_argument("--max-images", type=int, default=64, help="batch: images drawn (default 64; the .npy has all)")
    p.add_argument("--uint8-pipeline", action="store_true",
                   help="batch: the GPU input path (uint8 batches, normalisation and erasing after the transfer)")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    return p.parse_args(argv)


def _normalize_stats(transform: Callable) -> tuple[tuple[float, ...], tuple[float, ...]]:
    for t in getattr(transform, "transforms", []):
        if hasattr(t, "mean") and hasattr(t, "std"):
            return tuple(t.mean), tuple(t.std)
    from .config import IMAGENET_MEAN, IMAGENET_STD
    return IMAGENET_MEAN, IMAGENET_STD


def _load(args: argparse.Namespace):
    """(model, transform, classes, description) from --checkpoint or --model [--weights]."""
    from .models.factory import create_model, named_model_config, resolve_eval_preprocessing
    from .inference import check_model_name, load_model

    if args.model:  # maps are read from T2T-ViT blocks; another timm model has none of them
        check_model_name(args.model, "--model")
    if args.checkpoint and args.weights:
        raise UsageError("--checkpoint and --weights: give one weights file")
    path = args.checkpoint or args.weights
    if path:
        if not os.path.isfile(path):
            raise UsageError(f"{'--checkpoint' if args.checkpoint else '--weights'} {path!r}: no such file")
        loaded = load_model(path, model_name=args.model, use_ema=not args.no_ema)
        return loaded.model, loaded.transform, loaded.classes, f"{loaded.model_name}, {os.path.basename(path)}"
    if not args.model:
        raise UsageError("no model: give --checkpoint FILE, or --model NAME [--weights FILE]")
    _logger.warning("--model %s without --weights: the maps show untrained (seed 0) weights", args.model)
    torch.manual_seed(0)
    model = create_model(named_model_config(args.model), img_size=None).eval()  # its pretrained cfg's size
    transform = resolve_eval_preprocessing(model).transform()  # the paper's eval, from the pretrained cfg
    return model, transform, [f"class_{i}" for i in range(model.num_classes)], f"{args.model}, untrained"


def _stems(paths: list[str]) -> list[str]:
    """Output name per image: its file name without extension, numbered (x-2, x-3...) when the name is taken,
    so that no two images of one run share a name (`b/x.jpg` and `c/x-2.jpg` give x-2 and x-2-2)."""
    taken: set[str] = set()
    out = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        out.append(name)
    return out


def _output_prefixes(views: list[str], stems: list[str]) -> list[str]:
    """Each output file's name starts with one of these: '<image>_<view>' or 'batch'."""
    prefixes = [f"{stem}_{view}" for stem in stems for view in views if view != "batch"]
    return prefixes + (["batch"] if "batch" in views else [])


def _check_overwrite(output: str, prefixes: list[str], overwrite: bool, inputs: list[tuple[str, str]]) -> None:
    """A UsageError naming the first existing file this run would replace (unless `overwrite`), or an input
    file (an image, the checkpoint) that sits in `output` under a name this run writes (always)."""
    if not os.path.isdir(output):
        return
    written = [prefix + pattern for prefix in prefixes for pattern in (".*", "_*")]
    check_output_folder_inputs(output, files=inputs, written=written)
    if overwrite:
        return
    existing = sorted(os.listdir(output))
    for prefix in prefixes:
        for name in existing:
            if name.startswith((prefix + ".", prefix + "_")):
                raise UsageError(f"--output {output!r}: {name} exists (from an earlier run?): choose another folder "
                                 "or pass --overwrite")


def _default_feature_blocks(depth: int) -> list[int]:
    return sorted({round(i * (depth - 1) / 3) for i in range(4)})


def run(args: argparse.Namespace) -> list[str]:
    """Write the views asked for; returns the files written."""
    views = [v.strip() for v in args.what.split(",") if v.strip()]
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise UsageError(f"--what {args.what!r}: expected a comma-separated list of {', '.join(VIEWS)}")
    if args.channels < 1:
        raise UsageError(f"--channels {args.channels}: expected at least 1")
    image_views = [v for v in views if v in IMAGE_VIEWS]
    paths: list[str] = []
    if image_views:
        if not args.images:
            raise UsageError(f"--what {','.join(image_views)} needs --images (files or folders)")
        paths = list_images(args.images)
    stems = _stems(paths)
    check_output_folder(args.output)
    inputs = [("--images", p) for p in paths] + [(flag, path) for flag, path in (
        ("--checkpoint", args.checkpoint), ("--weights", args.weights), ("--config", args.config)) if path]
    _check_overwrite(args.output, _output_prefixes(views, stems), args.overwrite, inputs)
    _pyplot()
    os.makedirs(args.output, exist_ok=True)
    written: list[str] = []
    if image_views:
        written += _image_views(args, image_views, paths, stems)
    if "batch" in views:
        written += _batch_view(args)
    return written


def _image_views(args: argparse.Namespace, views: list[str], paths: list[str], stems: list[str]) -> list[str]:
    from PIL import Image

    from .data.decode import to_rgb
    from .models.attention_maps import attention_blocks, capture

    model, transform, classes, description = _load(args)
    model = model.float().eval()
    mean, std = _normalize_stats(transform)
    attn_blocks = [i for i, _ in attention_blocks(model)]
    depth = len(model.blocks)
    chosen = parse_blocks(args.blocks, depth)
    att_chosen = [i for i in (chosen if chosen is not None else attn_blocks) if i in attn_blocks]
    if "attention" in views and not att_chosen:
        raise UsageError(f"--blocks {args.blocks!r}: none of these blocks has attention (blocks with attention: "
                         f"{attn_blocks})")
    feature_blocks = chosen if chosen is not None else _default_feature_blocks(depth)
    num_heads = attention_blocks(model)[0][1].attn.num_heads
    heads = parse_list(args.heads, "--heads", num_heads)
    written = []
    channels = int(model.embed_dim)  # each block's output tokens
    if "features" in views and args.channels > channels:
        raise UsageError(f"--channels {args.channels}: the blocks of {description} have {channels} channels; expected "
                         f"1 to {channels}")
    for path, stem in zip(paths, stems):
        try:  # the decoder training, validate.py and predict.py share (16-bit images scaled, not clipped)
            with Image.open(path) as img:
                img.load()
                x = transform(to_rgb(img)).unsqueeze(0)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise UsageError(f"--images: {path!r} cannot be read as an image ({type(e).__name__}: {e})") from None
        maps = capture(model, x, attention=bool({"attention", "rollout"} & set(views)), t2t="t2t" in views,
                       feature_blocks=feature_blocks if "features" in views else None)
        picture = _to_display(x[0], mean, std)
        prob, index = maps.logits.float().softmax(dim=-1)[0].max(dim=0)
        title = f"{os.path.basename(path)}: {description}; predicted {classes[index]} ({prob:.2f})"
        for view in views:
            base = os.path.join(args.output, f"{stem}_{view}")
            if view == "attention":
                positions = [maps.block_indices.index(i) for i in att_chosen]
                class_attn = [maps.class_attention(p)[0] for p in positions]  # (H, g, g) each
                fig = attention_figure(picture, class_attn, att_chosen, heads, title)
                raw = torch.stack(class_attn)  # (blocks, H, g, g)
                save_npy(base + ".npy", raw.numpy())
            elif view == "rollout":
                rollout = maps.rollout()[0]
                fig = rollout_figure(picture, rollout, title + "; rollout over all blocks")
                save_npy(base + ".npy", rollout.numpy())
            elif view == "t2t":
                attns = [a[0] for a in maps.t2t_attention]
                fig = t2t_figure(picture, attns, maps.t2t_kind, title)
                for j, a in enumerate(attns, start=1):
                    save_npy(f"{base}_layer{j}.npy", a.numpy().astype(np.float16))  # (T, T); float16 halves 40 MB
                    written.append(f"{base}_layer{j}.npy")
            else:
                fig = features_figure(picture, {i: maps.features[i][0] for i in feature_blocks}, args.channels, title)
                for i in feature_blocks:
                    save_npy(f"{base}_block{i}.npy", maps.features[i][0].numpy())
                    written.append(f"{base}_block{i}.npy")
            save_png(fig, base + ".png")
            written.append(base + ".png")
            if view in ("attention", "rollout"):
                written.append(base + ".npy")
    return written


def _batch_view(args: argparse.Namespace) -> list[str]:
    from .config import load_config, config_from_dict
    from .inference import inspect_checkpoint

    cfg = data_dir = None
    if args.config:
        if not os.path.isfile(args.config):
            raise UsageError(f"--config {args.config!r}: no such file")
        cfg = load_config(args.config, args.set)
    if args.checkpoint and (cfg is None or not args.data_dir):
        info = inspect_checkpoint(args.checkpoint)
        if cfg is None and info.config is not None:
            stored = config_from_dict(info.config, origin=f"checkpoint {args.checkpoint!r}")
            cfg = load_config(None, args.set, base=stored)
        from .models.weights import read_checkpoint
        run_info = read_checkpoint(args.checkpoint).get("run", {})
        data_dir = run_info.get("data_dir") if isinstance(run_info, dict) else None
    if cfg is None:
        raise UsageError("--what batch needs the run's config: --config FILE, or --checkpoint of one of our runs")
    data_dir = args.data_dir or data_dir
    if not data_dir:
        raise UsageError("--what batch needs --data-dir (the checkpoint records no data folder)")
    if args.world_size < 1:
        raise UsageError(f"--world-size {args.world_size}: expected at least 1")
    if args.max_images < 1:
        raise UsageError(f"--max-images {args.max_images}: expected at least 1")
    if cfg.data.backend != "pil":
        _logger.warning("data.backend=%s: the batch shown is the Pillow pipeline's (same sampler, seed and augmentation "
                        "settings); %s's own decoding and augmentation are not drawn", cfg.data.backend,
                        cfg.data.backend.upper())
    batch = first_batch(cfg, data_dir, rank=args.rank, world_size=args.world_size,
                        uint8_pipeline=args.uint8_pipeline)
    pictures = [_to_display(img, batch.mean, batch.std) for img in batch.images]
    labels = [_batch_label(t, batch.classes) for t in batch.targets]
    recipe = (f"{cfg.model.name} @{cfg.model.img_size}, seed {cfg.train.seed}, rank {args.rank}/{args.world_size}; "
              f"aa {cfg.data.auto_augment}, reprob {cfg.data.reprob}, mixup {cfg.mixup.mixup_alpha}, "
              f"cutmix {cfg.mixup.cutmix_alpha}")
    base = os.path.join(args.output, "batch")
    save_npy(base + "_images.npy", np.stack(pictures))  # (B, H, W, 3) in [0, 1]
    save_npy(base + "_targets.npy", batch.targets.numpy())
    shown = min(args.max_images, len(pictures))
    heading = f"first training batch ({shown} of {len(pictures)}): {recipe}"
    save_png(batch_figure(pictures[:shown], labels[:shown], heading), base + ".png")
    return [base + ".png", base + "_images.npy", base + "_targets.npy"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = parse_args(argv)

    def draw() -> int:
        for path in run(args):
            print(path)
        return 0
    return run_main("t2t-visualize", draw, extra={ValueError: EXIT_USAGE},
                    interrupted="the files written so far are complete, no file is partial")


if __name__ == "__main__":
    sys.exit(main())
