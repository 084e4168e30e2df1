"""``data.backend: dali``: JPEG decoding and augmentation with NVIDIA DALI, in the project's order and randomness.

DALI decodes on the GPU (``device="mixed"``: nvJPEG, and the hardware JPEG decoder of A100/H100) and
augments there, resize included. Without CUDA (what the tests use) DALI's CPU operators decode the
crop windows and run RandAugment, but torch resizes and flips in between, with the Pillow backend's
kernel (DALI's CPU resize costs 5-7 times torch's uint8 kernels); ``DaliTrainLoader(resize_in_dali=True)``
runs the GPU's all-DALI graph on the CPU.

Order and randomness stay with the project, so every promise of the Pillow backend holds:

* the sample order is the ``TrainSampler``'s (seeded epoch permutation, rank slicing, progress in
  samples, elastic world size, repeated augmentation), fed through ``fn.external_source``; DALI's
  readers and their shuffling are not used;
* every random choice of a sample (crop box, interpolation, flip, the RandAugment ops with their
  magnitudes and signs, colour-jitter factors) is drawn on the host from a private
  ``random.Random`` seeded with the sample's seed, the seed ``SeededDataset.reseed`` gives the
  sampler's key (``derive_seed(SEED_STREAM_SAMPLE, seed, epoch, index)``, with the repeat slot added
  for copies slot > 0 of ``RepeatedSample`` keys), so both backends seed a sample alike. The draws
  reach DALI as per-sample argument inputs; no DALI random operator is used. A sample's augmentation therefore depends on nothing but (seed, epoch, key):
  not on the number of threads, on prefetching, on the world size or on where a run resumed.

Per-sample work (reading a file, parsing its header, drawing its augmentation) runs in loader worker
processes, which hand the training process each batch as a few arrays; the training process feeds
DALI per batch and keeps two batches running in it (see the loaders below, and docs/data-feed.md).

Per-sample seeds were chosen over DALI's checkpointing (``enable_checkpointing=True``) because a
DALI checkpoint describes one pipeline on one rank: it cannot be carried to another world size,
it would have to be stored in the training checkpoint of every rank, and it restores the state
after the batches DALI had prefetched, not after the ones the model consumed.

Training output is uint8 (B, 3, H, W) (channels-last memory); normalisation and random erasing run on the device
(``BatchNormalizeErase``), as the Pillow backend does on CUDA; mixup/cutmix stay in the engine.
Evaluation output is normalised float (resize the short side, centre crop, normalise in DALI).

DALI is imported only when a pipeline is built: ``parse_rand_policy`` serves the config check
without it.
"""
from __future__ import annotations

import gc
import io
import logging
import math
import os
import random
import threading
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F2

from ..config import ConfigError
from ..rng import SEED_STREAM_SAMPLE, derive_seed
from .dataset import _DECODE_ERRORS, DatasetError, ImageDataset
from .loader import build_batch_loader
from .rand_policy import _LEVEL_DENOM, RAND_INC_OPS, RAND_OPS, RandPolicy, parse_rand_policy  # noqa: F401
from .sampler import ShardSampler, TrainSampler
from .token_label import _GEOMETRIC_OPS, GEOMETRY_SIZE, TokenLabelDataset, _GeometryRecorder
from .transforms import eval_resize_size

__all__ = ["DaliEvalLoader", "DaliMissingError", "DaliTrainLoader", "RandPolicy", "SamplePlanner",
           "parse_rand_policy", "require_dali"]

_logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[dali]" (or pip install nvidia-dali-cuda130)'


class DaliMissingError(ConfigError):
    """data.backend=dali was asked for, but NVIDIA DALI cannot be imported."""


def require_dali() -> Any:
    """The ``nvidia.dali`` module, or DaliMissingError with one line saying how to install it."""
    try:
        import nvidia.dali as dali  # noqa: F401
        import nvidia.dali.fn  # noqa: F401
    except Exception as e:  # ImportError, or a broken install (missing CUDA library, ...)
        raise DaliMissingError(
            f"data.backend=dali needs NVIDIA DALI, which cannot be imported here ({type(e).__name__}: {e}); "
            f"install it with {INSTALL_HINT}, or set data.backend=pil") from None
    return dali


# ---------------------------------------------------------------------------------------------
# RandAugment policy strings (timm's grammar), and the ops the DALI backend implements


# ---------------------------------------------------------------------------------------------
# Host-side draws: everything random about one sample, from its seed

# Layer op codes understood by the pipeline's select().
OP_IDENTITY, OP_AFFINE, OP_BRIGHTNESS, OP_CONTRAST, OP_COLOR, OP_SHARPNESS, OP_POSTERIZE, OP_SOLARIZE, \
    OP_SOLARIZE_ADD, OP_INVERT, OP_EQUALIZE, OP_AUTOCONTRAST = range(12)
_NUM_OPS = 12
_IDENTITY_MATRIX = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13  # PIL's ImageFilter.SMOOTH
_DELTA = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
INTERP_LINEAR, INTERP_CUBIC = 1, 3  # nvidia.dali.types.INTERP_LINEAR / INTERP_CUBIC
# The Pillow backend's filters for the same draws (timm's _RANDOM_INTERPOLATION: bilinear, bicubic).
_TORCH_FILTERS = {INTERP_LINEAR: InterpolationMode.BILINEAR, INTERP_CUBIC: InterpolationMode.BICUBIC}


@dataclass
class SampleDraw:
    box: tuple[int, int, int, int]  # (x, y, w, h) in source pixels
    interp: int
    flip: int
    ops: list[tuple[int, float, np.ndarray, np.ndarray]]  # per RandAugment layer: (code, param, matrix, kernel)
    jitter: tuple[float, float, float]  # brightness, contrast, saturation factors
    op_args: list[tuple[str, Optional[float]]]  # per layer: timm's op name and its argument (None: skipped)


