"""Training the models of reconstruction with the shared loop: the diffusion model (ε-prediction, label dropout for
guidance, EMA weights), the VAEs, the supervised direct denoiser and the learned noise-level estimator.

Each kind has its recipes as data (a table keyed by design and colour), a task for :func:`~siamdiff.training.fit`
and a trainer for :func:`~siamdiff.training.train`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import SiamdiffError
from ..data.augment import at_size
from ..data.types import ImageSet
from ..training.config import TrainConfig
from ..training.kinds import Start, Trainer
from ..training.options import TrainOptions
from ..training.task import Recipe, Task
from .estimate import SigmaNet, SigmaNetConfig
from .metrics import psnr
from .models import PRESETS as UNETS
from .models import build_from_config, grayscale_copy
from .noise import SIGMA_RANGE, gaussian, to_file
from .schedule import Schedule, add_noise
from .vae import PRESETS as VAES
from .vae import VAE, vae_loss

DIFFUSION_LOSSES = ("mse", "l1")


# ------------------------------------------------------------------------------------------------ diffusion
@dataclass(frozen=True)
class DiffusionRecipe(Recipe):
    """Network, schedule and training of a DDPM; ``loss`` on the predicted noise is ``mse`` or ``l1`` (the report's);
    ``label_dropout`` is the share of images trained without their class (for classifier-free guidance)."""

    schedule: Schedule = Schedule("cosine", 1000)
    loss: str = "mse"
    label_dropout: float = 0.1
    ema: float = 0.999

    def fit_to(self, channels: int, image_size: int, n_classes: int) -> DiffusionRecipe:
        """The network for this data: its channels and classes, and its size — the seed design's is always its own
        32×32, onto which the images are resized."""
        size = self.model.image_size if self.model.arch == "seed" else image_size
        return replace(self, model=replace(self.model, in_channels=channels, image_size=size,
                                           num_classes=n_classes if self.model.num_classes else 0))

    def with_options(self, options: TrainOptions) -> DiffusionRecipe:
        recipe = super().with_options(options)
        if options.loss is None:
            return recipe
        if options.loss not in DIFFUSION_LOSSES:  # "" too
            raise SiamdiffError(f"unknown {{loss}} '{options.loss}': use mse or l1", "loss")
        return replace(recipe, loss=options.loss)


def _diffusion_recipes() -> dict[tuple[str, str], DiffusionRecipe]:
    """``unet`` (siamdiff's: cosine schedule, T = 1000, MSE, AdamW one-cycle 1e-3, batch 128, 20 epochs, EMA 0.999,
    label dropout 0.1, flips for colour), ``tiny`` (tests) and ``seed`` (the report's: T = 300 linear, L1, Adam 1e-3
    constant, batch 128, 19 epochs, 32×32, no classes)."""
    table = {}
    train = TrainConfig(epochs=20, batch_size=128, lr=1e-3, weight_decay=0.0)
    seed = TrainConfig(epochs=19, batch_size=128, lr=1e-3, weight_decay=0.0, optimizer="adam", schedule="constant")
    for colour, c in (("gray", 1), ("colour", 3)):
        # channels-last speeds the colour U-Net's step up (1.27 -> 0.99 s) and slows the narrower grayscale one
        # down (0.45 -> 0.62 s; docs/benchmarks/throughput.md)
        table[("unet", colour)] = DiffusionRecipe(UNETS["unet-cifar10" if c == 3 else "unet-mnist"],
                                                  replace(train, channels_last=c == 3), flip=c == 3)
        table[("tiny", colour)] = DiffusionRecipe(UNETS["tiny"], replace(train, epochs=2), flip=c == 3)
        table[("seed", colour)] = DiffusionRecipe(UNETS["seed"], seed, schedule=Schedule("linear", 300), loss="l1",
                                                  label_dropout=0.0, ema=0.0)
    return table


class DiffusionTask(Task):
    """Batches, loss and validation of a DDPM; the model file holds the EMA weights."""

    kind = "diffusion"
    recipe: DiffusionRecipe

    def __init__(self, recipe: DiffusionRecipe, train: ImageSet, val: ImageSet, command: str = "") -> None:
        super().__init__(recipe, train, val, command)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self._steps = 0
        self._ema_params: list[torch.Tensor] | None = None

    def build(self) -> nn.Module:
        return build_from_config(self.recipe.model.to_dict())

    def start_from(self, net: nn.Module, source: str, meta: dict[str, Any]) -> None:
        """Fine-tune: the trained weights and their EMA copy both begin at ``net``'s (a colour ``net`` made
        grayscale for gray data: :func:`~siamdiff.reconstruction.models.grayscale_copy`)."""
        if net.config.in_channels != self.recipe.model.in_channels:
            net = grayscale_copy(net)
        super().start_from(net, source, meta)
        self.ema.load_state_dict(net.state_dict())

    def batch(self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        r = self.recipe
        x0 = at_size(images.float() / 255.0, r.model.image_size) * 2 - 1
        t = torch.randint(0, r.schedule.steps, (len(x0),), generator=gen, device=x0.device)
        eps = torch.randn(x0.shape, generator=gen, device=x0.device)
        y = labels.clone()
        drop = torch.rand(len(y), generator=gen, device=x0.device) < r.label_dropout
        y[drop] = r.model.num_classes  # the "no class" label
        return x0, t, eps, y

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x0, t, eps, y = batch
        x_t = add_noise(self.recipe.schedule, x0, t, eps)
        pred = self.model(x_t, t, y if self.recipe.model.num_classes else None)
        return F.l1_loss(pred.float(), eps) if self.recipe.loss == "l1" else F.mse_loss(pred.float(), eps)

    @torch.no_grad()
    def after_step(self) -> None:
        """Update the EMA weights (decay warms up as (1 + n) / (10 + n), capped at ``recipe.ema``). Fine-tuning warms
        up too: at full decay from its first step, the average of a run of a few hundred steps would still be
        mostly the weights it started from (0.999^500 ≈ 0.6)."""
        self._steps += 1
        decay = min(self.recipe.ema, (1 + self._steps) / (10 + self._steps))  # ema 0: plain weights
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
        for x, y in self.val_batches(device):
            x0 = at_size(x, r.model.image_size) * 2 - 1
            t = torch.randint(0, r.schedule.steps, (len(x0),), generator=gen, device=device)
            eps = torch.randn(x0.shape, generator=gen, device=device)
            pred = self.ema(add_noise(r.schedule, x0, t, eps), t, y if r.model.num_classes else None)
            total += F.mse_loss(pred.float(), eps, reduction="sum").item()
            count += eps.numel()
        return {"val_eps_mse": total / max(count, 1)}

    def extra_state(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "ema_steps": self._steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state["ema"])
        self._steps = int(state["ema_steps"])

    def saved_model(self) -> nn.Module:
        return self.ema

    def metadata(self) -> dict[str, Any]:
        return {"schedule": self.recipe.schedule.to_dict(), "weights": "ema"}


class DiffusionTrainer(Trainer):
    """``train ddpm``: a new model of the design (on a built-in dataset ``image_size`` is the model's size, and the
    images are resized to it), or ``init`` fine-tuned: its network, schedule, loss and optimiser are kept, with the
    options' epochs, learning rate and batch size for the new one-cycle run."""

    task_class = DiffusionTask
    recipes = _diffusion_recipes()

    def data_shape(self, options: TrainOptions, start: Start | None, dataset: str) -> tuple[int | None, int | None]:
        builtin = not dataset.startswith(("folder:", "sample:"))  # read at its own size: image_size is the model's
        if start is None:
            if options.model == "seed" and builtin and options.image_size not in (None, 32):
                raise SiamdiffError(f"the seed design is 32x32; {{image_size}} {options.image_size} does not apply "
                                    f"to it", "image_size")
            return options.image_size, options.channels
        if options.loss is not None:
            raise SiamdiffError("{init} keeps the model's loss; leave out {loss}", "init", "loss")
        cfg = start.net.config
        if builtin and options.image_size not in (None, cfg.image_size):
            raise SiamdiffError(f"{{init}} '{options.init}' is a {cfg.image_size}x{cfg.image_size} model; "
                                f"{{image_size}} {options.image_size} does not apply to it", "init", "image_size")
        return options.image_size or cfg.image_size, options.channels or cfg.in_channels

    def recipe(self, options: TrainOptions, data: ImageSet, start: Start | None) -> DiffusionRecipe:
        if start is None:  # the model's size: the one asked for, else the data's
            return self.lookup(options.model, data, options.image_size).with_options(options)
        c = data.shape[0]
        cfg, extra = start.net.config, start.meta["extra"]
        if (cfg.in_channels, c) == (3, 1):  # a colour model starts a grayscale one (start_from converts it)
            cfg = replace(cfg, in_channels=1)
        elif cfg.in_channels != c:  # another size is resized to the model's, as for the seed's 32×32
            raise SiamdiffError(f"{{init}} '{options.init}' was trained on images with {cfg.in_channels} channel(s); "
                                f"this dataset has {c}", "init")
        if cfg.num_classes and cfg.num_classes != len(data.classes):
            raise SiamdiffError(f"{{init}} '{options.init}' knows {cfg.num_classes} classes; this dataset has "
                                f"{len(data.classes)}", "init")
        before = extra.get("recipe") or {}
        train = TrainConfig.from_dict({**before.get("train", {}), "max_batches": None})
        kept = {k: before[k] for k in ("loss", "label_dropout", "ema", "flip") if k in before}
        return DiffusionRecipe(cfg, options.train_config(train), schedule=Schedule(**extra["schedule"]), **kept)


