"""Batch augmentation on the device, as pure tensor functions (no per-image Python loop)."""

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


def augment(x: torch.Tensor, flip: bool, translate: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the configured augmentations to a uint8 or float batch ``(N, C, H, W)``."""
    if flip:
        x = random_flip(x, generator)
    return random_translate(x, translate, generator)
