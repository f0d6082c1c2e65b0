"""``SimilarityModel``: a trained Siamese embedding with its calibration, loaded by name or path.

>>> from siamdiff import SimilarityModel
>>> model = SimilarityModel.load("mnist")
>>> model.score("a.png", "b.png")   # {"similarity": 0.93, "probability": 0.99, "distance": 0.12, "same": True, ...}
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import numpy as np
import torch

from ..core.checkpoint import load_model
from ..core.errors import CheckpointError, ImageReadError, SiamdiffError
from ..core.registry import resolve, shipped_name
from ..data.imageio import fit_to
from ..data.inputs import as_batch, to_uint8
from ..nets.convnet import EmbeddingNet
from .calibration import Calibration
from .embed import embed
from .explain import contributions
from .graded import graded, shift_cosine

log = logging.getLogger("siamdiff")

ImageLike = str | os.PathLike | np.ndarray | torch.Tensor  # or a PIL image: see siamdiff.data.inputs


PAIRS_PER_PASS = 256  # pairs scored in one pass of the network: bounds the memory of the stem maps


def _first(row: dict[str, np.ndarray]) -> dict[str, Any]:
    """The first pair of :meth:`SimilarityModel.score_batch`'s arrays, as Python numbers."""
    return {k: bool(v[0]) if k == "same" else float(v[0]) for k, v in row.items()}


