"""What every model kind gives the training loop: a recipe (data) and a task (behaviour).

A :class:`Recipe` is a frozen dataclass: the network's config (``model``), the optimisation settings (``train``)
and the kind's own choices (loss, schedule, augmentation). It is stored in every model file and checked on
``--resume``. A :class:`Task` turns a recipe and the train/validation splits into what :func:`~.loop.fit` needs:
seeded batches, a loss, validation metrics and a model file. The shared parts live here: seeded initial weights,
batches drawn from the in-memory uint8 images with on-device augmentation, fine-tuning from a model file, saving.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..core.checkpoint import init_record, save_model
from ..core.version import __version__
from ..data.augment import augment
from ..data.types import ImageSet
from .config import TrainConfig
from .distributed import Ranks

if TYPE_CHECKING:
    from .options import TrainOptions


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The random source of one epoch, seeded by ``(seed, epoch)``: a resumed run draws what an uninterrupted one
    would have drawn."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator,
                     device: torch.device) -> Iterator[torch.Tensor]:
    """Index batches ``(B,)`` of a seeded permutation of ``range(n)``; a last batch of one is dropped (BatchNorm
    cannot train on a single image)."""
    order = torch.randperm(n, generator=generator, device=device)
    return (order[s:s + batch_size] for s in range(0, n - 1, batch_size))


@dataclass(frozen=True)
class Recipe:
    """How to train one model. Subclasses add the kind's own fields, each with a default.

    ``flip``/``translate``/``cutout``: random left-right mirrors, shifts of up to ``translate`` pixels and one
    ``cutout``-sided square zeroed per training image (0: none).
    """

    model: Any
    train: TrainConfig
    flip: bool = False
    translate: int = 0
    cutout: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fit_to(self, channels: int, image_size: int, n_classes: int) -> Recipe:
        """This recipe for data of ``channels`` and ``image_size`` in ``n_classes`` classes (the network's input)."""
        return replace(self, model=replace(self.model, in_channels=channels, image_size=image_size))

    def with_options(self, options: TrainOptions) -> Recipe:
        """This recipe with the settings ``options`` gives explicitly (epochs, batch size, learning rate, seed,
        device, batches per epoch); kinds with a loss option extend it."""
        return replace(self, train=options.train_config(self.train))


class Task:
    """Batches, loss, validation and saving of one model kind for :func:`~.loop.fit`.

    Subclasses set ``kind`` (the kind written into the model file) and define :meth:`build`, :meth:`loss` and
    :meth:`evaluate`; the rest has defaults that suit most kinds.
    """

    kind: ClassVar[str] = ""

    def __init__(self, recipe: Recipe, train: ImageSet, val: ImageSet, command: str = "") -> None:
        self.recipe = recipe
        self.train_set, self.val_set = train, val
        self.command = command
        self.init: dict[str, Any] | None = None  # where fine-tuning started (see :meth:`start_from`)
        self._device_data: tuple[torch.Tensor, torch.Tensor] | None = None
        self.ranks = Ranks()  # the training processes (set by the loop); each trains on its slice of every batch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.train.seed)  # seeded initial weights (and loss parameters)
            self.model = self.build()
            self.loss_module = self.build_loss_module()

    # -- what a kind defines
    def build(self) -> nn.Module:
        """The network, freshly initialised (called under the recipe's seed)."""
        raise NotImplementedError

    def build_loss_module(self) -> nn.Module | None:
        """Parameters that belong to the loss (class proxies): optimised with the model, kept through ``--resume``,
        not saved in the model file."""
        return None

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Scalar training loss of one batch (model in train mode)."""
        raise NotImplementedError

    def evaluate(self, device: torch.device) -> dict[str, float]:
        """Validation metrics after an epoch (model in eval mode, no gradients)."""
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """The kind's own facts for the model file (calibration, schedule, ...)."""
        return {}

    # -- batches
    def global_batch_size(self) -> int:
        """Images (or pairs) of one step, all ranks together: the recipe's batch size (each rank's) × ranks."""
        return self.recipe.train.batch_size * self.ranks.world

    def n_batches(self) -> int:
        """Batches per epoch."""
        return -(-len(self.train_set) // self.global_batch_size())

    def device_data(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The training images (uint8) and labels on ``device``, moved there once."""
        if self._device_data is None or self._device_data[0].device != device:
            self._device_data = self.train_set.images.to(device), self.train_set.labels.to(device)
        return self._device_data

    def batches(self, epoch: int, device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
        """The batches of one epoch, seeded by ``(seed, epoch)``: a seeded permutation of the training images,
        augmented on the device, each handed to :meth:`batch`."""
        r = self.recipe
        images, labels = self.device_data(device)
        gen = epoch_generator(r.train.seed, epoch, device)
        for idx in shuffled_batches(len(labels), self.global_batch_size(), gen, device):
            yield self.batch(augment(images[idx], r.flip, r.translate, gen, r.cutout), labels[idx], gen)

    def batch(self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """One batch from augmented uint8 images: by default ``(images in [0, 1], labels)``."""
        return images.float() / 255.0, labels

    def shard(self, batch: tuple[torch.Tensor, ...], ranks: Ranks) -> tuple[torch.Tensor, ...]:
        """This rank's part of a global batch from :meth:`batches` (by default: of every tensor, along its first
        dimension)."""
        return ranks.shard(batch)

    def val_batches(self, device: torch.device, size: int = 512) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The validation split in batches of ``size``: ``(images in [0, 1], labels)`` on ``device``."""
        for s in range(0, len(self.val_set), size):
            yield (self.val_set.images[s:s + size].to(device).float() / 255.0,
                   self.val_set.labels[s:s + size].to(device))

    # -- optional hooks of the loop
    def after_step(self) -> None:
        """Runs after each optimizer step (an EMA update)."""

    def extra_state(self) -> dict[str, Any]:
        """Task state carried through ``--resume`` (EMA weights)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    # -- files
    def start_from(self, net: nn.Module, source: str, meta: dict[str, Any]) -> None:
        """Fine-tune: start from the weights of ``net``, the model loaded from ``source`` with metadata ``meta``;
        the new model file records where it started."""
        self.model.load_state_dict(net.state_dict())
        self.init = init_record(source, meta)

    def saved_model(self) -> nn.Module:
        """The network written into the model file."""
        return self.model

    def save(self, path: Path, history: list[dict[str, Any]]) -> None:
        """Write the model file: weights, the network's config, and the facts of the run."""
        extra = {"dataset": self.train_set.name, "classes": self.train_set.classes, "recipe": self.recipe.to_dict(),
                 "world_size": self.ranks.world, "batch_per_rank": self.recipe.train.batch_size, "history": history,
                 "command": self.command, "siamdiff_version": __version__, "init": self.init, **self.metadata()}
        save_model(path, self.saved_model(), self.kind, self.recipe.model.to_dict(), extra)
