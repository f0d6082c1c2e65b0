"""What a server was started with: its similarity models, denoisers and indexes, each loaded once, chosen by name.

Clients name models and indexes; they never give a server path. A shipped name (``mnist``, ...) brings its
similarity model and its diffusion model (with their companions) where they are installed; a model file brings
itself under its file name (a run folder under the folder's name); an index brings the model that built it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import read_metadata
from ..core.errors import SiamdiffError
from ..core.registry import canonical, resolve, shipped
from ..reconstruction.pipeline import METHODS, Denoiser
from ..similarity.api import SimilarityModel
from ..similarity.index import Index

DENOISING_KINDS = tuple(k for k in METHODS if k is not None)  # diffusion, denoiser, vae


@dataclass
class ServedIndex:
    """An index with the model that built it, and the position of each of its images (for thumbnails by number)."""

    index: Index
    model: SimilarityModel
    position: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.position = {p: i for i, p in enumerate(self.index.paths)}


@dataclass
class Catalog:
    similarity: dict[str, SimilarityModel] = field(default_factory=dict)
    denoisers: dict[str, Denoiser] = field(default_factory=dict)
    indexes: dict[str, ServedIndex] = field(default_factory=dict)

    @classmethod
    def load(cls, models: list[str] | None = None, indexes: list[str] | None = None) -> Catalog:
        """Load ``models`` (shipped names or model files/run folders; None: every shipped model) and ``indexes``
        (index files). Refuses, before serving anything, a name given twice and a model of a kind it cannot serve."""
        catalog = cls()
        for given in (list(shipped("similarity")) + [n for n in shipped("diffusion") if n not in
                                                     shipped("similarity")]) if models is None else models:
            catalog._add_model(given)
        for given in indexes or []:
            catalog._add_index(given)
        if not (catalog.similarity or catalog.denoisers):
            raise SiamdiffError("no model to serve: pass {model} NAME|PATH", "model")
        return catalog

    def _add_model(self, given: str) -> None:
        name = canonical(given)
        if name is not None:
            found = False
            if name in shipped("similarity"):
                self._put(self.similarity, name, SimilarityModel.load(name))
                found = True
            if name in shipped("diffusion"):
                self._put(self.denoisers, name, Denoiser.load(name))
                found = True
            if not found:
                raise SiamdiffError(f"no shipped model '{name}' is installed in this copy of siamdiff")
            return
        path = resolve("similarity", given)  # a file or run folder (a name that is neither is refused here)
        kind = read_metadata(path)["kind"]
        label = _name_of(path)
        if kind == "similarity":
            self._put(self.similarity, label, _calibrated(SimilarityModel.load(path), given))
        elif kind in DENOISING_KINDS:
            self._put(self.denoisers, label, Denoiser.load(path, kind=kind))
        else:
            raise SiamdiffError(f"model '{given}' is a {kind} model: serve takes similarity and denoising models")

    def _add_index(self, given: str) -> None:
        index = Index.load(given)
        if not index.model:
            raise SiamdiffError(f"index '{given}' does not record the model that built it")
        # the served model of that name when it is the one (same weights), else the model loaded for the index
        model = next((m for m in self.similarity.values() if m.source == index.model and
                      m.fingerprint == index.fingerprint), None) or SimilarityModel.load(index.model)
        index.check_model(model)
        _calibrated(model, index.model)
        self._put(self.indexes, Path(given).name.split(".")[0] or "index", ServedIndex(index, model))

    @staticmethod
    def _put(table: dict, name: str, value: object) -> None:
        if name in table:
            raise SiamdiffError(f"two models or indexes would be served as '{name}': rename one of the files")
        table[name] = value

    def warm_up(self) -> None:
        """One call of each model, so that the first request does not pay for the first call's set-up."""
        for model in self.similarity.values():
            blank = np.zeros((model.image_size, model.image_size, model.channels), np.uint8)
            model.score(blank, blank)
        for den in self.denoisers.values():
            size = den.image_size or 32
            den.denoise(torch.full((1, den.channels or 1, size, size), 0.5), sigma=0.1)

    def describe(self) -> dict[str, list[dict]]:
        """The models and indexes, as ``GET /health`` lists them."""
        models = [{"name": n, "kind": "similarity", "dataset": m.dataset, "channels": m.channels,
                   "image_size": m.image_size, "classes": m.classes} for n, m in self.similarity.items()]
        models += [{"name": n, "kind": d.kind, "channels": d.channels, "image_size": d.image_size,
                    "methods": list(d.methods), "classes": d.classes} for n, d in self.denoisers.items()]
        indexes = [{"name": n, "images": len(s.index.paths), "model": s.model.source}
                   for n, s in self.indexes.items()]
        return {"models": models, "indexes": indexes}


def _calibrated(model: SimilarityModel, given: str) -> SimilarityModel:
    """``model``, refused when it has no calibration: a served score needs its probability."""
    if model.calibration is None:
        raise SiamdiffError(f"similarity model '{given}' has no calibration (it was not trained with validation "
                            f"pairs): serve needs one to give probabilities")
    return model


def _name_of(path: Path) -> str:
    """A model file's served name: its stem, or its run folder's name for ``<run>/model.safetensors``."""
    return path.parent.name if path.name == "model.safetensors" and path.parent.name else path.stem


__all__ = ["Catalog", "ServedIndex"]
