"""The in-memory form of every dataset: labelled uint8 images, the type both the readers and the users share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ImageSet:
    """A labelled set of images held in memory.

    images: ``(N, C, H, W)`` uint8; labels: ``(N,)`` int64 indices into ``classes``.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, index: torch.Tensor | np.ndarray | list[int]) -> ImageSet:
        idx = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.name, self.split, self.images[idx], self.labels[idx], self.classes)
