"""Token labels: dense score maps from a teacher, following their image's crop, flip and RandAugment, and MixToken.

A label map is a teacher's top-k class scores at every location of its token grid: `values`
(k, H, W) float16 and `indices` (k, H, W) int16/int32. scripts/generate_token_labels.py stores them
per block of images (t2t/data/label_blocks.py: LABELDIR/blocks/*.tlb next to LABELDIR/labels.json),
read by sample position from memory-mapped files. The older layout, one file per image
(LABELDIR/<class>/<image stem>.pt with the teacher's sha256), is still read, and TokenLabeling's
own files (one (2, k, H, W) tensor, indices stored as floats) are read by its import.

Training (`token_label.dir`): the loader workers send each image's top-k map unchanged (a few KB)
with the geometry its transform drew (`TokenLabelTransform`: the crop box, the flip and the affine
map of RandAugment's geometric ops); on the device, `DenseTokenTargets` spreads the top-k scores into
(B, C, H, W) maps (zeros elsewhere, as TokenLabeling does), cuts the crop out with RoIAlign onto the
student's token grid (and to one cell for the class token) sampled as TokenLabeling samples it (its
transposed box corrected), flips it, applies the geometric ops with nearest sampling and zero scores
outside the image (TokenLabeling's rule), takes the softmax and smooths it as TokenLabeling does (rows
sum to 1 + s / C). `MixToken` then replaces CutMix, its box drawn by TokenLabeling's rule.
See docs/teacher.md, "Fidelity to TokenLabeling", for each rule and its test.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ..outputs import atomic_output
from .dataset import DatasetError, ImageDataset
from .label_blocks import BLOCK_FORMAT, BlockLabels, check_record
from .readers import Reader

__all__ = [
    "GEOMETRY_SIZE", "DenseTokenTargets", "LabelMapError", "MixToken", "TokenLabelDataset", "TokenLabelTransform",
    "crop_label_map", "dense_scores", "label_path", "label_targets", "mix_token", "open_label_dir", "read_label_map",
    "read_label_record", "read_labels_json", "save_label_map", "token_box",
]

# A sample's geometry: crop box (top, left, bottom, right) as fractions of the image, flip (0/1), and the
# affine map (2 x 3, row-major) from output-image coordinates in [0, 1] to the flipped crop's coordinates.
GEOMETRY_SIZE = 11
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class LabelMapError(DatasetError):
    """A label file that is missing, unreadable or not of this label folder; the message names the path."""


def label_path(label_dir: str, image_relpath: str) -> str:
    """LABELDIR/<class>/<stem>.pt for the image at <class>/<name>.<ext> under the training folder."""
    stem, _ = os.path.splitext(image_relpath)
    return os.path.join(label_dir, stem + ".pt")


def save_label_map(path: str, values: torch.Tensor, indices: torch.Tensor, teacher: Optional[str] = None) -> None:
    """Write one image's top-k map (and the teacher's sha256) in the per-image layout, whole or not at all."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    index_dtype = torch.int16 if int(indices.max()) < 2 ** 15 else torch.int32
    obj: dict[str, Any] = {"values": values.detach().to("cpu", torch.float16).contiguous(),
                           "indices": indices.detach().to("cpu", index_dtype).contiguous()}
    if teacher is not None:
        obj["teacher"] = str(teacher)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def read_label_record(path: str) -> tuple[torch.Tensor, torch.Tensor, Optional[str]]:
    """(values (k, H, W) float32, indices (k, H, W) int64, teacher sha256 or None) of one label file."""
    if not os.path.isfile(path):
        raise LabelMapError(f"token label {path!r} does not exist: generate the labels with "
                            "scripts/generate_token_labels.py for this training folder")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise LabelMapError(f"token label {path!r} cannot be read ({type(e).__name__}); generate it again") from None
    teacher = None
    if isinstance(obj, dict) and "values" in obj and "indices" in obj:
        values, indices, teacher = obj["values"], obj["indices"], obj.get("teacher")
    elif isinstance(obj, torch.Tensor) and obj.ndim == 4 and obj.shape[0] == 2:
        values, indices = obj[0], obj[1]
    else:
        raise LabelMapError(f"token label {path!r} holds neither {{'values', 'indices'}} nor a (2, k, H, W) tensor")
    if values.shape != indices.shape or values.ndim != 3:
        raise LabelMapError(f"token label {path!r}: values {tuple(values.shape)} and indices {tuple(indices.shape)} "
                            "must both be (k, H, W)")
    return values.float(), indices.long(), teacher


