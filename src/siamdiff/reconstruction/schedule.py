"""Diffusion noise schedules and the map between an image's noise level and a diffusion step.

Images live in [−1, 1] inside the diffusion model: ``x = 2·y − 1`` for ``y`` in [0, 1]. Forward process
``x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε``. A noisy image ``y = y_0 + σ·n`` is ``x = x_0 + 2σ·n``; scaled by √ᾱ_t it is
exactly ``x_t`` when ``(1 − ᾱ_t) / ᾱ_t = (2σ)²``. :func:`step_for_sigma` finds that step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class Schedule:
    """A discrete schedule of ``T`` steps; ``alpha_bar[t]`` is ᾱ for step ``t`` (0-based, ``t = 0`` least noisy)."""

    kind: str
    steps: int
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "cosine"):
            raise ValueError(f"unknown schedule '{self.kind}': use linear or cosine")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or not 1 <= self.steps <= 100_000:
            raise ValueError(f"a schedule has 1 to 100,000 steps, not {self.steps!r}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"betas must satisfy 0 < beta_start <= beta_end < 1, got {self.beta_start}, "
                             f"{self.beta_end}")

    @cached_property  # a frozen schedule: computed once (cached_property writes the instance dict directly)
    def betas(self) -> torch.Tensor:
        if self.kind == "linear":  # Ho et al. 2020; the report used T=300, 1e-4..0.02
            return torch.linspace(self.beta_start, self.beta_end, self.steps, dtype=torch.float64)
        if self.kind == "cosine":  # Nichol & Dhariwal 2021, s = 0.008, betas capped at 0.999
            s = 0.008
            f = torch.cos((torch.arange(self.steps + 1, dtype=torch.float64) / self.steps + s) / (1 + s)
                          * math.pi / 2) ** 2
            return (1 - f[1:] / f[:-1]).clamp(max=0.999)
        raise ValueError(f"unknown schedule '{self.kind}': use linear or cosine")

    @cached_property
    def alpha_bar(self) -> torch.Tensor:
        """ᾱ_t, ``(T,)`` float64."""
        return torch.cumprod(1 - self.betas, dim=0)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "steps": self.steps, "beta_start": self.beta_start, "beta_end": self.beta_end}


def noise_to_signal(schedule: Schedule) -> torch.Tensor:
    """``(1 − ᾱ_t) / ᾱ_t`` per step, increasing in ``t``."""
    ab = schedule.alpha_bar
    return (1 - ab) / ab


def step_for_sigma(schedule: Schedule, sigma: torch.Tensor | float) -> torch.Tensor:
    """The step ``t*`` whose noise best matches ``sigma`` ([0, 1] scale): nearest in log noise-to-signal ratio.

    Returns int64 steps of ``sigma``'s shape. ``sigma = 0`` maps to step 0.
    """
    s = torch.as_tensor(sigma, dtype=torch.float64)
    target = torch.log((2 * s).clamp_min(1e-12) ** 2)
    ratios = torch.log(noise_to_signal(schedule))
    t = torch.argmin((ratios[None, :] - target.reshape(-1, 1)).abs(), dim=1)
    return t.reshape(s.shape)


def sigma_for_step(schedule: Schedule, t: torch.Tensor | int) -> torch.Tensor:
    """The noise level (σ on the [0, 1] scale) that step ``t`` represents: ``½·√((1 − ᾱ_t) / ᾱ_t)``."""
    return 0.5 * noise_to_signal(schedule)[torch.as_tensor(t)].sqrt()


def add_noise(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Forward process: ``√ᾱ_t · x0 + √(1 − ᾱ_t) · eps`` for ``x0, eps (N, C, H, W)`` and steps ``t (N,)``."""
    ab = schedule.alpha_bar.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps
