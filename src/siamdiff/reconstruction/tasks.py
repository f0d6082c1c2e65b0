"""The other models of reconstruction, trained with the shared loop: VAEs, the supervised direct denoiser, the
classifier that checks classes of outputs, and the learned noise-level estimator.

Each task draws seeded batches of uint8 images from memory, computes its loss, reports validation metrics, and
saves its model in the one checkpoint format under its own kind.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.version import __version__
from ..core.checkpoint import save_model
from ..data.augment import augment
from ..data.datasets import ImageSet, load_splits, refuse_shape_options
from ..core.errors import SiamdiffError
from ..core.training.loop import TrainConfig, epoch_generator, fit, shuffled_batches
from .estimate import SigmaNet, SigmaNetConfig
from .metrics import psnr
from .models import UNetConfig, build_from_config as build_unet
from .noise import gaussian
from .vae import VAEConfig, build_from_config as build_vae, vae_loss

SIGMA_RANGE = (0.01, 1.2)  # noise levels the denoiser and the estimator are trained on ([0, 1] scale)


class ImageTask:
    """Seeded batches ``(uint8 images, labels)`` from an in-memory train split; subclasses define the rest."""

    kind = ""

    def __init__(self, model: nn.Module, config: dict, train: ImageSet, val: ImageSet, cfg: TrainConfig,
                 command: str = "", flip: bool = False, translate: int = 0) -> None:
        self.model, self.config = model, config
        self.train_set, self.val_set, self.cfg = train, val, cfg
        self.command, self.flip, self.translate = command, flip, translate

    def n_batches(self) -> int:
        return -(-len(self.train_set) // self.cfg.batch_size)

    def batches(self, epoch: int, device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
        gen = epoch_generator(self.cfg.seed, epoch, device)
        images, labels = self.train_set.images.to(device), self.train_set.labels.to(device)
        for idx in shuffled_batches(len(labels), self.cfg.batch_size, gen, device):
            yield augment(images[idx], self.flip, self.translate, gen).float() / 255.0, labels[idx]

    def val_batches(self, device: torch.device, size: int = 512) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, len(self.val_set), size):
            yield (self.val_set.images[s:s + size].to(device).float() / 255.0,
                   self.val_set.labels[s:s + size].to(device))

    def extra(self) -> dict[str, Any]:
        return {}

    def save(self, path: Path, history: list[dict[str, Any]]) -> None:
        extra = {"dataset": self.train_set.name, "classes": self.train_set.classes, "history": history,
                 "command": self.command, "siamdiff_version": __version__, "train": self.cfg.to_dict(),
                 **self.extra()}
        save_model(path, self.model, self.kind, self.config, extra)


class VAETask(ImageTask):
    kind = "vae"

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


class DenoiserTask(ImageTask):
    """Supervised direct denoiser: the U-Net at ``t = 0`` maps a noisy image to the clean one (MSE)."""

    kind = "denoiser"

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, _ = batch
        sigma = torch.empty(len(x), device=x.device).uniform_(*SIGMA_RANGE)
        noisy = gaussian(x, sigma)
        return F.mse_loss(self._forward(noisy).float(), x * 2 - 1)

    def _forward(self, noisy: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(len(noisy), dtype=torch.long, device=noisy.device)
        return self.model(noisy * 2 - 1, t, None)

    def evaluate(self, device: torch.device) -> dict[str, float]:
        gen = torch.Generator(device=device).manual_seed(7)
        total, n = 0.0, 0
        for x, _ in self.val_batches(device):
            out = ((self._forward(gaussian(x, 0.3, gen)) + 1) / 2).clamp(0, 1)
            total += psnr(out, x).sum().item()
            n += len(x)
        return {"val_psnr_sigma_0.3": total / n}

    def extra(self) -> dict[str, Any]:
        return {"sigma_range": list(SIGMA_RANGE), "noise": "gaussian, unclipped"}


class ClassifierTask(ImageTask):
    """The fixed classifier that measures whether denoised images keep their class (cross-entropy)."""

    kind = "classifier"

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x).float(), y)

    def evaluate(self, device: torch.device) -> dict[str, float]:
        correct, n = 0, 0
        for x, y in self.val_batches(device):
            correct += (self.model(x).argmax(1) == y).sum().item()
            n += len(x)
        return {"val_accuracy": correct / n}


class SigmaTask(ImageTask):
    """Noise-level estimator: L1 on log σ, σ log-uniform in SIGMA_RANGE, half of the images clipped as files."""

    kind = "sigma"

    def _noisy(self, x: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = (math.log(s) for s in SIGMA_RANGE)
        u = torch.rand(len(x), generator=gen, device=x.device)
        sigma = torch.exp(lo + (hi - lo) * u)
        noisy = gaussian(x, sigma, gen)
        clipped = torch.rand(len(x), generator=gen, device=x.device) < 0.5
        noisy[clipped] = (noisy[clipped].clamp(0, 1) * 255).round() / 255
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

    def extra(self) -> dict[str, Any]:
        return {"sigma_range": list(SIGMA_RANGE), "noise": "gaussian, half clipped and 8-bit"}


KINDS = ("vae", "denoiser", "classifier", "noise-estimator")


def train_reconstruction(what: str, dataset: str, out_dir: str | Path, model: str = "default",
                         data_root: str | None = None, download: bool = False, resume: bool = False,
                         overwrite: bool = False, command: str = "", epochs: int | None = None,
                         batch_size: int | None = None, lr: float | None = None, seed: int = 0,
                         device: str = "auto", max_batches: int | None = None, image_size: int | None = None,
                         channels: int | None = None) -> list[dict[str, Any]]:
    """Train one of ``vae`` (``--model seed|conv|tiny``), ``denoiser``, ``classifier``, ``noise-estimator``."""
    from ..nets.convnet import EmbedConfig, EmbeddingNet, preset
    from .models import PRESETS as UNETS
    from .vae import PRESETS as VAES

    refuse_shape_options(dataset, image_size, channels)
    train, val = load_splits(dataset, ("train", "val"), data_root, download, image_size, channels)
    c, h, _ = train.shape
    tiny = model == "tiny"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if what == "vae":
            if model == "seed":
                if (c, h) != (1, 28):
                    raise SiamdiffError("the seed VAE (784-400-20) is for 28x28 grayscale images")
                cfg = VAES["seed"]
            else:
                base = VAES["tiny" if tiny else ("conv-cifar10" if c == 3 else "conv-mnist")]
                cfg = VAEConfig(**{**base.to_dict(), "in_channels": c, "image_size": h})
            net, config, cls, default_epochs = build_vae(cfg.to_dict()), cfg.to_dict(), VAETask, 20
        elif what == "denoiser":
            base = UNETS["tiny" if tiny else ("unet-cifar10" if c == 3 else "unet-mnist")]
            cfg = UNetConfig(**{**base.to_dict(), "in_channels": c, "image_size": h, "num_classes": 0})
            net, config, cls, default_epochs = build_unet(cfg.to_dict()), cfg.to_dict(), DenoiserTask, 20
        elif what == "classifier":
            base = preset("tiny" if tiny else "default", train.name, c, h)
            cfg = EmbedConfig(**{**base.to_dict(), "embed_dim": len(train.classes), "normalize": False})
            net, config, cls, default_epochs = EmbeddingNet(cfg), cfg.to_dict(), ClassifierTask, 10
        elif what == "noise-estimator":
            cfg = SigmaNetConfig(c, (4, 8) if tiny else (32, 64, 64), **({"norm": True, "pool": "moments"}
                                 if model == "moments" else {"norm": False, "pool": "log-energy",
                                                               "range_features": True, "hidden": 32}))
            net, config, cls, default_epochs = SigmaNet(cfg), cfg.to_dict(), SigmaTask, 10
        else:
            raise SiamdiffError(f"unknown model kind '{what}': use one of {', '.join(KINDS)}")
    train_cfg = TrainConfig(epochs or (1 if tiny else default_epochs), batch_size or 128, lr or 1e-3,
                            5e-4 if what == "classifier" else 0.0, "adamw", "onecycle", seed, device,
                            max_batches=max_batches)
    task = cls(net, config, train, val, train_cfg, command, flip=(c == 3 and what == "classifier"),
               translate=2 if what == "classifier" else 0)
    return fit(task, train_cfg, out_dir, resume, overwrite)
