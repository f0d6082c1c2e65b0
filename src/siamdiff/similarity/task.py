"""Training a Siamese embedding: the recipes per design and dataset, the task, and its trainer for ``train``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..core.errors import SiamdiffError
from ..data.augment import augment
from ..data.types import ImageSet
from ..nets.convnet import EmbeddingNet, preset
from ..training.config import TrainConfig
from ..training.kinds import FAMILIES, Start, Trainer, family
from ..training.options import TrainOptions
from ..training.distributed import Ranks
from ..training.task import Recipe, Task, epoch_generator
from .calibration import calibrate
from .embed import embed
from .losses import LOSSES, MARGIN_LOSSES, PAIR_FORMS, LossConfig, Proxies, contrastive_loss
from .metrics import knn_search, recall_at_k, roc_auc
from .pairs import balanced_pairs, seed_pairs

VAL_PAIRS = 10_000
WHITEN_IMAGES = 5_000  # training images whose patches set a whitened stem
VAL_PAIR_SEED = 1
PROXY_IMAGES = 500  # training images per class whose mean embedding starts a fine-tuned run's class proxy


@dataclass(frozen=True)
class SimilarityRecipe(Recipe):
    """Network, loss, pairing, augmentation and optimisation of one embedding.

    pairs: ``in-batch`` (every pair of a batch) or ``seed`` (the report's one partner per image); whiten: the
    first convolution starts as a frozen patch-whitening filter bank of the first ``WHITEN_IMAGES`` training images
    (:meth:`~siamdiff.nets.convnet.EmbeddingNet.whiten_stem`).
    """

    loss: LossConfig = field(default_factory=LossConfig)
    pairs: str = "in-batch"
    whiten: bool = False

    def with_options(self, options: TrainOptions) -> SimilarityRecipe:
        recipe = super().with_options(options)
        if options.loss is None and options.margin is None:
            return recipe
        name = self.loss.name if options.loss is None else options.loss
        if name not in LOSSES:
            raise SiamdiffError(f"unknown {{loss}} '{name}': use one of {', '.join(LOSSES)}", "loss")
        if options.margin is not None and name not in MARGIN_LOSSES:
            raise SiamdiffError(f"{{margin}} does not apply to the {name} loss (it has a temperature)", "margin")
        if self.pairs == "seed":  # the seed's unnormalised 2-d output keeps its own margin
            if name not in PAIR_FORMS:
                raise SiamdiffError(f"the seed recipe trains on pairs: {{loss}} contrastive or hadsell, not {name}",
                                    "loss")
            loss = LossConfig(name, self.loss.margin if options.margin is None else options.margin)
        else:
            loss = LossConfig.default(name, options.margin)
        return replace(recipe, loss=loss)


# Defaults per dataset family: (epochs, flip, translate, loss, cutout, weight decay, label smoothing, whiten). Folders
# ("gray", "colour"): 20 epochs, flips for colour, translation by 2, supcon. Loss: supervised contrastive beat the
# in-batch contrastive loss on MNIST; on CIFAR-10 the normalized softmax learns faster (docs/similarity.md), with a
# real decoupled weight decay of 0.05 (Loshchilov & Hutter 2019: with AdamW's 5e-4 the network fitted its training set
# while validation recall stayed flat) and airbench's label smoothing of 0.2 and shifts of 2 pixels (Jordan 2024): for
# a 20-epoch budget, pad-4-and-crop and cutout 8 gave a lower recall@1, and a frozen patch-whitening stem a higher one
# in less time (25 epochs with it: a higher recall@1, a lower verification accuracy; docs/training.md). On
# Fashion-MNIST the same normsoftmax recipe raised recall@1 (0.9317 against supcon's 0.9265) but lowered verification
# accuracy from 0.9591 to 0.9244, so supcon stays.
_DEFAULTS = {"mnist": (8, False, 2, "supcon", 0, 5e-4, 0.0, False),
             "fashion-mnist": (20, True, 2, "supcon", 0, 5e-4, 0.0, False),
             "cifar10": (20, True, 2, "normsoftmax", 0, 0.05, 0.2, True),
             "gray": (20, False, 2, "supcon", 0, 5e-4, 0.0, False),
             "colour": (20, True, 2, "supcon", 0, 5e-4, 0.0, False)}


def _recipes() -> dict[tuple[str, str], SimilarityRecipe]:
    """The recipe of every design for every family. ``default`` and ``tiny`` (2 epochs, a tiny network for tests)
    follow the family's defaults: AdamW, one-cycle peaking at 3e-3, batch 256, in-batch pairs; a model trained on
    random mirrors embeds an image and its mirror alike (mirror averaging). ``seed`` is the report's recipe: Adam
    0.01, batch 100 pairs, margin 5 with the squared-margin contrastive form, random flips, constant learning rate,
    10 epochs for grayscale, 20 for colour."""
    table = {}
    for name, (epochs, flip, translate, loss, cutout, decay, smoothing, whiten) in _DEFAULTS.items():
        c, size = FAMILIES[name]
        train = TrainConfig(epochs=epochs, batch_size=256, lr=3e-3, weight_decay=decay)
        for design, epochs_of_design in (("default", epochs), ("tiny", 2)):
            net = replace(preset(design, name, c, size), mirror_average=flip)
            table[(design, name)] = SimilarityRecipe(net, replace(train, epochs=epochs_of_design), flip=flip,
                                                     translate=translate, cutout=cutout, whiten=whiten,
                                                     loss=replace(LossConfig.default(loss), label_smoothing=smoothing))
        seed_train = TrainConfig(epochs=20 if c == 3 else 10, batch_size=100, lr=0.01, weight_decay=0.0,
                                 optimizer="adam", schedule="constant")
        table[("seed", name)] = SimilarityRecipe(preset("seed", name, c, size), seed_train, flip=True,
                                                 loss=LossConfig("contrastive", 5.0), pairs="seed")
    return table


RECIPES = _recipes()


def recipe(dataset: str, channels: int, image_size: int, options: TrainOptions | None = None) -> SimilarityRecipe:
    """The recipe of ``options.model`` (default ``default``) for a dataset of that name and shape, with the options
    applied."""
    options = options or TrainOptions()
    base = RECIPES[(options.model or "default", family(dataset, channels))]
    return base.fit_to(channels, image_size, 0).with_options(options)


class SimilarityTask(Task):
    """Batches, loss, validation and calibration of a Siamese embedding."""

    kind = "similarity"
    recipe: SimilarityRecipe

    def __init__(self, recipe: SimilarityRecipe, train: ImageSet, val: ImageSet, command: str = "") -> None:
        super().__init__(recipe, train, val, command)
        self.loss_fn = recipe.loss.in_batch(self.loss_module)
        try:
            self.val_pairs = balanced_pairs(val.labels.numpy(), VAL_PAIRS, VAL_PAIR_SEED)
        except ValueError as exc:
            raise SiamdiffError(f"validation split of '{val.name}' cannot calibrate the model: {exc}") from None
        self.calibration: dict[str, float] | None = None

    def build(self) -> EmbeddingNet:
        net = EmbeddingNet(self.recipe.model)
        if self.recipe.whiten:
            net.whiten_stem(self.train_set.images[:WHITEN_IMAGES])
        return net

    def build_loss_module(self) -> Proxies | None:
        # normsoftmax's class proxies: trained with the network, never saved in the model file — a similarity model
        # is the embedding network alone
        if self.recipe.loss.name != "normsoftmax":
            return None
        return Proxies(len(self.train_set.classes), self.recipe.model.embed_dim)

    def start_from(self, net: torch.nn.Module, source: str, meta: dict[str, Any]) -> None:
        """Fine-tune from ``net``. Model files do not hold normsoftmax's class proxies, so each starts at the
        direction of its class's mean embedding (of up to ``PROXY_IMAGES`` training images per class): the first
        steps then refine the trained geometry instead of pulling it towards random proxies."""
        super().start_from(net, source, meta)
        if self.loss_module is not None:
            labels = self.train_set.labels.numpy()
            rows = [np.flatnonzero(labels == k)[:PROXY_IMAGES] for k in range(len(self.train_set.classes))]
            emb = torch.from_numpy(embed(self.model, self.train_set.images[np.concatenate(rows)]))
            with torch.no_grad():  # a class without training images keeps its random proxy
                for k, m in enumerate(emb.split([len(r) for r in rows])):
                    if len(m):
                        self.loss_module.weight[k] = torch.nn.functional.normalize(m.mean(0), dim=0)

    def batches(self, epoch: int, device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
        r = self.recipe
        if r.pairs != "seed":
            yield from super().batches(epoch, device)
            return
        images, _ = self.device_data(device)
        gen = epoch_generator(r.train.seed, epoch, device)
        i, j, same = (torch.from_numpy(a).to(device) for a in seed_pairs(self.train_set.labels.numpy(),
                                                                           gen.initial_seed()))
        bs = self.global_batch_size()
        for s in range(0, len(i) - 1, bs):  # a last batch of one pair is dropped (BatchNorm needs two)
            x = torch.cat([images[i[s:s + bs]], images[j[s:s + bs]]])
            yield augment(x, r.flip, r.translate, gen, r.cutout), same[s:s + bs]

    def batch(self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        return images, labels  # the network takes uint8 images

    def shard(self, batch: tuple[torch.Tensor, ...], ranks: Ranks) -> tuple[torch.Tensor, ...]:
        if self.recipe.pairs != "seed":
            return ranks.shard(batch)
        x, same = batch  # x holds the first images of the pairs, then the second ones
        a, b, same = ranks.shard((*x.chunk(2), same))
        return torch.cat([a, b]), same

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        emb = self.model(x).float()
        # distances in float32 even under bfloat16 autocast: ||a||² + ||b||² − 2ab cancels badly in bf16
        with torch.autocast(emb.device.type, enabled=False):
            if self.recipe.pairs == "seed":
                a, b = emb.chunk(2)
                return contrastive_loss(a, b, y, self.recipe.loss.margin, self.recipe.loss.name)
            # the loss of the global batch: every rank's embeddings in it (gradients reach the rank of each)
            return self.loss_fn(*self.ranks.gather(emb, y))

    def evaluate(self, device: torch.device) -> dict[str, float]:
        emb = embed(self.model, self.val_set.images, device=device)
        labels = self.val_set.labels.numpy()
        _, idx = knn_search(emb, emb, 1, exclude_self=True)
        i, j, same = self.val_pairs
        d = np.linalg.norm(emb[i] - emb[j], axis=1)
        cal = calibrate(d, same)
        self.calibration = cal.to_dict()
        val_acc = float(((d <= cal.threshold) == (same == 1)).mean())
        return {"val_recall_at_1": recall_at_k(labels, labels[idx], ks=(1,))[1],
                "val_roc_auc": roc_auc(-d, same.astype(bool)), "val_verification_accuracy": val_acc}

    def metadata(self) -> dict[str, Any]:
        return {"calibration": self.calibration}


class SimilarityTrainer(Trainer):
    """``train similarity``: a new embedding, or ``init`` fine-tuned on the dataset's recipe for its kind of
    network (``seed`` or ``default``); a folder dataset is then read at the model's size and channel count."""

    task_class = SimilarityTask
    recipes = RECIPES

    def data_shape(self, options: TrainOptions, start: Start | None, dataset: str) -> tuple[int | None, int | None]:
        if start is None:
            return options.image_size, options.channels
        cfg = start.net.config
        for option, given, own in (("image_size", options.image_size, cfg.image_size),
                                   ("channels", options.channels, cfg.in_channels)):
            if given is not None and given != own:
                raise SiamdiffError(f"{{init}} '{options.init}' embeds {cfg.in_channels}-channel {cfg.image_size}px "
                                    f"images: leave out {{{option}}} (a folder is read at the model's size)", "init",
                                    option)
        return cfg.image_size, cfg.in_channels

    def recipe(self, options: TrainOptions, data: ImageSet, start: Start | None) -> SimilarityRecipe:
        if start is None:
            return super().recipe(options, data, start)
        cfg = start.net.config
        c, h, _ = data.shape
        if (c, h) != (cfg.in_channels, cfg.image_size):
            raise SiamdiffError(f"{{init}} '{options.init}' embeds {cfg.in_channels}-channel {cfg.image_size}px "
                                f"images; '{data.name}' has {c}-channel {h}px images", "init")
        design = "seed" if cfg.arch == "seed" else "default"
        return replace(super().recipe(replace(options, model=design), data, start), model=cfg)