def read_label_map(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (k, H, W) float32, indices (k, H, W) int64) from our layout or TokenLabeling's (2, k, H, W)."""
    values, indices, _ = read_label_record(path)
    return values, indices


def dense_scores(values: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Top-k scores (k, H, W) spread into a (num_classes, H, W) map, zero for the other classes."""
    if int(indices.max()) >= num_classes or int(indices.min()) < 0:
        raise LabelMapError(f"token label class index {int(indices.max())} is outside the {num_classes} classes")
    out = torch.zeros((num_classes,) + tuple(values.shape[1:]), dtype=torch.float32)
    return out.scatter_(0, indices, values.float())


def label_targets(scores: torch.Tensor, geometry: torch.Tensor, grid: int, *,
                  smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class and dense targets of a batch of (B, C, H, W) score maps seen through each sample's geometry.

    geometry (B, GEOMETRY_SIZE) as `TokenLabelTransform` records it. Returns (class target (B, C),
    dense target (B, grid * grid, C)); rows of the dense target run over the token grid row by row.

    The crop is TokenLabeling's RoIAlign (torchvision, `sampling_ratio=-1`, `aligned=False`, the box
    moved by -0.5 map cells): each of the grid x grid cells averages ceil(box side in map cells / grid)
    bilinear samples per side, evenly spaced inside the cell, which is one sample at the cell centre
    whenever the crop spans no more map cells than the grid has (a 14 x 14 map on a 14 x 14 grid, or any
    crop of it), so a full-image crop with grid == map size gives the map itself; the class token is the
    same RoIAlign onto one cell (ceil(box side) samples per side over the crop). TokenLabeling hands
    RoIAlign the box (top, left, bottom, right) where RoIAlign reads (x1, y1, x2, y2), so its crop is
    the transposed box (the map's columns cut where the image's rows were); here the box is the
    image's (x = left..right, y = top..bottom), everything else as TokenLabeling samples it.

    Where RandAugment moved the image, the grid is resampled nearest-neighbour through the op's affine
    map, with zero scores outside the image, and the class token's scores are the mean of that grid.

    Then the softmax over classes and TokenLabeling's label smoothing: p * (1 - s + s / C) + s / C, the
    on / off values of its one-hot rows applied to the soft target, so a row sums to 1 + s / C (not 1).
    """
    B, C, H, W = scores.shape
    geometry = geometry.to(scores.device, torch.float32)
    top, left, bottom, right = geometry[:, 0], geometry[:, 1], geometry[:, 2], geometry[:, 3]
    rois = torch.stack([torch.arange(B, device=scores.device, dtype=torch.float32),
                        left * W - 0.5, top * H - 0.5, right * W - 0.5, bottom * H - 0.5], dim=1)
    dense = roi_align(scores, rois, output_size=(grid, grid), spatial_scale=1.0, sampling_ratio=-1,
                      aligned=False)  # (B, C, S, S)
    pooled = roi_align(scores, rois, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1,
                       aligned=False)[:, :, 0, 0]  # (B, C)
    flip = geometry[:, 4] > 0.5
    dense = torch.where(flip[:, None, None, None], dense.flip(-1), dense)
    affine = geometry[:, 5:].reshape(B, 2, 3)
    moved = (affine - affine.new_tensor(_IDENTITY).view(1, 2, 3)).abs().amax(dim=(1, 2)) > 1e-6  # (B,)
    centres = (torch.arange(grid, device=scores.device, dtype=torch.float32) + 0.5) / grid
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).view(1, grid * grid, 3)  # (1, S*S, 3): x, y, 1
    source = points @ affine.transpose(1, 2)  # (B, S*S, 2): where each output token looks in the flipped crop
    resampled = F.grid_sample(dense, (2 * source - 1).view(B, grid, grid, 2), mode="nearest",
                              padding_mode="zeros", align_corners=False)
    dense = torch.where(moved[:, None, None, None], resampled, dense)
    pooled = torch.where(moved[:, None], resampled.mean(dim=(2, 3)), pooled)
    dense = dense.flatten(2).transpose(1, 2).softmax(dim=-1)  # (B, S*S, C)
    cls = pooled.softmax(dim=-1)
    if smoothing > 0:
        off = smoothing / C
        dense = dense * (1 - smoothing + off) + off
        cls = cls * (1 - smoothing + off) + off
    return cls, dense