def random_resized_crop_box(rng: random.Random, width: int, height: int, scale: Sequence[float],
                            ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """(x, y, w, h) drawn as timm's RandomResizedCropAndInterpolation.get_params draws it from `rng`.

    The same draws in the same order (10 tries, then a centre crop), with the one-pixel floor of the
    Pillow backend's FastTrainTransform for tiny images.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if w <= width and h <= height:
            y = rng.randint(0, height - h)
            x = rng.randint(0, width - w)
            break
    else:
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            w, h = int(round(height * max(ratio))), height
        else:
            w, h = width, height
        y, x = (height - h) // 2, (width - w) // 2
    w, h = max(w, 1), max(h, 1)
    return min(x, width - w), min(y, height - h), w, h


_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_THREAD_RNGS = threading.local()


def _seeded_legacy_rng(seed: int) -> np.random.RandomState:
    """This thread's NumPy legacy generator, reseeded: the state of ``np.random.RandomState(seed)``.

    Reseeding one generator per thread costs 1-2 us; building a new RandomState costs ~100 us, as much
    as the rest of a sample's draws together.
    """
    rng = getattr(_THREAD_RNGS, "numpy", None)
    if rng is None:
        rng = _THREAD_RNGS.numpy = np.random.RandomState()
    rng.seed(seed)
    return rng


class SamplePlanner:
    """Draws a sample's augmentation from its seed: crop, interpolation, flip, RandAugment layers, jitter.

    The draws follow the Pillow backend's random streams for the same seed (``seed_global_rngs``:
    Python's ``random`` for the crop box, the interpolation and the RandAugment probabilities,
    magnitudes and signs; NumPy's legacy RNG for the RandAugment op choice; torch's CPU generator for
    the flip), each on a private generator, so both backends pick the same crop, flip and
    RandAugment ops and magnitudes for a sample. Colour jitter (used only without a policy) is
    drawn from the same seed but not in torchvision's order.
    """

    def __init__(self, img_size: int, *, scale: Sequence[float], ratio: Sequence[float], hflip: float,
                 interpolation: str, policy: Optional[RandPolicy], color_jitter: float) -> None:
        self.img_size = int(img_size)
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), float(hflip)
        if interpolation == "random":
            self.interps: tuple[int, ...] = (INTERP_LINEAR, INTERP_CUBIC)  # timm's _RANDOM_INTERPOLATION
        elif interpolation in ("bilinear", "bicubic"):
            self.interps = (INTERP_LINEAR if interpolation == "bilinear" else INTERP_CUBIC,)
        else:
            raise ConfigError(f"data.interpolation={interpolation!r} with data.backend=dali: expected random, "
                              "bilinear or bicubic")
        self.policy = policy
        self.op_names = (RAND_INC_OPS if policy.inc else RAND_OPS) if policy else ()
        # timm applies colour jitter only when there is no auto-augment policy.
        self.color_jitter = 0.0 if policy else float(color_jitter)

    @property
    def layers(self) -> int:
        return self.policy.n if self.policy else 0

    def draw(self, seed: int, width: int, height: int) -> SampleDraw:
        rng = random.Random(seed)
        box = random_resized_crop_box(rng, width, height, self.scale, self.ratio)
        interp = self.interps[0] if len(self.interps) == 1 else rng.choice(self.interps)
        flip = 0
        if self.hflip > 0:
            generator = torch.Generator()
            generator.manual_seed(seed)
            flip = int(torch.rand(1, generator=generator).item() < self.hflip)
        ops, op_args = [], []
        if self.layers:
            names = _seeded_legacy_rng(seed >> 32).choice(len(self.op_names), self.layers, replace=True)
            op_args = [(self.op_names[i], self.draw_op_args(rng, self.op_names[i])) for i in names]
            ops = [self._layer(name, arg) for name, arg in op_args]
        jitter = (1.0, 1.0, 1.0)
        if self.color_jitter > 0:
            lo, hi = max(0.0, 1 - self.color_jitter), 1 + self.color_jitter
            jitter = (rng.uniform(lo, hi), rng.uniform(lo, hi), rng.uniform(lo, hi))
        return SampleDraw(box=box, interp=interp, flip=flip, ops=ops, jitter=jitter, op_args=op_args)

    def draw_op_args(self, rng: random.Random, name: str) -> Optional[float]:
        """timm's AugmentOp.__call__ draws for op `name`: None if skipped (prob), else its level argument."""
        policy = self.policy
        if policy.p < 1.0 and rng.random() > policy.p:
            return None
        magnitude = policy.m
        if policy.mstd > 0:
            magnitude = rng.gauss(magnitude, policy.mstd)
        level = max(0.0, min(magnitude, policy.mmax)) / _LEVEL_DENOM

        def negate(v: float) -> float:
            return -v if rng.random() > 0.5 else v  # timm's _randomly_negate

        if name == "Rotate":
            arg = negate(level * 30.0)
        elif name in ("ShearX", "ShearY"):
            arg = negate(level * 0.3)
        elif name in ("TranslateXRel", "TranslateYRel"):
            arg = negate(level * 0.45)  # timm's translate_pct
        elif name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
            arg = max(0.1, 1.0 + negate(level * 0.9))
        elif name in ("Color", "Contrast", "Brightness", "Sharpness"):
            arg = level * 1.8 + 0.1
        elif name == "Posterize":
            arg = int(level * 4)
        elif name == "PosterizeIncreasing":
            arg = 4 - int(level * 4)
        elif name == "Solarize":
            arg = int(level * 256)
        elif name == "SolarizeIncreasing":
            arg = 256 - int(level * 256)
        elif name == "SolarizeAdd":
            arg = int(level * 110)
        else:  # AutoContrast, Equalize, Invert: no argument
            arg = 0.0
        if name in _GEOMETRIC and len(self.interps) > 1:
            rng.choice(self.interps)  # timm's resample choice (DALI's warp stays bilinear)
        return float(arg)

    def _layer(self, name: str, arg: Optional[float]) -> tuple[int, float, np.ndarray, np.ndarray]:
        """The pipeline's (op code, scalar, affine matrix, 3x3 kernel) for timm's op `name` with argument `arg`."""
        if arg is None:
            return OP_IDENTITY, 0.0, _IDENTITY_MATRIX, _DELTA
        size = float(self.img_size)
        if name == "Rotate":  # PIL rotates counter-clockwise about the centre; the matrix maps output to input
            theta = math.radians(arg)
            c, s, centre = math.cos(theta), math.sin(theta), size / 2
            matrix = [[c, -s, centre - c * centre + s * centre], [s, c, centre - s * centre - c * centre]]
            return OP_AFFINE, 0.0, np.array(matrix, dtype=np.float32), _DELTA
        if name in ("ShearX", "ShearY"):  # PIL's AFFINE data (output -> input), as timm passes it
            matrix = [[1, arg, 0], [0, 1, 0]] if name == "ShearX" else [[1, 0, 0], [arg, 1, 0]]
            return OP_AFFINE, 0.0, np.array(matrix, dtype=np.float32), _DELTA
        if name in ("TranslateXRel", "TranslateYRel"):
            shift = arg * size
            matrix = [[1, 0, shift], [0, 1, 0]] if name == "TranslateXRel" else [[1, 0, 0], [0, 1, shift]]
            return OP_AFFINE, 0.0, np.array(matrix, dtype=np.float32), _DELTA
        base = name[:-len("Increasing")] if name.endswith("Increasing") else name
        if base == "Sharpness":  # PIL: blur + factor * (image - blur), as one 3x3 kernel
            kernel = (1.0 - arg) * _SMOOTH + arg * _DELTA
            return OP_SHARPNESS, arg, _IDENTITY_MATRIX, kernel.astype(np.float32)
        if base in ("Color", "Contrast", "Brightness"):
            return {"Color": OP_COLOR, "Contrast": OP_CONTRAST, "Brightness": OP_BRIGHTNESS}[base], arg, \
                _IDENTITY_MATRIX, _DELTA
        if base == "Posterize":
            return OP_POSTERIZE, float(_posterize_mask(int(arg))), _IDENTITY_MATRIX, _DELTA
        if base == "Solarize":
            return OP_SOLARIZE, arg, _IDENTITY_MATRIX, _DELTA
        if name == "SolarizeAdd":
            return OP_SOLARIZE_ADD, arg, _IDENTITY_MATRIX, _DELTA
        code = {"Invert": OP_INVERT, "Equalize": OP_EQUALIZE, "AutoContrast": OP_AUTOCONTRAST}[name]
        return code, 0.0, _IDENTITY_MATRIX, _DELTA


