"""``Denoiser``: a trained diffusion model used to clean noisy images, with automatic noise-level estimation.

>>> from siamdiff.reconstruction.api import Denoiser
>>> den = Denoiser.load("mnist")                              # shipped, or a model file / run folder
>>> clean, info = den.denoise(noisy)                           # noisy: (N, C, H, W) float in [0, 1]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.checkpoint import load_model
from ..data.imageio import IMAGE_EXTENSIONS, fit_to, read_image
from ..core.errors import SiamdiffError, first_line
from ..core.registry import companion, resolve
from .diffusion import METHODS, denoise
from .estimate import WAVELET, wavelet_sigma
from .noise import declip
from .schedule import Schedule, sigma_for_step


@dataclass(frozen=True)
class DenoiseInfo:
    """What was done to each image: the σ used, the estimate, the entry step, the method."""

    sigma: list[float]
    sigma_estimated: list[float | None]
    t_start: list[int]
    method: str
    sigma_estimator: str | None = None  # "learned" or "wavelet-MAD" when σ was estimated
    labels: list[int] | None = None  # the classes kept by guidance, if any


class Denoiser:
    """A class-conditional (or unconditional) ε-prediction diffusion model and its schedule."""

    def __init__(self, net: torch.nn.Module, meta: dict, source: str = "", estimator: torch.nn.Module | None = None,
                 classifier: torch.nn.Module | None = None) -> None:
        self.net = net.eval()
        self.meta = meta
        self.source = source
        self.schedule = Schedule(**meta["extra"]["schedule"])
        self.classes: list[str] = list(meta["extra"].get("classes", []))
        self.estimator = estimator.eval() if estimator is not None else None
        self.classifier = classifier.eval() if classifier is not None else None

    @classmethod
    def load(cls, name_or_path: str | os.PathLike, estimator: str | os.PathLike | None = None,
             classifier: str | os.PathLike | None = None) -> Denoiser:
        """A shipped name (``mnist``, ``fashion-mnist``, ``cifar10``: with its learned noise estimator and its
        classifier) or a model file / run folder (with the ``estimator`` and ``classifier`` files given, if any).
        ``estimator="wavelet"`` estimates σ by wavelet-MAD even where a learned estimator would come along."""
        path = resolve("diffusion", name_or_path)
        net, meta = load_model(path, kind="diffusion")

        def load_companion(kind: str, given: str | os.PathLike | None) -> torch.nn.Module | None:
            found = companion(kind, path, given)
            if found is None:
                return None
            model = load_model(found, kind=kind)[0]
            check_fits(model, kind, found, net.config.in_channels, net.config.image_size)
            return model

        sigma_net = None if str(estimator).lower() in WAVELET else load_companion("sigma", estimator)
        return cls(net, meta, str(name_or_path), sigma_net, load_companion("classifier", classifier))

    def compile(self) -> Denoiser:
        """Compile the diffusion network and the noise estimator with ``torch.compile`` (in place; returns self).

        For a process that denoises many images of one shape, not for one-off calls: the first call of each input
        shape (and each guidance setting) spends tens of seconds compiling, and on the CPU it needs a C++ compiler.
        Later calls of one 28×28 image ran 20-30 % faster on 2 CPU threads than the eager network
        (``python benchmarks/denoise.py --latency-only`` measures both). A failure to compile is reported as a
        :class:`SiamdiffError` on the first call."""
        self.net = _Compiled(self.net)
        if self.estimator is not None:
            self.estimator = _Compiled(self.estimator)
        return self

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
        """Noise level per image ``(N,)``: the learned estimator when there is one, else wavelet-MAD."""
        if self.estimator is not None:
            with torch.no_grad():
                return self.estimator(images.float()).double().numpy()
        return wavelet_sigma(images)

    def predict_labels(self, images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Classes for guidance: the classifier applied to the unguided one-step (Tweedie) estimate, which is far
        easier to classify than the noisy input."""
        if self.classifier is None:
            raise SiamdiffError("--label auto needs a classifier: use a shipped model or pass --classifier")
        pilot, _ = denoise(self.net, self.schedule, images.float(), sigma, "tweedie")
        with torch.no_grad():
            return self.classifier(pilot).argmax(1)

    @torch.no_grad()
    def denoise(self, images: torch.Tensor, sigma: float | str = "auto", method: str = "tweedie", steps: int = 10,
                label: int | str | None = None, guidance: float = 0.0, seed: int = 0,
                clipped: bool = True) -> tuple[torch.Tensor, DenoiseInfo]:
        """Clean ``images (N, C, H, W)`` in [0, 1]; ``sigma`` a number or ``"auto"``; ``label`` keeps a class
        (a class number, or ``"auto"``: each image's class as predicted from its unguided estimate). With ``clipped``
        (the default), images that lie within [0, 1] are treated as read from files: the bias of their clipped
        pixels is undone first (:func:`~siamdiff.reconstruction.noise.declip`)."""
        if method not in METHODS:
            raise SiamdiffError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
        estimated: list[float | None] = [None] * len(images)
        if sigma == "auto":
            est = self.estimate_sigma(images)
            estimated = [float(s) for s in est]
            sig = torch.as_tensor(est, dtype=torch.float64)
        else:
            value = float(sigma)
            if not np.isfinite(value) or value < 0:
                raise SiamdiffError(f"--sigma must be 'auto' or a number of 0 or more, got {sigma}")
            top = float(sigma_for_step(self.schedule, self.schedule.steps - 1))
            if value > top:  # the chain cannot start noisier than its last step: the input would be out of range
                raise SiamdiffError(f"--sigma {sigma} is beyond the noise this model's schedule reaches "
                                    f"(sigma {top:.4g} at its last step)")
            sig = torch.full((len(images),), value, dtype=torch.float64)
        if clipped:
            images = declip(images.float(), sig)
        if label == "auto":
            self.class_labels(0, 1)  # refuses a model without classes
            labels = self.predict_labels(images, sig)
        else:
            labels = self.class_labels(label, len(images))
        gen = torch.Generator().manual_seed(seed)
        out, t_star = denoise(self.net, self.schedule, images.float(), sig, method, steps, labels, guidance, gen)
        how = None if sigma != "auto" else ("learned" if self.estimator is not None else "wavelet-MAD")
        info = DenoiseInfo([float(s) for s in sig], estimated, [int(t) for t in t_star], method, how,
                           None if labels is None else [int(k) for k in labels])
        return out, info


