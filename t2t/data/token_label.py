"""Token labels: dense score maps from a teacher, cropped and flipped with their image, and MixToken.

A label file holds a teacher's top-k class scores at every location of its token grid: `values`
(k, H, W) float16 and `indices` (k, H, W) int16/int32, written by scripts/generate_token_labels.py
as LABELDIR/<class>/<image stem>.pt. TokenLabeling's own files (one (2, k, H, W) tensor, indices
stored as floats) are read too.

For training, the top-k scores are spread into a (C, H, W) map (zeros elsewhere, as TokenLabeling
does), the region of the image's random-resized crop is resampled to the student's token grid with
RoIAlign (and flipped with the image), and softmax turns each location into a class distribution.
The same crop pooled to one cell is the class token's target.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch
from torchvision.ops import roi_align

__all__ = [
    "LabelMapError", "crop_label_map", "dense_scores", "label_path", "mix_token", "read_label_map",
    "save_label_map", "token_box",
]


class LabelMapError(ValueError):
    """A label file that is missing or cannot be read; the message names the path."""


def label_path(label_dir: str, image_relpath: str) -> str:
    """LABELDIR/<class>/<stem>.pt for the image at <class>/<name>.<ext> under the training folder."""
    stem, _ = os.path.splitext(image_relpath)
    return os.path.join(label_dir, stem + ".pt")


def save_label_map(path: str, values: torch.Tensor, indices: torch.Tensor) -> None:
    """Write one image's top-k map whole or not at all (temporary file, then rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    index_dtype = torch.int16 if int(indices.max()) < 2 ** 15 else torch.int32
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save({"values": values.detach().to("cpu", torch.float16).contiguous(),
                "indices": indices.detach().to("cpu", index_dtype).contiguous()}, tmp)
    os.replace(tmp, path)


def read_label_map(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (k, H, W) float32, indices (k, H, W) int64) from our layout or TokenLabeling's (2, k, H, W)."""
    if not os.path.isfile(path):
        raise LabelMapError(f"token label {path!r} does not exist: generate the labels with "
                            "scripts/generate_token_labels.py for this training folder")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise LabelMapError(f"token label {path!r} cannot be read ({type(e).__name__}); generate it again") from None
    if isinstance(obj, dict) and "values" in obj and "indices" in obj:
        values, indices = obj["values"], obj["indices"]
    elif isinstance(obj, torch.Tensor) and obj.ndim == 4 and obj.shape[0] == 2:
        values, indices = obj[0], obj[1]
    else:
        raise LabelMapError(f"token label {path!r} holds neither {{'values', 'indices'}} nor a (2, k, H, W) tensor")
    if values.shape != indices.shape or values.ndim != 3:
        raise LabelMapError(f"token label {path!r}: values {tuple(values.shape)} and indices {tuple(indices.shape)} "
                            "must both be (k, H, W)")
    return values.float(), indices.long()