# ------------------------------------------------------------------------------------------------ the others
@dataclass(frozen=True)
class VAERecipe(Recipe):
    """A VAE: the report's MLP (784-400-20, ``seed``) or a convolutional one, trained on the negative ELBO."""

    def fit_to(self, channels: int, image_size: int, n_classes: int) -> VAERecipe:
        if self.model.arch == "mlp" and (channels, image_size) != (self.model.in_channels, self.model.image_size):
            raise SiamdiffError("the seed VAE (784-400-20) is for 28x28 grayscale images")
        return super().fit_to(channels, image_size, n_classes)


@dataclass(frozen=True)
class DenoiserRecipe(Recipe):
    """The supervised direct denoiser: the U-Net at ``t = 0``, MSE to the clean image, σ uniform in ``sigma_range``."""

    sigma_range: tuple[float, float] = SIGMA_RANGE


@dataclass(frozen=True)
class SigmaRecipe(Recipe):
    """The noise-level estimator: L1 on log σ, σ log-uniform in ``sigma_range``, half of the images clipped."""

    sigma_range: tuple[float, float] = SIGMA_RANGE

    def fit_to(self, channels: int, image_size: int, n_classes: int) -> SigmaRecipe:
        return replace(self, model=replace(self.model, in_channels=channels))  # it pools over any size


