"""The classifier: the convolutional network with a class head, trained with cross-entropy.

Reconstruction uses it to check that denoised images keep their class and to name the class for ``--label auto``.
Its network is the similarity ``default`` design (or ``tiny``) with ``embed_dim`` = the number of classes and no
normalisation; training flips colour images and shifts every image by up to 2 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..training.config import TrainConfig
from ..training.kinds import FAMILIES, Trainer
from ..training.task import Recipe, Task
from .convnet import EmbeddingNet, preset


@dataclass(frozen=True)
class ClassifierRecipe(Recipe):
    """The classifier's network, optimisation and augmentation."""

    def fit_to(self, channels: int, image_size: int, n_classes: int) -> ClassifierRecipe:
        return replace(self, model=replace(self.model, in_channels=channels, image_size=image_size,
                                           embed_dim=n_classes))


def _recipes() -> dict[tuple[str, str], ClassifierRecipe]:
    """10 epochs (tiny: 1), AdamW one-cycle 1e-3 with weight decay 5e-4, batch 128; per dataset family the
    network's input statistics."""
    table = {}
    train = TrainConfig(epochs=10, batch_size=128, lr=1e-3, weight_decay=5e-4)
    for name, (c, size) in FAMILIES.items():
        for design, epochs in (("default", 10), ("tiny", 1)):
            net = replace(preset(design, name, c, size), normalize=False)
            table[(design, name)] = ClassifierRecipe(net, replace(train, epochs=epochs), flip=c == 3, translate=2)
    return table


class ClassifierTask(Task):
    kind = "classifier"

    def build(self) -> nn.Module:
        return EmbeddingNet(self.recipe.model)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x).float(), y)

    def evaluate(self, device: torch.device) -> dict[str, float]:
        correct, n = 0, 0
        for x, y in self.val_batches(device):
            correct += (self.model(x).argmax(1) == y).sum().item()
            n += len(x)
        return {"val_accuracy": correct / n}


class ClassifierTrainer(Trainer):
    """``train classifier``: ``default`` or ``tiny``."""

    task_class = ClassifierTask
    recipes = _recipes()
