"""Image transforms: the T2T-ViT evaluation pipeline and the DeiT-style training augmentation.

Training augmentation is timm's (RandomResizedCrop with random bilinear/bicubic interpolation,
horizontal flip, RandAugment, random erasing), built by ``timm.data.create_transform``. Two things
are added on top:

* ``FastTrainTransform`` (``fast_decode=True``): the same augmentation with the same random draws in
  the same order, but the crop box is drawn from the JPEG header before decoding, the JPEG is
  decoded at 1/2, 1/4 or 1/8 scale when the crop still covers the output size at that scale, and the
  crop-and-resize runs on uint8 tensors with torch's anti-aliased kernels (PIL-compatible filters,
  several times faster than PIL's) instead of PIL; ToTensor + Normalize become one conversion, a
  multiply and an add (``ToNormalizedTensor``).
* A guard for recent Pillow (13 here), whose ``ImageOps.posterize`` raises ValueError for 0 bits:
  timm's RandAugment asks for 0 bits when the sampled magnitude reaches 10 (about 1 image in 650
  with ``m9-mstd0.5``), which kills training; older Pillow returned a black image, and so does the guard.

With ``use_prefetcher=True`` the training transforms return uint8 CHW tensors and normalisation plus
random erasing run on the whole batch on the device (``BatchNormalizeErase``), as timm's prefetcher does.
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data import auto_augment as timm_auto_augment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F
from torchvision.transforms.v2 import functional as F2

from .decode import to_rgb
from .erasing import BatchRandomErasing

__all__ = [
    "BatchNormalize",
    "BatchNormalizeErase",
    "FastTrainTransform",
    "ToNormalizedTensor",
    "build_eval_transform",
    "build_padded_crop_transform",
    "build_simple_crop_transform",
    "build_train_transform",
    "eval_resize_size",
    "guard_posterize",
    "normalize_and_erase",
]

_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
}
# timm's "random" interpolation: a uniform choice between these two, in this order.
_RANDOM_INTERPOLATION = (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)
_PIL_RESAMPLE = {
    InterpolationMode.NEAREST: Image.Resampling.NEAREST,
    InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
}
# Modes torch's tensor resize implements (with PIL-compatible anti-aliasing when downscaling).
_TENSOR_INTERPOLATIONS = {InterpolationMode.NEAREST, InterpolationMode.BILINEAR, InterpolationMode.BICUBIC}


def _interpolation_mode(name: str) -> InterpolationMode:
    if name not in _INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {name!r}; expected one of {sorted(_INTERPOLATIONS)}")
    return _INTERPOLATIONS[name]


# ---------------------------------------------------------------------------------------------
# Evaluation


def eval_resize_size(img_size: int, crop_pct: float = 0.9) -> int:
    """Shorter-side size before the centre crop: floor(img_size / crop_pct) (224 -> 248, 384 -> 426)."""
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return int(math.floor(img_size / crop_pct))


def build_eval_transform(
    img_size: int,
    crop_pct: float = 0.9,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    *,
    uint8: bool = False,
) -> Callable:
    """Resize the shorter side to floor(img_size / crop_pct), centre-crop img_size, to tensor, normalise.

    With `uint8` the transform stops at a uint8 (3, H, W) tensor: the batch is normalised on the device
    by ``BatchNormalize`` (same arithmetic as ToTensor + Normalize, a quarter of the bytes through
    shared memory and the host-to-device copy).
    """
    resize_crop = [
        T.Resize(eval_resize_size(img_size, crop_pct), interpolation=_interpolation_mode(interpolation)),
        T.CenterCrop(img_size),
    ]
    if uint8:
        return T.Compose(resize_crop + [T.PILToTensor()])
    return T.Compose(resize_crop + [T.ToTensor(), T.Normalize(mean=tuple(mean), std=tuple(std))])


class BatchNormalize(torch.nn.Module):
    """uint8 (B, 3, H, W) batch -> normalised float32 batch on ``device``, as ToTensor + Normalize per image.

    The same operations in the same order (divide by 255, subtract the mean, divide by the std), so
    an evaluation gives the same numbers whether the workers or the device normalise.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD,
                 *, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.device = torch.device(device)
        self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32, device=self.device).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32, device=self.device).view(1, -1, 1, 1))

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype != torch.uint8 or batch.dim() != 4:
            raise ValueError(f"expected a uint8 (B, C, H, W) batch, got {batch.dtype} {tuple(batch.shape)}")
        return batch.to(self.device, non_blocking=True).float().div_(255).sub_(self.mean).div_(self.std)


