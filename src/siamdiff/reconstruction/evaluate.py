"""The denoising evaluation protocol (``siamdiff eval denoise``), computed through :class:`~.pipeline.Denoiser`.

The first ``n`` test images at native resolution — or at the model's size for a model made for another size (the
clean images resized, see :func:`~siamdiff.data.augment.at_size`), or at ``image_size`` when asked for a model-free
method; for each σ the noise is drawn at that size on the CPU with the fixed seed ``1000 + round(1000·σ)``, so every
method and every machine sees the same noisy images. ``clip`` makes the noisy images "as a file" (clipped to
[0, 1], 8-bit). With ``sigma_mode="auto"`` each method is told the estimated σ (the learned estimator when given —
by default the shipped one when the model is a shipped name, as ``siamdiff denoise`` does — else wavelet-MAD) and
``sigma_rel_error`` reports the median of ``|σ̂ − σ| / σ``. Each batch is denoised by one
:meth:`~.pipeline.Denoiser.denoise` call, so a row measures exactly what a user gets.

Methods: ``noisy`` (the input itself, clamped to [0, 1] as a viewer sees it), ``tweedie`` / ``ddim`` /
``ancestral`` (a diffusion model), ``direct`` (the supervised denoiser), ``vae`` (reconstruction of the noisy
image), ``nlm`` and ``wavelet`` (scikit-image).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import config
from ..core.errors import SiamdiffError, require
from ..data.augment import at_size
from ..data.datasets import load_dataset
from .estimate import relative_error
from .metrics import psnr, ssim
from .noise import gaussian
from .pipeline import METHODS as BY_KIND
from .pipeline import Denoiser

METHODS = tuple(m for methods in BY_KIND.values() for m in methods)
KIND_OF = {m: kind for kind, methods in BY_KIND.items() for m in methods}
LABELS = ("none", "true", "predicted")
MAX_SIGMA = 100.0  # the noise drawn: 1e300 overflowed the metrics


def noisy_images(clean: torch.Tensor, sigma: float, clip: bool) -> torch.Tensor:
    """The protocol's noisy copy of ``clean`` at ``sigma``: drawn on the CPU with the seed ``1000 + round(1000σ)``."""
    return gaussian(clean, sigma, torch.Generator().manual_seed(1000 + round(1000 * sigma)), clip=clip)