def crop_label_map(
        scores: torch.Tensor,
        box: Sequence[float],
        out_size: int,
        *,
        flip: bool = False,
        smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop `box` = (top, left, bottom, right), as fractions of the image, of one (C, H, W) score map.

    `label_targets` for one image without RandAugment ops: (class target (C,), dense target (out_size^2, C)).
    """
    geometry = torch.tensor([[*box, float(flip), *_IDENTITY]], dtype=torch.float32)
    cls, dense = label_targets(scores.unsqueeze(0).float(), geometry, out_size, smoothing=smoothing)
    return cls[0], dense[0]


def token_box(grid: int, lam: float, rng: np.random.Generator | None = None) -> tuple[int, int, int, int]:
    """MixToken's box on a grid x grid token grid for Beta draw `lam`: (top, left, bottom, right) in tokens.

    TokenLabeling's rule: half-side h = int(grid * sqrt(1 - lam)) // 2 (truncated, so the side 2h is
    even and at most grid * sqrt(1 - lam)); the centre row, then the centre column, each uniform in
    [0, grid); the box [centre - h, centre + h) clipped to the grid on each axis. Its share of the grid
    is therefore below 1 - lam (mean 0.271 on 14 x 14 with lam ~ Beta(1, 1)); `mix_token` weighs the
    class target by the clipped box's actual share. Draws come from NumPy's global RNG (which the
    Trainer reseeds every micro-step) unless `rng` is given.
    """
    draw = rng.integers if rng is not None else np.random.randint
    half = int(grid * np.sqrt(1.0 - lam)) // 2
    cy, cx = int(draw(0, grid)), int(draw(0, grid))
    top, bottom = np.clip(cy - half, 0, grid), np.clip(cy + half, 0, grid)
    left, right = np.clip(cx - half, 0, grid), np.clip(cx + half, 0, grid)
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

    images (B, 3, G*patch, G*patch); cls_target (B, C); dense_target (B, G*G, C). Draws, in order:
    one uniform for `prob` (only when prob < 1), lam ~ Beta(alpha, alpha), then `token_box`'s centre
    row and column: with alpha = prob = 1, TokenLabeling's draws (its model draws Beta(1, 1) and its
    box from the same global RNG). The box is whole patches (pixel edges at multiples of `patch`), the
    tokens inside take the other image's dense targets, and the class target is mixed by the share of
    tokens kept, lam = 1 - box area / G^2 (TokenLabeling's corrected lam). TokenLabeling swaps the
    patch embeddings inside the box and swaps the token predictions back before its loss; swapping the
    pixels and the targets instead gives the same loss (the mean over the batch is the same sum), and
    suits T2T-ViT, whose soft split makes its tokens from overlapping pixel windows.
    Returns (images, cls_target, dense_target, box in tokens); the inputs are not modified.
    """
    B, _, H, W = images.shape
    grid = H // patch
    if H != W or H % patch:
        raise ValueError(f"MixToken needs square images whose side is a multiple of {patch}, got {H}x{W}")
    if dense_target.shape[1] != grid * grid:
        raise ValueError(f"dense target has {dense_target.shape[1]} rows, the {grid}x{grid} token grid {grid * grid}")
    uniform = rng.random if rng is not None else np.random.rand
    if alpha <= 0 or (prob < 1 and uniform() >= prob):
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


# ---------------------------------------------------------------------------------------------
# The training data path: geometry recorded in the workers, targets made on the device

# timm's RandAugment / AutoAugment ops that move pixels (TokenLabeling moves the label map with them;
# the colour ops leave it as it is).
_GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel")