def _posterize_mask(bits: int) -> int:
    """uint8 mask keeping the top `bits` bits; 0 bits gives black, as the Pillow backend's guarded posterize."""
    bits = max(0, min(8, bits))
    return (0xFF << (8 - bits)) & 0xFF


# ---------------------------------------------------------------------------------------------
# Reading files on the host


def _looks_truncated(data: bytes) -> Optional[str]:
    """Why a JPEG or PNG stream is cut short (DALI's decoders fill the missing part silently), else None."""
    if data[:2] == b"\xff\xd8":  # JPEG: the last start-of-scan must be followed by an end-of-image marker
        # No start-of-scan after the last end-of-image (searched forward from there: a backward search
        # for the start-of-scan would read the whole file, the scans' data included).
        if data.find(b"\xff\xda", data.rfind(b"\xff\xd9") + 1) >= 0:
            return "image file is truncated (no JPEG end-of-image marker after the last scan)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-16:]:
        return "image file is truncated (no PNG IEND chunk)"
    return None


def read_image(path: str) -> tuple[np.ndarray, int, int]:
    """(encoded bytes, width, height), or DatasetError-worthy OSError/ValueError if it is not a readable image."""
    with open(path, "rb") as f:
        return check_image_bytes(f.read())


def check_image_bytes(data: bytes) -> tuple[np.ndarray, int, int]:
    """read_image for bytes a reader gave (t2t/data/readers.py)."""
    with Image.open(io.BytesIO(data)) as img:  # the header only: format and size
        width, height = img.size
        fmt = img.format
    if fmt not in ("JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "PPM"):  # what DALI's image decoder reads (no GIF)
        raise OSError(f"{fmt} images are not decoded by the DALI backend (data.backend=pil reads them): convert "
                      "the file to JPEG or PNG")
    reason = _looks_truncated(data)
    if reason is not None:
        raise OSError(reason)
    return np.frombuffer(data, dtype=np.uint8), width, height


def _bad_image_error(dataset: ImageDataset, path: str, exc: BaseException) -> DatasetError:
    # The Pillow backend's message (ImageDataset.__getitem__), so both backends read the same.
    hint = getattr(dataset, "bad_image_hint", ", or set data.skip_bad_images=true to substitute the next "
                                              "readable image")
    return DatasetError(f"cannot read image {path!r}: {type(exc).__name__}: {exc}. Replace or delete the file{hint}")


def sample_seed(dataset: ImageDataset, epoch: int, key: Any) -> tuple[int, int]:
    """(index, seed) of sampler item `key`: the seed SeededDataset.reseed sets for it (index, or RepeatedSample).

    Copy 0 of an image keeps the seed of (seed, epoch, index); copy slot > 0 adds the slot.
    """
    index, slot = dataset.check_index(key)
    keys = (SEED_STREAM_SAMPLE, dataset.seed, epoch, index) + ((slot,) if slot else ())
    return index, derive_seed(*keys)


# ---------------------------------------------------------------------------------------------
# Pipelines


def _pipeline_device(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    return None


TRAIN_STAGES = ("all", "decode", "augment")
# Batches a pipeline works on at once (fed and scheduled, outputs not yet taken): DALI runs them in its
# own threads, asynchronously, while the consumer trains (see _LoaderBase._batches).
PIPELINE_DEPTH = 2
_INHERITED: list[Any] = []  # pipelines of loaders freed in a forked process (see _LoaderBase.__del__)
_DECODE_INPUTS = ("encoded", "anchor", "shape")  # the inputs of stage "decode"
_RESIZE_INPUTS = ("interp", "flip")  # used by the resize: in DALI (stage "all") or on the host


def _dali_api() -> tuple[Any, Any, Any]:
    """DALI's ``fn``, ``types`` and ``math`` modules (imported when a graph is built, not with this module)."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    return fn, types, dmath


def _external(name: str, dtype: Any, ndim: int, no_copy: bool = False) -> Any:
    """A per-sample input fed by the loader (``feed_input(name, ...)``); `no_copy`: read in place from the fed
    buffers, which the loader keeps alive until the batch's outputs are taken."""
    fn, _, _ = _dali_api()
    return fn.external_source(name=name, dtype=dtype, ndim=ndim, no_copy=no_copy)


def _on_data_device(node: Any, gpu: bool) -> Any:
    """`node` moved to the device of the images (argument inputs stay on the CPU, data inputs follow the images)."""
    return node.gpu() if gpu else node


@dataclass(frozen=True)
class _Layer:
    """One RandAugment layer's per-sample inputs, with what every op needs from the pipeline."""
    param: Any  # scalar: factor, threshold, shift or posterize mask
    matrix: Any  # (2, 3) affine matrix, output -> input
    kernel: Any  # (3, 3) sharpness kernel
    gpu: bool
    fill: float


# The RandAugment ops as DALI graph pieces, one per op code: (images, layer) -> images.


def _op_identity(data: Any, layer: _Layer) -> Any:
    return data


def _op_affine(data: Any, layer: _Layer) -> Any:
    fn, types, _ = _dali_api()
    return fn.warp_affine(data, matrix=layer.matrix, fill_value=layer.fill, interp_type=types.INTERP_LINEAR)


def _op_brightness(data: Any, layer: _Layer) -> Any:
    fn, _, _ = _dali_api()
    return fn.brightness(data, brightness=layer.param)


def _op_contrast(data: Any, layer: _Layer) -> Any:
    """PIL's contrast: blend with the image's mean grey level."""
    fn, types, dmath = _dali_api()
    mean = fn.reductions.mean(data, axis_names="HW", keep_dims=True)
    weights = types.Constant(np.array([0.299, 0.587, 0.114], dtype=np.float32))
    centre = fn.reductions.sum(mean * weights, axis_names="C", keep_dims=True)
    return fn.cast_like(dmath.clamp(centre + (data - centre) * _on_data_device(layer.param, layer.gpu), 0, 255), data)


def _op_color(data: Any, layer: _Layer) -> Any:
    fn, _, _ = _dali_api()
    return fn.saturation(data, saturation=layer.param)


def _op_sharpness(data: Any, layer: _Layer) -> Any:
    fn, _, _ = _dali_api()
    return fn.filter(data, _on_data_device(layer.kernel, layer.gpu), border="clamp")


def _op_posterize(data: Any, layer: _Layer) -> Any:
    fn, types, _ = _dali_api()
    return data & _on_data_device(fn.cast(layer.param, dtype=types.UINT8), layer.gpu)


def _op_solarize(data: Any, layer: _Layer) -> Any:
    fn, types, _ = _dali_api()
    threshold = _on_data_device(fn.cast(layer.param, dtype=types.INT32), layer.gpu)
    inverted = types.Constant(255, dtype=types.UINT8) - data
    keep = data < threshold
    return fn.cast_like(keep * data + (keep ^ True) * inverted, data)


def _op_solarize_add(data: Any, layer: _Layer) -> Any:
    fn, types, dmath = _dali_api()
    shift = _on_data_device(fn.cast(layer.param, dtype=types.INT32), layer.gpu)
    shifted = data < types.Constant(128, dtype=types.UINT8)
    return fn.cast_like(dmath.clamp(data + shifted * shift, 0, 255), data)


def _op_invert(data: Any, layer: _Layer) -> Any:
    _, types, _ = _dali_api()
    return types.Constant(255, dtype=types.UINT8) - data


def _op_equalize(data: Any, layer: _Layer) -> Any:
    fn, _, _ = _dali_api()
    return fn.equalize(data)


def _op_autocontrast(data: Any, layer: _Layer) -> Any:
    """Stretch each channel to 0-255 (a flat channel is left as it is)."""
    fn, types, _ = _dali_api()
    lo = fn.reductions.min(data, axis_names="HW", keep_dims=True)
    hi = fn.reductions.max(data, axis_names="HW", keep_dims=True)
    diff = hi - lo
    scale_ok = diff > 0
    div_by = diff * scale_ok + types.Constant(255, dtype=types.UINT8) * (scale_ok ^ True)
    return fn.cast_like((data - lo * scale_ok) * (255 / div_by), data)


_OP_GRAPHS = {OP_IDENTITY: _op_identity, OP_AFFINE: _op_affine, OP_BRIGHTNESS: _op_brightness,
              OP_CONTRAST: _op_contrast, OP_COLOR: _op_color, OP_SHARPNESS: _op_sharpness,
              OP_POSTERIZE: _op_posterize, OP_SOLARIZE: _op_solarize, OP_SOLARIZE_ADD: _op_solarize_add,
              OP_INVERT: _op_invert, OP_EQUALIZE: _op_equalize, OP_AUTOCONTRAST: _op_autocontrast}
assert sorted(_OP_GRAPHS) == list(range(_NUM_OPS))


def _select_op(lo: int, hi: int, op: Any, data: Any, layer: _Layer) -> Any:
    """The op of each sample's code `op` (in lo..hi) on its image: a binary split of the batch by op code
    (DALI conditionals), so that each op sees only its samples."""
    if lo == hi:
        return _OP_GRAPHS[lo](data, layer)
    mid = (lo + hi) // 2
    if op <= mid:
        out = _select_op(lo, mid, op, data, layer)
    else:
        out = _select_op(mid + 1, hi, op, data, layer)
    return out


def _augment(images: Any, layers: int, jitter: bool, *, gpu: bool, fill: float) -> Any:
    """The RandAugment layers (inputs op<i>, param<i>, matrix<i>, kernel<i>), then colour jitter (input jitter)."""
    _, types, _ = _dali_api()
    for index in range(layers):
        op = _external(f"op{index}", types.INT32, 0)
        param = _external(f"param{index}", types.FLOAT, 0)
        matrix = _external(f"matrix{index}", types.FLOAT, 2)
        kernel = _external(f"kernel{index}", types.FLOAT, 2)
        images = _select_op(0, _NUM_OPS - 1, op, images, _Layer(param, matrix, kernel, gpu, fill))
    if jitter:
        fn, _, _ = _dali_api()
        bcs = _external("jitter", types.FLOAT, 1)
        images = fn.color_twist(images, brightness=bcs[0], contrast=bcs[1], saturation=bcs[2])
    return images  # HWC: the loader hands torch a (B, 3, H, W) view (channels-last memory)


def _decode_windows(gpu: bool) -> Any:
    """Each sample's crop window (inputs anchor (x, y), shape (w, h)) decoded from its file (input encoded)."""
    fn, types, _ = _dali_api()
    encoded = _external("encoded", types.UINT8, 1, no_copy=True)
    anchor, shape = _external("anchor", types.FLOAT, 1), _external("shape", types.FLOAT, 1)
    return fn.decoders.image_slice(encoded, anchor, shape, device="mixed" if gpu else "cpu",
                                   output_type=types.RGB, axis_names="WH", normalized_anchor=False,
                                   normalized_shape=False)


def _resize_and_flip_windows(images: Any, size: int) -> Any:
    """The windows resized to (size, size) with each sample's filter (input interp), mirrored where drawn (flip)."""
    fn, types, _ = _dali_api()
    interp, flip = _external("interp", types.INT32, 0), _external("flip", types.INT32, 0)
    # The flip is the resize reading its window right to left (a reversed ROI, relative to the crop;
    # ROI coordinates in (H, W) order): one op instead of resize + flip, the same pixels to 1 level.
    mirrored = fn.cast(flip, dtype=types.FLOAT)
    roi_start = fn.stack(mirrored * 0.0, mirrored)
    roi_end = fn.stack(mirrored * 0.0 + 1.0, 1.0 - mirrored)
    resize = dict(size=[size, size], antialias=True, roi_start=roi_start, roi_end=roi_end, roi_relative=True)
    # The batch is split by the drawn filter (a DALI conditional) and each part resized with one
    # constant filter: DALI's CPU resize given per-sample filters costs as much as all-cubic for a
    # mixed batch, and its cubic output then differs from the constant filter's by up to a level.
    if interp == INTERP_CUBIC:
        images = fn.resize(images, interp_type=types.INTERP_CUBIC, **resize)
    else:
        images = fn.resize(images, interp_type=types.INTERP_LINEAR, **resize)
    return images


def build_train_pipeline(planner: SamplePlanner, *, batch_size: int, num_threads: int, device_id: Optional[int],
                         fill: float, seed: int = 0, stage: str = "all") -> Any:
    """The training pipeline, or one of the two parts the CPU path runs around torch's resize.

    ``stage="all"``: decode + crop (one op), resize + flip (one op), RandAugment layers, colour jitter ->
    uint8 (B, S, S, 3); the graph a GPU runs. ``"decode"``: the decoded crop windows only (B, h, w, 3),
    for the host to resize. ``"augment"``: RandAugment layers and colour jitter on resized images fed
    as the input ``images`` (B, S, S, 3).
    """
    if stage not in TRAIN_STAGES:
        raise ValueError(f"stage={stage!r}: expected one of {TRAIN_STAGES}")
    require_dali()
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None
    augment = dict(layers=planner.layers, jitter=planner.color_jitter > 0, gpu=gpu, fill=fill)

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=PIPELINE_DEPTH, exec_async=True, exec_pipelined=False,
                  enable_conditionals=True)
    def pipeline():
        if stage == "augment":
            images = fn.external_source(name="images", dtype=types.UINT8, ndim=3, layout="HWC")
            return _augment(_on_data_device(images, gpu), **augment)
        images = _decode_windows(gpu)
        if stage == "decode":
            return images
        return _augment(_resize_and_flip_windows(images, planner.img_size), **augment)

    pipe = pipeline()
    pipe.build()
    return pipe


def build_eval_pipeline(img_size: int, crop_pct: float, interpolation: str, mean: Sequence[float],
                        std: Sequence[float], *, batch_size: int, num_threads: int, device_id: Optional[int]) -> Any:
    """Decode, resize the short side to floor(img_size / crop_pct), centre crop, normalise -> float (B, 3, S, S)."""
    require_dali()
    from nvidia.dali import fn, pipeline_def, types

    interp = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC, "nearest": types.INTERP_NN,
              "lanczos": types.INTERP_LANCZOS3}.get(interpolation)
    if interp is None:
        raise ConfigError(f"eval interpolation {interpolation!r} with data.backend=dali: expected bilinear, bicubic, "
                          "nearest or lanczos")
    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=PIPELINE_DEPTH, exec_async=True, exec_pipelined=False)
    def pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, no_copy=True)
        # Resized size and crop window from the host (eval_geometry), so that the rounding is torchvision's.
        resized = fn.external_source(name="resized", dtype=types.FLOAT, ndim=1)  # (w, h)
        anchor = fn.external_source(name="anchor", dtype=types.FLOAT, ndim=1)  # (x, y)
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=resized[0], resize_y=resized[1], interp_type=interp, antialias=True)
        images = fn.slice(images, anchor, np.array([img_size, img_size], dtype=np.float32),  # CPU inputs
                          axis_names="WH", normalized_anchor=False, normalized_shape=False,
                          out_of_bounds_policy="trim_to_shape")
        return fn.crop_mirror_normalize(images, mean=[255 * m for m in mean], std=[255 * s for s in std],
                                        dtype=types.FLOAT, output_layout="CHW")

    pipe = pipeline()
    pipe.build()
    return pipe