def dense_scores(values: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Top-k scores (k, H, W) spread into a (num_classes, H, W) map, zero for the other classes."""
    if int(indices.max()) >= num_classes or int(indices.min()) < 0:
        raise LabelMapError(f"token label class index {int(indices.max())} is outside the {num_classes} classes")
    out = torch.zeros((num_classes,) + tuple(values.shape[1:]), dtype=torch.float32)
    return out.scatter_(0, indices, values.float())


def crop_label_map(
        scores: torch.Tensor,
        box: Sequence[float],
        out_size: int,
        *,
        flip: bool = False,
        smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop `box` = (top, left, bottom, right), as fractions of the image, of a (C, H, W) score map.

    Returns (class target (C,), dense target (out_size * out_size, C)): RoIAlign of the box to one
    cell and to out_size x out_size cells (flipped left-right with the image if `flip`), softmax over
    classes, then label smoothing. Rows of the dense target run over the token grid row by row.
    """
    C, H, W = scores.shape
    top, left, bottom, right = box
    roi = torch.tensor([[0.0, left * W, top * H, right * W, bottom * H]], dtype=torch.float32)
    batch = scores.unsqueeze(0).float()
    dense = roi_align(batch, roi, output_size=(out_size, out_size), spatial_scale=1.0, sampling_ratio=2,
                      aligned=True)[0]  # (C, S, S)
    pooled = roi_align(batch, roi, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1, aligned=True)[0, :, 0, 0]
    if flip:
        dense = dense.flip(-1)
    dense = dense.flatten(1).t().softmax(dim=-1)  # (S*S, C)
    cls = pooled.softmax(dim=-1)
    if smoothing > 0:
        dense = dense * (1 - smoothing) + smoothing / C
        cls = cls * (1 - smoothing) + smoothing / C
    return cls, dense


def token_box(grid: int, lam: float, rng: np.random.Generator | None = None) -> tuple[int, int, int, int]:
    """A CutMix box on a grid x grid token grid covering about 1 - lam of it: (top, left, bottom, right) in tokens.

    Drawn as timm's rand_bbox draws (centre uniform, sides sqrt(1 - lam) of the grid, clipped),
    from NumPy's global RNG (reseeded every step) unless `rng` is given.
    """
    draw = rng.integers if rng is not None else np.random.randint
    cut = int(round(grid * np.sqrt(1.0 - lam)))
    cy, cx = int(draw(0, grid)), int(draw(0, grid))
    top, bottom = np.clip(cy - cut // 2, 0, grid), np.clip(cy + cut - cut // 2, 0, grid)
    left, right = np.clip(cx - cut // 2, 0, grid), np.clip(cx + cut - cut // 2, 0, grid)
    return int(top), int(left), int(bottom), int(right)


def mix_token(
        images: torch.Tensor,
        cls_target: torch.Tensor,
        dense_target: torch.Tensor,
        *,
        alpha: float = 1.0,
        patch: int = 16,
        prob: float = 1.0,
        rng: Optional[np.random.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int, int, int]]:
    """MixToken: CutMix on the token grid, pasting each image's box from the batch reversed.

    images (B, 3, G*patch, G*patch); cls_target (B, C); dense_target (B, G*G, C). The box is whole
    patches (pixel edges at multiples of `patch`), the tokens inside take the other image's dense
    targets, and the class target is mixed by the share of tokens kept, lam = 1 - box / G^2.
    Returns (images, cls_target, dense_target, box in tokens); the inputs are not modified.
    """
    B, _, H, W = images.shape
    grid = H // patch
    if H != W or H % patch:
        raise ValueError(f"MixToken needs square images whose side is a multiple of {patch}, got {H}x{W}")
    if dense_target.shape[1] != grid * grid:
        raise ValueError(f"dense target has {dense_target.shape[1]} rows, the {grid}x{grid} token grid {grid * grid}")
    uniform = rng.random if rng is not None else np.random.rand
    if alpha <= 0 or uniform() >= prob:
        return images, cls_target, dense_target, (0, 0, 0, 0)
    lam = float(rng.beta(alpha, alpha) if rng is not None else np.random.beta(alpha, alpha))
    top, left, bottom, right = token_box(grid, lam, rng)
    images = images.clone()
    images[:, :, top * patch:bottom * patch, left * patch:right * patch] = \
        images.flip(0)[:, :, top * patch:bottom * patch, left * patch:right * patch]
    inside = torch.zeros(grid, grid, dtype=torch.bool, device=dense_target.device)
    inside[top:bottom, left:right] = True
    inside = inside.flatten()
    dense_target = torch.where(inside[None, :, None], dense_target.flip(0), dense_target)
    lam = 1.0 - (bottom - top) * (right - left) / (grid * grid)  # from the host's box: no device read
    cls_target = lam * cls_target + (1.0 - lam) * cls_target.flip(0)
    return images, cls_target, dense_target, (top, left, bottom, right)


class TokenLabelCrop:
    """RandomResizedCrop + horizontal flip of an image and, at the same place, of its score map.

    Draws as timm's RandomResizedCropAndInterpolation does (Python's `random`, which the dataset
    reseeds for every sample), so an image's crop is a function of (seed, epoch, index).
    """

    def __init__(self, img_size: int, *, grid: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                 interpolation: str = "bicubic", smoothing: float = 0.0) -> None:
        self.img_size, self.grid, self.scale, self.ratio = img_size, grid, tuple(scale), tuple(ratio)
        self.hflip, self.smoothing = hflip, smoothing
        self.interpolation = interpolation

    def __call__(self, img, scores: torch.Tensor):
        """(PIL image, (C, H, W) scores) -> (cropped PIL image, class target (C,), dense target (grid^2, C))."""
        import random

        from PIL import Image
        from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp

        top, left, h, w = RandomResizedCropAndInterpolation.get_params(img, self.scale, self.ratio)
        flip = random.random() < self.hflip
        width, height = img.size
        out = img.resize((self.img_size, self.img_size), str_to_pil_interp(self.interpolation),
                         box=(left, top, left + w, top + h))
        if flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        box = (top / height, left / width, (top + h) / height, (left + w) / width)
        cls, dense = crop_label_map(scores, box, self.grid, flip=flip, smoothing=self.smoothing)
        return out, cls, dense