class _Compiled(torch.nn.Module):
    """``torch.compile`` of a network (static shapes: one graph per input shape), keeping its ``config`` and turning
    a compiler failure into a one-line error."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.config = getattr(net, "config", None)
        self.compiled = torch.compile(net, dynamic=False)

    def forward(self, *args: Any) -> torch.Tensor:
        try:
            return self.compiled(*args)
        except Exception as exc:  # noqa: BLE001 - inductor raises many types (no compiler, unsupported op)
            raise SiamdiffError(f"torch.compile failed ({type(exc).__name__}: {first_line(exc)[:200]}); use the "
                                f"network without compile()") from None


def check_fits(model: torch.nn.Module, kind: str, path: str | os.PathLike, channels: int, image_size: int) -> None:
    """Refuse a noise estimator or classifier made for other images (channels, size) than those it would be given:
    its answers would be meaningless, or it would fail deep inside the network."""
    name = {"sigma": "noise estimator", "classifier": "classifier"}.get(kind, kind)
    cfg = model.config
    if cfg.in_channels != channels:
        raise SiamdiffError(f"the {name} '{path}' takes {cfg.in_channels}-channel images, not {channels}-channel ones")
    size = getattr(cfg, "image_size", None)  # the noise estimator pools over any size
    if size is not None and size != image_size:
        raise SiamdiffError(f"the {name} '{path}' takes {size}x{size} images, not {image_size}x{image_size}")


def output_paths(inputs: list[Path], out: Path) -> list[Path]:
    """Where each denoised image goes: ``out`` itself for one input named ``*.png``, else ``out/<stem>.png``.

    Refuses to write over any input file.
    """
    if len(inputs) == 1 and out.suffix.lower() == ".png" and not out.is_dir():
        targets = [out]
    elif out.suffix.lower() == ".png" and not out.is_dir():
        raise SiamdiffError(f"--out '{out}' is one file but there are {len(inputs)} inputs: give a folder")
    elif out.suffix.lower() in IMAGE_EXTENSIONS and not out.is_dir():
        raise SiamdiffError(f"denoised images are written as PNG: name --out '{out.with_suffix('.png')}' or a folder")
    else:
        if out.exists() and not out.is_dir():
            raise SiamdiffError(f"--out '{out}' is a file; give a folder for several inputs")
        stems = [p.stem for p in inputs]
        if len(set(stems)) != len(stems):
            raise SiamdiffError("several inputs share a file name; denoise them into separate folders")
        targets = [out / f"{p.stem}.png" for p in inputs]
    resolved_inputs = {p.resolve() for p in inputs}
    for t in targets:  # every target checked before anything is written
        if t.resolve() in resolved_inputs:
            raise SiamdiffError(f"refusing to overwrite the input '{t}': choose another --out")
        if t.is_dir():
            raise SiamdiffError(f"cannot write '{t}': it is a folder")
    return targets
