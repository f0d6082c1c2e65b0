"""Two-alternative forced choice (2AFC) agreement: for triplets (anchor, expected, other), how often a score ranks
the expected image above the other, as a person would.

The triplets are built from a test split alone, seeded, with pixel L2 distance as the measure of "alike" (one
matrix product per batch of anchors):

* ``category``: the least alike image of the anchor's class against the most alike image of another class. A person
  picks the same class (the report's hard pairs as a choice); pixel measures pick the other by construction.
* ``near-copy``: a near copy of the anchor (shifted by one pixel in a random direction, 5-15 % darker, Gaussian noise
  of σ 0.02) against the most alike other image of its class. A person picks the copy: it is the same picture.
* ``graded``: one of the 5 most alike images of the anchor's class against one of its less alike half. A person picks
  the first: the margin between the two is wide (the nearest images are near-twins, the other half visibly other
  drawings or photos) — and pixel L2, which chose them, agrees by construction.

Agreement counts a tie as half.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import SiamdiffError
from .pairs import pixel_anchors, pixel_distances

KINDS = ("category", "near-copy", "graded")
NEAREST = 5  # the graded kind's "clearly more alike" is one of this many most alike images of the class
SEED = 0

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # uint8 batches (N, C, H, W) -> similarity (N,), higher: more


def near_copies(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Near copies of uint8 images ``(N, C, H, W)``: each shifted by one pixel (up, down, left or right; the edge
    repeated), made 5-15 % darker and given Gaussian noise of σ 0.02 (of the range), rounded to uint8."""
    x = images.float()
    n = len(x)
    direction = rng.integers(0, 4, n)
    out = torch.empty_like(x)
    for k in range(n):
        padded = F.pad(x[k:k + 1], (1, 1, 1, 1), mode="replicate")[0]
        dy, dx = ((0, 1), (2, 1), (1, 0), (1, 2))[direction[k]]
        out[k] = padded[:, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    darker = torch.as_tensor(rng.uniform(0.85, 0.95, n), dtype=torch.float32).view(-1, 1, 1, 1)
    noise = torch.as_tensor(rng.normal(0, 0.02 * 255, tuple(x.shape)), dtype=torch.float32)
    return (out * darker + noise).round().clamp(0, 255).to(torch.uint8)


def triplets(images: torch.Tensor, labels: np.ndarray, kind: str, n: int = 1000, seed: int = SEED
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` triplets of ``kind`` from uint8 ``images (N, C, H, W)`` of ``labels``: ``(anchors, expected, other)``,
    each ``(n, C, H, W)`` uint8 (fewer when the images have fewer anchors with a second image of their class)."""
    if kind not in KINDS:
        raise SiamdiffError(f"unknown triplet kind '{kind}': use {', '.join(KINDS)}")
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    anchors = pixel_anchors(labels, n, rng, NEAREST + 1, "2AFC triplets")
    expected, other = [], []
    for a, d2, same in pixel_distances(images, labels, anchors):
        d2 = d2.clamp_min(0)
        itself = torch.zeros_like(same)
        itself[torch.arange(len(a)), a] = True  # the anchor itself is never a choice
        if kind == "category":
            expected.append(d2.masked_fill(~same | itself, float("-inf")).argmax(1))
            other.append(d2.masked_fill(same, float("inf")).argmin(1))
            continue
        # the other images of the class; an exact duplicate of the anchor is no "other image"
        within = d2.masked_fill(~same | itself | (d2 == 0), float("inf"))
        order = within.argsort(1)
        if kind == "near-copy":
            other.append(order[:, 0])
            continue
        size = torch.isfinite(within).sum(1)  # the other images of the class (more than NEAREST: eligible)
        near = torch.minimum(torch.as_tensor(rng.integers(0, NEAREST, len(a))), size - 1)
        far = torch.as_tensor((size.numpy() * rng.uniform(0.5, 1.0, len(a))).astype(np.int64))
        expected.append(order[torch.arange(len(a)), near])
        other.append(order[torch.arange(len(a)), far])
    anchor_images = images[torch.as_tensor(anchors)]
    first = near_copies(anchor_images, rng) if kind == "near-copy" else images[torch.cat(expected)]
    return anchor_images, first, images[torch.cat(other)]


def agreement(score: Scorer, anchors: torch.Tensor, expected: torch.Tensor, other: torch.Tensor) -> float:
    """How often ``score`` ranks ``(anchor, expected)`` above ``(anchor, other)``; a tie counts half."""
    a, e, o = (np.ascontiguousarray(t.numpy()) for t in (anchors, expected, other))
    s_expected, s_other = np.asarray(score(a, e), np.float64), np.asarray(score(a, o), np.float64)
    return float(np.mean((s_expected > s_other) + 0.5 * (s_expected == s_other)))


__all__ = ["KINDS", "NEAREST", "agreement", "near_copies", "triplets"]
