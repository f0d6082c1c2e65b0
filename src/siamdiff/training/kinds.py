"""One entry point that trains every model kind: :func:`train`, and the table of kinds it knows.

Each kind names its designs (``--model`` values), the options that apply to it, and its :class:`Trainer` (imported
only when that kind is trained, so the two halves stay apart). A trainer holds the kind's recipes as data — a table
of frozen :class:`~.task.Recipe` dataclasses keyed by design and dataset family — and turns options and data into a
:class:`~.task.Task` for :func:`~.loop.fit`. A new model kind is one entry here and one trainer in its half.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ..core.checkpoint import load_model
from ..core.errors import SiamdiffError
from ..core.files import exclusive
from ..core.registry import DATASETS, resolve, shipped_name
from ..data.datasets import load_splits, refuse_shape_options
from ..data.types import ImageSet
from .distributed import ranks_from_environment
from .loop import check_run_folder, fit, resolve_device
from .options import TrainOptions
from .task import Recipe, Task


@dataclass(frozen=True)
class Kind:
    """A trainable model kind: ``train NAME``.

    file_kind: the kind written into its model files; designs: the ``model`` values, the first being the default;
    trainer: ``"module:Class"`` of its :class:`Trainer`; loss, margin, init: whether those options apply;
    resizes: ``image_size`` on a built-in dataset gives the model's size and the images are resized to it.
    """

    name: str
    file_kind: str
    designs: tuple[str, ...]
    trainer: str
    about: str
    loss: bool = False
    margin: bool = False
    init: bool = False
    resizes: bool = False


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("similarity", "similarity", ("default", "seed", "tiny"), "siamdiff.similarity.task:SimilarityTrainer",
         "a Siamese embedding with a contrastive loss (seed: the report's design)", loss=True, margin=True,
         init=True),
    Kind("ddpm", "diffusion", ("unet", "seed", "tiny"), "siamdiff.reconstruction.tasks:DiffusionTrainer",
         "a diffusion model (epsilon prediction, EMA, label dropout; seed: the report's design)", loss=True,
         init=True, resizes=True),
    Kind("vae", "vae", ("default", "seed", "tiny"), "siamdiff.reconstruction.tasks:VAETrainer",
         "a VAE (seed: the report's 784-400-20 MLP; default: convolutional)"),
    Kind("denoiser", "denoiser", ("default", "tiny"), "siamdiff.reconstruction.tasks:DenoiserTrainer",
         "the supervised direct denoiser (U-Net, MSE, sigma in [0.01, 1.2])"),
    Kind("classifier", "classifier", ("default", "tiny"), "siamdiff.nets.classifier:ClassifierTrainer",
         "the classifier that checks classes of denoised images"),
    Kind("noise-estimator", "sigma", ("default", "moments", "tiny"), "siamdiff.reconstruction.tasks:SigmaTrainer",
         "the CNN that estimates the noise level (moments: the first design)"),
)}


@dataclass(frozen=True)
class Start:
    """The model a fine-tuning run starts from: network, metadata and the file it came from."""

    net: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def source(self) -> str:
        """The start as the new model records it: ``shipped NAME`` for a shipped model (not where this copy of
        siamdiff is installed), else the file as it was given."""
        name = shipped_name(self.meta["kind"], self.path)
        return f"shipped {name}" if name is not None else str(self.path)


# The recipe families and the image shape ``(channels, size)`` their recipes are written for (then fitted to the data).
FAMILIES = {"mnist": (1, 28), "fashion-mnist": (1, 28), "cifar10": (3, 32), "gray": (1, 28), "colour": (3, 32)}


def family(dataset: str, channels: int) -> str:
    """The recipe family of a dataset: its own name for a built-in one, else ``gray`` or ``colour``."""
    return dataset if dataset in DATASETS else ("colour" if channels == 3 else "gray")


class Trainer:
    """How :func:`train` makes one kind's task: the shape to read the data at, the recipe, the task.

    ``recipes`` maps ``(design, family)`` to a recipe; a table may key only ``gray``/``colour``, which then serve
    the built-in datasets of that colour too.
    """

    recipes: ClassVar[dict[tuple[str, str], Recipe]] = {}
    task_class: ClassVar[type[Task]]

    def data_shape(self, options: TrainOptions, start: Start | None, dataset: str) -> tuple[int | None, int | None]:
        """``(image_size, channels)`` to read a folder dataset at (built-in datasets are read as they are); a
        refusal that needs no data comes here."""
        return options.image_size, options.channels

    def recipe(self, options: TrainOptions, data: ImageSet, start: Start | None) -> Recipe:
        """The registered recipe for the design and data, fitted to the data's shape, with the options applied."""
        return self.lookup(options.model, data).with_options(options)

    def lookup(self, design: str, data: ImageSet, image_size: int | None = None) -> Recipe:
        """The registered recipe of ``design`` for ``data``, fitted to its channels, classes and size (or
        ``image_size``)."""
        c, h, _ = data.shape
        name = family(data.name, c)
        base = self.recipes.get((design, name)) or self.recipes[(design, "colour" if c == 3 else "gray")]
        return base.fit_to(c, image_size or h, len(data.classes))

    def task(self, options: TrainOptions, train: ImageSet, val: ImageSet, start: Start | None,
             command: str = "") -> Task:
        task = self.task_class(self.recipe(options, train, start), train, val, command)
        if start is not None:
            task.start_from(start.net, start.source, start.meta)
        return task


