"""The one place that knows model kinds, shipped model names, their aliases and companions.

A *kind* is what a model file holds (``similarity``, ``diffusion``, ``sigma``, ...): its builder rebuilds the network
from the config stored in the file. A *shipped name* (``mnist``, ``fashion-mnist``, ``cifar10``) is both a built-in
dataset and the model of each kind trained on it, installed as ``weights/<kind>-<name>.safetensors``. A diffusion
model's *companions* are the noise estimator and the classifier shipped with it. Every caller resolves names here;
nobody re-implements lookup or aliases.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import CheckpointError, SiamdiffError

# The built-in datasets, which are also the names of the shipped models.
DATASETS = ("mnist", "fashion-mnist", "cifar10")
# Other spellings people type, after lower-casing and turning '_' into '-'.
ALIASES = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10"}

# kind -> "module:function" that builds an nn.Module from a stored config dict; imported lazily, so that loading a
# similarity model never imports the reconstruction half (and the other way round).
KINDS: dict[str, str] = {
    "similarity": "siamdiff.nets.convnet:build_from_config",
    "classifier": "siamdiff.nets.convnet:build_from_config",
    "diffusion": "siamdiff.reconstruction.models:build_from_config",
    "denoiser": "siamdiff.reconstruction.models:build_from_config",
    "vae": "siamdiff.reconstruction.vae:build_from_config",
    "sigma": "siamdiff.reconstruction.estimate:build_from_config",
}

# What a person calls each kind in a message.
KIND_NAMES = {"similarity": "similarity model", "classifier": "classifier", "diffusion": "diffusion model",
              "denoiser": "direct denoiser", "vae": "VAE", "sigma": "noise estimator"}

# The models that come along with a shipped model of a kind: a diffusion model brings its noise estimator and its
# classifier (both trained on the same dataset).
COMPANIONS = {"diffusion": ("sigma", "classifier")}


def canonical(name: str) -> str | None:
    """The built-in dataset (and shipped model) name that ``name`` spells (``MNIST``, ``fashion_mnist``, ``fmnist``,
    ``CIFAR-10`` ...), or None."""
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    return key if key in DATASETS else None


def shipped_path(kind: str, name: str) -> Path:
    """Where the shipped model ``name`` of ``kind`` is installed (the file may be absent from a trimmed install)."""
    return Path(str(resources.files("siamdiff.weights").joinpath(f"{kind}-{name}.safetensors")))


def shipped(kind: str) -> list[str]:
    """The shipped names whose model of ``kind`` is installed, in the order of :data:`DATASETS`."""
    return [n for n in DATASETS if shipped_path(kind, n).is_file()]


def shipped_name(kind: str, path: str | os.PathLike) -> str | None:
    """The shipped name when ``path`` is the installed shipped model of ``kind``, else None."""
    path = Path(path)
    name = path.stem.removeprefix(f"{kind}-")
    return name if name in DATASETS and path == shipped_path(kind, name) else None


def resolve(kind: str, name_or_path: str | os.PathLike) -> Path:
    """The model file meant by ``name_or_path``: a shipped name (or alias) of ``kind``, a ``.safetensors`` file, or a
    run folder holding ``model.safetensors``. The file's kind is checked when it is loaded."""
    text = str(name_or_path)
    if not text.strip():  # Path("") is the current folder
        raise SiamdiffError(f"no model given: use one of {', '.join(DATASETS)} or a path to a model file")
    name = canonical(text)
    if name is not None:
        path = shipped_path(kind, name)
        if not path.is_file():
            raise CheckpointError(f"shipped {KIND_NAMES.get(kind, kind)} '{name}' is not installed in this copy of "
                                  f"siamdiff")
        return path
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        raise SiamdiffError(f"model folder '{text}' holds no model.safetensors: give the model file or its run folder")
    if path.exists():
        return path
    if path.suffix or len(path.parts) > 1:  # meant as a path
        raise SiamdiffError(f"model file '{text}' does not exist")
    raise SiamdiffError(f"unknown model '{text}': use one of {', '.join(DATASETS)} or a path to a model file")


def grayscale_twin(of: str | os.PathLike) -> Path | None:
    """The grayscale model shipped beside the shipped colour diffusion model ``of`` (fine-tuned from it on its
    dataset read as gray, ``weights/diffusion-<name>-gray.safetensors``), when it is installed; else None."""
    name = shipped_name("diffusion", of)
    path = None if name is None else shipped_path("diffusion", f"{name}-gray")
    return path if path is not None and path.is_file() else None


def companion(kind: str, of: str | os.PathLike, given: str | os.PathLike | None = None) -> Path | None:
    """The model of ``kind`` that goes with the model file ``of``: the one ``given`` (a name or path), else the
    shipped companion when ``of`` is a shipped model that has one installed, else None."""
    if given is not None:
        return resolve(kind, given)
    for owner, kinds in COMPANIONS.items():
        name = shipped_name(owner, of)
        if kind in kinds and name is not None and shipped_path(kind, name).is_file():
            return shipped_path(kind, name)
    return None
