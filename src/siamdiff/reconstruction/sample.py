"""Drawing new images from a diffusion model: the DDPM chain or DDIM from pure noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core import config
from ..data.imageio import write_png_atomic
from ..core.errors import SiamdiffError
from .diffusion import ancestral, ddim


@torch.no_grad()
def sample(model, n: int, method: str = "ddim", steps: int = 50, label: int | None = None,
           guidance: float = 1.0, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """``n`` images ``(n, C, S, S)`` in [0, 1] from a :class:`~siamdiff.reconstruction.api.Denoiser`, drawn
    ``batch_size`` at a time (the network's memory stays bounded whatever ``n``)."""
    net, schedule = model.net, model.schedule
    c, s = net.config.in_channels, net.config.image_size
    if method not in ("ddim", "ddpm"):
        raise SiamdiffError(f"unknown sampling method '{method}': use ddim or ddpm")
    refusal = config.over_memory(n * c * s * s * 4, f"{n} images of {s}x{s}", "ask for fewer with --n")
    if refusal:
        raise SiamdiffError(refusal)
    model.class_labels(label, 1)  # refuses a class the model lacks before any work
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        x = torch.randn((k, c, s, s), generator=gen)
        t = torch.full((k,), schedule.steps - 1, dtype=torch.long)
        labels = model.class_labels(label, k)
        w = guidance if labels is not None else 0.0
        x0 = ddim(net, schedule, x, t, steps, labels, w) if method == "ddim" else \
            ancestral(net, schedule, x, t, labels, w, generator=gen)
        out.append(((x0 + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def save_grid(images: torch.Tensor, path: Path, columns: int = 8) -> Path:
    """Write images ``(N, C, H, W)`` in [0, 1] as one PNG grid with a 2-pixel gap."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + 2), min(n, columns) * (w + 2), c), dtype=np.uint8)
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy().transpose(0, 2, 3, 1)
    for k in range(n):
        r, q = divmod(k, columns)
        grid[r * (h + 2):r * (h + 2) + h, q * (w + 2):q * (w + 2) + w] = arr[k]
    if path.suffix.lower() != ".png":
        raise SiamdiffError(f"--out must be a .png file, got '{path}'")
    write_png_atomic(grid if c == 3 else grid[:, :, 0], path)
    return path