def _name(image: ImageLike) -> str | None:
    """How a result names its image: the path given, or None for an image given as data."""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else None


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
        """One image (any input of :mod:`siamdiff.data.inputs`) -> ``(C, S, S)`` uint8 for this model.

        Conversion (documented): alpha composited over white, colour to grayscale by luma, grayscale to colour by
        replication, any other size resized to the model's square size (bilinear, anti-aliased; aspect ratio not
        kept).
        """
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and (image.ndim == 2 or (
                image.ndim == 3 and image.shape[2] in (1, 3))):
            array = image  # (H, W[, C]) uint8: as it is
        else:
            batch = as_batch(image, "image", keep_alpha=False)
            if len(batch) != 1:
                raise SiamdiffError(f"{{image}} must be one image, got a batch of {len(batch)}", "image")
            array = to_uint8(batch[0])
        return fit_to(array, self.channels, (self.image_size, self.image_size)).transpose(2, 0, 1)

    def prepare_files(self, files: list[os.PathLike | str], level: int = logging.INFO
                      ) -> tuple[list[np.ndarray], list[int]]:
        """:meth:`prepare` of each file that can be read: the images, and the positions in ``files`` they came from;
        each unreadable file is logged at ``level`` and left out."""
        images, kept = [], []
        for k, f in enumerate(files):
            try:
                images.append(self.prepare(f))
            except ImageReadError as exc:
                log.log(level, "%s", exc)
                continue
            kept.append(k)
        return images, kept

    def embed(self, images: ImageLike | list[ImageLike], batch_size: int = 1024) -> np.ndarray:
        """Embeddings ``(N, D)`` of images: a list of images (paths, arrays, PIL images, tensors), or one batch
        ``(N, C, H, W)`` — uint8 of the model's shape as it is, anything else converted as :meth:`prepare` does."""
        if isinstance(images, (list, tuple)):
            batch = np.stack([self.prepare(im) for im in images]) if images else \
                np.zeros((0, self.channels, self.image_size, self.image_size), np.uint8)
        elif isinstance(images, (np.ndarray, torch.Tensor)) and images.dtype in (np.uint8, torch.uint8) and \
                tuple(images.shape[1:]) == (self.channels, self.image_size, self.image_size):
            batch = images
        else:
            batch = np.stack([self.prepare(im) for im in as_batch(images, "images", keep_alpha=False)])
        if isinstance(batch, np.ndarray) and not batch.flags.writeable:
            batch = batch.copy()  # a view of a PIL image is read-only; torch wants to be able to write
        return embed(self.net, torch.as_tensor(batch), batch_size=batch_size)

    def probability(self, distance: np.ndarray | float) -> np.ndarray:
        """Calibrated probability of "same category" for embedding distances."""
        if self.calibration is None:
            raise SiamdiffError("this model has no calibration (it was not trained with validation pairs)")
        return self.calibration.probability(distance)

    @torch.no_grad()
    def appearance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """How alike the pairs ``(a[k], b[k])`` look, ``(N,)`` in [0, 1]: the shift-tolerant cosine of the network's
        stem maps (:mod:`siamdiff.similarity.graded`). ``a`` and ``b``: uint8 batches of the model's shape, as
        :meth:`prepare` gives."""
        device = next(self.net.parameters()).device
        maps = [self.net.stem(torch.tensor(np.asarray(x), device=device)) for x in (a, b)]  # copied: may be read-only
        return shift_cosine(*maps).cpu().numpy().astype(np.float64)

    def score_batch(self, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`score` of the pairs ``(a[k], b[k])``: arrays ``(N,)`` under the same keys. ``a`` and ``b``:
        uint8 batches of the model's shape, as :meth:`prepare` gives."""
        n = len(a)
        return self.score_indexed(np.concatenate([a, b]), np.arange(n), np.arange(n, 2 * n))

    @torch.no_grad()
    def score_indexed(self, images: np.ndarray, i: np.ndarray, j: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`score` of the pairs ``(images[i[k]], images[j[k]])``: each image is embedded once however many
        pairs it is in. ``images``: a uint8 batch of the model's shape, as :meth:`prepare` gives.

        ``appearance`` is how alike the two look, in [0, 1]: the shift-tolerant cosine of the network's stem maps
        (:mod:`siamdiff.similarity.graded`). A few images go through the network in one pass that gives their stem
        maps too; more are embedded in batches, and the stem maps (one convolution) made again for each batch of
        pairs, so memory stays bounded."""
        if self.calibration is None:
            self.probability(0.0)  # refuses: no calibration
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        device = next(self.net.parameters()).device
        if len(images) <= 2 * PAIRS_PER_PASS:
            emb, maps = self.net.embed_and_stem(torch.tensor(np.asarray(images), device=device))  # copied: may be
            emb = emb.float().cpu()                                                               # read-only

            def stems(rows: np.ndarray) -> torch.Tensor:  # rows: sorted and distinct, so all of them is every map
                return maps if len(rows) == len(maps) else maps[torch.as_tensor(rows, device=device)]
        else:
            emb = torch.from_numpy(self.embed(images))

            def stems(rows: np.ndarray) -> torch.Tensor:
                return self.net.stem(torch.tensor(np.asarray(images)[rows], device=device))
        d = (emb[i] - emb[j]).norm(dim=1).numpy().astype(np.float64)
        q = np.zeros(len(i))
        for s in range(0, len(i), PAIRS_PER_PASS):
            n = len(i[s:s + PAIRS_PER_PASS])
            rows, where = np.unique(np.concatenate([i[s:s + n], j[s:s + n]]), return_inverse=True)
            maps_of = stems(rows)
            q[s:s + n] = shift_cosine(maps_of[where[:n]], maps_of[where[n:]]).cpu().numpy()
        p = np.asarray(self.probability(d), dtype=np.float64)
        return {"similarity": graded(p, q), "probability": p, "distance": d, "same": d <= self.calibration.threshold,
                "appearance": q}

    def score(self, a: ImageLike, b: ImageLike) -> dict[str, float | bool]:
        """Compare two images: ``{"similarity", "probability", "distance", "same", "appearance"}``.

        ``similarity`` is the graded score in [0, 1] (category first, appearance second:
        :mod:`siamdiff.similarity.graded`); ``probability`` the calibrated probability of one category; ``same``
        the decision at the validation threshold; ``appearance`` how alike the two look, in [0, 1]."""
        return _first(self.score_batch(self.prepare(a)[None], self.prepare(b)[None]))

    def score_pairs(self, pairs: list[tuple[ImageLike, ImageLike]]) -> list[dict[str, Any]]:
        """:meth:`score` of many pairs: one dict per pair, in order — ``{"a", "b", "similarity", ...}``, or
        ``{"a", "b", "error"}`` for a pair with an unreadable image (the others are scored all the same). Each
        distinct path is read and embedded once."""
        distinct: list[np.ndarray] = []  # the prepared images, each path's once
        known: dict[str, int | SiamdiffError] = {}  # path -> its row in distinct, or why it cannot be read

        def row(x: ImageLike) -> int | SiamdiffError:
            key = _name(x)
            if key is not None and key in known:
                return known[key]
            try:
                distinct.append(self.prepare(x))
                found: int | SiamdiffError = len(distinct) - 1
            except SiamdiffError as exc:
                found = exc
            if key is not None:
                known[key] = found
            return found

        records: list[dict[str, Any]] = []
        todo: list[tuple[int, int, int]] = []  # (record, row of a, row of b)
        for a, b in pairs:
            x, y = row(a), row(b)
            names = {"a": _name(a), "b": _name(b)}
            failed = next((e for e in (x, y) if isinstance(e, SiamdiffError)), None)
            records.append({**names, "error": str(failed)} if failed is not None else names)
            if failed is None:
                todo.append((len(records) - 1, x, y))
        if todo:
            at, i, j = (np.array(column) for column in zip(*todo))
            scores = self.score_indexed(np.stack(distinct), i, j)
            for k, record in enumerate(at):
                records[record].update(_first({key: v[k:k + 1] for key, v in scores.items()}))
        return records

    def explain(self, a: ImageLike, b: ImageLike) -> dict[str, Any]:
        """:meth:`score` of two images, with where their agreement comes from (:mod:`siamdiff.similarity.explain`):
        ``map_a`` and ``map_b`` ``(h, w)``, how much each region of one image adds to the cosine of the two
        embeddings (``cosine``, which each map sums to); ``image_a`` and ``image_b``, the images as the model saw
        them ``(C, S, S)`` uint8."""
        x, y = self.prepare(a), self.prepare(b)
        map_a, map_b, cosine = contributions(self.net, x[None], y[None])
        return {**_first(self.score_batch(x[None], y[None])), "cosine": float(cosine[0]), "map_a": map_a[0],
                "map_b": map_b[0], "image_a": x, "image_b": y}