def _pixel_matrix(name: str, size: tuple[int, int], arg: float) -> tuple[float, ...]:
    """PIL's affine data (a, b, c, d, e, f) of a geometric op: output pixel (x, y) reads input (ax+by+c, dx+ey+f)."""
    width, height = size
    if name == "ShearX":
        return 1.0, arg, 0.0, 0.0, 1.0, 0.0
    if name == "ShearY":
        return 1.0, 0.0, 0.0, arg, 1.0, 0.0
    if name in ("TranslateX", "TranslateXRel"):
        return 1.0, 0.0, arg * width if name.endswith("Rel") else arg, 0.0, 1.0, 0.0
    if name in ("TranslateY", "TranslateYRel"):
        return 1.0, 0.0, 0.0, 0.0, 1.0, arg * height if name.endswith("Rel") else arg
    # Rotate: PIL's Image.rotate(degrees) about the centre, counter-clockwise, same size.
    angle = -math.radians(arg)
    a, b, d, e = round(math.cos(angle), 15), round(math.sin(angle), 15), round(-math.sin(angle), 15), \
        round(math.cos(angle), 15)
    cx, cy = width / 2.0, height / 2.0
    return a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy


class _GeometryRecorder:
    """The composed affine map (3 x 3, image coordinates in [0, 1]) of the geometric ops applied to one image."""

    def __init__(self) -> None:
        self.matrix = np.eye(3)

    def reset(self) -> None:
        self.matrix = np.eye(3)

    def add(self, name: str, size: tuple[int, int], arg: float) -> None:
        width, height = size
        a, b, c, d, e, f = _pixel_matrix(name, size, arg)
        op = np.array([[a, b * height / width, c / width], [d * width / height, e, f / height], [0.0, 0.0, 1.0]])
        # image_k(p) = image_{k-1}(op_k p), so the final image reads the first at op_1 op_2 ... op_n p.
        self.matrix = self.matrix @ op


def _augment_ops(transform: Any):
    """timm's AugmentOp objects inside a transform (Compose, RandAugment, AutoAugment, AugMix, or one op)."""
    from timm.data import auto_augment as aa
    from torchvision import transforms as T

    if isinstance(transform, aa.AugmentOp):
        yield transform
    elif isinstance(transform, (T.Compose, T.RandomApply)):
        for t in transform.transforms:
            yield from _augment_ops(t)
    elif isinstance(transform, (aa.RandAugment, aa.AugMixAugment)):
        yield from transform.ops
    elif isinstance(transform, aa.AutoAugment):
        for sub_policy in transform.policy:
            yield from sub_policy


class _RecordingOp:
    """An augmentation function that tells the recorder how it moves the image, then runs unchanged."""

    def __init__(self, fn: Callable, name: str, recorder: _GeometryRecorder) -> None:
        self.fn, self.name, self.recorder = fn, name, recorder

    def __call__(self, img, *args, **kwargs):
        self.recorder.add(self.name, img.size, float(args[0]))
        return self.fn(img, *args, **kwargs)


class TokenLabelTransform:
    """The training transform (a `FastTrainTransform`) returning (image, geometry): what it drew for the image.

    The crop box and flip are the ones the image got (the transform records its own draws; nothing is
    drawn twice), and RandAugment's geometric ops report their affine maps as they run.
    """

    def __init__(self, base) -> None:
        self.base = base
        self.recorder = _GeometryRecorder()
        for op in _augment_ops(base.color_transform):
            if getattr(op, "name", None) in _GEOMETRIC_OPS and not isinstance(op.aug_fn, _RecordingOp):
                op.aug_fn = _RecordingOp(op.aug_fn, op.name, self.recorder)

    def decode_and_crop(self, img):
        self.recorder.reset()
        return self.base.decode_and_crop(img)

    def __call__(self, img) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        if isinstance(img, Image.Image):
            self.recorder.reset()
        out = self.base(img)
        i, j, h, w, full_h, full_w = self.base.drawn_box
        geometry = [i / full_h, j / full_w, (i + h) / full_h, (j + w) / full_w, float(self.base.drawn_flip)]
        geometry += self.recorder.matrix[:2].reshape(-1).tolist()
        return out, torch.tensor(geometry, dtype=torch.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r})"


