"""``Denoiser``: a trained diffusion model used to clean noisy images, with automatic noise-level estimation.

>>> from siamdiff.reconstruction.api import Denoiser
>>> den = Denoiser.load("runs/ddpm-mnist")                    # a model file or run folder
>>> clean, info = den.denoise(noisy)                           # noisy: (N, C, H, W) float in [0, 1]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model
from ..data.imageio import fit_to, read_image
from ..errors import SiamdiffError
from ..similarity.api import resolve_model_path
from .diffusion import METHODS, denoise
from .estimate import wavelet_sigma
from .schedule import Schedule


@dataclass(frozen=True)
class DenoiseInfo:
    """What was done to each image: the σ used, the estimate, the entry step, the method."""

    sigma: list[float]
    sigma_estimated: list[float | None]
    t_start: list[int]
    method: str


class Denoiser:
    """A class-conditional (or unconditional) ε-prediction diffusion model and its schedule."""

    def __init__(self, net: torch.nn.Module, meta: dict, source: str = "") -> None:
        self.net = net.eval()
        self.meta = meta
        self.source = source
        self.schedule = Schedule(**meta["extra"]["schedule"])
        self.classes: list[str] = list(meta["extra"].get("classes", []))

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> Denoiser:
        path = resolve_model_path("diffusion", name_or_path)
        net, meta = load_model(path, kind="diffusion")
        return cls(net, meta, str(name_or_path))

    @property
    def channels(self) -> int:
        return self.net.config.in_channels

    @property
    def image_size(self) -> int:
        return self.net.config.image_size

    def prepare(self, image: str | os.PathLike | np.ndarray) -> torch.Tensor:
        """A path or ``(H, W[, C])`` uint8 array -> ``(C, H, W)`` float in [0, 1].

        Colour is converted to the model's channels (luma / replication). Another size is refused: resizing would
        change the noise the model is asked to remove.
        """
        array = image if isinstance(image, np.ndarray) else read_image(image, channels=self.channels)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.shape[:2] != (self.image_size, self.image_size):
            name = image if not isinstance(image, np.ndarray) else "image"
            raise SiamdiffError(f"'{name}' is {array.shape[1]}x{array.shape[0]} but the model denoises "
                                f"{self.image_size}x{self.image_size} images (resizing would change the noise)")
        array = fit_to(array, self.channels, (self.image_size, self.image_size))
        return torch.from_numpy(array.transpose(2, 0, 1).copy()).float() / 255.0

    def class_labels(self, label: int | None, n: int) -> torch.Tensor | None:
        """``label`` repeated for ``n`` images (``None`` stays unconditional); refuses a class the model lacks."""
        if label is None:
            return None
        n_classes = self.net.config.num_classes
        if not n_classes:
            raise SiamdiffError("this model has no classes: --label needs a class-conditional model")
        if not 0 <= label < n_classes:
            raise SiamdiffError(f"--label must be between 0 and {n_classes - 1}, got {label}")
        return torch.full((n,), label, dtype=torch.long)

    def estimate_sigma(self, images: torch.Tensor) -> np.ndarray:
        """Noise level per image ``(N,)`` (wavelet-MAD estimate)."""
        return wavelet_sigma(images)

    @torch.no_grad()
    def denoise(self, images: torch.Tensor, sigma: float | str = "auto", method: str = "tweedie", steps: int = 10,
                label: int | None = None, guidance: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, DenoiseInfo]:
        """Clean ``images (N, C, H, W)`` in [0, 1]; ``sigma`` a number or ``"auto"``; ``label`` keeps a class."""
        if method not in METHODS:
            raise SiamdiffError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
        if steps < 1:
            raise SiamdiffError("--steps must be at least 1")
        estimated: list[float | None] = [None] * len(images)
        if sigma == "auto":
            est = self.estimate_sigma(images)
            estimated = [float(s) for s in est]
            sig = torch.as_tensor(est, dtype=torch.float64)
        else:
            value = float(sigma)
            if not np.isfinite(value) or value < 0:
                raise SiamdiffError(f"--sigma must be 'auto' or a number of 0 or more, got {sigma}")
            sig = torch.full((len(images),), value, dtype=torch.float64)
        labels = self.class_labels(label, len(images))
        gen = torch.Generator().manual_seed(seed)
        out, t_star = denoise(self.net, self.schedule, images.float(), sig, method, steps, labels, guidance, gen)
        info = DenoiseInfo([float(s) for s in sig], estimated, [int(t) for t in t_star], method)
        return out, info


def output_paths(inputs: list[Path], out: Path) -> list[Path]:
    """Where each denoised image goes: ``out`` itself for one input named ``*.png``, else ``out/<stem>.png``.

    Refuses to write over any input file.
    """
    if len(inputs) == 1 and out.suffix.lower() == ".png" and not out.is_dir():
        targets = [out]
    else:
        if out.exists() and not out.is_dir():
            raise SiamdiffError(f"--out '{out}' is a file; give a folder for several inputs")
        stems = [p.stem for p in inputs]
        if len(set(stems)) != len(stems):
            raise SiamdiffError("several inputs share a file name; denoise them into separate folders")
        targets = [out / f"{p.stem}.png" for p in inputs]
    resolved_inputs = {p.resolve() for p in inputs}
    for t in targets:
        if t.resolve() in resolved_inputs:
            raise SiamdiffError(f"refusing to overwrite the input '{t}': choose another --out")
    return targets
