"""``SimilarityModel``: a trained Siamese embedding with its calibration, loaded by name or path.

>>> from siamdiff import SimilarityModel
>>> model = SimilarityModel.load("mnist")
>>> model.score("a.png", "b.png")          # {"probability": 0.99, "distance": 0.12, "same": True}
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_model
from ..data.imageio import fit_to, read_image
from ..errors import CheckpointError, SiamdiffError
from .calibration import Calibration
from .embed import embed
from .models import EmbeddingNet

SHIPPED = ("mnist", "fashion-mnist", "cifar10")

ImageLike = str | os.PathLike | np.ndarray


def shipped_path(kind: str, name: str) -> Path:
    """Path of a shipped weight file, e.g. ``kind="similarity", name="mnist"``."""
    ref = resources.files("siamdiff.weights").joinpath(f"{kind}-{name}.safetensors")
    return Path(str(ref))


def shipped_name(kind: str, path: Path) -> str | None:
    """The shipped model name (``mnist``, ...) when ``path`` is the shipped file of that kind, else ``None``."""
    name = path.stem.removeprefix(f"{kind}-")
    return name if name in SHIPPED and path == shipped_path(kind, name) else None


def resolve_model_path(kind: str, name_or_path: str | os.PathLike) -> Path:
    """A shipped model name (``mnist``, ``fashion-mnist``, ``cifar10``) or a path to a ``.safetensors`` file."""
    text = str(name_or_path)
    if not text.strip():  # Path("") is the current folder
        raise SiamdiffError(f"no model given: use one of {', '.join(SHIPPED)} or a path to a model file")
    key = text.lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}.get(key, key)
    if key in SHIPPED:
        path = shipped_path(kind, key)
        if not path.is_file():
            raise CheckpointError(f"shipped {kind} model '{key}' is not installed in this copy of siamdiff")
        return path
    path = Path(text).expanduser()
    if path.is_dir() and (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    if not path.exists() and (path.suffix or len(path.parts) > 1):  # meant as a path
        raise SiamdiffError(f"model file '{text}' does not exist")
    if not path.exists():
        raise SiamdiffError(f"unknown model '{text}': use one of {', '.join(SHIPPED)} or a path to a model file")
    if path.is_dir():
        raise SiamdiffError(f"model folder '{text}' holds no model.safetensors: give the model file or its run folder")
    return path


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
        path = resolve_model_path("similarity", name_or_path)
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
