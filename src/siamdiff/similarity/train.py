"""Training a Siamese embedding: recipes per dataset, the similarity task for :func:`siamdiff.train.fit`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..core.version import __version__
from ..core.checkpoint import init_record, load_model, save_model
from ..core.registry import resolve
from ..data.augment import augment
from ..data.datasets import ImageSet, load_splits, refuse_shape_options
from ..core.training.loop import TrainConfig, epoch_generator, fit, shuffled_batches
from .calibration import calibrate
from .embed import embed
from ..core.errors import SiamdiffError
from .losses import PAIR_FORMS, LossConfig, Proxies, contrastive_loss
from .metrics import knn_search, recall_at_k, roc_auc
from ..nets.convnet import EmbedConfig, EmbeddingNet, preset
from .pairs import balanced_pairs, seed_pairs

VAL_PAIRS = 10_000
VAL_PAIR_SEED = 1
PROXY_IMAGES = 500  # training images per class whose mean embedding starts a fine-tuned run's class proxy


@dataclass(frozen=True)
class SimilarityRecipe:
    """How to train one model: network, loss, pairing, augmentation and optimisation."""

    model: EmbedConfig
    loss: LossConfig
    train: TrainConfig
    pairs: str = "in-batch"  # in-batch: every pair of a batch | seed: the report's one partner per image
    flip: bool = False
    translate: int = 0
    cutout: int = 0  # side of the square zeroed per image (0: none)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "loss": dataclasses.asdict(self.loss), "train": self.train.to_dict(),
                "pairs": self.pairs, "flip": self.flip, "translate": self.translate, "cutout": self.cutout}


class _Defaults(NamedTuple):
    epochs: int
    flip: bool
    translate: int
    loss: str
    cutout: int = 0
    weight_decay: float = 5e-4


# Defaults per dataset; folder datasets: 20 epochs, flips for colour, translation by 2, supcon. The seed recipe is
# the report's: Adam 0.01, batch 100 pairs, margin 5 with the squared-margin contrastive form, random horizontal
# flips, 10 epochs MNIST / 20 CIFAR.
# Loss: supervised contrastive beat the in-batch contrastive loss on MNIST (7 epochs each, GPU: validation recall@1
# 0.995 vs 0.993, verification 0.997 vs 0.991); on CIFAR-10 the normalized softmax learns much faster (2 epochs,
# CPU: validation recall@1 0.676 vs supcon's 0.523); docs/similarity.md has the rest.
# CIFAR-10: 22 epochs with AdamW's decay 5e-4 (next to none) ended at training loss 0.03 with validation recall@1
# flat at 0.89 — fitted, not learning; hence cutout 8 (as in Page's ResNet-9 runs) and a real decoupled weight decay
# of 0.05 (Loshchilov & Hutter 2019) over a longer schedule.
_DEFAULTS = {"mnist": _Defaults(15, False, 2, "supcon"), "fashion-mnist": _Defaults(20, True, 2, "supcon"),
             "cifar10": _Defaults(30, True, 4, "normsoftmax", cutout=8, weight_decay=0.05)}


def recipe(model: str, dataset: str, in_channels: int, image_size: int, loss: str | None = None,
           margin: float | None = None, epochs: int | None = None, batch_size: int | None = None,
           lr: float | None = None, seed: int = 0, device: str = "auto",
           max_batches: int | None = None) -> SimilarityRecipe:
    """The recipe for ``--model seed|default|tiny`` on a dataset, with any explicitly given setting overriding it."""
    net = preset(model, dataset, in_channels, image_size)
    if model == "seed":
        if loss not in (None, *PAIR_FORMS):
            raise SiamdiffError(f"the seed recipe trains on pairs: --loss contrastive or hadsell, not {loss}")
        base_epochs = 20 if in_channels == 3 else 10
        loss_cfg = LossConfig(loss or "contrastive", margin if margin is not None else 5.0)
        train = TrainConfig(epochs or base_epochs, batch_size or 100, lr or 0.01, 0.0, "adam", "constant", seed,
                            device, max_batches=max_batches)
        return SimilarityRecipe(net, loss_cfg, train, pairs="seed", flip=True, translate=0)
    d = _DEFAULTS.get(dataset, _Defaults(20, in_channels == 3, 2, "supcon"))
    loss_cfg = LossConfig.default(loss or d.loss, margin)
    train = TrainConfig(epochs or (2 if model == "tiny" else d.epochs), batch_size or 256, lr or 3e-3,
                        d.weight_decay, "adamw", "onecycle", seed, device, max_batches=max_batches)
    # a model trained on random mirrors embeds an image and its mirror alike: average the two outside training
    net = dataclasses.replace(net, mirror_average=d.flip)
    return SimilarityRecipe(net, loss_cfg, train, flip=d.flip, translate=d.translate, cutout=d.cutout)


class SimilarityTask:
    """Batches, loss and validation for a Siamese embedding (see :class:`siamdiff.train.Task`)."""

    def __init__(self, recipe: SimilarityRecipe, train: ImageSet, val: ImageSet, command: str = "") -> None:
        self.recipe = recipe
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.train.seed)  # seeded initial weights (and proxies)
            self.model = EmbeddingNet(recipe.model)
            # normsoftmax's class proxies: trained with the network (fit optimises task.loss_module), never saved
            # in the model file — a similarity model is the embedding network alone
            self.loss_module = Proxies(len(train.classes), recipe.model.embed_dim) \
                if recipe.loss.name == "normsoftmax" else None
        self.train_set, self.val_set = train, val
        self.command = command
        self.loss_fn = recipe.loss.in_batch(self.loss_module)
        self._device_images: torch.Tensor | None = None
        self._device_labels: torch.Tensor | None = None
        try:
            self.val_pairs = balanced_pairs(val.labels.numpy(), VAL_PAIRS, VAL_PAIR_SEED)
        except ValueError as exc:
            raise SiamdiffError(f"validation split of '{val.name}' cannot calibrate the model: {exc}") from None
        self.calibration: dict[str, float] | None = None
        self._val_metrics: dict[str, float] = {}
        self.init: dict[str, Any] | None = None  # where fine-tuning started (see :meth:`start_from`)

    def start_from(self, net: EmbeddingNet, source: str, meta: dict[str, Any]) -> None:
        """Start from the weights of ``net``, the similarity model loaded from ``source`` with metadata ``meta``
        (fine-tuning). Model files do not hold normsoftmax's class proxies, so each starts at the direction of its
        class's mean embedding (of up to ``PROXY_IMAGES`` training images per class): the first steps then refine
        the trained geometry instead of pulling it towards random proxies."""
        self.model.load_state_dict(net.state_dict())
        if self.loss_module is not None:
            labels = self.train_set.labels.numpy()
            rows = [np.flatnonzero(labels == k)[:PROXY_IMAGES] for k in range(len(self.train_set.classes))]
            emb = torch.from_numpy(embed(self.model, self.train_set.images[np.concatenate(rows)]))
            with torch.no_grad():  # a class without training images keeps its random proxy
                for k, m in enumerate(emb.split([len(r) for r in rows])):
                    if len(m):
                        self.loss_module.weight[k] = torch.nn.functional.normalize(m.mean(0), dim=0)
        self.init = init_record(source, meta)

    def n_batches(self) -> int:
        n = len(self.train_set)
        return -(-n // self.recipe.train.batch_size)

    def _on_device(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._device_images is None or self._device_images.device != device:
            self._device_images = self.train_set.images.to(device)
            self._device_labels = self.train_set.labels.to(device)
        return self._device_images, self._device_labels

    def batches(self, epoch: int, device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
        images, labels = self._on_device(device)
        r = self.recipe
        bs = r.train.batch_size
        gen = epoch_generator(r.train.seed, epoch, device)
        if r.pairs == "seed":
            pairs = seed_pairs(self.train_set.labels.numpy(), gen.initial_seed())
            i, j, same = (torch.from_numpy(a).to(device) for a in pairs)
            for s in range(0, len(i) - 1, bs):  # a last batch of one pair is dropped (BatchNorm needs two)
                x = torch.cat([images[i[s:s + bs]], images[j[s:s + bs]]])
                yield augment(x, r.flip, r.translate, gen, r.cutout), same[s:s + bs]
        else:
            for idx in shuffled_batches(len(labels), bs, gen, device):
                yield augment(images[idx], r.flip, r.translate, gen, r.cutout), labels[idx]

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        emb = self.model(x).float()
        # distances in float32 even under bfloat16 autocast: ||a||² + ||b||² − 2ab cancels badly in bf16
        with torch.autocast(emb.device.type, enabled=False):
            if self.recipe.pairs == "seed":
                a, b = emb.chunk(2)
                return contrastive_loss(a, b, y, self.recipe.loss.margin, self.recipe.loss.name)
            return self.loss_fn(emb, y)

    def evaluate(self, device: torch.device) -> dict[str, float]:
        emb = embed(self.model, self.val_set.images, device=device)
        labels = self.val_set.labels.numpy()
        _, idx = knn_search(emb, emb, 1, exclude_self=True)
        i, j, same = self.val_pairs
        d = np.linalg.norm(emb[i] - emb[j], axis=1)
        cal = calibrate(d, same)
        self.calibration = cal.to_dict()
        val_acc = float(((d <= cal.threshold) == (same == 1)).mean())
        self._val_metrics = {"val_recall_at_1": recall_at_k(labels, labels[idx], ks=(1,))[1],
                             "val_roc_auc": roc_auc(-d, same.astype(bool)),
                             "val_verification_accuracy": val_acc}
        return dict(self._val_metrics)

    def save(self, path: Path, history: list[dict[str, Any]]) -> None:
        extra = {"dataset": self.train_set.name, "classes": self.train_set.classes,
                 "calibration": self.calibration, "recipe": self.recipe.to_dict(), "history": history,
                 "command": self.command, "siamdiff_version": __version__, "init": self.init}
        save_model(path, self.model, "similarity", self.recipe.model.to_dict(), extra)


def train_similarity(dataset: str, out_dir: str | Path, model: str = "default", data_root: str | None = None,
                     download: bool = False, resume: bool = False, overwrite: bool = False, command: str = "",
                     image_size: int | None = None, channels: int | None = None, init: str | None = None,
                     **overrides: Any) -> list[dict[str, Any]]:
    """Train an embedding on ``dataset`` (``train`` split; validation on ``val``) and write it to ``out_dir``.

    ``init`` (a shipped name or a model path) fine-tunes that similarity model: its network is kept (``model`` is
    then ignored; a folder dataset is read at the model's size and channel count), the rest is the dataset's
    recipe for that kind of network with ``overrides`` (epochs, learning rate, loss, ...) for the new run."""
    refuse_shape_options(dataset, image_size, channels)
    net = meta = None
    if init is not None:
        path = resolve("similarity", init)
        net, meta = load_model(path, kind="similarity")
        image_size, channels = net.config.image_size, net.config.in_channels
        model = "seed" if net.config.arch == "seed" else "default"
    train, val = load_splits(dataset, ("train", "val"), data_root, download, image_size, channels)
    c, h, _ = train.shape
    r = recipe(model, train.name, c, h, **overrides)
    if net is not None:
        if (c, h) != (net.config.in_channels, net.config.image_size):
            raise SiamdiffError(f"--init '{init}' embeds {net.config.in_channels}-channel {net.config.image_size}px "
                                f"images; '{train.name}' has {c}-channel {h}px images")
        r = dataclasses.replace(r, model=net.config)
    task = SimilarityTask(r, train, val, command)
    if net is not None:
        task.start_from(net, str(path), meta)
    return fit(task, r.train, out_dir, resume, overwrite)
