"""Embedding networks: the seed report's design, reproduced, and siamdiff's default.

Both take images ``(N, C, H, W)`` (uint8 in [0, 255] or float in [0, 1]) and return embeddings ``(N, D)``.
A Siamese network is one of these applied to both images of a pair (shared weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import JsonConfig


@dataclass(frozen=True)
class EmbedConfig(JsonConfig):
    """Everything needed to rebuild an embedding network; stored inside every checkpoint.

    arch: ``seed`` (the report's net, no nonlinearities, 2-d output) or ``embed`` (siamdiff's default).
    widths: conv channels per stage (the ``embed`` stem is as wide as the first stage, at most 64); fc: hidden FC
    widths (seed only); residual: add a residual block after a stage (one flag for all, or one per stage; a
    residual network halves the resolution after every stage);
    depth: conv layers per stage before its pooling; after_pool: conv layers per stage after it (a stage of
    ``depth=1, after_pool=1`` is airbench's conv-pool-conv group, Jordan 2024, arXiv:2404.00498; with after_pool
    every stage halves the resolution); stem: the stem's width (None: as wide as the first stage, at most 64);
    mirror_average: outside training, embed an image as the (normalised) mean of its
    own and its left-right mirror's outputs — set by the recipe for the models it trains with random mirrors (their
    categories do not change under a mirror; never digits).
    """

    arch: str
    in_channels: int
    image_size: int
    widths: tuple[int, ...]
    embed_dim: int
    fc: tuple[int, ...] = ()
    residual: bool | tuple[bool, ...] = False  # one flag for every stage, or one per stage
    depth: int = 1  # conv-BN-ReLU layers per stage before its pooling (embed only)
    after_pool: int = 0  # conv-BN-ReLU layers per stage after its pooling (embed only)
    stem: int | None = None  # the stem's width; None: min(widths[0], 64)
    normalize: bool = True
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    mirror_average: bool = False


_MNIST_STATS = dict(mean=(0.1307,), std=(0.3081,))
_FASHION_STATS = dict(mean=(0.2860,), std=(0.3530,))
_CIFAR_STATS = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
# the one grayscale default layout; each dataset adds its own normalisation
_GRAY_DEFAULT = dict(arch="embed", in_channels=1, image_size=28, widths=(32, 64, 128), embed_dim=64, after_pool=1)

PRESETS: dict[str, EmbedConfig] = {
    # The report's design: MNIST widths 32/64/128, FC 64/32; CIFAR widths 96/192/384, FC 126/42; 2-d output.
    "seed-mnist": EmbedConfig("seed", 1, 28, (32, 64, 128), 2, fc=(64, 32), normalize=False, **_MNIST_STATS),
    "seed-fashion-mnist": EmbedConfig("seed", 1, 28, (32, 64, 128), 2, fc=(64, 32), normalize=False,
                                      **_FASHION_STATS),
    "seed-cifar10": EmbedConfig("seed", 3, 32, (96, 192, 384), 2, fc=(126, 42), normalize=False, **_CIFAR_STATS),
    # Grayscale: stages of 32/64/128 as conv-pool-conv groups (airbench's layout), half the FLOP of two convolutions
    # per stage before the pooling, with a higher test recall@1 in fewer minutes on MNIST and Fashion-MNIST
    # (docs/training.md).
    "default-mnist": EmbedConfig(**_GRAY_DEFAULT, **_MNIST_STATS),
    "default-fashion-mnist": EmbedConfig(**_GRAY_DEFAULT, **_FASHION_STATS),
    # airbench's layout (Jordan 2024, arXiv:2404.00498): a 32-wide stem, then stages of 64/256/256, each
    # conv-pool-conv; a third of the FLOP of Page's ResNet-9 (128/256/512 with residual blocks), which it replaced.
    "default-cifar10": EmbedConfig("embed", 3, 32, (64, 256, 256), 128, after_pool=1, stem=32, **_CIFAR_STATS),
    # Tiny presets for tests and smoke runs.
    "tiny-1": EmbedConfig("embed", 1, 28, (4, 8), 8),
    "tiny-3": EmbedConfig("embed", 3, 32, (4, 8), 8, residual=True),
}


def preset(model: str, dataset: str, in_channels: int, image_size: int) -> EmbedConfig:
    """The config for ``--model seed|default|tiny`` on ``dataset`` (folder datasets use the closest preset)."""
    if model == "tiny":
        base = PRESETS["tiny-3" if in_channels == 3 else "tiny-1"]
    else:
        key = f"{model}-{dataset}"
        if key not in PRESETS:
            key = f"{model}-{'cifar10' if in_channels == 3 else 'mnist'}"
            if key not in PRESETS:
                raise ValueError(f"unknown model '{model}': use seed, default or tiny")
            base = PRESETS[key]
            base = EmbedConfig(**{**base.to_dict(), "mean": (0.5,) * in_channels, "std": (0.25,) * in_channels})
        else:
            base = PRESETS[key]
    return EmbedConfig(**{**base.to_dict(), "in_channels": in_channels, "image_size": image_size})


def _conv_bn(cin: int, cout: int, padding: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=padding, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class Residual(nn.Module):
    """x + conv-BN-ReLU-conv-BN-ReLU(x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(channels, channels), *_conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EmbeddingNet(nn.Module):
    """Image ``(N, C, H, W)`` -> embedding ``(N, embed_dim)``, unit length when ``config.normalize``."""

    def __init__(self, config: EmbedConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.register_buffer("mean", torch.tensor(c.mean).view(1, -1, 1, 1).expand(1, c.in_channels, 1, 1).clone(),
                             persistent=False)
        self.register_buffer("std", torch.tensor(c.std).view(1, -1, 1, 1).expand(1, c.in_channels, 1, 1).clone(),
                             persistent=False)
        if c.arch == "seed":
            self.features, self.head = self._seed(c)
        elif c.arch == "embed":
            self.features, self.head = self._embed(c)
        else:
            raise ValueError(f"unknown architecture '{c.arch}'")

    @staticmethod
    def _seed(c: EmbedConfig) -> tuple[nn.Module, nn.Module]:
        # conv-BN-maxpool, conv-BN-maxpool, conv(no padding)-BN-avgpool, FC-BN, FC-BN, FC; no nonlinearity,
        # exactly as the report describes it.
        w1, w2, w3 = c.widths
        features = nn.Sequential(*_conv_bn(c.in_channels, w1, relu=False), nn.MaxPool2d(2),
                                 *_conv_bn(w1, w2, relu=False), nn.MaxPool2d(2),
                                 *_conv_bn(w2, w3, padding=0, relu=False), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        dims = (w3, *c.fc)
        head: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            head += [nn.Linear(a, b), nn.BatchNorm1d(b)]
        head.append(nn.Linear(dims[-1], c.embed_dim))
        return features, nn.Sequential(*head)

    @staticmethod
    def _embed(c: EmbedConfig) -> tuple[nn.Module, nn.Module]:
        residual = c.residual if isinstance(c.residual, tuple) else (c.residual,) * len(c.widths)
        if len(residual) != len(c.widths):
            raise ValueError(f"residual has {len(residual)} flags for {len(c.widths)} stages")
        stem = min(c.widths[0], 64) if c.stem is None else c.stem
        layers: list[nn.Module] = [*_conv_bn(c.in_channels, stem)]
        cin = stem
        for i, (w, res) in enumerate(zip(c.widths, residual)):
            layers += _conv_bn(cin, w)
            for _ in range(c.depth - 1):
                layers += _conv_bn(w, w)
            if i < len(c.widths) - 1 or any(residual) or c.after_pool:
                layers.append(nn.MaxPool2d(2))
            for _ in range(c.after_pool):
                layers += _conv_bn(w, w)
            if res:
                layers.append(Residual(w))
            cin = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return nn.Sequential(*layers), nn.Linear(cin, c.embed_dim)

    def _normalized(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.mean) / self.std

    def _stem_end(self) -> int:
        """How many of ``features``' layers make the stem: the first convolution with its batch norm, and its ReLU
        where the design has one (the seed has none)."""
        for k, layer in enumerate(self.features):
            if isinstance(layer, nn.ReLU) or (isinstance(layer, nn.BatchNorm2d) and not isinstance(
                    self.features[k + 1], nn.ReLU)):
                return k + 1
        raise ValueError("the network has no first layer")

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        """The maps of the first layer ``(N, C, H, W)``: the first convolution with its batch norm, and its ReLU
        where the design has one (the seed has none) — what the image looks like to the network, before any
        pooling."""
        return self.features[:self._stem_end()](self._normalized(images))

    def embed_and_stem(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` and :meth:`stem` of ``images`` in one pass: the stem is computed once."""
        x = self._normalized(images)
        k = self._stem_end()
        maps = self.features[:k](x)
        return self._embedding(x, self.features[k:](maps)), maps

    def _embedding(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The embedding of the normalised images ``x`` from their pooled features."""
        z = self.head(pooled)
        if self.config.mirror_average and not self.training:
            z = (z + self.head(self.features(x.flip(3)))) / 2
        return F.normalize(z, dim=1) if self.config.normalize else z

    def whiten_stem(self, images: torch.Tensor, eps: float = 5e-4, chunk: int = 500) -> None:
        """Make the first convolution a fixed patch-whitening filter bank of ``images`` (uint8 or [0, 1]; the
        patch-whitening initialisation of airbench, Jordan 2024, arXiv:2404.00498): its filters are the eigenvectors
        of the covariance of the network's input patches with the largest eigenvalues, each divided by
        ``sqrt(eigenvalue + eps)``, and their negatives (the ReLU after it keeps both signs), so its outputs on those
        patches are decorrelated with unit variance from the first step; the filters are then frozen (the batch norm
        after them still trains)."""
        conv = self.features[0]
        if not isinstance(conv, nn.Conv2d) or conv.bias is not None:
            raise ValueError("the network does not start with a convolution without bias")
        kh, kw = conv.kernel_size
        dim = conv.in_channels * kh * kw
        half = conv.out_channels // 2
        if conv.out_channels % 2 or half > dim:
            raise ValueError(f"whitening needs an even stem of at most {2 * dim} channels, not {conv.out_channels}")
        total = torch.zeros(dim, dtype=torch.float64)
        outer = torch.zeros(dim, dim, dtype=torch.float64)
        count = 0
        with torch.no_grad():
            for s in range(0, len(images), chunk):
                x = self._normalized(images[s:s + chunk])
                patches = F.unfold(x, (kh, kw)).transpose(1, 2).reshape(-1, dim).double()  # patches inside the image
                total += patches.sum(0)
                outer += patches.T @ patches
                count += len(patches)
            mean = total / count
            cov = outer / count - torch.outer(mean, mean)
            values, vectors = torch.linalg.eigh(cov)  # ascending
            values, vectors = values.flip(0)[:half], vectors.flip(1)[:, :half]
            filters = (vectors / (values.clamp(min=0) + eps).sqrt()).T.reshape(half, conv.in_channels, kh, kw)
            conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight.dtype))
        conv.weight.requires_grad_(False)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's features ``(N, F)``, pooled, before the head (a classifier's penultimate layer)."""
        return self.features(self._normalized(images))

    def locations(self, images: torch.Tensor) -> torch.Tensor:
        """The head applied at every location of the trunk's last maps, ``(N, h, w, D)``, in eval mode: their mean
        over the locations is the embedding before normalisation, since the pooling is an average and the head is
        affine (a linear layer; the seed's linear layers and batch norms). With mirror averaging, the mean of the
        image's and of its mirror's, mirrored back, as :meth:`forward` averages them."""
        if self.training:
            raise ValueError("locations() needs the network in eval mode: its batch norms must be affine")
        pool, flatten = self.features[-2:]
        if not (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))
                and isinstance(flatten, nn.Flatten)):
            raise ValueError("the trunk does not end with a global average pool")
        trunk = self.features[:-2]

        def located(x: torch.Tensor) -> torch.Tensor:
            maps = trunk(x).permute(0, 2, 3, 1)  # (N, h, w, F)
            return self.head(maps.reshape(-1, maps.shape[-1])).view(*maps.shape[:3], -1)

        x = self._normalized(images)
        out = located(x)
        if self.config.mirror_average:
            out = (out + located(x.flip(3)).flip(2)) / 2
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._normalized(images)
        return self._embedding(x, self.features(x))


def build_from_config(config: dict) -> EmbeddingNet:
    """Checkpoint builder: config dict (as stored) -> network."""
    return EmbeddingNet(EmbedConfig.from_dict(config))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["EmbedConfig", "EmbeddingNet", "PRESETS", "build_from_config", "count_parameters", "preset"]
