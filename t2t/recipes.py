"""The recipe table: one row per model, from which the recipe files in t2t/configs/ are generated.

    python -m t2t.recipes --write     # (re)write t2t/configs/<name>.yaml for every row
    python -m t2t.recipes --check     # exit 1 if a committed file differs from its generated form

A generated file states only what its recipe sets apart from the defaults (t2t/config.py, which are
the paper's t2t_vit_14 ImageNet recipe); every other key takes its default. The hand-written files in
t2t/configs/ (the demos, token labeling) are not generated.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from .config import RECIPE_DIR, Config
from .outputs import write_text

__all__ = ["RECIPES", "Recipe", "generated_files", "render"]

@dataclass(frozen=True)
class Recipe:
    """A recipe file: its header lines and the settings it makes, {section: {key: value or (value, comment)}}."""

    name: str
    header: tuple[str, ...]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)


# What every ImageNet recipe sets beyond the defaults.
_IMAGENET = {
    "data": {"ratio": ([0.75, 1.3333333], "4/3 to 7 places, as these recipes always had it")},
    "checkpoint": {"every_minutes": (30, "besides every epoch: a hard kill loses at most 30 minutes of training")},
}

# The paper's ImageNet-1k recipes, trained from scratch at global batch 512 (8 GPUs x 64):
# model -> (paper top-1 at 224, lr, weight decay). Everything else is the defaults' (the t2t_vit_14 recipe).
_FROM_SCRATCH = {
    "t2t_vit_7": (71.7, 1e-3, 0.03),
    "t2t_vit_10": (75.2, 1e-3, 0.03),
    "t2t_vit_12": (76.5, 1e-3, 0.03),
    "t2t_vit_14": (81.5, 5e-4, 0.05),
    "t2t_vit_19": (81.9, 5e-4, 0.065),
    "t2t_vit_24": (82.3, 5e-4, 0.065),
    "t2t_vit_t_14": (81.7, 5e-4, 0.05),
    "t2t_vit_t_19": (82.4, 5e-4, 0.065),
    "t2t_vit_t_24": (82.6, 5e-4, 0.065),
}

# The official CIFAR transfer recipe (transfer_learning.py): (model, data set) -> (paper top-1, release file).
_CIFAR = {
    ("t2t_vit_14", "cifar10"): (98.3, "81.5_T2T_ViT_14.pth.tar"),
    ("t2t_vit_14", "cifar100"): (88.4, "81.5_T2T_ViT_14.pth.tar"),
    ("t2t_vit_19", "cifar10"): (98.4, "81.9_T2T_ViT_19.pth.tar"),
    ("t2t_vit_19", "cifar100"): (89.0, "81.9_T2T_ViT_19.pth.tar"),
}
_CIFAR_FOLDERS = {"cifar10": ("CIFAR-10", "cifar-10-batches-py", 10), "cifar100": ("CIFAR-100", "cifar-100-python", 100)}


def _merge(*parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for section, entries in part.items():
            merged.setdefault(section, {}).update(entries)
    return merged


def _from_scratch(name: str, top1: float, lr: float, weight_decay: float) -> Recipe:
    defaults = Config()
    settings: dict[str, dict[str, Any]] = {"model": {"name": name}} if name != defaults.model.name else {}
    optim = {}
    if lr != defaults.optim.lr:
        optim["lr"] = (lr, "at global batch 512; other global batches scale it linearly")
    if weight_decay != defaults.optim.weight_decay:
        optim["weight_decay"] = (weight_decay, "none on biases, norms, cls_token, pos_embed")
    if optim:
        settings["optim"] = optim
    header = (f"{name}: the paper's ImageNet-1k recipe (top-1 {top1}% at 224), global batch 512 (8 GPUs x 64).",
              "AdamW, cosine over 300 epochs with 10 warm-up epochs inside, then 10 cool-down epochs at min lr;",
              "RandAugment, random erasing 0.25, mixup 0.8 / CutMix 1.0, label smoothing 0.1, drop-path 0.1, EMA",
              "0.99996: the defaults hold this recipe (with t2t_vit_14's lr and weight decay).",
              f"Launch: torchrun --nproc_per_node=8 -m t2t.train -c {name} --data-dir /data/imagenet")
    return Recipe(name, header, _merge(settings, _IMAGENET))


def _fine_tune_384() -> Recipe:
    settings = {
        "model": {"img_size": 384, "init_from": ("runs/t2t_vit_14/best.pth", "override: model.init_from=PATH")},
        "optim": {"lr": (5e-6, "constant: sched.min_lr is the same"), "weight_decay": 1e-8},
        "sched": {"warmup_epochs": 0, "min_lr": 5e-6, "cooldown_epochs": 0},
        "train": {"epochs": 30},
    }
    header = ("t2t_vit_14 fine-tuned at 384 from the 224 weights (the paper's 83.3% model).",
              "The official code publishes no 384 recipe; this follows DeiT's: 30 epochs, constant lr 5e-6 at "
              "batch 512,",
              "weight decay 1e-8. init_from takes our checkpoints or the release file 81.5_T2T_ViT_14.pth.tar; the",
              "position grid is interpolated 14x14 -> 24x24.",
              "Launch: torchrun --nproc_per_node=8 -m t2t.train -c t2t_vit_14_384 --data-dir /data/imagenet")
    return Recipe("t2t_vit_14_384", header, _merge(settings, _IMAGENET))


def _deit3(model: str) -> Recipe:
    settings = {
        **({"model": {"name": model}} if model != Config().model.name else {}),
        "data": {"train_transform": ("src", "simple random crop: resize, RandomCrop(padding=4, reflect), flip"),
                 "auto_augment": ("3a", "3-Augment: one of greyscale, solarize, Gaussian blur"),
                 "color_jitter": 0.3, "interpolation": "bicubic", "reprob": 0.0,
                 "repeated_aug": True},
        "loss": {"type": ("bce", "binary cross-entropy against the mixup / CutMix targets"),
                 "label_smoothing": 0.0},
        "optim": {"name": "lamb", "lr": (3e-3, "at global batch 2048; other global batches scale it linearly"),
                  "lr_base_batch_size": 2048, "clip_grad": 1.0},
        "sched": {"warmup_epochs": 5},
        "train": {"epochs": 400},
        "eval": {"crop_pct": (1.0, "DeiT III evaluates the whole resized image")},
    }
    header = (f"{model} with DeiT III's ImageNet-1k recipe (Touvron et al., 2022, 'DeiT III: Revenge of the ViT').",
              "UNTESTED: neither paper reports T2T-ViT with this recipe, and it has not been run here; the settings",
              "are DeiT III's published ones for its small ViTs: LAMB at lr 3e-3 for batch 2048, BCE loss, 3-Augment",
              "with simple random crop and colour jitter 0.3, mixup 0.8 / CutMix 1.0, repeated augmentation, no",
              "label smoothing or random erasing, weight decay 0.05, gradient clipping 1.0, 400 epochs with 5",
              "warm-up epochs.",
              "DeiT III's low-resolution phase is not part of it (T2T-ViT trains at one size here).",
              f"Launch: torchrun --nproc_per_node=8 train.py -c configs/{model}_deit3.yaml --data-dir /data/imagenet")
    return Recipe(f"{model}_deit3", header, _merge(settings, {"checkpoint": _IMAGENET["checkpoint"]}))


def _cifar(model: str, dataset: str, top1: float, release: str) -> Recipe:
    title, folder, classes = _CIFAR_FOLDERS[dataset]
    name = f"{model}_{dataset}"
    settings = {
        "model": {**({"name": model} if model != Config().model.name else {}),
                  "init_from": release,
                  "freeze": (["cls_token", "norm"], "the official optimizer holds only tokens_to_token, blocks and "
                                                    "head")},
        "data": {"auto_augment": None, "color_jitter": 0.0,
                 "interpolation": ("bilinear", "the resize from 32 to 224"), "reprob": 0.0,
                 "mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010],
                 "train_transform": ("cifar", "resize to img_size, RandomCrop(img_size, padding=img_size // 8), flip")},
        "mixup": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
        "loss": {"label_smoothing": (0.0, "plain cross-entropy")},
        "optim": {"name": "sgd", "lr": 0.05,
                  "lr_base_batch_size": (64, "lr is for this global batch; others are scaled linearly"),
                  "weight_decay": 5e-4,
                  "backbone_lr_scale": (0.01, "the official transfer ratio: everything but the head at 0.01 x lr")},
        "sched": {"warmup_epochs": 0, "warmup_lr": 0.0, "min_lr": 2e-4, "cooldown_epochs": 0,
                  "per_step": (False, "the official scheduler steps once per epoch")},
        "train": {"epochs": 60},
        "ema": {"enabled": (False, "the official transfer script keeps no EMA"), "decay": 0.9998},
        "eval": {"crop_pct": (1.0, "the official test transform: resize to 224, no crop"),
                 "interpolation": "bilinear", "metric": "top1"},
    }
    header = (
        f"{model}, fine-tuned from ImageNet to {title}: the official transfer recipe (transfer_learning.py).",
        f"Paper: {top1}% top-1 on the {title} test set (a target for a GPU run; not reproduced here).",
        f"Launch: t2t-train -c {name} --data-dir /data/{folder} \\",
        f"            model.init_from=/path/to/{release}",
        f"--data-dir is the extracted {folder} folder as downloaded (or the folder holding it), read in place.",
        "model.init_from takes the official release file (its EMA weights are used) or one of our checkpoints;",
        f"the 1000-class head is left out and a new {classes}-class head is initialised (model.num_classes: null,",
        "from the meta file).",
        "",
        "The official script: CIFAR resized to 224, RandomCrop(224, padding=28) + flip, CIFAR mean/std;",
        "SGD momentum 0.9, lr 0.05, weight decay 5e-4; cosine over 60 epochs to 2e-4, stepped once per epoch;",
        "the T2T module and the blocks at 0.01 x the lr, the head at the full lr; plain cross-entropy; no EMA.",
        "Its command (--b 64 on two GPUs under DataParallel, which splits the batch) trains with a global batch",
        "of 64: lr 0.05 is for 64 images per step here, and other global batches scale it linearly.",
        "Two differences, both from how this project's pieces work: biases and norm weights get no weight decay,",
        "and the 2e-4 minimum scales with each group (the backbone ends at 2e-6; the official scheduler takes",
        "every group to 2e-4).",
    )
    return Recipe(name, header, _merge(settings, _IMAGENET))


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    *(_from_scratch(name, *row) for name, row in _FROM_SCRATCH.items()),
    _fine_tune_384(),
    _deit3("t2t_vit_14"),
    *(_cifar(model, dataset, *row) for (model, dataset), row in _CIFAR.items()),
)}

_FOOTER = (
    "",
    "Generated from the table in t2t/recipes.py (python -m t2t.recipes --write): edit the table, not this file.",
    "Only what this recipe sets apart from the defaults is written here; every other key takes its default",
    "(t2t/config.py). The whole resolved config: t2t-train -c {name} --print-config",
    "Every key can be overridden on the command line as section.key=value.",
)


def _scalar(value: Any) -> str:
    """One value as YAML flow text that reads back as the same value."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:  # 5e-06 -> 5.0e-6: YAML 1.1 reads a float only with a dot
            mantissa, exponent = text.split("e")
            text = f"{float(mantissa)!r}e{int(exponent)}"
        return text
    if isinstance(value, str) and yaml.safe_load(value) != value:
        return json.dumps(value)
    return str(value)


def render(recipe: Recipe) -> str:
    """The text of t2t/configs/<recipe.name>.yaml."""
    lines = [f"# {line}".rstrip() for line in (*recipe.header, *_FOOTER)]
    lines = [line.replace("{name}", recipe.name) for line in lines]
    defaults = Config()
    order = {f.name: [g.name for g in dataclasses.fields(getattr(defaults, f.name))] for f in dataclasses.fields(defaults)}
    for section, keys in order.items():
        entries = recipe.settings.get(section)
        if not entries:
            continue
        unknown = set(entries) - set(keys)
        if unknown:
            raise KeyError(f"recipe {recipe.name}: unknown key(s) {sorted(unknown)} in section {section}")
        lines += ["", f"{section}:"]
        for key in (k for k in keys if k in entries):
            value, comment = entries[key] if isinstance(entries[key], tuple) else (entries[key], None)
            line = f"  {key}: {_scalar(value)}"
            lines.append(f"{line:<28} # {comment}" if comment else line)
    unknown_sections = set(recipe.settings) - set(order)
    if unknown_sections:
        raise KeyError(f"recipe {recipe.name}: unknown section(s) {sorted(unknown_sections)}")
    return "\n".join(lines) + "\n"


def generated_files(config_dir: str = RECIPE_DIR) -> dict[str, str]:
    """Path -> generated text, for every row of the table."""
    return {os.path.join(config_dir, f"{name}.yaml"): render(recipe) for name, recipe in RECIPES.items()}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2t.recipes", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write t2t/configs/<name>.yaml for every recipe")
    action.add_argument("--check", action="store_true", help="exit 1 if a committed file differs from the table")
    parser.add_argument("--config-dir", default=RECIPE_DIR, help="where the recipe files are (default: t2t/configs/)")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated_files(args.config_dir).items():
        current = open(path, encoding="utf-8").read() if os.path.isfile(path) else None
        if current == text:
            continue
        stale.append(path)
        if args.write:
            write_text(path, text)
    for path in stale:
        print(f"{'wrote' if args.write else 'differs from the table'}: {path}", file=sys.stdout if args.write
              else sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
