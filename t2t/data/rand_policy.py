"""timm's RandAugment policy strings ('rand-m9-mstd0.5-inc1'), parsed into what data.backend=dali implements.

Pure string parsing, without DALI: the config check (t2t.config.validate) and the DALI backend share it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["RAND_INC_OPS", "RAND_OPS", "RandPolicy", "parse_rand_policy"]


@dataclass(frozen=True)
class RandPolicy:
    """timm's 'rand-m9-n2-mstd0.5-inc1' fields: ops per image, magnitude (of 10), its std, cap, op set, op prob."""
    n: int = 2
    m: float = 10.0
    mstd: float = 0.0
    mmax: float = 10.0
    inc: bool = False
    p: float = 0.5


_LEVEL_DENOM = 10.0  # timm's magnitude scale
# timm's two RandAugment op lists (rand_augment_transform: inc1 picks the "increasing" one).
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INC_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def parse_rand_policy(policy: Optional[str]) -> Optional[RandPolicy]:
    """None for no policy, else the RandPolicy of a timm 'rand-...' string; ValueError naming what DALI cannot do."""
    if not policy:
        return None
    parts = policy.split("-")
    if parts[0] != "rand":
        raise ValueError(f"the DALI backend implements timm's RandAugment ('rand-m9-mstd0.5-inc1', ...) only, "
                         f"not {parts[0]!r} (AutoAugment / AugMix): set data.backend=pil or choose a 'rand-' policy")
    fields: dict[str, Any] = {}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|mmax|inc|m|n|p)([0-9.]+)", part)
        if match is None:
            raise ValueError(f"the DALI backend cannot express the section {part!r} of the policy (it supports m, n, "
                             "mstd, mmax, inc and p; weights 'w' and others need data.backend=pil)")
        key, raw = match.groups()
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"section {part!r}: {raw!r} is not a number") from None
        if key == "n":
            if value != int(value) or value < 0:
                raise ValueError(f"section {part!r}: n must be a whole number >= 0")
            fields["n"] = int(value)
        elif key == "inc":
            fields["inc"] = bool(int(value))
        elif key == "mstd" and value > 100:
            raise ValueError(f"section {part!r}: mstd above 100 (timm's uniform-magnitude mode) is not supported")
        else:
            fields[key] = value
    if not 0 <= fields.get("p", 0.5) <= 1:
        raise ValueError(f"p={fields['p']}: expected a probability in [0, 1]")
    return RandPolicy(**fields)