def evaluate_denoise(dataset: str, sigmas: list[float], method: str, model: str | Path | None = None,
                     n: int = 1000, clip: bool = False, sigma_mode: str = "auto", estimator: str | Path | None = None,
                     classifier: str | Path | None = None, labels: str = "none", guidance: float = 1.0,
                     steps: int = 10, data_dir: str | None = None, download: bool = False,
                     batch_size: int = 250, image_size: int | None = None, channels: int | None = None,
                     device: str = "auto", declip: bool = True) -> list[dict[str, Any]]:
    """One row per σ: ``{"sigma", "method", "psnr", "ssim", "class_accuracy", "sigma_rel_error", "n", ...}``.

    ``labels`` is the guidance of diffusion methods: ``none``, ``true`` (each image's own class) or ``predicted``
    (``label="auto"``); ``declip`` is the pipeline's (on by default, as for ``siamdiff denoise``). The noisy images
    are drawn on the CPU (the same on every machine); networks run on ``device``."""
    from ..training.loop import resolve_device, synchronize

    if method not in METHODS:
        raise SiamdiffError(f"unknown {{method}} '{method}': use one of {', '.join(METHODS)}", "method")
    if not sigmas:
        raise SiamdiffError("{sigmas} must name at least one noise level", "sigmas")
    for s in sigmas:
        if not (isinstance(s, (int, float)) and 0 < s <= MAX_SIGMA):  # nan fails too
            raise SiamdiffError(f"every {{sigmas}} value must be a number above 0 and at most {MAX_SIGMA:g}, got {s}",
                                "sigmas")
    require(isinstance(n, int) and n >= 1, "n", "a positive number", n)
    require(isinstance(batch_size, int) and batch_size >= 1, "batch_size", "a positive number", batch_size)
    if image_size is not None:
        require(isinstance(image_size, int) and 1 <= image_size <= config.MAX_IMAGE_SIZE, "image_size",
                f"a side from 1 to {config.MAX_IMAGE_SIZE}", image_size)
    if channels is not None:
        require(channels in (1, 3), "channels", "1 or 3", channels)
    if sigma_mode not in ("auto", "true"):
        raise SiamdiffError(f"unknown {{sigma_mode}} '{sigma_mode}': use auto or true", "sigma_mode")
    if labels not in LABELS:
        raise SiamdiffError(f"unknown {{labels}} '{labels}': use one of {', '.join(LABELS)}", "labels")
    dev = resolve_device(device)
    den = Denoiser.load(model, estimator, classifier, kind=KIND_OF[method]).to(dev)
    if labels != "none" and not den.num_classes:
        raise SiamdiffError(f"{{labels}} {labels} needs a class-conditional diffusion model", "labels")
    if labels == "predicted" and den.classifier is None:
        raise SiamdiffError("{labels} predicted needs {classifier}", "labels", "classifier")
    if den.image_size is not None:  # measured at the model's size; folder datasets are read at it
        for option, given, wanted in (("image_size", image_size, den.image_size), ("channels", channels,
                                                                                    den.channels)):
            if given is not None and given != wanted:
                raise SiamdiffError(f"this model takes {den.channels}-channel {den.image_size}x{den.image_size} "
                                    f"images: leave out {{{option}}} or give {wanted}", option)
        image_size, channels = den.image_size, den.channels
    if image_size is not None and image_size < 7:
        raise SiamdiffError(f"images of {image_size}x{image_size} are too small to measure: SSIM needs 7x7 or more")
    test = load_dataset(dataset, "test", data_dir, download, image_size=image_size, channels=channels)
    if den.channels is not None and test.images.shape[1] != den.channels:
        raise SiamdiffError(f"the {dataset} images have {test.images.shape[1]} channel(s) but this model takes "
                            f"{den.channels}-channel images")
    test = test.subset(np.arange(min(n, len(test))))
    size = image_size or test.images.shape[-1]
    refusal = config.over_memory(2 * len(test) * test.images.shape[1] * size * size * 4,  # clean and noisy float32
                                 f"measuring {len(test)} images at {size}x{size}",
                                 "use a smaller {n}" + ("" if den.image_size is not None else " or {image_size}"))
    if refusal:
        raise SiamdiffError(refusal, "n", "image_size")
    clean_all = at_size(test.images.float() / 255.0, size)
    generator = torch.Generator(device=dev).manual_seed(0)  # the ancestral chain's, across sigmas and batches
    rows = []
    for sigma in sigmas:
        noisy_all = noisy_images(clean_all, sigma, clip)
        psnrs, ssims, kept, estimates, seconds = [], [], [], [], 0.0
        for s in range(0, len(test), batch_size):
            noisy = noisy_all[s:s + batch_size].to(dev)
            label = {"none": None, "true": test.labels[s:s + batch_size], "predicted": "auto"}[labels]
            synchronize(dev)
            began = time.perf_counter()
            out, info = den.denoise(noisy, "auto" if sigma_mode == "auto" else sigma, method, steps, label,
                                    guidance if label is not None else 0.0, generator, declip)
            synchronize(dev)
            seconds += time.perf_counter() - began
            clean = clean_all[s:s + batch_size]  # measured batch by batch: no third copy of every image
            host = out.cpu()
            psnrs.append(psnr(host, clean))
            ssims.append(ssim(host, clean))
            if den.classifier is not None:
                kept.append(den.classify(out).cpu() == test.labels[s:s + batch_size])
            estimates.append(np.array(info.sigma))
        row = {"sigma": sigma, "method": method, "clip": clip, "sigma_mode": sigma_mode, "labels": labels,
               "device": str(dev), "declip": declip, "image_size": size, "sigma_estimator": info.sigma_estimator,
               "psnr": float(torch.cat(psnrs).mean()), "ssim": float(np.concatenate(ssims).mean()),
               "class_accuracy": float(torch.cat(kept).float().mean()) if kept else None,
               "sigma_rel_error": float(np.median(relative_error(np.concatenate(estimates), sigma)))
               if sigma_mode == "auto" else None, "n": len(test), "seconds_per_image": seconds / len(test)}
        rows.append(row)
    return rows


__all__ = ["METHODS", "evaluate_denoise", "noisy_images"]