def read_labels_json(label_dir: str, classes: Sequence[str], image_root: str) -> dict[str, Any]:
    """labels.json of `label_dir`, checked against the training classes (either layout)."""
    where = f"token_label.dir={label_dir!r}"
    if not os.path.isdir(label_dir):
        raise LabelMapError(f"{where} is not a folder: write the labels there with scripts/generate_token_labels.py")
    meta = os.path.join(label_dir, "labels.json")
    try:
        with open(meta) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise LabelMapError(f"{where}: {meta!r} cannot be read ({type(e).__name__}): a label folder written by "
                            "scripts/generate_token_labels.py has it") from None
    if not isinstance(record, dict):
        raise LabelMapError(f"{where}: {meta!r} holds a JSON {type(record).__name__}, not the record "
                            "scripts/generate_token_labels.py writes")
    if list(record.get("classes", [])) != list(classes):
        theirs = list(record.get("classes", []))
        first = next((k for k, (a, b) in enumerate(zip(theirs, classes)) if a != b), min(len(theirs), len(classes)))
        raise LabelMapError(f"{where}: labels.json lists {len(theirs)} classes and the training folder "
                            f"{image_root!r} has {len(classes)} (first difference at class #{first}): the labels "
                            "were made for another data set")
    if not isinstance(record.get("topk"), int) or record["topk"] < 1:
        raise LabelMapError(f"{where}: labels.json has topk={record.get('topk')!r}; expected a positive integer")
    return record


def open_label_dir(label_dir: str, classes: Sequence[str], image_root: str,
                   image_paths: Sequence[str]) -> dict[str, Any]:
    """labels.json of a per-image `label_dir`, checked against the training classes and images; adds 'shape'.

    Every image must have its map (one directory listing per class, not one stat per image).
    """
    where = f"token_label.dir={label_dir!r}"
    record = read_labels_json(label_dir, classes, image_root)
    listed: dict[str, set[str]] = {}
    missing, first_missing = 0, None
    for image in image_paths:
        rel = os.path.relpath(image, image_root)
        folder, name = os.path.split(label_path("", rel))
        if folder not in listed:
            path = os.path.join(label_dir, folder)
            listed[folder] = {e.name for e in os.scandir(path)} if os.path.isdir(path) else set()
        if name not in listed[folder]:
            missing += 1
            first_missing = first_missing or image
    if missing:
        raise LabelMapError(f"{where} has no label map for image {first_missing!r} (expected "
                            f"{label_path(label_dir, os.path.relpath(first_missing, image_root))!r}; {missing} of "
                            f"{len(image_paths)} images have none): run scripts/generate_token_labels.py again with "
                            f"--output {label_dir}")
    if image_paths:
        record["shape"] = list(read_label_record(label_path(label_dir, os.path.relpath(image_paths[0], image_root)))[0].shape)
    return record