def eval_geometry(width: int, height: int, img_size: int, crop_pct: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """((w, h) after resizing the short side, (x, y) of the centre crop), rounded as torchvision's Resize and
    CenterCrop round them (DALI's own resize_shorter and crop_pos round halves the other way)."""
    short = eval_resize_size(img_size, crop_pct)
    if width <= height:
        size = (short, int(short * height / width))
    else:
        size = (int(short * width / height), short)
    return size, (int(round((size[0] - img_size) / 2.0)), int(round((size[1] - img_size) / 2.0)))


def _to_torch(output: Any, device: torch.device) -> torch.Tensor:
    """A DALI TensorList (dense batch) as a torch tensor on `device` (a copy; DALI reuses its buffers)."""
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        dense = output.as_tensor()
        out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(output.as_array())  # as_array() already copies into a new array


# ---------------------------------------------------------------------------------------------
# Loaders with the DataLoader interface the engine uses
#
# Per-sample work (reading a file, parsing its header, drawing its augmentation) runs in loader
# worker processes (``build_batch_loader``): each returns one batch as a few arrays (a "plan": the
# files back to back, a table of per-sample integers and one of floats). The training process does
# per-batch work only: it slices the plan into the pipeline's inputs, feeds DALI and keeps
# PIPELINE_DEPTH batches in flight inside DALI (asynchronous execution), so that Python in the
# training process never contends, sample by sample, with the step's kernel launches for the
# interpreter lock.

# The columns of a training plan's integer table, then its RandAugment op codes (one per layer).
_END, _POSITION, _TARGET, _INTERP, _FLIP = range(5)
_FIRST_OP = 5
# The float table: crop anchor (x, y), crop shape (w, h), then per layer its scalar, affine matrix
# (2 x 3) and sharpness kernel (3 x 3), then the colour-jitter factors (when jitter is on).
_ANCHOR, _SHAPE = slice(0, 2), slice(2, 4)
_LAYER_FLOATS = 1 + 6 + 9


class BatchPlan(NamedTuple):
    """One batch's pipeline inputs, made in a loader worker (tensors travel in shared memory)."""

    encoded: torch.Tensor  # uint8: the batch's files back to back
    ints: torch.Tensor  # int64 (B, columns): end offset in `encoded`, sample position, target, then per loader
    floats: torch.Tensor  # float32 (B, columns): per loader (empty for evaluation)
    bad_images: int  # unreadable files skipped for this batch (data.skip_bad_images)
    # Token labels: each sample's top-k map (values (B, k, H, W) float16, indices) and the geometry its draws
    # give it (B, GEOMETRY_SIZE), for DenseTokenTargets on the device; None without token labels.
    labels: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None


def read_sample(dataset: ImageDataset, start: int) -> tuple[int, np.ndarray, int, int, int, int]:
    """(sample position, bytes, width, height, label, files skipped) of the first readable image from `start` on.

    A file that cannot be read raises the Pillow backend's DatasetError, or with skip_bad_images is
    counted and replaced by the next readable image (the sample keeps its seed), as there.
    """
    reader = dataset.reader
    n = len(reader)
    for attempt in range(n):
        position = (start + attempt) % n
        try:
            data, width, height = check_image_bytes(reader.read(position))
            return position, data, width, height, reader.target(position), attempt
        except _DECODE_ERRORS as exc:
            path = reader.path(position)
            if not dataset.skip_bad_images:
                raise _bad_image_error(dataset, path, exc) from None
            _logger.warning("skipping unreadable image %s (%s: %s)", path, type(exc).__name__, exc)
    raise DatasetError(f"no readable image in {dataset.root!r}: every one of the {n} files failed to decode")


def _pack_files(files: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
    """The files back to back in one uint8 tensor, and each one's end offset."""
    ends = np.cumsum([len(f) for f in files]).tolist()
    encoded = torch.from_numpy(np.concatenate(files)) if files else torch.empty(0, dtype=torch.uint8)
    return encoded, ends


def token_label_geometry(draw: SampleDraw, width: int, height: int, img_size: int) -> np.ndarray:
    """A sample's geometry as `TokenLabelTransform` records it on the Pillow backend, from the host's draws.

    Every draw that moves pixels (crop box, flip, RandAugment's geometric ops and arguments) is made here,
    on the host, before DALI runs, so the label map can follow the image exactly: the crop box as fractions
    of the full image, the flip, and the affine map composed from timm's op names and arguments (at the
    output size, where the ops run).
    """
    x, y, w, h = draw.box
    recorder = _GeometryRecorder()
    for name, arg in draw.op_args:
        if arg is not None and name in _GEOMETRIC_OPS:
            recorder.add(name, (img_size, img_size), arg)
    geometry = [y / height, x / width, (y + h) / height, (x + w) / width, float(draw.flip)]
    return np.array(geometry + recorder.matrix[:2].reshape(-1).tolist(), dtype=np.float32)


class _TrainPlans(torch.utils.data.Dataset):
    """Item (epoch, sampler keys) -> the BatchPlan of those samples: read, header parsed, augmentation drawn."""

    def __init__(self, dataset: ImageDataset, planner: SamplePlanner) -> None:
        self.dataset = dataset
        self.planner = planner

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, tuple[Any, ...]]) -> BatchPlan:
        epoch, keys = item
        layers, jitter = self.planner.layers, self.planner.color_jitter > 0
        files, skipped = [], 0
        ints = np.zeros((len(keys), _FIRST_OP + layers), dtype=np.int64)
        floats = np.zeros((len(keys), 4 + _LAYER_FLOATS * layers + 3 * jitter), dtype=np.float32)
        token_labels = isinstance(self.dataset, TokenLabelDataset)
        maps, geometry = [], np.zeros((len(keys), GEOMETRY_SIZE), dtype=np.float32)
        for row, key in enumerate(keys):
            index, seed = sample_seed(self.dataset, epoch, key)
            position, data, width, height, target, bad = read_sample(self.dataset, index)
            draw = self.planner.draw(seed, width, height)
            if token_labels:  # the map of the sample actually read, from its block (no file opened here)
                maps.append(self.dataset.labels_at(position))
                geometry[row] = token_label_geometry(draw, width, height, self.planner.img_size)
            files.append(data)
            skipped += bad
            ints[row, _POSITION:_FIRST_OP] = (position, target, draw.interp, draw.flip)
            floats[row, :4] = draw.box
            for layer, (code, param, matrix, kernel) in enumerate(draw.ops):
                base = 4 + _LAYER_FLOATS * layer
                ints[row, _FIRST_OP + layer] = code
                floats[row, base] = param
                floats[row, base + 1:base + 7] = matrix.reshape(-1)
                floats[row, base + 7:base + _LAYER_FLOATS] = kernel.reshape(-1)
            if jitter:
                floats[row, -3:] = draw.jitter
        encoded, ints[:, _END] = _pack_files(files)
        labels = None
        if token_labels:
            labels = (torch.stack([v for v, _ in maps]), torch.stack([i for _, i in maps]), torch.from_numpy(geometry))
        return BatchPlan(encoded, torch.from_numpy(ints), torch.from_numpy(floats), skipped, labels)