def train(kind: str, dataset: str, out: str | Path, options: TrainOptions | None = None, *,
          data_dir: str | Path | None = None, download: bool = False, resume: bool = False, overwrite: bool = False,
          command: str = "") -> list[dict[str, Any]]:
    """Train a model of ``kind`` (see :data:`KINDS`) on ``dataset``'s train split, validating on its ``val`` split,
    into the run folder ``out`` (``model.safetensors``, ``state.pt``, ``log.jsonl``); returns the per-epoch history.

    ``resume`` continues the run in ``out``, ``overwrite`` replaces it; ``command`` is recorded in the model file.
    Every refusal that needs no data (options, run folder, device, shape options) comes before any data is read.
    """
    spec = KINDS.get(kind)
    if spec is None:
        raise SiamdiffError(f"unknown model kind '{kind}': use one of {', '.join(KINDS)}")
    options = options or TrainOptions()
    design = options.model or spec.designs[0]
    if design not in spec.designs:
        raise SiamdiffError(f"unknown {{model}} '{design}' for {kind}: use {', '.join(spec.designs)}", "model")
    for name, applies in (("loss", spec.loss), ("margin", spec.margin), ("init", spec.init)):
        if getattr(options, name) is not None and not applies:
            raise SiamdiffError(f"{{{name}}} does not apply to {kind} models", name)
    # a second run into the same folder is refused, not interleaved with this one (rank 0 holds it for all ranks)
    with exclusive(out) if ranks_from_environment().main else contextlib.nullcontext():
        return _train_held(spec, design, options, dataset, out, data_dir, download, resume, overwrite, command)


def _train_held(spec: Kind, design: str, options: TrainOptions, dataset: str, out: str | Path,
                data_dir: str | Path | None, download: bool, resume: bool, overwrite: bool,
                command: str) -> list[dict[str, Any]]:
    """:func:`train`'s work, with the run folder held."""
    check_run_folder(out, resume, overwrite)
    resolve_device(options.device)
    refuse_shape_options(dataset, None if spec.resizes else options.image_size, options.channels)
    module, name = spec.trainer.split(":")
    trainer: Trainer = getattr(importlib.import_module(module), name)()
    start = None
    if options.init is not None:
        path = resolve(spec.file_kind, options.init)
        start = Start(*load_model(path, kind=spec.file_kind), path)
    options = replace(options, model=design)
    size, channels = trainer.data_shape(options, start, dataset)
    if not dataset.startswith(("folder:", "sample:")):  # read as it is — as gray only when asked, not for a model
        channels = options.channels
    train_set, val_set = load_splits(dataset, ("train", "val"), data_dir, download, size, channels, options.classes)
    return fit(trainer.task(options, train_set, val_set, start, command), out, resume, overwrite)
