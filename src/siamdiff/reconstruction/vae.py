"""Variational autoencoders: the report's MLP VAE (784-400-20) and a convolutional VAE.

Both map images in [0, 1] ``(N, C, H, W)`` to ``(reconstruction logits, mu, logvar)``; the loss is the report's
(PyTorch example's): Bernoulli cross-entropy summed over pixels plus the KL divergence to N(0, I), per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import JsonConfig


@dataclass(frozen=True)
class VAEConfig(JsonConfig):
    """arch: ``mlp`` (hidden = widths[0]) or ``conv`` (conv widths); latent: size of z."""

    arch: str
    in_channels: int
    image_size: int
    widths: tuple[int, ...]
    latent: int


PRESETS = {
    "seed": VAEConfig("mlp", 1, 28, (400,), 20),  # the report's 784-400-20
    "conv-mnist": VAEConfig("conv", 1, 28, (32, 64), 16),
    "conv-cifar10": VAEConfig("conv", 3, 32, (64, 128), 64),
    "tiny": VAEConfig("conv", 1, 28, (4, 8), 4),
}


class VAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        n_pix = c.in_channels * c.image_size ** 2
        if c.arch == "mlp":
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(n_pix, c.widths[0]), nn.ReLU())
            feat = c.widths[0]
            self.decoder = nn.Sequential(nn.Linear(c.latent, c.widths[0]), nn.ReLU(), nn.Linear(c.widths[0], n_pix))
        elif c.arch == "conv":
            w1, w2 = c.widths
            self.encoder = nn.Sequential(nn.Conv2d(c.in_channels, w1, 4, 2, 1), nn.ReLU(),
                                         nn.Conv2d(w1, w2, 4, 2, 1), nn.ReLU(), nn.Flatten())
            self.small = c.image_size // 4
            feat = w2 * self.small ** 2
            self.decoder = nn.Sequential(nn.Linear(c.latent, feat), nn.ReLU(),
                                         nn.Unflatten(1, (w2, self.small, self.small)),
                                         nn.ConvTranspose2d(w2, w1, 4, 2, 1), nn.ReLU(),
                                         nn.ConvTranspose2d(w1, c.in_channels, 4, 2, 1))
        else:
            raise ValueError(f"unknown VAE architecture '{c.arch}'")
        self.mu = nn.Linear(feat, c.latent)
        self.logvar = nn.Linear(feat, c.latent)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C, H, W)``; ``sigmoid`` gives the image in [0, 1]."""
        c = self.config
        return self.decoder(z).view(-1, c.in_channels, c.image_size, c.image_size)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * (0.5 * logvar).exp() if self.training else mu
        return self.decode(z), mu, logvar

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: ``(N, C, H, W)`` in [0, 1]."""
        mu, _ = self.encode(x)
        return torch.sigmoid(self.decode(mu))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn((n, self.config.latent), generator=generator, device=self.mu.weight.device)
        return torch.sigmoid(self.decode(z))


def vae_loss(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-image negative ELBO: summed Bernoulli cross-entropy + KL(N(mu, var) || N(0, I)), averaged over images."""
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (bce + kl) / x.shape[0]


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row ``(N,)``."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def build_from_config(config: dict) -> VAE:
    return VAE(VAEConfig.from_dict(config))
