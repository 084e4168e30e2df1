"""Random erasing of a whole batch at once, with the distribution of timm's RandomErasing.

timm's RandomErasing loops over the images of a batch in Python and draws each box with Python's
`random` (a few host operations and one small kernel per image). Here every image's decision,
box count, box sizes (10 attempts each, the first that fits is taken) and positions are drawn
as tensors on the batch's device, and the boxes are written with one masked select per box slot:
no Python loop over images and no host synchronisation.

Per image, as timm: erase with `probability`; count uniform in [min_count, max_count]; for each
box, up to 10 attempts of area U(min_area, max_area) x H x W / count and log-aspect
U(log min_aspect, log max_aspect), h = round(sqrt(area x aspect)), w = round(sqrt(area / aspect)),
the first attempt with h < H and w < W is placed at top ~ U{0..H-h}, left ~ U{0..W-w}; none fits:
no box. Fill: per-pixel normal noise ('pixel'), one normal colour per box and channel ('rand'), or
zero ('const'). Later boxes overwrite earlier ones, as in the sequential loop.
"""
from __future__ import annotations

import math

import torch

_ATTEMPTS = 10


class BatchRandomErasing:
    """Random boxes of a normalised (B, C, H, W) float batch erased, vectorised over the batch; returns the batch."""

    def __init__(self, probability: float = 0.5, min_area: float = 0.02, max_area: float = 1 / 3,
                 min_aspect: float = 0.3, max_aspect: float | None = None, mode: str = "const",
                 min_count: int = 1, max_count: int | None = None) -> None:
        mode = mode.lower()
        if mode not in ("const", "rand", "pixel"):
            raise ValueError(f"mode={mode!r}: expected 'const', 'rand' or 'pixel'")
        self.probability = probability
        self.min_area, self.max_area = min_area, max_area
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        self.min_count = min_count
        self.max_count = max_count or min_count
        self.mode = mode

    def boxes(self, batch: int, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(present, top, left, h, w), each (B, max_count): the boxes of every image; present is bool."""
        K = self.max_count
        erase = torch.rand(batch, device=device) < self.probability  # (B,)
        count = torch.randint(self.min_count, self.max_count + 1, (batch,), device=device)  # (B,)
        area = height * width
        u_area = torch.rand(batch, K, _ATTEMPTS, device=device, dtype=torch.float64)
        target = (self.min_area + (self.max_area - self.min_area) * u_area) * area / count[:, None, None]
        lo, hi = self.log_aspect
        aspect = torch.exp(lo + (hi - lo) * torch.rand(batch, K, _ATTEMPTS, device=device, dtype=torch.float64))
        h = torch.round(torch.sqrt(target * aspect)).long()  # round half to even, as Python's round()
        w = torch.round(torch.sqrt(target / aspect)).long()
        fits = (w < width) & (h < height)  # (B, K, attempts)
        first = torch.argmax(fits.to(torch.uint8), dim=-1, keepdim=True)  # first attempt that fits
        h = h.gather(-1, first).squeeze(-1)  # (B, K)
        w = w.gather(-1, first).squeeze(-1)
        slot = torch.arange(K, device=device)
        present = erase[:, None] & (slot[None, :] < count[:, None]) & fits.any(dim=-1)
        h, w = torch.where(present, h, 0), torch.where(present, w, 0)
        top = (torch.rand(batch, K, device=device, dtype=torch.float64) * (height - h + 1)).long()
        left = (torch.rand(batch, K, device=device, dtype=torch.float64) * (width - w + 1)).long()
        return present, top, left, h, w

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        present, top, left, h, w = self.boxes(B, H, W, x.device)
        rows = torch.arange(H, device=x.device)
        cols = torch.arange(W, device=x.device)
        noise = torch.randn_like(x) if self.mode == "pixel" else None
        for k in range(self.max_count):  # box slots (max_count, usually 1): later boxes overwrite earlier ones
            inside_rows = (rows[None, :] >= top[:, k, None]) & (rows[None, :] < (top[:, k] + h[:, k])[:, None])
            inside_cols = (cols[None, :] >= left[:, k, None]) & (cols[None, :] < (left[:, k] + w[:, k])[:, None])
            mask = (inside_rows[:, :, None] & inside_cols[:, None, :] & present[:, k, None, None])[:, None]  # (B,1,H,W)
            if self.mode == "pixel":
                fill = noise
            elif self.mode == "rand":
                fill = torch.randn(B, C, 1, 1, device=x.device, dtype=x.dtype)
            else:
                fill = torch.zeros((), device=x.device, dtype=x.dtype)
            x = torch.where(mask, fill, x)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.probability}, mode={self.mode}, count=({self.min_count}, {self.max_count}))"
