"""The denoising evaluation protocol (``siamdiff eval denoise``).

Test split, the first ``n`` test images at native resolution — or at the model's size for a model made for
another size (the clean images resized, see :func:`at_size`), or at ``image_size`` when asked; for each σ the noise
is drawn at that size with the fixed seed ``1000 + round(1000·σ)`` so every method sees the same noisy images. ``clip`` makes the noisy images "as a file"
(clipped to [0, 1], 8-bit). With ``sigma="auto"`` each method is told the estimated σ (learned estimator when
given — by default the shipped one when the model is a shipped name, as ``siamdiff denoise`` does — else
wavelet-MAD) and ``sigma_rel_error`` reports the median of ``|σ̂ − σ| / σ``.

Methods: ``noisy`` (the input itself, clamped to [0, 1] as a viewer sees it), ``tweedie`` / ``ddim`` / ``ancestral`` (a diffusion model), ``direct``
(the supervised denoiser), ``vae`` (reconstruction of the noisy image), ``nlm`` and ``wavelet`` (scikit-image).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import config
from ..core.checkpoint import load_model
from ..data.datasets import load_dataset
from ..core.errors import SiamdiffError
from ..core.registry import companion, resolve
from .api import check_fits
from .diffusion import METHODS as DIFFUSION_METHODS, denoise
from .estimate import WAVELET, relative_error, wavelet_sigma
from .metrics import psnr, ssim
from .noise import declip, gaussian
from .schedule import Schedule
from ..data.augment import at_size

METHODS = ("noisy", *DIFFUSION_METHODS, "direct", "vae", "nlm", "wavelet")
MODEL_KIND = {"tweedie": "diffusion", "ddim": "diffusion", "ancestral": "diffusion", "direct": "denoiser",
              "vae": "vae"}


def _load(kind: str, path: str | Path | None) -> tuple[torch.nn.Module, dict]:
    if path is None:
        raise SiamdiffError(f"this method needs a {kind} model: pass --model")
    return load_model(resolve(kind, path), kind=kind)


def _skimage(noisy: torch.Tensor, sigma: np.ndarray, method: str) -> torch.Tensor:
    from skimage.restoration import denoise_nl_means, denoise_wavelet

    out = []
    for img, s in zip(noisy.double().numpy(), sigma):
        multi = img.shape[0] > 1
        im = img.transpose(1, 2, 0) if multi else img[0]
        axis = -1 if multi else None
        if method == "nlm":
            res = denoise_nl_means(im, h=0.8 * s, sigma=s, fast_mode=True, patch_size=5, patch_distance=6,
                                   channel_axis=axis)
        else:
            res = denoise_wavelet(im, sigma=s, method="BayesShrink", mode="soft", rescale_sigma=True,
                                  channel_axis=axis)
        out.append(res.transpose(2, 0, 1) if multi else res[None])
    return torch.from_numpy(np.stack(out)).float().clamp(0, 1)


class _Runner:
    """Applies one method to a batch of noisy images given per-image σ."""

    def __init__(self, method: str, model: str | Path | None, steps: int, guidance: float, labels: str,
                 device: torch.device, declip: bool = False) -> None:
        if method not in METHODS:
            raise SiamdiffError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
        self.method, self.steps, self.guidance, self.labels = method, steps, guidance, labels
        self.net, self.meta = _load(MODEL_KIND[method], model) if method in MODEL_KIND else (None, {})
        if self.net is not None:
            self.net.to(device)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.declip = declip

    @torch.no_grad()
    def pilot(self, noisy: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
        """The unguided Tweedie estimate (at the model's size), from which guidance labels are predicted."""
        if self.method not in DIFFUSION_METHODS:
            raise SiamdiffError("--labels predicted is for diffusion methods (tweedie, ddim, ancestral)")
        return self._network(noisy, sigma, "tweedie", None)

    @torch.no_grad()
    def __call__(self, noisy: torch.Tensor, sigma: np.ndarray, true_labels: torch.Tensor,
                 predicted: torch.Tensor | None) -> torch.Tensor:
        m = self.method
        if m == "noisy":
            return noisy.clamp(0, 1)
        if m in ("nlm", "wavelet"):
            return _skimage(noisy.cpu(), sigma, m).to(noisy.device)
        if m == "vae":
            return self.net.reconstruct(noisy.clamp(0, 1))
        labels = None
        if m in DIFFUSION_METHODS:
            labels = {"none": None, "true": true_labels, "predicted": predicted}[self.labels]
            if labels is not None and not self.net.config.num_classes:
                raise SiamdiffError("guidance needs a class-conditional diffusion model")
        return self._network(noisy, sigma, m, labels)

    def _network(self, x: torch.Tensor, sigma: np.ndarray, m: str, labels: torch.Tensor | None) -> torch.Tensor:
        """The direct denoiser or a diffusion method, on noisy images at the model's size (see :func:`at_size`)."""
        if m == "direct":
            t = torch.zeros(len(x), dtype=torch.long, device=x.device)
            out = ((self.net(x * 2 - 1, t, None) + 1) / 2).clamp(0, 1)
        else:
            schedule = Schedule(**self.meta["extra"]["schedule"])
            if self.declip:
                x = declip(x, torch.as_tensor(sigma, device=x.device))
            out, _ = denoise(self.net, schedule, x, torch.as_tensor(sigma), m, self.steps, labels,
                             self.guidance if labels is not None else 0.0, self.generator)
        return out.clamp(0, 1)


def evaluate_denoise(dataset: str, sigmas: list[float], method: str, model: str | Path | None = None,
                     n: int = 1000, clip: bool = False, sigma_mode: str = "auto", estimator: str | Path | None = None,
                     classifier: str | Path | None = None, labels: str = "none", guidance: float = 1.0,
                     steps: int = 10, data_root: str | None = None, download: bool = False,
                     batch_size: int = 250, image_size: int | None = None,
                     channels: int | None = None, device: str = "auto", declip: bool = False) -> list[dict[str, Any]]:
    """One row per σ: ``{"sigma", "method", "psnr", "ssim", "class_accuracy", "sigma_rel_error", "n", ...}``.

    The noisy images are drawn on the CPU (the same on every machine); networks run on ``device``."""
    from ..training.loop import resolve_device, synchronize

    dev = resolve_device(device)
    if any(not 0 < s <= 100 for s in sigmas):  # nan fails too; 1e300 overflowed the metrics
        raise SiamdiffError("every --sigmas value must be a number above 0 and at most 100")
    if n < 1 or steps < 1:
        raise SiamdiffError("--n and --steps must be at least 1")
    runner = _Runner(method, model, steps, guidance, labels, dev, declip)
    if runner.net is not None:  # measured at the model's size; folder datasets are read at it
        model_size, model_channels = runner.net.config.image_size, runner.net.config.in_channels
        for option, given, wanted in (("--image-size", image_size, model_size), ("--channels", channels,
                                                                                  model_channels)):
            if given is not None and given != wanted:
                raise SiamdiffError(f"this model takes {model_channels}-channel {model_size}x{model_size} images: "
                                    f"leave out {option} or give {wanted}")
        image_size, channels = model_size, model_channels
    if image_size is not None and image_size < 7:
        raise SiamdiffError(f"images of {image_size}x{image_size} are too small to measure: SSIM needs 7x7 or more")
    test = load_dataset(dataset, "test", data_root, download, image_size=image_size, channels=channels)
    if runner.net is not None and test.images.shape[1] != runner.net.config.in_channels:
        raise SiamdiffError(f"the {dataset} images have {test.images.shape[1]} channel(s) but this model takes "
                            f"{runner.net.config.in_channels}-channel images")
    test = test.subset(np.arange(min(n, len(test))))
    if MODEL_KIND.get(method) == "diffusion" and model is not None:  # as in `siamdiff denoise`: a shipped model
        path = resolve("diffusion", model)  # brings its own estimator and classifier
        estimator = companion("sigma", path, estimator) if str(estimator).lower() not in WAVELET else estimator
        classifier = companion("classifier", path, classifier)
    if str(estimator).lower() in WAVELET:
        estimator = None
    clf = _load("classifier", classifier)[0].to(dev) if classifier else None
    est = _load("sigma", estimator)[0].to(dev) if estimator else None
    for kind, net, path in (("classifier", clf, classifier), ("sigma", est, estimator)):
        if net is not None:
            check_fits(net, kind, path, test.images.shape[1], test.images.shape[-1])
    if labels == "predicted" and clf is None:
        raise SiamdiffError("--labels predicted needs --classifier")
    native = test.images.shape[-1]
    size = image_size or native
    refusal = config.over_memory(2 * len(test) * test.images.shape[1] * size * size * 4,  # clean and noisy float32
                                 f"measuring {len(test)} images at {size}x{size}",
                                 "use a smaller --n" + ("" if runner.net is not None else " or --image-size"))
    if refusal:
        raise SiamdiffError(refusal)
    clean_all = at_size(test.images.float() / 255.0, size)
    rows = []
    for sigma in sigmas:
        gen = torch.Generator().manual_seed(1000 + round(1000 * sigma))
        noisy_all = gaussian(clean_all, sigma, gen, clip=clip)
        psnrs, ssims, preds, estimates, seconds = [], [], [], [], 0.0
        for s in range(0, len(test), batch_size):
            noisy = noisy_all[s:s + batch_size].to(dev)
            with torch.no_grad():
                if sigma_mode == "auto":
                    sig = est(noisy.clamp(0, 1) if clip else noisy).double().cpu().numpy() if est is not None \
                        else wavelet_sigma(noisy.cpu())
                else:
                    sig = np.full(len(noisy), sigma)
                # predicted classes come from the unguided one-step estimate (the noisy input is far harder to
                # classify: at sigma 0.5 the classifier is at chance on MNIST inputs)
                predicted = clf(at_size(runner.pilot(noisy, sig), native)).argmax(1) if labels == "predicted" \
                    else None
            synchronize(dev)
            began = time.perf_counter()
            out = runner(noisy, sig, test.labels[s:s + batch_size].to(dev), predicted)
            synchronize(dev)
            seconds += time.perf_counter() - began
            clean = clean_all[s:s + batch_size]  # measured batch by batch: no third copy of every image
            host = out.cpu()
            psnrs.append(psnr(host, clean))
            ssims.append(ssim(host, clean))
            if clf is not None:
                with torch.no_grad():
                    preds.append(clf(at_size(out, native)).argmax(1).cpu())
            estimates.append(sig)
        est_all = np.concatenate(estimates)
        row = {"sigma": sigma, "method": method, "clip": clip, "sigma_mode": sigma_mode, "labels": labels,
               "device": str(dev), "declip": declip, "image_size": size,
               "sigma_estimator": None if sigma_mode != "auto" else "learned" if est is not None else "wavelet-MAD",
               "psnr": float(torch.cat(psnrs).mean()), "ssim": float(np.concatenate(ssims).mean()),
               "class_accuracy": None, "sigma_rel_error": float(np.median(relative_error(est_all, sigma)))
               if sigma_mode == "auto" else None, "n": len(test),
               "seconds_per_image": seconds / len(test)}
        if clf is not None:
            row["class_accuracy"] = float((torch.cat(preds) == test.labels).float().mean())
        rows.append(row)
    return rows


__all__ = ["METHODS", "at_size", "evaluate_denoise"]
