"""The in-memory form of every dataset: labelled uint8 images, the type both the readers and the users share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import SiamdiffError


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

    def only(self, classes: tuple[int, ...] | list[int]) -> ImageSet:
        """The images of these classes (numbers into :attr:`classes`), labelled ``0 .. len(classes) - 1`` in the
        order given: how a model is trained on some classes and evaluated on others."""
        wrong = [c for c in classes if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(self.classes)]
        if not classes or wrong or len(set(classes)) != len(classes):
            raise SiamdiffError(f"{{classes}} must be distinct class numbers from 0 to {len(self.classes) - 1} of "
                                f"'{self.name}', got {','.join(map(str, classes)) or 'none'}", "classes")
        relabel = torch.full((len(self.classes),), -1, dtype=torch.long)
        relabel[torch.as_tensor(list(classes))] = torch.arange(len(classes))
        new = relabel[self.labels]
        keep = torch.nonzero(new >= 0).flatten()
        return ImageSet(self.name, self.split, self.images[keep], new[keep], [self.classes[c] for c in classes])

    def subset(self, index: torch.Tensor | np.ndarray | list[int]) -> ImageSet:
        idx = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.name, self.split, self.images[idx], self.labels[idx], self.classes)
