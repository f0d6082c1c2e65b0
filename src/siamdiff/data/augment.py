"""Batch transforms on the device, as pure tensor functions (no per-image Python loop): augmentation, resizing."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of ``x (N, C, H, W)`` left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_translate(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ``pad`` pixels in each direction, filling with zeros (pad-and-crop)."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # (N, H)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # (N, W)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one ``size`` × ``size`` square per image at a uniformly drawn centre; squares may reach past the edge
    and are then cut there (cutout, DeVries & Taylor 2017, arXiv:1708.04552). Zero, like the translation's fill."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n,), device=x.device, generator=generator)
    top, left = cy - size // 2, cx - size // 2
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (N, W)
    hole = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (N, 1, H, W)
    return x.masked_fill(hole, 0)


def augment(x: torch.Tensor, flip: bool, translate: int, generator: torch.Generator | None = None,
            cutout: int = 0) -> torch.Tensor:
    """Apply the configured augmentations to a uint8 or float batch ``(N, C, H, W)``."""
    if flip:
        x = random_flip(x, generator)
    return random_cutout(random_translate(x, translate, generator), cutout, generator)


def at_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images in [0, 1] ``(N, C, H, W)`` resized (bilinear) to ``size`` × ``size``: how a model made for another
    size sees a dataset, in training and in the evaluation protocol (which resizes the *clean* images and draws the
    noise at the model's size, so the model sees white noise of the σ it is told)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