# ---------------------------------------------------------------------------------------------
# Training


def _posterize_allow_zero_bits(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, with 0 bits giving a black image as older Pillow did (recent Pillow raises)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def guard_posterize(transform: Any) -> None:
    """Point every posterize op of timm's auto-augment objects inside ``transform`` at the guarded version."""
    for op in _augment_ops(transform):
        if getattr(op, "aug_fn", None) is timm_auto_augment.posterize:
            op.aug_fn = _posterize_allow_zero_bits


def _augment_ops(transform: Any):
    if isinstance(transform, (T.Compose, T.RandomApply)):
        for t in transform.transforms:
            yield from _augment_ops(t)
    elif isinstance(transform, timm_auto_augment.RandAugment):
        yield from transform.ops
    elif isinstance(transform, timm_auto_augment.AutoAugment):
        for sub_policy in transform.policy:
            yield from sub_policy
    elif isinstance(transform, timm_auto_augment.AugMixAugment):
        yield from transform.ops


def build_train_transform(
    img_size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    hflip: float = 0.5,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float | None = 0.4,
    interpolation: str = "random",
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    re_count: int = 1,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    fast_decode: bool = False,
    use_prefetcher: bool = False,
) -> Callable:
    """DeiT / T2T-ViT training augmentation (timm's), optionally with the fast decode-and-crop path.

    With ``use_prefetcher=True`` it returns uint8 CHW tensors without normalisation or random erasing
    (apply ``BatchNormalizeErase`` to the batch on the device); otherwise normalised float tensors.
    Colour jitter is ignored when ``auto_augment`` is set, as in timm.
    """
    if interpolation != "random":
        _interpolation_mode(interpolation)
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
    if not 0.0 <= re_prob <= 1.0:
        raise ValueError(f"re_prob must be a probability in [0, 1], got {re_prob}")
    kwargs = dict(
        is_training=True,
        scale=tuple(scale),
        ratio=tuple(ratio),
        hflip=hflip,
        color_jitter=color_jitter,
        auto_augment=auto_augment or None,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        re_prob=re_prob,
        re_mode=re_mode,
        re_count=re_count,
        use_prefetcher=use_prefetcher,
    )
    if not fast_decode:
        transform = create_transform(img_size, **kwargs)
        guard_posterize(transform)
        return transform
    _, secondary, _ = create_transform(img_size, separate=True, **kwargs)
    guard_posterize(secondary)
    if use_prefetcher:
        final: Callable = F.pil_to_tensor
    else:
        final_steps: list[Callable] = [ToNormalizedTensor(mean, std)]
        if re_prob > 0:
            final_steps.append(RandomErasing(re_prob, mode=re_mode, max_count=re_count, device="cpu"))
        final = T.Compose(final_steps)
    return FastTrainTransform(
        img_size,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
        interpolation=interpolation,
        color_transform=secondary,
        final_transform=final,
    )


def build_padded_crop_transform(
    img_size: int,
    *,
    padding: int,
    hflip: float = 0.5,
    interpolation: str = "bilinear",
    re_prob: float = 0.0,
    re_mode: str = "pixel",
    re_count: int = 1,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> Callable:
    """The CIFAR transfer augmentation: resize to img_size, RandomCrop(img_size, padding), flip, normalise.

    The official T2T-ViT transfer script resizes CIFAR's 32 px images to 224 and pads by 224 // 8 = 28.
    """
    steps: list[Callable] = [
        T.Resize(img_size, interpolation=_interpolation_mode(interpolation)),
        T.RandomCrop(img_size, padding=padding),
        T.RandomHorizontalFlip(hflip),
        ToNormalizedTensor(mean, std),
    ]
    if re_prob > 0:
        steps.append(RandomErasing(re_prob, mode=re_mode, max_count=re_count, device="cpu"))
    return T.Compose(steps)


def build_simple_crop_transform(
    img_size: int,
    *,
    hflip: float = 0.5,
    auto_augment: str | None = "3a",
    color_jitter: float | None = 0.3,
    interpolation: str = "bicubic",
    re_prob: float = 0.0,
    re_mode: str = "pixel",
    re_count: int = 1,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> Callable:
    """DeiT III's simple random crop (SRC): shorter side to img_size, RandomCrop(img_size, padding=4, reflect),
    flip; then timm's colour stage for `auto_augment` (3-Augment: '3a', one of greyscale, solarize and blur)
    with colour jitter (kept with 3a, as in timm), normalise and random erasing."""
    if interpolation == "random":
        raise ValueError("interpolation='random' is for the imagenet transform: choose bilinear or bicubic")
    _, secondary, _ = create_transform(img_size, is_training=True, separate=True, hflip=0.0,
                                       auto_augment=auto_augment or None, color_jitter=color_jitter,
                                       interpolation=interpolation, mean=tuple(mean), std=tuple(std))
    guard_posterize(secondary)
    steps: list[Callable] = [
        T.Resize(img_size, interpolation=_interpolation_mode(interpolation)),
        T.RandomCrop(img_size, padding=4, padding_mode="reflect"),
        T.RandomHorizontalFlip(hflip),
        secondary,
        ToNormalizedTensor(mean, std),
    ]
    if re_prob > 0:
        steps.append(RandomErasing(re_prob, mode=re_mode, max_count=re_count, device="cpu"))
    return T.Compose(steps)


class ToNormalizedTensor:
    """RGB PIL image -> normalised float (3, H, W) tensor, as ToTensor + Normalize but with fewer passes."""

    def __init__(self, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std_t)).view(-1, 1, 1)  # (x / 255 - mean) / std = x * scale + bias
        self.bias = (-mean_t / std_t).view(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        chw = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # uint8, channels-last memory
        return chw.to(torch.float32, memory_format=torch.contiguous_format).mul_(self.scale).add_(self.bias)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _draft_scale(crop_w: int, crop_h: int, out_w: int, out_h: int) -> int:
    """Largest JPEG DCT scale-down factor (8, 4, 2, 1) at which the crop still covers the output size."""
    for s in (8, 4, 2):
        if crop_w >= s * out_w and crop_h >= s * out_h:
            return s
    return 1


class FastTrainTransform:
    """RandomResizedCrop + flip + colour augmentation, decoding JPEGs at reduced size when that loses nothing.

    Draws the same random numbers in the same order as timm's pipeline (crop box, interpolation, flip,
    then the colour transform), so for a given RNG state it picks the same augmentation. The pixels
    differ from timm's by resampling rounding (torch's anti-aliased kernels against PIL's, within 1-2
    levels) or, when the JPEG was decoded at reduced size, by libjpeg's DCT-domain downscale, which
    differs from PIL's filter about as much as timm's own bilinear and bicubic choices differ.

    Call it on a PIL image, or let ``ImageFolderDataset`` call ``decode_and_crop`` on the opened,
    undecoded file and then this transform on the result.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int],
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip: float = 0.5,
        interpolation: str = "random",
        color_transform: Callable | None = None,
        final_transform: Callable | None = None,
        draft: bool = True,
    ) -> None:
        self.size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)  # (H, W)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.hflip = float(hflip)
        if interpolation == "random":
            self.interpolation: InterpolationMode | tuple[InterpolationMode, ...] = _RANDOM_INTERPOLATION
        else:
            self.interpolation = _interpolation_mode(interpolation)
        modes = self.interpolation if isinstance(self.interpolation, tuple) else (self.interpolation,)
        if not set(modes) <= _TENSOR_INTERPOLATIONS:
            raise ValueError(f"fast_decode supports nearest, bilinear, bicubic or random interpolation, got {interpolation!r}")
        self.color_transform = color_transform
        self.final_transform = final_transform if final_transform is not None else F.pil_to_tensor
        self.draft = draft

    def decode_and_crop(self, img: Image.Image) -> torch.Tensor:
        """Draw the crop box from the header size, decode (reduced when possible), crop and resize: (3, H, W) uint8."""
        i, j, h, w = RandomResizedCropAndInterpolation.get_params(img, self.scale, self.ratio)
        if isinstance(self.interpolation, tuple):
            interpolation = random.choice(self.interpolation)
        else:
            interpolation = self.interpolation
        full_w, full_h = img.size
        # Tiny images can round a crop side to 0 (and put it at the far edge): keep one pixel.
        h, w = max(h, 1), max(w, 1)
        i, j = min(i, full_h - h), min(j, full_w - w)
        self.drawn_box = (i, j, h, w, full_h, full_w)  # what this image got (token labels follow it)
        out_h, out_w = self.size
        s = _draft_scale(w, h, out_w, out_h) if self.draft and img.format == "JPEG" else 1
        if s > 1:
            drafted = img.draft("RGB", (full_w // s, full_h // s))
            if drafted is not None:
                s = full_w / drafted[1][2]  # the box is (0, 0, full_w / scale, full_h / scale)
                img.load()
                img = to_rgb(img)
                # PIL resizes from a sub-pixel box, so the crop is exactly the one drawn; rounding it to
                # whole reduced pixels would shift it by up to s/2 source pixels.
                box = (j / s, i / s, (j + w) / s, (i + h) / s)
                out = img.resize((out_w, out_h), _PIL_RESAMPLE[interpolation], box=box)
                return torch.from_numpy(np.array(out)).permute(2, 0, 1)
        img.load()
        img = to_rgb(img)
        crop = torch.from_numpy(np.array(img.crop((j, i, j + w, i + h))))
        # The crop is a contiguous (h, w, 3) block: read as a channels-last (3, h, w) tensor, torch's uint8
        # kernels resize it and write a channels-last result, which goes to PIL without a transposing copy.
        return F2.resize(crop.permute(2, 0, 1), [out_h, out_w], interpolation, antialias=True)

    def __call__(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(img, Image.Image):
            img = self.decode_and_crop(img)
        pil = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())  # (H, W, 3) -> RGB
        self.drawn_flip = bool(self.hflip > 0 and torch.rand(1) < self.hflip)  # the same draw as torchvision's
        if self.drawn_flip:
            pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.color_transform is not None:
            pil = self.color_transform(pil)
        return self.final_transform(pil)

    def __repr__(self) -> str:
        modes = self.interpolation if isinstance(self.interpolation, tuple) else (self.interpolation,)
        return (
            f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={tuple(round(r, 4) for r in self.ratio)}, "
            f"interpolation={'/'.join(m.value for m in modes)}, hflip={self.hflip}, draft={self.draft},\n"
            f"  color_transform={self.color_transform},\n  final_transform={self.final_transform})"
        )


# ---------------------------------------------------------------------------------------------
# Batch normalisation and random erasing on the device (prefetcher mode)


class BatchNormalizeErase(torch.nn.Module):
    """uint8 (B, 3, H, W) batch -> float batch on ``device``: normalise with mean/std, then random-erase.

    What timm's prefetcher does after the transfer; random erasing draws from the main process's
    global RNGs (the engine reseeds them every step).
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        *,
        re_prob: float = 0.0,
        re_mode: str = "pixel",
        re_count: int = 1,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.dtype = dtype
        self.register_buffer("mean", torch.tensor([255.0 * m for m in mean], device=self.device).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([255.0 * s for s in std], device=self.device).view(1, -1, 1, 1))
        self.random_erasing = (
            BatchRandomErasing(re_prob, mode=re_mode, max_count=re_count) if re_prob > 0 else None
        )

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype != torch.uint8 or batch.dim() != 4:
            raise ValueError(f"expected a uint8 (B, C, H, W) batch, got {batch.dtype} {tuple(batch.shape)}")
        x = batch.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        if self.random_erasing is not None:
            x = self.random_erasing(x)
        return x.to(self.dtype)


def normalize_and_erase(
    batch_uint8: torch.Tensor,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    re_prob: float = 0.0,
    re_mode: str = "pixel",
    device: str | torch.device = "cpu",
    *,
    re_count: int = 1,
) -> torch.Tensor:
    """Functional form of ``BatchNormalizeErase`` (builds the module each call; keep one for a loop)."""
    module = BatchNormalizeErase(mean, std, re_prob=re_prob, re_mode=re_mode, re_count=re_count, device=device)
    return module(batch_uint8)