class _EvalPlans(torch.utils.data.Dataset):
    """Item (sample indices) -> their BatchPlan: files, positions, targets, and the resize and crop geometry."""

    def __init__(self, dataset: ImageDataset, img_size: int, crop_pct: float) -> None:
        self.dataset, self.img_size, self.crop_pct = dataset, int(img_size), float(crop_pct)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, keys: tuple[int, ...]) -> BatchPlan:
        files, skipped = [], 0
        ints = np.zeros((len(keys), 3), dtype=np.int64)
        floats = np.zeros((len(keys), 4), dtype=np.float32)  # resized (w, h), crop anchor (x, y)
        for row, key in enumerate(keys):
            position, data, width, height, target, bad = read_sample(self.dataset, key)
            files.append(data)
            skipped += bad
            ints[row, _POSITION:_TARGET + 1] = (position, target)
            size, anchor = eval_geometry(width, height, self.img_size, self.crop_pct)
            floats[row] = (*size, *anchor)
        encoded, ints[:, _END] = _pack_files(files)
        return BatchPlan(encoded, torch.from_numpy(ints), torch.from_numpy(floats), skipped)


class _BatchOrder(torch.utils.data.Sampler):
    """The plan loader's items: the loader's ``_plan_items()`` when an iteration starts (the sampler's state then).

    It refers to the loader weakly: a cycle would leave a dropped loader, DALI pipelines included, to
    the garbage collector, which could then run it in a forked worker, where DALI's threads do not exist.
    """

    def __init__(self, loader: "_LoaderBase") -> None:
        self.loader = weakref.ref(loader)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader()._plan_items())

    def __len__(self) -> int:
        return len(self.loader())


