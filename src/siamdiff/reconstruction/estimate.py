"""Noise-level estimation: the classical wavelet-MAD estimate and a small learned CNN regressing log σ."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.config import JsonConfig

WAVELET = ("wavelet", "wavelet-mad")  # the names that choose wavelet-MAD where a noise estimator model is asked for


def wavelet_sigma(images: torch.Tensor) -> np.ndarray:
    """Donoho's wavelet-MAD estimate of Gaussian σ per image (scikit-image ``estimate_sigma``), ``(N,)``.

    images: ``(N, C, H, W)`` in [0, 1]; colour channels are averaged. An image whose finest wavelet details are all
    zero (a flat, noise-free image) has no detectable noise: 0.
    """
    from skimage.restoration import estimate_sigma

    x = images.detach().cpu().double().numpy()
    multi = x.shape[1] > 1
    with warnings.catch_warnings():  # scikit-image warns about images of a pixel or two, numpy about flat ones
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        sigma = np.array([estimate_sigma(im.transpose(1, 2, 0) if multi else im[0], average_sigmas=True,
                                         channel_axis=-1 if multi else None) for im in x])
    return np.nan_to_num(sigma, nan=0.0)


@dataclass(frozen=True)
class SigmaNetConfig(JsonConfig):
    in_channels: int
    widths: tuple[int, ...] = (32, 64, 64)
    # Defaults are the first design (still what older checkpoints hold). "log-energy" pools each channel's log
    # root-mean-square, so a channel that passes noise maps log σ to a linear head; GroupNorm would divide that
    # very scale out of the activations, so that design uses no normalisation (as CBDNet's noise-estimation
    # subnetwork: plain full-resolution convolutions).
    norm: bool = True
    pool: str = "moments"
    # Whether the image was clipped (a file) or not changes how much noise energy survives, and a linear head on
    # pooled features could not tell the two apart at middle noise levels (CIFAR-10, sigma 0.3: 12 % too high).
    # range_features hands the head the fractions of pixels below 0, above 1, at 0 and at 1 (what decides
    # "clipped or not"); hidden > 0 makes the head a small MLP so it can combine them with the energies.
    range_features: bool = False
    hidden: int = 0


class SigmaNet(nn.Module):
    """Image in [0, 1] ``(N, C, H, W)`` -> estimated σ ``(N,)`` (the network regresses log σ).

    No pooling before the last layer's global average: noise is a local statistic, so the net sees it at full
    resolution and averages evidence over the whole image. Two designs (``SigmaNetConfig.pool``): ``moments``
    (GroupNorm after each convolution, mean and RMS pooled) and ``log-energy`` (no normalisation, log RMS pooled).
    """

    def __init__(self, config: SigmaNetConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        cin = config.in_channels
        if config.pool not in ("moments", "log-energy"):
            raise ValueError(f"unknown pooling '{config.pool}'")
        for w in config.widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1)]
            layers += [nn.GroupNorm(min(8, w), w)] if config.norm else []
            layers += [nn.SiLU()]
            cin = w
        self.features = nn.Sequential(*layers)
        n_in = cin * (2 if config.pool == "moments" else 1) + (4 if config.range_features else 0)
        self.head = nn.Sequential(nn.Linear(n_in, config.hidden), nn.SiLU(), nn.Linear(config.hidden, 1)) \
            if config.hidden else nn.Linear(n_in, 1)

    def statistics(self, x: torch.Tensor) -> torch.Tensor:
        """The per-image averages ``(N, S)`` the estimate is made from: each feature channel's mean (``moments``)
        and mean square, and the fractions of pixels below 0, above 1, at 0 and at 1 (``range_features``). Being
        averages over pixels, the statistics of the tiles of one image average to those of the image."""
        h = self.features(x * 2 - 1)
        parts = ([h.mean(dim=(2, 3))] if self.config.pool == "moments" else []) + [h.pow(2).mean(dim=(2, 3))]
        if self.config.range_features:
            flat = x.flatten(1)
            parts.append(torch.stack([(flat < 0).float().mean(1), (flat > 1).float().mean(1),
                                      (flat <= 0).float().mean(1), (flat >= 1).float().mean(1)], 1))
        return torch.cat(parts, dim=1)

    def log_sigma_from(self, stats: torch.Tensor) -> torch.Tensor:
        """log σ ``(N,)`` from :meth:`statistics`."""
        width = self.config.widths[-1]
        if self.config.pool == "moments":
            mean, energy, rest = stats[:, :width], stats[:, width:2 * width], stats[:, 2 * width:]
            pooled = torch.cat([mean, energy.sqrt()], dim=1)
        else:
            energy, rest = stats[:, :width], stats[:, width:]
            pooled = 0.5 * torch.log(energy + 1e-12)
        return self.head(torch.cat([pooled, rest], dim=1)).squeeze(1)

    def log_sigma(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_sigma_from(self.statistics(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_sigma(x).exp()


def relative_error(estimate: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> np.ndarray:
    """``|σ̂ − σ| / σ`` per image."""
    est, tru = np.asarray(estimate, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    return np.abs(est - tru) / tru


def build_from_config(config: dict) -> SigmaNet:
    """Checkpoint builder for kind ``sigma``."""
    return SigmaNet(SigmaNetConfig.from_dict(config))
