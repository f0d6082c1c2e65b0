"""Training the diffusion model with the shared loop: ε-prediction, label dropout for guidance, EMA weights."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.version import __version__
from ..core.checkpoint import init_record, save_model
from ..data.augment import augment
from ..data.datasets import ImageSet
from ..core.training.loop import TrainConfig, epoch_generator, shuffled_batches
from .models import UNetConfig, build_from_config
from .schedule import Schedule, add_noise


@dataclass(frozen=True)
class DiffusionRecipe:
    """Network, schedule and training settings of a DDPM; ``loss`` is ``mse`` or ``l1`` (the report's)."""

    model: UNetConfig
    schedule: Schedule
    train: TrainConfig
    loss: str = "mse"
    label_dropout: float = 0.1
    ema: float = 0.999
    flip: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "schedule": self.schedule.to_dict(), "train": self.train.to_dict(),
                "loss": self.loss, "label_dropout": self.label_dropout, "ema": self.ema, "flip": self.flip}


def at_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images in [0, 1] resized (bilinear) to ``size``: how a model made for another size sees a dataset, in
    training (:func:`to_model_range`) and in the evaluation protocol.

    The protocol resizes the *clean* test images for such a model (the seed design's 32×32 on 28×28 digits) and
    draws the noise there, as the report did: resizing the noisy image instead would hand the model correlated noise
    of about 0.67σ while telling it σ, and resizing its output back would cap the PSNR at that of the round trip
    (25.2 dB on MNIST)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def to_model_range(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` -> float in [−1, 1], resized (bilinear) when the model's size differs."""
    return at_size(images.float() / 255.0, size) * 2 - 1


class DiffusionTask:
    """Batches, loss and validation for a DDPM (see :class:`siamdiff.train.Task`)."""

    def __init__(self, recipe: DiffusionRecipe, train: ImageSet, val: ImageSet, command: str = "") -> None:
        self.recipe = recipe
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.train.seed)
            self.model = build_from_config(recipe.model.to_dict())
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.train_set, self.val_set = train, val
        self.command = command
        self.init: dict[str, Any] | None = None  # where fine-tuning started (see :meth:`start_from`)
        self._steps = 0
        self._ema_params: list[torch.Tensor] | None = None

    def start_from(self, net: torch.nn.Module, source: str, meta: dict[str, Any]) -> None:
        """Start from the weights of ``net``, the diffusion model loaded from ``source`` with metadata ``meta``
        (fine-tuning): the trained weights and their EMA copy both begin there, and the saved model records where
        it came from."""
        weights = net.state_dict()
        self.model.load_state_dict(weights)
        self.ema.load_state_dict(weights)
        self.init = init_record(source, meta)

    def n_batches(self) -> int:
        return -(-len(self.train_set) // self.recipe.train.batch_size)

    def batches(self, epoch: int, device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
        r = self.recipe
        gen = epoch_generator(r.train.seed, epoch, device)
        images, labels = self.train_set.images.to(device), self.train_set.labels.to(device)
        for idx in shuffled_batches(len(labels), r.train.batch_size, gen, device):
            x0 = to_model_range(augment(images[idx], r.flip, 0, gen), r.model.image_size)
            t = torch.randint(0, r.schedule.steps, (len(idx),), generator=gen, device=device)
            eps = torch.randn(x0.shape, generator=gen, device=device)
            y = labels[idx].clone()
            drop = torch.rand(len(idx), generator=gen, device=device) < r.label_dropout
            y[drop] = r.model.num_classes  # the "no class" label
            yield x0, t, eps, y

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x0, t, eps, y = batch
        x_t = add_noise(self.recipe.schedule, x0, t, eps)
        pred = self.model(x_t, t, y if self.recipe.model.num_classes else None)
        return F.l1_loss(pred.float(), eps) if self.recipe.loss == "l1" else F.mse_loss(pred.float(), eps)

    @torch.no_grad()
    def after_step(self) -> None:
        """Update the EMA weights (decay warms up as (1 + n) / (10 + n), capped at ``recipe.ema``; no warm-up when
        fine-tuning)."""
        self._steps += 1
        decay = min(self.recipe.ema, (1 + self._steps) / (10 + self._steps))  # ema 0: plain weights
        if self.init is not None:  # fine-tuning: the average starts at the trained weights, at full decay
            decay = self.recipe.ema
        if self._ema_params is None:  # the EMA copy follows the model onto its device once
            self.ema.to(next(self.model.parameters()).device)
            self._ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(self._ema_params, [p.detach() for p in self.model.parameters()], 1 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    def evaluate(self, device: torch.device) -> dict[str, float]:
        """Validation ε-MSE of the EMA weights at fixed, seeded steps and noise."""
        self.ema.to(device).eval()
        gen = torch.Generator(device=device).manual_seed(12345)
        r = self.recipe
        total, count = 0.0, 0
        for s in range(0, len(self.val_set), 512):
            x0 = to_model_range(self.val_set.images[s:s + 512].to(device), r.model.image_size)
            t = torch.randint(0, r.schedule.steps, (len(x0),), generator=gen, device=device)
            eps = torch.randn(x0.shape, generator=gen, device=device)
            y = self.val_set.labels[s:s + 512].to(device) if r.model.num_classes else None
            pred = self.ema(add_noise(r.schedule, x0, t, eps), t, y)
            total += F.mse_loss(pred.float(), eps, reduction="sum").item()
            count += eps.numel()
        return {"val_eps_mse": total / max(count, 1)}

    def extra_state(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "ema_steps": self._steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state["ema"])
        self._steps = int(state["ema_steps"])

    def save(self, path: Path, history: list[dict[str, Any]]) -> None:
        extra = {"dataset": self.train_set.name, "classes": self.train_set.classes,
                 "schedule": self.recipe.schedule.to_dict(), "recipe": self.recipe.to_dict(), "history": history,
                 "command": self.command, "siamdiff_version": __version__, "weights": "ema", "init": self.init}
        save_model(path, self.ema, "diffusion", self.recipe.model.to_dict(), extra)


__all__ = ["DiffusionRecipe", "DiffusionTask", "at_size", "to_model_range"]


def diffusion_recipe(model: str, in_channels: int, image_size: int, epochs: int | None = None,
                     batch_size: int | None = None, lr: float | None = None, seed: int = 0, device: str = "auto",
                     max_batches: int | None = None) -> DiffusionRecipe:
    """``unet`` (siamdiff's), ``seed`` (the report's design: T=300 linear, L1, Adam 1e-3, batch 128, 19 epochs,
    32×32, no classes) or ``tiny`` (tests)."""
    from ..core.errors import SiamdiffError
    from .models import PRESETS

    if model == "seed":
        cfg = UNetConfig(**{**PRESETS["seed"].to_dict(), "in_channels": in_channels, "channels": (32, 64, 128, 256,
                                                                                                  512)})
        train = TrainConfig(epochs or 19, batch_size or 128, lr or 1e-3, 0.0, "adam", "constant", seed, device,
                            max_batches=max_batches)
        return DiffusionRecipe(cfg, Schedule("linear", 300), train, loss="l1", label_dropout=0.0, ema=0.0)
    if model == "unet":
        base = PRESETS["unet-cifar10" if in_channels == 3 else "unet-mnist"]
    elif model == "tiny":
        base = PRESETS["tiny"]
    else:
        raise SiamdiffError(f"unknown diffusion model '{model}': use unet, seed or tiny")
    cfg = UNetConfig(**{**base.to_dict(), "in_channels": in_channels, "image_size": image_size,
                        "num_classes": 10 if model == "unet" else base.num_classes})
    train = TrainConfig(epochs or (2 if model == "tiny" else 20), batch_size or 128, lr or 1e-3, 0.0, "adamw",
                        "onecycle", seed, device, max_batches=max_batches)
    return DiffusionRecipe(cfg, Schedule("cosine", 1000), train, flip=in_channels == 3)


def train_diffusion(dataset: str, out_dir: str | Path, model: str = "unet", data_root: str | None = None,
                    download: bool = False, resume: bool = False, overwrite: bool = False, command: str = "",
                    image_size: int | None = None, channels: int | None = None, init: str | None = None,
                    loss: str | None = None, **overrides: Any) -> list[dict[str, Any]]:
    """Train a DDPM on ``dataset`` (``train`` split, validation ε-MSE on ``val``) and write it to ``out_dir``.

    ``init`` (a shipped name or a model path) fine-tunes that diffusion model: its network, schedule and loss are
    kept (``model`` is then ignored; a folder dataset is read at the model's size and channel count unless
    ``image_size``/``channels`` say otherwise); ``overrides`` set the new run's epochs, learning rate and batch
    size. ``loss`` (``mse`` or ``l1``) replaces the design's loss on the noise, for a new model only."""
    from ..core.checkpoint import load_model
    from ..data.datasets import load_splits, refuse_shape_options
    from ..core.errors import SiamdiffError
    from ..core.registry import resolve
    from ..core.training.loop import fit

    builtin = not dataset.startswith(("folder:", "sample:"))  # read at its own size; --image-size is the model's
    refuse_shape_options(dataset, channels=channels)
    if loss not in (None, "mse", "l1"):
        raise SiamdiffError(f"unknown loss '{loss}': use mse or l1")
    if init is not None:
        if loss is not None:
            raise SiamdiffError("--init keeps the model's loss; leave out --loss")
        path = resolve("diffusion", init)
        net, meta = load_model(path, kind="diffusion")
        cfg = net.config
        if builtin and image_size not in (None, cfg.image_size):
            raise SiamdiffError(f"--init '{init}' is a {cfg.image_size}x{cfg.image_size} model; --image-size "
                                f"{image_size} does not apply to it")
        train, val = load_splits(dataset, ("train", "val"), data_root, download, image_size or cfg.image_size,
                                 channels or cfg.in_channels)
        r = _recipe_of(init, cfg, meta, train.shape[0], len(train.classes), seed=overrides.pop("seed", 0),
                       **overrides)
        task = DiffusionTask(r, train, val, command)
        task.start_from(net, str(path), meta)
        return fit(task, r.train, out_dir, resume, overwrite)
    if model == "seed" and builtin and image_size not in (None, 32):
        raise SiamdiffError(f"the seed design is 32x32; --image-size {image_size} does not apply to it")
    train, val = load_splits(dataset, ("train", "val"), data_root, download, image_size, channels)
    c, h, _ = train.shape
    # a built-in dataset gives the model its size through --image-size, and training resizes to it
    r = diffusion_recipe(model, c, 32 if model == "seed" else (image_size or h), **overrides)
    changes: dict[str, Any] = {"loss": loss} if loss is not None else {}
    if r.model.num_classes and len(train.classes) != r.model.num_classes:
        changes["model"] = UNetConfig(**{**r.model.to_dict(), "num_classes": len(train.classes)})
    r = replace(r, **changes)
    return fit(DiffusionTask(r, train, val, command), r.train, out_dir, resume, overwrite)


def _recipe_of(init: str, cfg: UNetConfig, meta: dict[str, Any], channels: int, n_classes: int, seed: int = 0,
               device: str = "auto", **overrides: Any) -> DiffusionRecipe:
    """The recipe that continues the diffusion model ``init`` (network ``cfg``, metadata ``meta``) on images with
    ``channels`` channels in ``n_classes`` classes: its schedule, loss and optimiser, with ``overrides`` (epochs,
    batch size, learning rate, batches per epoch) for the new run; refuses a model made for other channels or
    classes."""
    from ..core.errors import SiamdiffError

    if cfg.in_channels != channels:  # another size is resized to the model's, as for the seed's 32×32
        raise SiamdiffError(f"--init '{init}' was trained on images with {cfg.in_channels} channel(s); this dataset "
                            f"has {channels}")
    if cfg.num_classes and cfg.num_classes != n_classes:
        raise SiamdiffError(f"--init '{init}' knows {cfg.num_classes} classes; this dataset has {n_classes}")
    before = meta["extra"].get("recipe") or {}
    train = TrainConfig(**{**before.get("train", {}), "max_batches": None, **overrides, "seed": seed, "device": device})
    kept = {k: before[k] for k in ("loss", "label_dropout", "ema", "flip") if k in before}
    return DiffusionRecipe(cfg, Schedule(**meta["extra"]["schedule"]), train, **kept)