def _file_views(plan: BatchPlan) -> list[Any]:
    """The plan's files as DALI tensors viewing its shared buffer (the pipeline reads them in place: no_copy)."""
    from nvidia.dali.tensors import TensorCPU

    encoded = plan.encoded.numpy()
    ends = plan.ints[:, _END].tolist()
    return [TensorCPU(encoded[start:end]) for start, end in zip([0] + ends[:-1], ends)]


class _LoaderBase:
    def __init__(self, dataset: ImageDataset, *, batch_size: int, workers: int, device: torch.device,
                 prefetch_factor: int = 2) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.plan_workers = max(0, int(workers))  # processes making plans (0: this process)
        self.workers = max(1, int(workers))  # DALI's CPU threads, and the host resize's
        self.prefetch_factor = int(prefetch_factor)
        self.device = torch.device(device)
        self.device_id = _pipeline_device(self.device)
        self._pipes: dict[str, Any] = {}  # by stage
        self._pool: Optional[ThreadPoolExecutor] = None
        self._plan_loader: Optional[torch.utils.data.DataLoader] = None
        self._iteration = 0  # which iteration owns the pipelines
        self._in_flight = False  # whether batches of an unfinished iteration may be queued in DALI
        self._pid = os.getpid()

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="t2t-dali-resize")
        return self._pool

    def _pipeline(self, stage: str) -> Any:
        if stage not in self._pipes:
            self._pipes[stage] = self._build(stage)
        return self._pipes[stage]

    def _build(self, stage: str) -> Any:
        raise NotImplementedError

    def _plans_dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def _plan_items(self) -> list[Any]:
        raise NotImplementedError

    def batch_plans(self) -> Iterator[BatchPlan]:
        """This epoch's batch plans in order, made ahead by the loader's worker processes."""
        if self._plan_loader is None:
            gc.collect()  # no garbage (DALI pipelines of dropped loaders) inherited by the workers forked next
            order = _BatchOrder(self)
            self._plan_loader = build_batch_loader(self._plans_dataset(), order, workers=self.plan_workers,
                                                   prefetch_factor=self.prefetch_factor)
        return iter(self._plan_loader)

    def _feeds(self, plan: BatchPlan) -> dict[str, Any]:
        raise NotImplementedError

    def _positions(self, plan: BatchPlan) -> list[int]:
        return plan.ints[:, _POSITION].tolist()

    def _batches(self, stage: str, produce: Any) -> Iterator[Any]:
        """produce(plan, DALI outputs) for each plan of the epoch, PIPELINE_DEPTH batches in flight in DALI.

        While the caller works on batch b, DALI runs b + 1 and b + 2 in its own threads and the worker
        processes make the plans after them. A batch in flight when the caller stops is dropped with
        the pipelines (the next iteration builds them anew), so a resume gives exactly the batches
        the model has not seen; an iteration overtaken by a newer one of the same loader cannot go on.
        """
        if self._in_flight:
            self._pipes = {}  # batches of an abandoned iteration are queued there
        self._iteration += 1
        iteration = self._iteration
        plans = self.batch_plans()
        pipe = self._pipeline(stage)
        queued: deque[BatchPlan] = deque()  # fed to DALI, outputs not taken yet (it reads their buffers)

        def schedule() -> None:
            plan = next(plans, None)
            if plan is not None:
                for name, values in self._feeds(plan).items():
                    pipe.feed_input(name, values)
                pipe.schedule_run()
                queued.append(plan)
                self._in_flight = True

        try:
            for _ in range(PIPELINE_DEPTH):
                schedule()
            while queued:
                if iteration != self._iteration:
                    raise RuntimeError("this DALI loader was iterated again: an earlier iteration cannot go on")
                plan = queued[0]
                outputs = self._outputs(pipe, plan)
                schedule()
                self.dataset.bad_images += plan.bad_images
                yield produce(plan, outputs)
                queued.popleft()
            self._in_flight = False
        finally:
            if queued and iteration == self._iteration:
                self._pipes = {}  # stopped early: drop what DALI still holds
                self._in_flight = False

    def _outputs(self, pipe: Any, plan: BatchPlan) -> list[Any]:
        try:
            return list(pipe.outputs())
        except (RuntimeError, IndexError) as exc:
            self._pipes = {}  # a DALI pipeline is unusable after an error
            raise self._decode_failure(exc, self._positions(plan)) from None

    def _run(self, feeds: dict[str, Any], positions: list[int], stage: str) -> list[Any]:
        """Run the pipeline of `stage` on one batch, synchronously; a decoder failure is one line naming the file."""
        try:
            pipe = self._pipeline(stage)
            for name, values in feeds.items():
                pipe.feed_input(name, values)
            return list(pipe.run())
        except (RuntimeError, IndexError) as exc:
            self._pipes = {}
            raise self._decode_failure(exc, positions) from None

    def _decode_failure(self, exc: BaseException, positions: list[int]) -> DatasetError:
        """The error of a failed batch: the first image of `positions` Pillow cannot decode, else DALI's first line."""
        reader = self.dataset.reader
        for position in positions:
            try:
                with reader.open(position) as img:
                    img.load()
            except _DECODE_ERRORS as bad:
                return _bad_image_error(self.dataset, reader.path(position), bad)
        first = next((line for line in str(exc).splitlines() if "encountered" not in line and line.strip()
                      and "Error in" not in line and "Critical error" not in line), str(exc))
        return DatasetError(f"DALI failed on a batch of {len(positions)} images starting with "
                            f"{reader.path(positions[0])!r}: {first.strip()}")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pipes = {}

    def __del__(self) -> None:
        if os.getpid() != self._pid:  # a copy inherited by a forked worker: DALI's threads are not there
            _INHERITED.append(self._pipes)  # never destroyed in this process
            return
        try:
            self.close()
        except Exception:
            pass


