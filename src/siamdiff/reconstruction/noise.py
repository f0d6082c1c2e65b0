"""Noise models as pure functions on images in [0, 1] (float tensors ``(N, C, H, W)``).

``sigma`` is the standard deviation on the [0, 1] scale. "Unclipped" noise keeps the float values (the Gaussian
model holds exactly); "as a file" clips to [0, 1] and rounds to 8 bits, as saving a PNG would.
"""

from __future__ import annotations

import torch

# Noise levels ([0, 1] scale) the noise estimator and the supervised denoiser are trained on and denoising is
# measured on; a diffusion schedule reaches far higher, but there the output is made up rather than recovered.
SIGMA_RANGE = (0.01, 1.2)


def as_tensor_sigma(sigma: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """``sigma`` as a ``(N, 1, 1, 1)`` tensor (a number applies to every image)."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=device)
    if s.ndim == 0:
        s = s.expand(n)
    if s.shape != (n,):
        raise ValueError(f"sigma must be a number or have one value per image ({n}), got shape {tuple(s.shape)}")
    if not torch.all(torch.isfinite(s)) or torch.any(s < 0):
        raise ValueError("sigma must be finite and not negative")
    return s.view(n, 1, 1, 1)


def gaussian(x: torch.Tensor, sigma: float | torch.Tensor, generator: torch.Generator | None = None,
             clip: bool = False) -> torch.Tensor:
    """``x + sigma · n`` with ``n ~ N(0, 1)``; with ``clip``, clipped to [0, 1] and rounded to 8-bit levels."""
    s = as_tensor_sigma(sigma, x.shape[0], x.device)
    noisy = x + s * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return to_file(noisy) if clip else noisy


def to_file(x: torch.Tensor) -> torch.Tensor:
    """What saving as an 8-bit image does: clip to [0, 1] and round to multiples of 1/255."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def declip(y: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Undo the bias that clipping puts into a noisy image read from a file, before Gaussian denoising.

    A pixel saved as 0 (or 1) held some value ``x + n <= 0`` (``>= 1``); where the clean value sits at the boundary,
    as in backgrounds and highlights, the noise it lost averages ``E[n | n <= 0] = -sigma*sqrt(2/pi)``. Clipped pixels
    are set to that value (``1 + sigma*sqrt(2/pi)`` at the top), so the image's noise is zero-mean again there. Images
    with any value outside [0, 1] were never clipped and are returned unchanged.
    """
    s = as_tensor_sigma(sigma, y.shape[0], y.device).to(y.dtype) * (2.0 / torch.pi) ** 0.5
    in_range = ((y >= 0) & (y <= 1)).flatten(1).all(dim=1).view(-1, 1, 1, 1)
    fixed = torch.where(y <= 0, -s, torch.where(y >= 1, 1 + s, y))
    return torch.where(in_range, fixed, y)


def salt_and_pepper(x: torch.Tensor, amount: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Set a fraction ``amount`` of pixels (all channels of a pixel together) to 0 or 1 with equal odds."""
    if not 0.0 <= amount <= 1.0:
        raise ValueError("amount must be in [0, 1]")
    n, _, h, w = x.shape
    u = torch.rand((n, 1, h, w), generator=generator, device=x.device)
    salt = torch.rand((n, 1, h, w), generator=generator, device=x.device) < 0.5
    hit = u < amount
    return torch.where(hit, salt.to(x.dtype).expand_as(x), x)
