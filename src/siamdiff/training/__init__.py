"""Training every model kind: one entry point (:func:`train`) over one loop (:func:`fit`)."""

from .config import TrainConfig
from .kinds import KINDS, Kind, Trainer, train
from .loop import fit
from .options import TrainOptions
from .task import Recipe, Task

__all__ = ["KINDS", "Kind", "Recipe", "Task", "TrainConfig", "TrainOptions", "Trainer", "fit", "train"]