class DaliTrainLoader(_LoaderBase):
    """Training batches (uint8 images, int64 targets) in the TrainSampler's order, augmented by DALI.

    Quacks like the project's training DataLoader: ``sampler`` and ``dataset`` for
    ``set_loader_epoch``, ``len()`` (batches left), full batches only (``drop_last``). Each batch is
    planned in a worker process (``data.workers`` of them; 0: in this process) and run by DALI
    PIPELINE_DEPTH batches ahead of the consumer (see ``_LoaderBase._batches``).

    Who resizes (``resize_in_dali``, by default: DALI on a GPU, torch on the CPU): on a GPU the whole
    graph runs in DALI (``build_train_pipeline(stage="all")``), where the resize is cheap. On the CPU
    DALI decodes the crop windows (``stage="decode"``), torch resizes each with the Pillow backend's
    kernel and the sample's drawn filter (``F2.resize(..., antialias=True)`` on uint8, as
    ``FastTrainTransform``) and flips it, and RandAugment and colour jitter, if any, run in a second
    DALI pipeline (``stage="augment"``) on the resized batch: DALI's CPU resize costs 5-7 times
    torch's vectorised uint8 kernels. ``resize_in_dali=True`` runs the GPU's graph on the CPU (the
    tests use it to check that graph).
    """

    def __init__(self, dataset: ImageDataset, sampler: TrainSampler, planner: SamplePlanner, *,
                 batch_size: int, workers: int, device: torch.device = torch.device("cpu"),
                 fill: float = 128.0, resize_in_dali: Optional[bool] = None, prefetch_factor: int = 2) -> None:
        super().__init__(dataset, batch_size=batch_size, workers=workers, device=device,
                         prefetch_factor=prefetch_factor)
        self.sampler = sampler
        self.planner = planner
        self.fill = float(fill)
        self.drop_last = True
        gpu = self.device_id is not None
        if resize_in_dali is False and gpu:
            raise ValueError("resize_in_dali=False resizes on the host: it is for CPU pipelines (device "
                             f"{self.device}); on a GPU DALI resizes")
        self.resize_in_dali = gpu if resize_in_dali is None else bool(resize_in_dali)

    def _build(self, stage: str) -> Any:
        return build_train_pipeline(self.planner, batch_size=self.batch_size, num_threads=self.workers,
                                    device_id=self.device_id, fill=self.fill, stage=stage)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def _plans_dataset(self) -> torch.utils.data.Dataset:
        return _TrainPlans(self.dataset, self.planner)

    def _plan_items(self) -> list[tuple[int, tuple[Any, ...]]]:
        """(epoch, keys) of each full batch left in the sampler's epoch."""
        keys = list(iter(self.sampler))
        epoch = self.dataset.epoch
        return [(epoch, tuple(keys[i * self.batch_size:(i + 1) * self.batch_size]))
                for i in range(len(keys) // self.batch_size)]

    def _feeds(self, plan: BatchPlan, stage: Optional[str] = None) -> dict[str, Any]:
        """The pipeline's inputs from the plan's tables: per-batch slicing, nothing done per sample but the file views."""
        stage = stage or ("all" if self.resize_in_dali else "decode")
        ints, floats = plan.ints.numpy(), plan.floats.numpy()
        feeds: dict[str, Any] = {"encoded": _file_views(plan), "anchor": np.ascontiguousarray(floats[:, _ANCHOR]),
                                 "shape": np.ascontiguousarray(floats[:, _SHAPE])}
        if stage == "decode":
            return feeds
        feeds["interp"] = ints[:, _INTERP].astype(np.int32)
        feeds["flip"] = ints[:, _FLIP].astype(np.int32)
        feeds.update(self._augment_feeds(plan))
        return feeds

    def _augment_feeds(self, plan: BatchPlan) -> dict[str, Any]:
        """The RandAugment layers' and colour jitter's inputs."""
        ints, floats = plan.ints.numpy(), plan.floats.numpy()
        feeds: dict[str, Any] = {}
        for layer in range(self.planner.layers):
            base = 4 + _LAYER_FLOATS * layer
            feeds[f"op{layer}"] = ints[:, _FIRST_OP + layer].astype(np.int32)
            feeds[f"param{layer}"] = np.ascontiguousarray(floats[:, base])
            feeds[f"matrix{layer}"] = floats[:, base + 1:base + 7].reshape(-1, 2, 3).copy()
            feeds[f"kernel{layer}"] = floats[:, base + 7:base + _LAYER_FLOATS].reshape(-1, 3, 3).copy()
        if self.planner.color_jitter > 0:
            feeds["jitter"] = np.ascontiguousarray(floats[:, -3:])
        return feeds

    def _produce(self, plan: BatchPlan, outputs: list[Any]) -> tuple[torch.Tensor, Any]:
        targets: Any = plan.ints[:, _TARGET].clone()
        if plan.labels is not None:  # token labels: the structure the Pillow backend's workers hand over
            values, indices, geometry = plan.labels
            targets = {"label": targets, "values": values, "indices": indices, "geometry": geometry}
        if self.resize_in_dali:
            batch = _to_torch(outputs[0], self.device)
        else:
            ints = plan.ints.numpy()
            batch = self._resize_and_flip(outputs[0], ints[:, _INTERP], ints[:, _FLIP])
            augment = self._augment_feeds(plan)
            if augment:  # RandAugment layers or colour jitter
                (images,) = self._run({"images": batch.numpy(), **augment}, self._positions(plan), "augment")
                batch = _to_torch(images, self.device)
        # (B, H, W, 3) -> a (B, 3, H, W) view in channels-last memory: no transposing copy
        return batch.permute(0, 3, 1, 2), targets

    def _resize_and_flip(self, windows: Any, interps: np.ndarray, flips: np.ndarray) -> torch.Tensor:
        """The decoded windows resized to (B, S, S, 3) uint8 by torch's antialiased kernels, then flipped.

        The Pillow backend's crop-and-resize (``FastTrainTransform.decode_and_crop``): a (h, w, 3) window
        read as a channels-last (3, h, w) tensor, ``F2.resize_image`` (what ``F2.resize`` runs for a
        tensor) with the drawn filter; the flip mirrors
        the result as PIL's transpose does. One image per task on the loader's threads (torch releases
        the GIL).

        The windows are read in place, through zero-copy views of DALI's output buffers (copying a
        window out cost as much as half its resize): `windows` (the TensorList) is held until this
        returns, and every task has finished before it returns, even when one fails, so no view
        outlives the batch. A window is copied only into ``out`` (resized, flipped or not), never in
        between.
        """
        size = self.planner.img_size
        out = torch.empty((len(interps), size, size, 3), dtype=torch.uint8)

        def one(i: int) -> None:
            window = torch.from_numpy(np.asarray(windows[i]))  # (h, w, 3), a view of DALI's buffer
            resized = F2.resize_image(window.permute(2, 0, 1), [size, size], _TORCH_FILTERS[int(interps[i])],
                                      antialias=True).permute(1, 2, 0)  # channels-last result: (S, S, 3), contiguous
            out[i] = resized.flip(1) if int(flips[i]) else resized

        if self.workers == 1:
            for i in range(len(interps)):
                one(i)
        else:
            tasks = [self.pool.submit(one, i) for i in range(len(interps))]
            wait(tasks)  # all of them, so that none still reads DALI's buffers after a failure
            for task in tasks:
                task.result()
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in the sampler's order, planned by the workers and run by DALI ahead of the consumer.

        Nothing of it touches the sampler: its progress is set by the engine from the steps trained
        (``set_epoch(epoch, start_sample)``), and a batch planned or run ahead but not consumed when
        the caller stops is dropped, so resuming gives exactly the batches the model has not seen.
        """
        if len(self) == 0:
            return iter(())
        return self._batches("all" if self.resize_in_dali else "decode", self._produce)


class DaliEvalLoader(_LoaderBase):
    """Evaluation batches (normalised float images, targets): rank r reads r, r + W, ...; keeps the last partial batch."""

    def __init__(self, dataset: ImageDataset, *, img_size: int, crop_pct: float, interpolation: str,
                 mean: Sequence[float], std: Sequence[float], batch_size: int, workers: int, num_replicas: int = 1,
                 rank: int = 0, device: torch.device = torch.device("cpu"), prefetch_factor: int = 2) -> None:
        super().__init__(dataset, batch_size=batch_size, workers=workers, device=device,
                         prefetch_factor=prefetch_factor)
        self.sampler = ShardSampler(len(dataset), num_replicas=num_replicas, rank=rank)
        self.settings = dict(img_size=img_size, crop_pct=crop_pct, interpolation=interpolation, mean=tuple(mean),
                             std=tuple(std))
        self.drop_last = False

    def _build(self, stage: str) -> Any:
        return build_eval_pipeline(**self.settings, batch_size=self.batch_size, num_threads=self.workers,
                                   device_id=self.device_id)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def _plans_dataset(self) -> torch.utils.data.Dataset:
        return _EvalPlans(self.dataset, self.settings["img_size"], self.settings["crop_pct"])

    def _plan_items(self) -> list[tuple[int, ...]]:
        keys = list(iter(self.sampler))
        return [tuple(keys[i:i + self.batch_size]) for i in range(0, len(keys), self.batch_size)]

    def _feeds(self, plan: BatchPlan) -> dict[str, Any]:
        floats = plan.floats.numpy()
        return {"encoded": _file_views(plan), "resized": np.ascontiguousarray(floats[:, :2]),
                "anchor": np.ascontiguousarray(floats[:, 2:])}

    def _produce(self, plan: BatchPlan, outputs: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return _to_torch(outputs[0], self.device), plan.ints[:, _TARGET].clone()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if len(self) == 0:
            return iter(())
        return self._batches("all", self._produce)


def fill_value(mean: Sequence[float]) -> float:
    """The grey the geometric RandAugment ops fill with: the mean colour's average level (timm fills per channel)."""
    return float(round(255 * sum(mean) / len(mean)))


def build_dali_loaders(cfg: Any, train_ds: ImageDataset, val_ds: ImageDataset, sampler: TrainSampler, *,
                       img_size: int, batch_size: int, eval_batch_size: int, eval_crop_pct: float,
                       eval_interpolation: str, num_replicas: int, rank: int,
                       device: torch.device) -> tuple[DaliTrainLoader, DaliEvalLoader]:
    """The training and validation loaders of data.backend=dali (`cfg` is the DataConfig)."""
    require_dali()
    planner = SamplePlanner(img_size, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
                            interpolation=cfg.interpolation, policy=parse_rand_policy(cfg.auto_augment),
                            color_jitter=cfg.color_jitter)
    train = DaliTrainLoader(train_ds, sampler, planner, batch_size=batch_size, workers=cfg.workers, device=device,
                            fill=fill_value(cfg.mean), prefetch_factor=cfg.prefetch_factor)
    val = DaliEvalLoader(val_ds, img_size=img_size, crop_pct=eval_crop_pct, interpolation=eval_interpolation,
                         mean=cfg.mean, std=cfg.std, batch_size=eval_batch_size, workers=cfg.workers,
                         num_replicas=num_replicas, rank=rank, device=device, prefetch_factor=cfg.prefetch_factor)
    return train, val
