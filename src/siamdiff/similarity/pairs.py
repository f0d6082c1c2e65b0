"""Pair and triplet builders, seeded and reproducible.

The report's builder: "every time I get an image from the dataset, I randomly decide whether the pair belongs to
the same group, then randomly choose a picture from the same or a different group." :func:`seed_pairs` does
exactly that for every image of an epoch (a fair coin per anchor; the other class chosen uniformly among the
other classes, then an image uniformly inside it). :func:`balanced_pairs` draws exactly half positive pairs, for
evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..core.errors import SiamdiffError


class _ClassIndex:
    """Images per class, for drawing uniformly inside a class."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = np.asarray(labels)
        self.classes, inverse = np.unique(self.labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(self.classes))
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.counts = counts
        self.order = order
        self.pos = inverse  # class position of every image
        if len(self.classes) < 2:
            raise ValueError("pairs need at least two classes")

    def has_partner(self, anchors: np.ndarray) -> np.ndarray:
        """Whether each anchor's class has another image (a same-class pair is possible)."""
        return self.counts[self.pos[anchors]] > 1

    def draw_same(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A partner of the anchor's class, never the anchor itself (anchors of one-image classes: itself)."""
        c = self.pos[anchors]
        n = self.counts[c]
        k = rng.integers(0, np.maximum(n - 1, 1))
        partner = self.order[self.starts[c] + k]
        # Skip over the anchor: draw among the n-1 others by shifting draws at or after the anchor's slot.
        slot = np.empty_like(self.pos)
        slot[self.order] = np.arange(len(self.order)) - np.repeat(self.starts, self.counts)
        shift = (k >= slot[anchors]) & (n > 1)
        return np.where(shift, self.order[self.starts[c] + np.minimum(k + 1, n - 1)], partner)

    def draw_other(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A partner of another class: the class uniformly among the others, then an image inside it."""
        c = self.pos[anchors]
        other = rng.integers(0, len(self.classes) - 1, size=len(anchors))
        other = other + (other >= c)
        k = rng.integers(0, self.counts[other])
        return self.order[self.starts[other] + k]


def seed_pairs(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch of the report's pairs: every image once as anchor (shuffled), a fair coin for same/different.

    Returns ``(i, j, same)``: index arrays ``(N,)`` and ``same (N,)`` as int64 0/1.
    """
    rng = np.random.default_rng(seed)
    index = _ClassIndex(labels)
    anchors = rng.permutation(len(index.labels))
    same = rng.integers(0, 2, size=len(anchors)) * index.has_partner(anchors)  # one-image classes: different
    partners = np.where(same == 1, index.draw_same(anchors, rng), index.draw_other(anchors, rng))
    return anchors, partners, same.astype(np.int64)


def balanced_pairs(labels: np.ndarray, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exactly ``n_pairs // 2`` same-class and ``n_pairs - n_pairs // 2`` different-class pairs, shuffled.

    Anchors are drawn uniformly (with replacement when needed); anchors of same-class pairs come from classes with
    at least two images, so a pair is never an image with itself.
    """
    if n_pairs < 2:
        raise ValueError("balanced pairs need at least 2 pairs")
    rng = np.random.default_rng(seed)
    index = _ClassIndex(labels)
    n = len(index.labels)
    eligible = np.flatnonzero(index.has_partner(np.arange(n)))
    if len(eligible) == 0:
        raise ValueError("no class has two images: no same-class pair exists")
    n_same = n_pairs // 2
    same = np.zeros(n_pairs, dtype=np.int64)
    same[:n_same] = 1
    anchors = np.concatenate([rng.choice(eligible, size=n_same, replace=n_same > len(eligible)),
                              rng.choice(n, size=n_pairs - n_same, replace=n_pairs - n_same > n)])
    order = rng.permutation(n_pairs)
    anchors, same = anchors[order], same[order]
    partners = np.where(same == 1, index.draw_same(anchors, rng), index.draw_other(anchors, rng))
    return anchors, partners, same


def balanced_triplets(labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` triplets ``(anchor, positive, negative)`` of index arrays; anchors from classes of 2+ images."""
    rng = np.random.default_rng(seed)
    index = _ClassIndex(labels)
    eligible = np.flatnonzero(index.has_partner(np.arange(len(index.labels))))
    if len(eligible) == 0:
        raise ValueError("no class has two images: no triplet exists")
    anchors = rng.choice(eligible, size=n, replace=n > len(eligible))
    return anchors, index.draw_same(anchors, rng), index.draw_other(anchors, rng)


def pixel_anchors(labels: np.ndarray, n: int, rng: np.random.Generator, others: int, what: str) -> np.ndarray:
    """``n`` random anchors (at most as many as there are) whose class has more than ``others`` other images, or a
    refusal naming ``what`` needs them."""
    counts = np.bincount(labels)
    eligible = np.flatnonzero(counts[labels] > others)
    if len(eligible) == 0 or np.count_nonzero(counts) < 2:
        raise SiamdiffError(f"{what} need two classes and a class of more than {others} images")
    return rng.choice(eligible, size=min(n, len(eligible)), replace=False)


def pixel_distances(images: torch.Tensor, labels: np.ndarray, anchors: np.ndarray, block: int = 256
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For ``block`` anchors at a time: their indices ``(B,)``, their squared pixel L2 distances ``(B, N)`` to every
    uint8 image of ``images`` (on the [0, 1] scale; one matrix product) and the mask ``(B, N)`` of the images of
    their class: the measure of "alike" of the hard pairs and the 2AFC triplets."""
    flat = images.reshape(len(images), -1).float() / 255.0
    sq = flat.pow(2).sum(1)
    lab = torch.as_tensor(labels)
    for s in range(0, len(anchors), block):
        a = torch.as_tensor(anchors[s:s + block])
        yield a, sq[a][:, None] + sq[None, :] - 2 * flat[a] @ flat.T, lab[a][:, None] == lab[None, :]