_TRAIN = TrainConfig(epochs=20, batch_size=128, lr=1e-3, weight_decay=0.0)
_LOG_ENERGY = {"norm": False, "pool": "log-energy", "range_features": True, "hidden": 32}


def _colours(make) -> dict[tuple[str, str], Recipe]:
    """A recipe table for gray and colour data from ``make(channels) -> {design: recipe}``."""
    return {(design, colour): recipe for colour, c in (("gray", 1), ("colour", 3))
            for design, recipe in make(c).items()}


class VAETask(Task):
    kind = "vae"

    def build(self) -> nn.Module:
        return VAE(self.recipe.model)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, _ = batch
        logits, mu, logvar = self.model(x)
        return vae_loss(logits.float(), x, mu.float(), logvar.float())

    def evaluate(self, device: torch.device) -> dict[str, float]:
        elbo, mse, n = 0.0, 0.0, 0
        for x, _ in self.val_batches(device):
            logits, mu, logvar = self.model(x)
            elbo += vae_loss(logits.float(), x, mu.float(), logvar.float()).item() * len(x)
            mse += (torch.sigmoid(logits) - x).pow(2).mean(dim=(1, 2, 3)).sum().item()
            n += len(x)
        return {"val_neg_elbo": elbo / n, "val_recon_mse": mse / n}


