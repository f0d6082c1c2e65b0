"""Overlapping tiles: how a model made for small square images denoises an image of any size.

An image is cut into tiles of the model's size that overlap by ``overlap`` pixels (the last row and column of
tiles are moved in to end at the image's edge); each tile is denoised, and the tiles are blended back with a window
that is flat inside and falls off smoothly (a raised cosine) over the overlap, so neighbouring tiles cross-fade and
no seam shows. The weights are normalised by their sum at each pixel: where a single tile covers a pixel (at the
image's border) its output is taken as it is, and an image of exactly one tile comes back unchanged. Images smaller
than a tile are padded by reflection and cropped back. Pure functions of tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

FLOOR = 1e-3  # the window's smallest weight: every pixel of a tile counts a little, so no weight sum is ever 0


def starts(size: int, tile: int, overlap: int) -> list[int]:
    """The first pixel of each tile along one side of ``size`` ≥ ``tile`` pixels: a stride of ``tile - overlap``,
    with the last tile ending at the edge."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"tiles of {tile} need an overlap from 0 to {tile - 1}, got {overlap}")
    if size < tile:
        raise ValueError(f"a side of {size} is smaller than a tile of {tile}: pad it first")
    stride = tile - overlap
    out = list(range(0, size - tile + 1, stride))
    if out[-1] != size - tile:
        out.append(size - tile)
    return out


def window(tile: int, overlap: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The blending weight ``(tile, tile)``: 1 inside, a raised-cosine ramp over the ``overlap`` pixels at each
    edge, never below :data:`FLOOR`."""
    ramp = torch.ones(tile, dtype=torch.float64)
    if overlap:
        x = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap
        rise = 0.5 - 0.5 * torch.cos(math.pi * x)
        ramp[:overlap] = rise
        ramp[tile - overlap:] = rise.flip(0)
    ramp = ramp.clamp_min(FLOOR)
    return (ramp[:, None] * ramp[None, :]).to(dtype)


def pad_to(image: torch.Tensor, tile: int) -> torch.Tensor:
    """``image (C, H, W)`` padded at the bottom and the right to at least ``tile`` on each side, by reflection
    (repeated for an image less than half a tile; a side of one pixel is replicated). ``[..., :H, :W]`` of the
    result is the image again."""
    x = image[None]
    while x.shape[-2] < tile or x.shape[-1] < tile:
        h, w = x.shape[-2:]
        ph, pw = min(max(0, tile - h), h - 1), min(max(0, tile - w), w - 1)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        else:  # 1-pixel sides
            x = F.pad(x, (0, max(0, tile - w), 0, max(0, tile - h)), mode="replicate")
    return x[0]


def positions(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """The ``(top, left)`` of every tile of an image, row by row."""
    return [(y, x) for y in starts(height, tile, overlap) for x in starts(width, tile, overlap)]


def batches(image: torch.Tensor, tile: int, overlap: int, batch: int
            ) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
    """The tiles of ``image (C, H, W)`` (at least a tile on each side) in batches: ``(positions, tiles (B, C, t, t))``."""
    places = positions(image.shape[-2], image.shape[-1], tile, overlap)
    for s in range(0, len(places), batch):
        chunk = places[s:s + batch]
        yield chunk, torch.stack([image[:, y:y + tile, x:x + tile] for y, x in chunk])


class Blend:
    """Accumulates denoised tiles into the whole image with the window's weights."""

    def __init__(self, shape: tuple[int, int, int], tile: int, overlap: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        c, h, w = shape
        self.tile = tile
        self.weight = window(tile, overlap, dtype).to(device)
        self.total = torch.zeros((c, h, w), dtype=dtype, device=device)
        self.norm = torch.zeros((1, h, w), dtype=dtype, device=device)

    def add(self, places: list[tuple[int, int]], tiles: torch.Tensor) -> None:
        t = self.tile
        for (y, x), out in zip(places, tiles):
            self.total[:, y:y + t, x:x + t] += out * self.weight
            self.norm[:, y:y + t, x:x + t] += self.weight

    def result(self) -> torch.Tensor:
        """The blended image ``(C, H, W)``; the accumulators are reused for it."""
        return self.total.div_(self.norm)
