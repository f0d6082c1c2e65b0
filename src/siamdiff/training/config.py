"""The optimisation settings of every recipe, and the one check of their values."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from ..core.config import JsonConfig, check_seed
from ..core.errors import SiamdiffError, require


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Optimisation settings shared by all models (the ``train`` part of every recipe)."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"  # adamw | adam | sgd
    schedule: str = "onecycle"  # onecycle | constant
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bfloat16 autocast on CUDA, and on CPUs with bfloat16 instructions (see autocast_enabled)
    channels_last: bool = True  # convolution weights (and so activations) in NHWC memory order
    max_batches: int | None = None  # cap per epoch (smoke runs)

    def __post_init__(self) -> None:
        check_settings(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                       max_batches=self.max_batches)
        if self.optimizer not in OPTIMIZERS:
            raise SiamdiffError(f"unknown optimizer '{self.optimizer}': use {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise SiamdiffError(f"unknown schedule '{self.schedule}': use {' or '.join(SCHEDULES)}")


OPTIMIZERS = ("adamw", "adam", "sgd")
MAX_EPOCHS = 100_000  # more only runs until it is killed
MAX_LR = 10.0  # far above any useful rate (the recipes use 1e-3 to 1e-2); 1e300 overflowed the optimiser
SCHEDULES = ("onecycle", "constant")


def check_settings(**values: Any) -> None:
    """Refuse training settings out of range, naming each by its parameter: the one check of these values, for a
    :class:`TrainConfig` and for the options that override one (given as keywords; None means not given)."""
    rules = {"epochs": (lambda v: 1 <= v <= MAX_EPOCHS, f"from 1 to {MAX_EPOCHS:,}"),
             "batch_size": (lambda v: v >= 1, "a positive number"),
             "max_batches": (lambda v: v >= 1, "a positive number"),
             "lr": (lambda v: 0 < v <= MAX_LR, f"a number above 0 and at most {MAX_LR:g}")}
    for name, value in values.items():
        if value is None:
            continue
        if name == "seed":
            check_seed(value)
            continue
        ok, wanted = rules[name]
        whole = name != "lr"
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if whole else numbers.Real):
            raise SiamdiffError(f"{{{name}}} must be {'a whole number' if whole else 'a number'}, got {value!r}", name)
        require(ok(value), name, wanted, value)  # nan fails every comparison