class TokenLabelDataset(ImageDataset):
    """Training images with their top-k label map and the geometry of their augmentation.

    Item: (image, {"label": class index, "values": (k, H, W) float16, "indices": (k, H, W) int,
    "geometry": (GEOMETRY_SIZE,)}); the transform must be a `TokenLabelTransform`. The map stays
    top-k sparse until `DenseTokenTargets` spreads it on the device. A sample's map is found by its
    path relative to the split (``Reader.relpath``), so a label folder serves image folders and the
    shards made from them alike.
    """

    def __init__(self, reader: Reader, transform: Optional[TokenLabelTransform] = None, *, label_dir: str,
                 **kwargs: Any) -> None:
        super().__init__(reader, transform, **kwargs)
        self.label_dir = os.fspath(label_dir)
        record = read_labels_json(self.label_dir, self.classes, self.root)
        self.blocks: Optional[BlockLabels] = None
        if record.get("format") == BLOCK_FORMAT:  # a few block files, by position: nothing listed per image
            where = f"token_label.dir={self.label_dir!r}"
            check_record(record, where)
            self.record, self.blocks = record, BlockLabels(self.label_dir, record, reader, where=where)
        else:  # one file per image (older label folders): every image's file is looked for at start
            relpaths = [reader.relpath(i) for i in range(len(reader))]
            self.record = open_label_dir(self.label_dir, self.classes, self.root,
                                         [os.path.join(self.root, rel) for rel in relpaths])
        self.index_dtype = torch.int16 if len(self.classes) <= 2 ** 15 else torch.int32
        self._decoded: Optional[int] = None

    def _decode(self, position: int) -> Any:
        self._decoded = position  # the sample actually used (another one when a bad image is skipped)
        return super()._decode(position)

    def __getitem__(self, key) -> tuple[Any, dict[str, Any]]:
        (image, geometry), target = super().__getitem__(key)
        values, indices = self.labels_at(self._decoded)
        return image, {"label": target, "values": values, "indices": indices, "geometry": geometry}

    def labels_at(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(values (k, H, W) float16, indices (k, H, W)) of the sample at `position`, from either layout."""
        if self.blocks is not None:
            return self.block_map(position)
        return self.label_map(os.path.join(self.root, self.reader.relpath(position)))

    def block_map(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k map of the sample at `position` from its block; a one-line LabelMapError naming it if unsound."""
        if len(self.reader) != len(self.blocks):
            raise LabelMapError(f"token_label.dir={self.label_dir!r} holds {len(self.blocks)} maps by position, the "
                                f"training set now has {len(self.reader)} images: the positions no longer match")
        values, indices, where = self.blocks.lookup(position)
        problem = None
        if int(indices.min()) < 0 or int(indices.max()) >= len(self.classes):
            problem = f"names class {int(indices.max())}, outside the {len(self.classes)} classes of labels.json"
        elif not bool(torch.isfinite(values).all()):
            problem = "holds scores that are NaN or infinite"
        if problem:
            raise LabelMapError(f"token label {where} of image {self.reader.path(position)!r} {problem}: generate the "
                                "labels again with scripts/generate_token_labels.py")
        return values, indices.to(self.index_dtype)

    def label_map(self, image_path: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The image's top-k map, checked against labels.json; a one-line LabelMapError naming the image if not."""
        path = label_path(self.label_dir, os.path.relpath(image_path, self.root))
        try:
            values, indices, teacher = read_label_record(path)
        except LabelMapError as e:
            raise LabelMapError(f"image {image_path!r}: {e}") from None
        problem = None
        want_teacher, shape = self.record.get("sha256"), tuple(self.record.get("shape", values.shape))
        if teacher is not None and want_teacher and teacher != want_teacher:
            problem = f"was made by the teacher with sha256 {teacher[:12]}, labels.json names {str(want_teacher)[:12]}"
        elif values.shape[0] != self.record["topk"]:
            problem = f"holds the top-{values.shape[0]} classes, labels.json says top-{self.record['topk']}"
        elif tuple(values.shape) != shape:
            problem = f"is a {tuple(values.shape)} map, the others are {shape}"
        elif int(indices.min()) < 0 or int(indices.max()) >= len(self.classes):
            problem = f"names class {int(indices.max())}, outside the {len(self.classes)} classes of labels.json"
        elif not bool(torch.isfinite(values).all()):
            problem = "holds scores that are NaN or infinite"
        if problem:
            raise LabelMapError(f"token label {path!r} of image {image_path!r} {problem}: generate the labels again "
                                "with scripts/generate_token_labels.py")
        return values.half(), indices.to(self.index_dtype)


class DenseTokenTargets:
    """A worker batch's label structure -> (class target (B, C), dense target (B, grid^2, C)) on `device`.

    The (B, C, H, W) score maps exist only here, on the device, for the length of one step; the
    targets are `label_targets` (TokenLabeling's sampling and smoothing).
    """

    def __init__(self, num_classes: int, grid: int, *, smoothing: float = 0.0,
                 device: torch.device = torch.device("cpu")) -> None:
        self.num_classes, self.grid, self.smoothing, self.device = num_classes, grid, smoothing, torch.device(device)

    def __call__(self, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        values = targets["values"].to(self.device, non_blocking=True)
        indices = targets["indices"].to(self.device, non_blocking=True).long()
        B, _, H, W = values.shape
        scores = torch.zeros(B, self.num_classes, H, W, device=self.device).scatter_(1, indices, values.float())
        return label_targets(scores, targets["geometry"].to(self.device, non_blocking=True), self.grid,
                             smoothing=self.smoothing)


class MixToken:
    """`mix_token` in the Trainer's mixup slot: (images, (cls, dense)) -> mixed images and targets.

    Draws from NumPy's global RNG, which the Trainer reseeds every micro-step (exact resume); with
    alpha = prob = 1 (the defaults) the draws and the box are TokenLabeling's.
    """

    def __init__(self, alpha: float = 1.0, *, patch: int = 16, prob: float = 1.0) -> None:
        self.alpha, self.patch, self.prob = alpha, patch, prob

    def __call__(self, images: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor]):
        cls_target, dense_target = targets
        images, cls_target, dense_target, _ = mix_token(images, cls_target, dense_target, alpha=self.alpha,
                                                        patch=self.patch, prob=self.prob)
        return images, (cls_target, dense_target)
