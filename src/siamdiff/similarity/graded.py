"""The graded similarity score: category first, appearance second.

``similarity = probability × (1 − WEIGHT + WEIGHT × appearance ** SHARPNESS)``, where ``probability`` is the
calibrated probability that the two images show one category (from the embedding distance) and ``appearance`` in
[0, 1] says how alike they look: the cosine similarity of the maps of the network's stem (its first convolution,
batch norm and ReLU), at the best of the relative shifts of up to :data:`SHIFT` pixels, over the part the two maps
share.

The contract: higher is more similar. A pair the model takes for one category (probability near 1) scores from
``1 − WEIGHT`` (nothing alike) to 1 (the same picture); a pair it takes for two categories scores at most its
probability (near 0), so pairs of one category rank above pairs of different categories as far as the model can
tell; within a category, a near copy (shifted a pixel or two, darker, lighter, noisy) ranks above a merely alike
image, which ranks above an unlike one. ``SHARPNESS`` spreads the top of the appearance scale, where near copies and
look-alikes differ; ``WEIGHT`` bounds how far appearance can move a pair whose category the model is less sure of.
Both were chosen on validation triplets (``python benchmarks/similarity.py --agreement-only``; docs/similarity.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SHIFT = 2  # pixels: the largest relative shift that the appearance term forgives, in each direction
WEIGHT = 0.1  # of the appearance term in the score of a pair of one category
SHARPNESS = 10  # the power of the appearance term


def _correlate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``r[n, dy, dx] = Σ_c,i,j x[n, c, i, j] · y[n, c, i + dy, j + dx]`` for every shift that keeps ``x`` inside
    ``y``: one grouped convolution, each pair's ``x`` the kernel over its ``y``."""
    n, c, h, w = x.shape
    out = F.conv2d(y.reshape(1, n * c, *y.shape[2:]), x.reshape(n * c, 1, h, w), groups=n * c)
    return out.view(n, c, *out.shape[2:]).sum(1)


def shift_cosine(a: torch.Tensor, b: torch.Tensor, shift: int = SHIFT) -> torch.Tensor:
    """For maps ``a`` and ``b`` ``(N, C, H, W)``: the largest cosine similarity ``(N,)`` between ``a`` and ``b``
    shifted by up to ``shift`` pixels in each direction, each over the region the two share; negative values (maps
    that are not all >= 0) count as 0.

    Every shift at once, by three cross-correlations: of ``a`` with the zero-padded ``b`` (the dot products), of
    ``a²`` with the padded mask of ``b``'s pixels and of ones with the padded ``b²`` (the squared norms over each
    overlap). Direct convolution in float32 agrees with a float64 FFT to about 1e-6 and is several times faster at
    these sizes."""
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    x, y = a.float(), b.float()
    pad = (shift, shift, shift, shift)
    padded = F.pad(y, pad)
    dots = _correlate(x, padded)
    norm_x = _correlate(x.pow(2).sum(1, keepdim=True), F.pad(torch.ones_like(y[:, :1]), pad))
    norm_y = _correlate(torch.ones_like(x[:, :1]), padded.pow(2).sum(1, keepdim=True))
    norms = norm_x.clamp_min(0) * norm_y.clamp_min(0)
    empty = norms <= 1e-12 * norms.flatten(1).amax(1).clamp_min(1e-30).view(-1, 1, 1)  # no overlap, or all zeros
    cosine = torch.where(empty, 0.0, dots / norms.clamp_min(1e-30).sqrt())
    return cosine.flatten(1).amax(1).clamp(0, 1)


def graded(probability: np.ndarray | float, appearance: np.ndarray | float, weight: float = WEIGHT,
           sharpness: float = SHARPNESS) -> np.ndarray:
    """The graded score from the probability of one category and the appearance term, both in [0, 1]."""
    p, q = np.asarray(probability, dtype=np.float64), np.asarray(appearance, dtype=np.float64)
    return p * (1 - weight + weight * q ** sharpness)


__all__ = ["SHARPNESS", "SHIFT", "WEIGHT", "graded", "shift_cosine"]
