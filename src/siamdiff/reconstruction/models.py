"""Networks for reconstruction: siamdiff's U-Net, the report's U-Net (``seed``), and the two VAEs.

The U-Net maps ``(x (N, C, H, W), t (N,) int64, labels (N,) int64 or None) -> (N, C, H, W)``. With ``num_classes``
it is class-conditional; ``labels=None`` (or the label ``num_classes``) is the "no class" input used for
classifier-free guidance. The same network, called with ``t = 0`` throughout and trained to output the clean
image, is the supervised direct denoiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import JsonConfig


@dataclass(frozen=True)
class UNetConfig(JsonConfig):
    """arch: ``unet`` (GroupNorm, residual blocks) or ``seed`` (the report's: BatchNorm, plain blocks)."""

    arch: str
    in_channels: int
    image_size: int
    channels: tuple[int, ...]
    blocks: int = 2
    time_dim: int = 128
    num_classes: int = 0
    groups: int = 8


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``(N, dim)`` of steps ``t (N,)`` (Vaswani et al. 2017; Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the time/class embedding, GroupNorm-SiLU-conv, with a skip connection."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """A small U-Net: per level ``blocks`` residual blocks, stride-2 downsampling, nearest upsampling + skips."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.time_dim * 2), nn.SiLU(),
                                      nn.Linear(c.time_dim * 2, c.time_dim * 2))
        emb = c.time_dim * 2
        self.label_emb = nn.Embedding(c.num_classes + 1, emb) if c.num_classes else None
        self.stem = nn.Conv2d(c.in_channels, c.channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, cin = [], c.channels[0]
        for i, w in enumerate(c.channels):
            level = nn.ModuleList()
            for _ in range(c.blocks):
                level.append(ResBlock(cin, w, emb, c.groups))
                cin = w
            self.down.append(level)
            skips.append(cin)
            last = i == len(c.channels) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(cin, cin, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([ResBlock(cin, cin, emb, c.groups), ResBlock(cin, cin, emb, c.groups)])
        self.up = nn.ModuleList()
        for i, w in reversed(list(enumerate(c.channels))):
            level = nn.ModuleList()
            for b in range(c.blocks):
                level.append(ResBlock(cin + (skips[i] if b == 0 else 0), w, emb, c.groups))
                cin = w
            self.up.append(level)
        self.out = nn.Sequential(nn.GroupNorm(min(c.groups, cin), cin), nn.SiLU(),
                                 nn.Conv2d(cin, c.in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim))
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.config.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_emb(labels)
        h = self.stem(x)
        skips, sizes = [], []
        for level, down in zip(self.down, self.downsample):
            for block in level:
                h = block(h, emb)
            skips.append(h)
            sizes.append(h.shape[-2:])
            h = down(h)
        for block in self.mid:
            h = block(h, emb)
        for level in self.up:
            skip = skips.pop()
            size = sizes.pop()
            if h.shape[-2:] != size:
                h = F.interpolate(h, size=size, mode="nearest")
            h = torch.cat([h, skip], dim=1)
            for block in level:
                h = block(h, emb)
        return self.out(h)


class SeedBlock(nn.Module):
    """The report's block: conv-ReLU-BN, + time embedding, conv-ReLU-BN, then a stride-2 (transposed) conv."""

    def __init__(self, cin: int, cout: int, time_dim: int, up: bool) -> None:
        super().__init__()
        self.time = nn.Linear(time_dim, cout)
        self.conv1 = nn.Conv2d(2 * cin if up else cin, cout, 3, padding=1)
        self.transform = nn.ConvTranspose2d(cout, cout, 4, 2, 1) if up else nn.Conv2d(cout, cout, 4, 2, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.bn1(F.relu(self.conv1(x)))
        h = h + F.relu(self.time(emb))[:, :, None, None]
        h = self.bn2(F.relu(self.conv2(h)))
        return self.transform(h)


class SeedUNet(nn.Module):
    """The report's U-Net: down channels 32/64/128/256/512, BatchNorm, sinusoidal time embedding of 32."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.time_dim), nn.ReLU())
        self.stem = nn.Conv2d(c.in_channels, c.channels[0], 3, padding=1)
        self.downs = nn.ModuleList([SeedBlock(a, b, c.time_dim, False) for a, b in zip(c.channels, c.channels[1:])])
        rev = c.channels[::-1]
        self.ups = nn.ModuleList([SeedBlock(a, b, c.time_dim, True) for a, b in zip(rev, rev[1:])])
        self.out = nn.Conv2d(c.channels[0], c.in_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim))
        h = self.stem(x)
        skips = []
        for block in self.downs:
            h = block(h, emb)
            skips.append(h)
        for block in self.ups:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


PRESETS: dict[str, UNetConfig] = {
    "unet-mnist": UNetConfig("unet", 1, 28, (32, 64, 128), blocks=2, num_classes=10),
    "unet-cifar10": UNetConfig("unet", 3, 32, (64, 128, 128), blocks=2, num_classes=10),
    "seed": UNetConfig("seed", 1, 32, (32, 64, 128, 256, 512), time_dim=32),
    "tiny": UNetConfig("unet", 1, 8, (4, 8), blocks=1, time_dim=8, num_classes=3, groups=2),
}


def build_from_config(config: dict) -> nn.Module:
    """Checkpoint builder for kind ``diffusion``/``denoiser``."""
    cfg = UNetConfig.from_dict(config)
    if cfg.arch == "unet":
        return UNet(cfg)
    if cfg.arch == "seed":
        return SeedUNet(cfg)
    raise ValueError(f"unknown architecture '{cfg.arch}'")


def grayscale_copy(net: nn.Module) -> nn.Module:
    """A grayscale U-Net that starts where the colour U-Net ``net`` is: the first layer's weights summed over the
    three input channels, the last layer's averaged over the three outputs. Called on a gray image it returns exactly
    the mean over the channels of what ``net`` returns for that image replicated into three channels — a start for
    fine-tuning on gray images (whose noise, unlike the colour model's, is the same in every channel)."""
    cfg = net.config
    if cfg.in_channels != 3:
        raise ValueError(f"a grayscale copy is made of a 3-channel model, not a {cfg.in_channels}-channel one")
    gray = build_from_config(replace(cfg, in_channels=1).to_dict())
    colour, state = net.state_dict(), {}
    for name, target in gray.state_dict().items():
        w = colour[name].detach().float()
        if w.shape != target.shape:
            w = w.sum(1, keepdim=True) if w.dim() > 1 and w.shape[1] == 3 else w.mean(0, keepdim=True)
        state[name] = w
    gray.load_state_dict(state)
    return gray
