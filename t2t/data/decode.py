"""Turning a decoded image of any PIL mode into 8-bit RGB, the one conversion train, validate and predict share."""
from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["to_rgb"]

# Modes whose pixels are integers wider than 8 bits (16-bit grayscale PNG and TIFF open as these). PIL's
# own convert("RGB") clips them at 255 instead of scaling, which turns a 16-bit picture black and white.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB; high-bit-depth grayscale is scaled to 0-255 (not clipped), palettes and alpha as PIL does."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_INTEGER_MODES or img.mode == "F":
        pixels = np.asarray(img, dtype=np.float64)
        if img.mode == "F":  # floats: 0-1 if they fit there, else taken as 0-255
            scale = 255.0 if pixels.size and pixels.max() <= 1.0 else 1.0
        elif img.mode == "I" and pixels.size and pixels.max() > 65535:
            scale = 255.0 / float(2 ** 32 - 1)  # genuinely 32-bit values
        else:
            scale = 255.0 / 65535.0  # 16-bit samples, as PNG and TIFF store them
        gray = np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")  # uint8 (H, W): mode L
    return img.convert("RGB")
