"""A T2T-ViT's position table at other input sizes, for training at a lower resolution (train.img_sizes).

A T2T-ViT adds a fixed (1, 1 + N, D) table to its tokens, N = (img_size / 16)^2, so it takes one
input size. `PositionTables` resamples the stored table to another size with `resize_pos_embed`
(grid bicubic, class row kept: the resampling that loads a checkpoint at another size, as
validate.py does) and lends it to the model for the duration of a forward and backward. The stored
table, the model's definition and its state dict stay at model.img_size, so checkpoints, the EMA
and evaluation are those of a plain run.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

from ..config import TOKEN_STRIDE
from .weights import resize_pos_embed


class PositionTables:
    """The position table of `model` at each input size asked for, resampled once per size and cached."""

    def __init__(self, model: nn.Module) -> None:
        table = getattr(model, "pos_embed", None)
        if not isinstance(table, torch.Tensor) or table.ndim != 3 or not isinstance(getattr(model, "img_size", None),
                                                                                   int):
            raise ValueError(f"{type(model).__name__} has no T2T-ViT position table (pos_embed of shape (1, 1 + N, D) "
                             "and an int img_size): progressive resolution takes a T2T-ViT")
        if table.requires_grad:
            raise ValueError(f"{type(model).__name__}.pos_embed is trained: a resampled copy would not receive its "
                             "gradient; progressive resolution takes a T2T-ViT's fixed table")
        self.model = model
        self.img_size: int = model.img_size
        self._tables: dict[int, torch.Tensor] = {}

    def table(self, img_size: int) -> torch.Tensor:
        """The model's stored table resampled to `img_size` (the stored one itself at model.img_size)."""
        stored = self.model.pos_embed
        if img_size == self.img_size:
            return stored
        if img_size <= 0 or img_size % TOKEN_STRIDE:
            raise ValueError(f"image size {img_size}: expected a positive multiple of {TOKEN_STRIDE}")
        cached = self._tables.get(img_size)
        if cached is None or cached.device != stored.device or cached.dtype != stored.dtype:
            with torch.no_grad():
                cached = resize_pos_embed(stored, (img_size // TOKEN_STRIDE) ** 2)
            self._tables[img_size] = cached
        return cached

    @contextlib.contextmanager
    def at(self, img_size: int) -> Iterator[None]:
        """Within the block the model adds the table of `img_size`; the stored one is back after it."""
        stored = self.model.pos_embed
        if img_size == self.img_size:
            yield
            return
        self.model.pos_embed = self.table(img_size)  # a registered buffer: assignment replaces it in _buffers
        try:
            yield
        finally:
            self.model.pos_embed = stored
