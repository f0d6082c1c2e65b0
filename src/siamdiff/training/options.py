"""The settings a user gives to :func:`~siamdiff.training.train`, for every model kind (the ``train`` flags)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..core.config import MAX_IMAGE_SIZE, JsonConfig
from ..core.errors import SiamdiffError, require
from .config import TrainConfig, check_settings


@dataclass(frozen=True)
class TrainOptions(JsonConfig):
    """What to train and what to change in its recipe; ``None`` keeps the recipe's own value.

    model: the kind's design (``default``, ``seed``, ``tiny``, ...; None: the kind's first);
    epochs, batch_size, lr, seed, device, max_batches: the optimisation settings;
    image_size, channels: the size and colour of a folder dataset's images (for ``ddpm`` also the model's size on a
    built-in dataset, whose images are then resized to it);
    init: fine-tune this model (a shipped name or a path) instead of starting from random weights;
    loss, margin: the training loss and its margin, for kinds that have a choice;
    classes: train (and validate) on the images of these classes only (class numbers of the dataset);
    amp: False trains in float32 where the recipe would use bfloat16 autocast.
    """

    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    max_batches: int | None = None
    image_size: int | None = None
    channels: int | None = None
    init: str | None = None
    loss: str | None = None
    margin: float | None = None
    classes: tuple[int, ...] | None = None
    amp: bool | None = None

    def __post_init__(self) -> None:
        check_settings(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                       max_batches=self.max_batches)
        if self.image_size is not None:
            require(isinstance(self.image_size, int) and 1 <= self.image_size <= MAX_IMAGE_SIZE, "image_size",
                    f"a side from 1 to {MAX_IMAGE_SIZE}", self.image_size)
        if self.channels is not None:
            require(self.channels in (1, 3), "channels", "1 or 3", self.channels)
        if self.margin is not None:
            require(isinstance(self.margin, (int, float)) and 0 < self.margin < math.inf, "margin",
                    "a positive number", self.margin)
        if self.init is not None and not str(self.init).strip():
            raise SiamdiffError("{init} must name a model: a shipped name or a path", "init")

    def given(self) -> list[str]:
        """The names of the optional settings that are set (not None), in field order."""
        return [k for k, v in self.to_dict().items() if v is not None and k not in ("seed", "device", "model")]

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """``base`` with the settings these options give explicitly."""
        return replace(base, epochs=self.epochs or base.epochs, batch_size=self.batch_size or base.batch_size,
                       lr=self.lr or base.lr, seed=self.seed, device=self.device,
                       max_batches=self.max_batches if self.max_batches is not None else base.max_batches,
                       amp=base.amp if self.amp is None else self.amp)
