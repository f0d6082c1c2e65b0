"""``SimilarityModel``: a trained Siamese embedding with its calibration, loaded by name or path.

>>> from siamdiff import SimilarityModel
>>> model = SimilarityModel.load("mnist")
>>> model.score("a.png", "b.png")          # {"probability": 0.99, "distance": 0.12, "same": True}
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch

from ..core.checkpoint import load_model
from ..core.errors import CheckpointError, SiamdiffError
from ..core.registry import resolve, shipped_name
from ..data.imageio import fit_to, read_image
from ..nets.convnet import EmbeddingNet
from .calibration import Calibration
from .embed import embed

ImageLike = str | os.PathLike | np.ndarray


class SimilarityModel:
    """A Siamese embedding network with its calibration.

    ``embed`` maps images to unit vectors ``(N, D)``; ``distance`` is Euclidean between embeddings;
    ``probability`` is the calibrated probability that two images show the same category.
    """

    def __init__(self, net: EmbeddingNet, meta: dict[str, Any], source: str = "") -> None:
        self.net = net.eval()
        self.meta = meta
        self.source = source
        extra = meta.get("extra", {})
        self.classes: list[str] = list(extra.get("classes", []))
        self.dataset: str = extra.get("dataset", "")
        cal = extra.get("calibration")
        try:
            self.calibration = Calibration.from_dict(cal) if cal else None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CheckpointError(f"model '{source or 'in memory'}' has a damaged calibration in its metadata") from None
        digest = hashlib.sha256()
        for key, value in sorted(net.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        self.fingerprint = digest.hexdigest()[:16]

    @classmethod
    def load(cls, name_or_path: str | os.PathLike = "mnist") -> SimilarityModel:
        """Load a shipped model by name (``mnist``, ``fashion-mnist``, ``cifar10``) or a model file / run folder."""
        path = resolve("similarity", name_or_path)
        net, meta = load_model(path, kind="similarity")
        return cls(net, meta, shipped_name("similarity", path) or str(path.resolve()))

    @property
    def channels(self) -> int:
        return self.net.config.in_channels

    @property
    def image_size(self) -> int:
        return self.net.config.image_size

    def prepare(self, image: ImageLike) -> np.ndarray:
        """A path or ``(H, W[, C])`` uint8 array -> ``(C, S, S)`` uint8 for this model.

        Conversion (documented): colour to grayscale by luma, grayscale to colour by replication, any other
        size resized to the model's square size (bilinear, anti-aliased; aspect ratio not kept).
        """
        array = read_image(image, channels=self.channels) if not isinstance(image, np.ndarray) else image
        if array.dtype != np.uint8:
            raise SiamdiffError("image arrays must be uint8")
        return fit_to(array, self.channels, (self.image_size, self.image_size)).transpose(2, 0, 1)

    def embed(self, images: torch.Tensor | np.ndarray | list[ImageLike], batch_size: int = 1024) -> np.ndarray:
        """Embeddings ``(N, D)`` of a uint8 batch ``(N, C, H, W)`` or of a list of paths/arrays."""
        if isinstance(images, list):
            images = np.stack([self.prepare(im) for im in images]) if images else np.zeros((0, 1, 1, 1), np.uint8)
        batch = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (self.channels, self.image_size, self.image_size):
            raise SiamdiffError(f"expected images of shape (N, {self.channels}, {self.image_size}, "
                                f"{self.image_size}), got {tuple(batch.shape)}")
        return embed(self.net, batch, batch_size=batch_size)

    def probability(self, distance: np.ndarray | float) -> np.ndarray:
        """Calibrated probability of "same category" for embedding distances."""
        if self.calibration is None:
            raise SiamdiffError("this model has no calibration (it was not trained with validation pairs)")
        return self.calibration.probability(distance)

    def score(self, a: ImageLike, b: ImageLike) -> dict[str, float | bool]:
        """Compare two images: ``{"probability", "distance", "same"}`` (``same`` uses the validation threshold)."""
        ea, eb = self.embed([a, b])
        d = float(np.linalg.norm(ea - eb))
        p = float(self.probability(d))
        return {"probability": p, "distance": d, "same": bool(d <= self.calibration.threshold)}
