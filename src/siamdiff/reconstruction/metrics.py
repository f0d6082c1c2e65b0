"""Image-quality metrics per image, for images in [0, 1] ``(N, C, H, W)``."""

from __future__ import annotations

import numpy as np
import torch


def psnr(estimate: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image ``(N,)``: ``10·log10(range² / MSE)``."""
    mse = (estimate.double() - reference.double()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-20))


def ssim(estimate: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Structural similarity per image ``(N,)`` (scikit-image's Gaussian-free 7×7 default, data range 1)."""
    from skimage.metrics import structural_similarity

    a = estimate.detach().cpu().double().numpy()
    b = reference.detach().cpu().double().numpy()
    multi = a.shape[1] > 1
    return np.array([structural_similarity(x if multi else x[0], y if multi else y[0], data_range=1.0,
                                           channel_axis=0 if multi else None) for x, y in zip(a, b)])
