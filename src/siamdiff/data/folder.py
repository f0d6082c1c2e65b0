"""``folder:PATH`` datasets: ``PATH/<class>/<images>`` read safely, split about 80/10/10 per class (fixed seed)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..core.config import MAX_IMAGE_SIZE
from ..core.errors import SiamdiffError
from .imageio import read_folder
from .types import ImageSet

log = logging.getLogger(__name__)

FOLDER_SEED = 20261
FRACTIONS = {"val": 0.1, "test": 0.1}


def folder_split_indices(labels: np.ndarray, split: str, seed: int = FOLDER_SEED) -> np.ndarray:
    """Indices of ``split`` for a labelled folder, from a seeded permutation of each class.

    A class of 6+ images gives 10% (at least 2, so same-class pairs exist) to validation and as many to test;
    a class of 3 to 5 images gives one to each; smaller classes stay in train.
    """
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        held = max(2, int(round(FRACTIONS["val"] * len(idx)))) if len(idx) >= 6 else int(len(idx) >= 3)
        n_train = len(idx) - 2 * held
        parts = {"train": idx[:n_train], "val": idx[n_train:n_train + held], "test": idx[n_train + held:],
                 "train+val": idx[:n_train + held]}
        out.append(parts[split])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def load_folder_splits(path: str, splits: tuple[str, ...], image_size: int, channels: int) -> list[ImageSet]:
    """The requested splits of ``PATH/<class>/<images>``, reading the folder once."""
    if not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise SiamdiffError(f"image size {image_size} is not a side from 1 to {MAX_IMAGE_SIZE}")
    found = read_folder(path, channels=channels, size=(image_size, image_size), class_from_parent=True)
    if found.skipped:
        log.warning("skipped %d unreadable file(s) in '%s'", len(found.skipped), path)
    classes = sorted(set(found.labels))
    if len(classes) < 2:
        raise SiamdiffError(f"folder '{path}' needs at least two class sub-folders (PATH/<class>/<images>)")
    labels = np.array([classes.index(c) for c in found.labels], dtype=np.int64)
    out = []
    for split in splits:
        idx = folder_split_indices(labels, split)
        if len(np.unique(labels[idx])) < 2:
            raise SiamdiffError(f"folder '{path}' has too few images: its {split} split holds fewer than two "
                                f"classes (validation and test each take 10%, at least 2, of every class of 6 or "
                                f"more images)")
        out.append(ImageSet(f"folder:{path}", split, torch.from_numpy(found.images[idx]),
                            torch.from_numpy(labels[idx]), classes))
    return out