class DenoiserTask(Task):
    kind = "denoiser"
    recipe: DenoiserRecipe

    def build(self) -> nn.Module:
        return build_from_config(self.recipe.model.to_dict())

    def _forward(self, noisy: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(len(noisy), dtype=torch.long, device=noisy.device)
        return self.model(noisy * 2 - 1, t, None)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, _ = batch
        sigma = torch.empty(len(x), device=x.device).uniform_(*self.recipe.sigma_range)
        return F.mse_loss(self._forward(gaussian(x, sigma)).float(), x * 2 - 1)

    def evaluate(self, device: torch.device) -> dict[str, float]:
        gen = torch.Generator(device=device).manual_seed(7)
        total, n = 0.0, 0
        for x, _ in self.val_batches(device):
            out = ((self._forward(gaussian(x, 0.3, gen)) + 1) / 2).clamp(0, 1)
            total += psnr(out, x).sum().item()
            n += len(x)
        return {"val_psnr_sigma_0.3": total / n}

    def metadata(self) -> dict[str, Any]:
        return {"sigma_range": list(self.recipe.sigma_range), "noise": "gaussian, unclipped"}


class SigmaTask(Task):
    kind = "sigma"
    recipe: SigmaRecipe

    def build(self) -> nn.Module:
        return SigmaNet(self.recipe.model)

    def _noisy(self, x: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = (math.log(s) for s in self.recipe.sigma_range)
        u = torch.rand(len(x), generator=gen, device=x.device)
        sigma = torch.exp(lo + (hi - lo) * u)
        noisy = gaussian(x, sigma, gen)
        clipped = torch.rand(len(x), generator=gen, device=x.device) < 0.5
        noisy[clipped] = to_file(noisy[clipped])
        return noisy, sigma

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, _ = batch
        noisy, sigma = self._noisy(x, None)
        return F.l1_loss(self.model.log_sigma(noisy).float(), sigma.log())

    def evaluate(self, device: torch.device) -> dict[str, float]:
        gen = torch.Generator(device=device).manual_seed(11)
        errors = []
        for x, _ in self.val_batches(device):
            noisy, sigma = self._noisy(x, gen)
            errors.append(((self.model(noisy) - sigma).abs() / sigma).cpu().numpy())
        return {"val_sigma_median_rel_error": float(np.median(np.concatenate(errors)))}

    def metadata(self) -> dict[str, Any]:
        return {"sigma_range": list(self.recipe.sigma_range), "noise": "gaussian, half clipped and 8-bit"}


class VAETrainer(Trainer):
    """``train vae``: ``seed`` (the report's MLP VAE, 28×28 grayscale only), ``default`` (convolutional), ``tiny``;
    20 epochs (tiny: 1), AdamW one-cycle 1e-3, batch 128."""

    task_class = VAETask
    recipes = _colours(lambda c: {
        "seed": VAERecipe(VAES["seed"], _TRAIN),
        "default": VAERecipe(VAES["conv-cifar10" if c == 3 else "conv-mnist"], _TRAIN),
        "tiny": VAERecipe(VAES["tiny"], replace(_TRAIN, epochs=1))})


class DenoiserTrainer(Trainer):
    """``train denoiser``: the diffusion U-Net of the same size without classes; 20 epochs (tiny: 1)."""

    task_class = DenoiserTask
    recipes = _colours(lambda c: {
        "default": DenoiserRecipe(replace(UNETS["unet-cifar10" if c == 3 else "unet-mnist"], num_classes=0),
                                  replace(_TRAIN, channels_last=c == 3)),  # as the diffusion U-Nets
        "tiny": DenoiserRecipe(replace(UNETS["tiny"], num_classes=0), replace(_TRAIN, epochs=1))})


class SigmaTrainer(Trainer):
    """``train noise-estimator``: ``default`` (log-energy pooling and the range fractions, no normalisation, an
    MLP head), ``moments`` (the first design: GroupNorm, mean and RMS pooling, linear head), ``tiny``; 10 epochs
    (tiny: 1)."""

    task_class = SigmaTask
    recipes = _colours(lambda c: {
        "default": SigmaRecipe(SigmaNetConfig(c, (32, 64, 64), **_LOG_ENERGY), replace(_TRAIN, epochs=10)),
        "moments": SigmaRecipe(SigmaNetConfig(c, (32, 64, 64)), replace(_TRAIN, epochs=10)),
        "tiny": SigmaRecipe(SigmaNetConfig(c, (4, 8), **_LOG_ENERGY), replace(_TRAIN, epochs=1))})
