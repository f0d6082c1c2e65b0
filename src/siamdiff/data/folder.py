"""``folder:PATH`` datasets: ``PATH/<class>/<images>`` read safely, split 80/10/10 per class with a fixed seed."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import SiamdiffError
from .imageio import read_folder

log = logging.getLogger(__name__)

FOLDER_SEED = 20261
FRACTIONS = {"train": 0.8, "val": 0.1}


def folder_split_indices(labels: np.ndarray, split: str, seed: int = FOLDER_SEED) -> np.ndarray:
    """Indices of ``split`` for a labelled folder: per class, a seeded permutation cut 80/10/10 (train/val/test).

    Classes with fewer than 3 images go to train only, so test and val never hold an unseen class alone.
    """
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_train = len(idx) if len(idx) < 3 else max(1, int(round(FRACTIONS["train"] * len(idx))))
        n_val = 0 if len(idx) < 3 else max(1, int(round(FRACTIONS["val"] * len(idx))))
        n_train = min(n_train, len(idx) - n_val - (1 if len(idx) >= 3 else 0))
        parts = {"train": idx[:n_train], "val": idx[n_train:n_train + n_val], "test": idx[n_train + n_val:],
                 "train+val": idx[:n_train + n_val]}
        out.append(parts[split])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def load_folder_split(path: str, split: str, image_size: int, channels: int):
    from .datasets import ImageSet

    found = read_folder(path, channels=channels, size=(image_size, image_size), class_from_parent=True)
    if found.skipped:
        log.warning("skipped %d unreadable file(s) in '%s'", len(found.skipped), path)
    classes = sorted(set(found.labels))
    if len(classes) < 2:
        raise SiamdiffError(f"folder '{path}' needs at least two class sub-folders (PATH/<class>/<images>)")
    labels = np.array([classes.index(c) for c in found.labels], dtype=np.int64)
    idx = folder_split_indices(labels, split)
    if len(idx) == 0:
        raise SiamdiffError(f"folder '{path}' has too few images for a '{split}' split")
    return ImageSet(f"folder:{path}", split, torch.from_numpy(found.images[idx]),
                    torch.from_numpy(labels[idx]), classes)
