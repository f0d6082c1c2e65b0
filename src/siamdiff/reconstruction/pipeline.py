"""``Denoiser``: the one way siamdiff denoises — the CLI, the evaluation protocol, the benchmarks and the demo all
call :meth:`Denoiser.denoise`.

>>> from siamdiff import Denoiser
>>> den = Denoiser.load("mnist")                       # shipped: diffusion model + noise estimator + classifier
>>> clean, info = den.denoise(noisy)                    # noisy: (N, C, H, W) float in [0, 1]

One call runs the stages in order: the noise level σ (given, or estimated per image by the learned estimator, else
wavelet-MAD), declipping (diffusion methods, images read from files), the classes to keep (given, or predicted from
the unguided one-step estimate), then the method. A Denoiser wraps a diffusion model (``tweedie``, ``ddim``,
``ancestral``), the supervised direct denoiser (``direct``), a VAE (``vae``), or no model: the noisy input itself
(``noisy``) and scikit-image's ``nlm`` and ``wavelet`` — the baselines the evaluation measures beside it.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoint import load_model
from ..core.config import check_seed, over_memory
from ..core.errors import CheckpointError, ImageReadError, SiamdiffError, first_line, number, require
from ..core.files import check_writable, output_folder
from ..core.registry import KIND_NAMES, companion, grayscale_twin, resolve
from ..data.augment import at_size
from ..data.inputs import as_batch, to_uint8
from ..data.imageio import IMAGE_EXTENSIONS, write_png_atomic
from .diffusion import METHODS as DIFFUSION_METHODS
from .diffusion import ancestral, ddim, denoise
from .estimate import WAVELET, wavelet_sigma
from .noise import SIGMA_RANGE
from .noise import declip as undo_clipping
from .schedule import Schedule, sigma_for_step, step_for_sigma
from .tiles import Blend, batches, pad_to, positions

# The methods of each kind of model; None: no model (baselines).
METHODS: dict[str | None, tuple[str, ...]] = {"diffusion": DIFFUSION_METHODS, "denoiser": ("direct",), "vae": ("vae",),
                                              None: ("noisy", "nlm", "wavelet")}
MAX_GUIDANCE = 100.0  # useful guidance weights are about 0-10; 1e300 gave NaN images
TILE_BATCH = 16  # tiles per network call for an image larger than the model's: 64 took 200 MB more, no faster
ESTIMATE_TILE = 128  # the learned noise estimate of a larger image pools its statistics over tiles of this side
ESTIMATE_BATCH = 8  # ... that many tiles at a time
PRECISIONS = ("fp32", "bf16")  # of the network's arithmetic
CHAIN_FRAMES = 10  # estimates of the clean image kept from a reverse chain on request, evenly spaced over its calls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DenoiseInfo:
    """What was done to each image: the σ used, the estimate, the entry step, the method."""

    sigma: list[float]
    sigma_estimated: list[float | None]
    t_start: list[int | None]
    method: str
    sigma_estimator: str | None = None  # "learned" or "wavelet-MAD" when σ was estimated
    labels: list[int] | None = None  # the classes kept by guidance, if any
    tiles: list[int] | None = None  # tiles of the model's size each image was denoised in (1: the image itself)
    # on request, the reverse chain: (step, estimate of the clean images (N, C, H, W) in [0, 1]) from t* down
    chain: list[tuple[int, torch.Tensor]] | None = None


class _Chain:
    """A trace of :mod:`.diffusion` that keeps the estimates of the network calls numbered in ``keep``."""

    def __init__(self, keep: set[int]) -> None:
        self.keep, self.calls, self.frames = keep, 0, []

    def __call__(self, t: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        if self.calls in self.keep:
            self.frames.append((int(t.max()), ((x0 + 1) / 2).clamp(0, 1)))
        self.calls += 1


def _classical(noisy: torch.Tensor, sigma: np.ndarray, method: str) -> torch.Tensor:
    """scikit-image's non-local means or BayesShrink wavelet denoising of each image, told its σ."""
    from skimage.restoration import denoise_nl_means, denoise_wavelet

    out = []
    for img, s in zip(noisy.detach().cpu().double().numpy(), sigma):
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
    return torch.from_numpy(np.stack(out)).float().clamp(0, 1).to(noisy.device)


def check_fits(model: nn.Module, kind: str, channels: int) -> None:
    """Refuse a noise estimator or classifier made for images of other channels than those it would be given: its
    answers would be meaningless, or it would fail deep inside the network. (Another size is fine: the estimator
    pools over any size, the classifier is given the images resized to its own, and a colour classifier a gray image
    as colour, its channel replicated.)"""
    if model.config.in_channels != channels and (kind, model.config.in_channels, channels) != ("classifier", 3, 1):
        raise SiamdiffError(f"the {KIND_NAMES[kind]} takes {model.config.in_channels}-channel images, not "
                            f"{channels}-channel ones")


def _to_channels(images: torch.Tensor, channels: int | None, sigma: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
    """Noisy images ``(N, C, H, W)`` of noise level ``sigma (N,)`` as rows for a network of ``channels``:
    ``(rows, their sigma, rows per image, back)``, ``back`` turning the network's outputs into the images'.

    A colour image into a grayscale network is three rows, its channels. A grayscale image into a colour network is
    made a colour image with the noise that network was trained on, independent in each channel: the gray noise,
    replicated, is √3·σ along the gray direction and absent across it; noise drawn across it only (``N(0, 3σ²)``
    per channel less its mean over the channels) makes it √3·σ in every direction, and ``back``, the mean over the
    channels, removes exactly what was added."""
    n, c = images.shape[:2]
    if channels is None or c == channels:
        return images, sigma, 1, lambda out: out
    if channels == 1:
        return (images.reshape(n * c, 1, *images.shape[-2:]), None if sigma is None else sigma.repeat_interleave(c),
                c, lambda out: out.reshape(n, c, *out.shape[-2:]))
    scale = 3 ** 0.5 * sigma.to(images.dtype).view(n, 1, 1, 1)
    across = torch.randn((n, channels, *images.shape[-2:]), generator=generator, device=images.device,
                         dtype=images.dtype) * scale
    rows = images.expand(n, channels, *images.shape[-2:]) + across - across.mean(1, keepdim=True)
    return rows, sigma * 3 ** 0.5, 1, lambda out: out.mean(1, keepdim=True)


def _guidance(value: float) -> float:
    value = number(value, "guidance")
    require(0 <= value <= MAX_GUIDANCE, "guidance", f"a number from 0 to {MAX_GUIDANCE:g}", value)
    return value


class Denoiser:
    """A denoising model (or none, for the baselines) with the noise estimator and classifier that go with it."""

    def __init__(self, net: nn.Module | None = None, meta: dict[str, Any] | None = None, source: str = "",
                 estimator: nn.Module | None = None, classifier: nn.Module | None = None,
                 gray: Denoiser | None = None) -> None:
        """``gray``: a grayscale denoiser that takes this colour model's gray images in its place (the shipped colour
        diffusion model's grayscale twin, fine-tuned from it on its data read as gray)."""
        self.net = net.eval() if net is not None else None
        self.meta = meta or {}
        self.kind: str | None = self.meta.get("kind") if net is not None else None
        if self.kind not in METHODS:
            raise SiamdiffError(f"'{source or 'the model'}' is a {self.kind} model, not a diffusion model")
        self.source = source
        extra = self.meta.get("extra", {})
        self.schedule = None
        if self.kind == "diffusion":
            try:
                self.schedule = Schedule(**extra["schedule"])
            except KeyError:
                raise CheckpointError(f"model '{source or 'in memory'}' is damaged: it has no noise schedule") \
                    from None
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"model '{source or 'in memory'}' is damaged: its noise schedule is unreadable "
                                      f"({first_line(exc)})") from None
        self.classes: list[str] = list(extra.get("classes", []))
        self.estimator = estimator.eval() if estimator is not None else None
        self.classifier = classifier.eval() if classifier is not None else None
        for kind, model in (("sigma", self.estimator), ("classifier", self.classifier)):
            if model is not None and self.channels is not None:
                check_fits(model, kind, self.channels)
        if gray is not None and (self.channels, gray.channels, gray.kind) != (3, 1, self.kind):
            raise SiamdiffError(f"a grayscale twin is a 1-channel {self.kind} model for a 3-channel one; got a "
                                f"{gray.channels}-channel {gray.kind} model for a {self.channels}-channel one")
        self.gray = gray

    @classmethod
    def load(cls, name_or_path: str | os.PathLike | None, estimator: str | os.PathLike | None = None,
             classifier: str | os.PathLike | None = None, kind: str | None = "diffusion") -> Denoiser:
        """A shipped name (``mnist``, ``fashion-mnist``, ``cifar10``: with its learned noise estimator and its
        classifier) or a model file / run folder of ``kind`` (with the ``estimator`` and ``classifier`` given, if
        any). ``estimator="wavelet"`` estimates σ by wavelet-MAD even where a learned estimator comes along.
        ``kind`` None (and no model) gives the model-free baselines."""
        net, meta, path = None, None, None
        if kind is None and name_or_path is not None:
            raise SiamdiffError(f"{{model}} does not apply to the model-free methods ({', '.join(METHODS[None])})",
                                "model")
        if kind is not None:
            if name_or_path is None:
                raise SiamdiffError(f"this method needs a {KIND_NAMES[kind]}: pass {{model}}", "model")
            path = resolve(kind, name_or_path)
            net, meta = load_model(path, kind=kind)

        def load_companion(companion_kind: str, given: str | os.PathLike | None) -> nn.Module | None:
            found = companion(companion_kind, path, given) if path is not None else \
                (resolve(companion_kind, given) if given is not None else None)
            return None if found is None else load_model(found, kind=companion_kind)[0]

        sigma_net = None if str(estimator).lower() in WAVELET else load_companion("sigma", estimator)
        source = "" if name_or_path is None else str(name_or_path)
        classifier_net = load_companion("classifier", classifier)
        twin = grayscale_twin(path) if path is not None else None  # gray images: σ by wavelet-MAD, as for colour
        gray = None if twin is None else cls(*load_model(twin, kind=kind), str(twin), None, classifier_net)
        return cls(net, meta, source, sigma_net, classifier_net, gray)

    @property
    def device(self) -> torch.device:
        """Where the networks are (the CPU for the model-free baselines)."""
        for model in (self.net, self.estimator, self.classifier):
            for parameter in model.parameters() if model is not None else ():
                return parameter.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> Denoiser:
        """Move the networks to ``device`` (in place; returns self)."""
        for model in (self.net, self.estimator, self.classifier):
            if model is not None:
                model.to(device)
        if self.gray is not None:
            self.gray.to(device)
        return self

    def compile(self) -> Denoiser:
        """Compile the network and the noise estimator with ``torch.compile`` (in place; returns self).

        For a process that denoises many images of one shape, not for one-off calls: the first call of each input
        shape (and each guidance setting) spends tens of seconds compiling, and on the CPU it needs a C++ compiler.
        Later calls of one 28×28 image ran 20-30 % faster on 2 CPU threads than the eager network
        (``python benchmarks/denoise.py --latency-only`` measures both). A failure to compile is reported as a
        :class:`SiamdiffError` on the first call."""
        if self.net is not None:
            self.net = _Compiled(self.net)
        if self.estimator is not None:
            self.estimator = _Compiled(self.estimator, ("statistics",))
        if self.gray is not None:
            self.gray.compile()
        return self

    @property
    def methods(self) -> tuple[str, ...]:
        return METHODS[self.kind]

    @property
    def channels(self) -> int | None:
        """The channels of the images this denoiser takes (None: any)."""
        return self.net.config.in_channels if self.net is not None else None

    @property
    def image_size(self) -> int | None:
        """The side of the images this denoiser takes (None: any)."""
        return self.net.config.image_size if self.net is not None else None

    @property
    def num_classes(self) -> int:
        """Classes the model can keep by guidance (0: unconditional)."""
        return self.net.config.num_classes if self.kind == "diffusion" else 0

    def sigma_range(self) -> float:
        """The largest noise level this denoiser can be told (σ at a diffusion schedule's last step)."""
        if self.schedule is None:
            return math.inf
        return float(sigma_for_step(self.schedule, self.schedule.steps - 1))

    def estimate_sigma(self, images: torch.Tensor) -> np.ndarray:
        """Noise level per image ``(N,)`` of ``images (N, C, H, W)``: the learned estimator when there is one, else
        wavelet-MAD. The learned estimate pools the estimator's statistics over the whole image — over tiles of
        :data:`ESTIMATE_TILE` for a larger one — and over the channels of a colour image it takes one at a time. A
        colour estimator cannot see the noise of a grayscale image (it reads it across the channels): wavelet-MAD
        does."""
        if not self._learned_estimate(images):
            return wavelet_sigma(images)
        rows, _, per_image, _ = _to_channels(images.float(), self.estimator.config.in_channels)
        with torch.no_grad():
            if max(rows.shape[-2:]) <= ESTIMATE_TILE:
                stats = self.estimator.statistics(rows)
            else:  # the mean over an image's tiles, a few tiles at a time: memory bounded whatever the image
                stats = torch.stack([
                    torch.cat([self.estimator.statistics(tiles)
                               for _, tiles in batches(pad_to(row, ESTIMATE_TILE), ESTIMATE_TILE, 0, ESTIMATE_BATCH)
                               ]).mean(0) for row in rows])
            stats = stats.view(len(images), per_image, -1).mean(1)
            return self.estimator.log_sigma_from(stats).exp().double().cpu().numpy()

    def _learned_estimate(self, images: torch.Tensor) -> bool:
        return self.estimator is not None and not (images.shape[1] == 1 < self.estimator.config.in_channels)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's class ``(N,)`` of images in [0, 1], given to it at its own size."""
        if self.classifier is None:
            raise SiamdiffError("this needs a classifier: use a shipped model or pass {classifier}", "classifier")
        if images.shape[1] < self.classifier.config.in_channels:  # a gray image, as colour
            images = images.expand(-1, self.classifier.config.in_channels, -1, -1)
        with torch.no_grad():
            return self.classifier(at_size(images, self.classifier.config.image_size)).argmax(1)

    def _labels(self, label: int | str | Sequence[int] | torch.Tensor | None, images: torch.Tensor,
                sigma: torch.Tensor, whole: bool = True) -> torch.Tensor | None:
        """The class each image keeps: none, one class for all, one per image, or ``"auto"``: the class the
        classifier sees in the unguided one-step (Tweedie) estimate, which is far easier to classify than the
        noisy input (at σ 0.5 the classifier is at chance on noisy MNIST digits)."""
        if label is None:
            return None
        if not self.num_classes:
            raise SiamdiffError("this model has no classes: {label} needs a class-conditional model", "label")
        if isinstance(label, str):
            if label != "auto":
                raise SiamdiffError(f"{{label}} must be a class number or auto, got '{label}'", "label")
            if self.classifier is None:
                raise SiamdiffError("{label} auto needs a classifier: use a shipped model or pass {classifier}",
                                    "label", "classifier")
            if not whole:
                raise SiamdiffError(f"{{label}} auto names the class of images of the model's size and channels "
                                    f"({self.channels}x{self.image_size}x{self.image_size}); give the class", "label")
            pilot, _ = denoise(self.net, self.schedule, images, sigma, "tweedie")
            return self.classify(pilot)
        values = label.tolist() if isinstance(label, (torch.Tensor, np.ndarray)) else label
        values = [values] if isinstance(values, numbers.Number) else list(values)
        for value in values:  # before any tensor: 2**70 would overflow it
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or \
                    not 0 <= value < self.num_classes:
                raise SiamdiffError(f"{{label}} must be between 0 and {self.num_classes - 1}, got {value}", "label")
        labels = torch.tensor(values, dtype=torch.long, device=images.device)
        if len(labels) == 1:
            labels = labels.expand(len(images))
        if len(labels) != len(images):
            raise SiamdiffError(f"{{label}} must be one class or one per image ({len(images)}), got {len(labels)}",
                                "label")
        return labels

    def _sigma(self, sigma: float | str, images: torch.Tensor) -> tuple[torch.Tensor, list[float | None]]:
        if isinstance(sigma, str):
            if sigma != "auto":
                raise SiamdiffError(f"{{sigma}} must be 'auto' or a number, got '{sigma}'", "sigma")
            estimated = self.estimate_sigma(images)
            return torch.as_tensor(estimated, dtype=torch.float64), [float(s) for s in estimated]
        value = number(sigma, "sigma")
        require(math.isfinite(value) and value >= 0, "sigma", "'auto' or a number of 0 or more", sigma)
        top = self.sigma_range()
        if value > top:  # the chain cannot start noisier than its last step: the input would be out of range
            raise SiamdiffError(f"{{sigma}} {sigma} is beyond the noise this model's schedule reaches (sigma "
                                f"{top:.4g} at its last step)", "sigma")
        return torch.full((len(images),), value, dtype=torch.float64), [None] * len(images)

    def _warn_beyond_training(self, sigma: torch.Tensor) -> None:
        """A σ the schedule reaches but the models were not trained or measured on is denoised, with a warning: out
        there the model makes up an image of its data (a digit from σ 5) rather than recovering the input's."""
        top = SIGMA_RANGE[1]
        if self.net is not None and bool((sigma > top).any()):
            log.warning("sigma %.3g is beyond the noise levels the models were trained and measured on (%g to %g): "
                        "the output is invented by the model more than recovered from the input",
                        float(sigma.max()), *SIGMA_RANGE)

    def _check_steps(self, method: str, steps: int) -> None:
        """Only DDIM takes steps; for it more than the schedule's would only repeat steps (100,000 ran for hours)."""
        whole = isinstance(steps, numbers.Integral) and not isinstance(steps, bool)
        if method == "ddim":
            top = self.schedule.steps
            require(whole and 1 <= steps <= top, "steps", f"from 1 to the model's {top} diffusion steps", steps)
        require(whole and steps >= 1, "steps", "a positive number", steps)

    @torch.no_grad()
    def denoise(self, images: object, sigma: float | str = "auto", method: str | None = None, steps: int = 10,
                label: int | str | Sequence[int] | torch.Tensor | None = None, guidance: float = 0.0,
                seed: int | torch.Generator = 0, declip: bool = True, overlap: int | None = None,
                tile_batch: int = TILE_BATCH, chain: bool = False, precision: str = "fp32",
                max_calls: int | None = None) -> tuple[torch.Tensor, DenoiseInfo]:
        """Clean ``images`` with ``method`` (default: the model's first); returns ``(N, C, H, W)`` float in [0, 1]
        with the input's channels, and what was done (:class:`DenoiseInfo`).

        images: any input of :mod:`siamdiff.data.inputs` — a path, a PIL image, a numpy array or a tensor, one
        image or a batch, uint8 or float on the [0, 1] scale, of any size and colour. An image larger (or smaller)
        than the model's is denoised in overlapping tiles of its size, ``overlap`` pixels apart (default a quarter
        of a tile), blended with a smooth window; all tiles of an image share its σ. A colour image in a grayscale
        model is denoised a channel at a time; a grayscale image in a colour model by the model's grayscale twin when
        it has one (the shipped CIFAR-10 model does), else as colour, with noise added across the channels so that
        the model sees the noise it knows, and averaged back.
        An alpha channel is kept as it is.
        sigma: a number, or ``"auto"`` (estimated per image); label: the class to keep by classifier-free guidance
        of weight ``guidance`` (a class number, one per image, or ``"auto"``: the class the classifier sees in the
        unguided estimate, for images of the model's size); steps: DDIM's network calls; seed: of the ancestral
        chain (or a ``torch.Generator`` to draw from); declip: undo the bias of pixels clipped at 0 or 1 first, in
        images that lie within [0, 1] (as read from files; diffusion methods); tile_batch: tiles per network call;
        chain: keep up to :data:`CHAIN_FRAMES` estimates of the clean images along the reverse chain (diffusion
        models; every image at one σ) in ``DenoiseInfo.chain``, at a memory cost of one image per frame;
        precision: ``"fp32"``, or ``"bf16"``: the network under bfloat16 autocast — 2-3x faster on CPUs with
        bfloat16 instructions (AMX, AVX-512 BF16) and on GPUs, for a change in the output far below the noise it removes
        (``benchmarks/photos.py`` measures both); max_calls: refuse, before starting, work of more network calls
        (tiles × steps) than this (a server's bound on one request).
        """
        x = as_batch(images)
        if self.gray is not None and x.shape[1] in (1, 2):  # gray (with alpha): the grayscale twin denoises it
            return self.gray.denoise(x, sigma, method, steps, label, guidance, seed, declip, overlap, tile_batch,
                                     chain, precision, max_calls)
        method = method or self.methods[0]
        if method not in self.methods:
            raise SiamdiffError(f"unknown {{method}} '{method}' for this model: use one of {', '.join(self.methods)}",
                                "method")
        self._check_steps(method, steps)
        guidance = _guidance(guidance)
        overlap = self._overlap(overlap)
        require(isinstance(tile_batch, numbers.Integral) and tile_batch >= 1, "tile_batch", "a positive number",
                tile_batch)
        require(precision in PRECISIONS, "precision", " or ".join(PRECISIONS), precision)
        device = self.device
        x = x.to(device)
        generator = seed if isinstance(seed, torch.Generator) else \
            torch.Generator(device=device).manual_seed(check_seed(seed))
        colour, alpha = (x[:, :-1], x[:, -1:]) if x.shape[1] in (2, 4) else (x, None)
        sig, estimated = self._sigma(sigma, colour)
        self._warn_beyond_training(sig)
        t_star: list[int | None] = [None] * len(x)
        labels = frames = None
        if self.net is None:
            if chain:
                self._chain_calls(method, steps, sig)  # refuses: no chain
            if label is not None:
                self._labels(label, colour, sig)  # refuses: no classes
            out = colour.clamp(0, 1) if method == "noisy" else _classical(colour, sig.numpy(), method)
            tiles = [1] * len(x)
        else:
            if self.kind == "diffusion" and declip:
                colour = undo_clipping(colour, sig)
            rows, row_sigma, per_image, back = _to_channels(colour, self.channels, sig, generator)
            self._check_calls(rows, row_sigma, method, steps, label is not None and guidance != 0, overlap,
                              max_calls)
            keep = self._chain_calls(method, steps, row_sigma) if chain else None
            whole = per_image == 1 and rows.shape[-2:] == (self.image_size, self.image_size)
            labels = self._labels(label, rows if per_image == 1 else colour, row_sigma if per_image == 1 else sig,
                                  whole)
            row_labels = None if labels is None else labels.repeat_interleave(per_image)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out, tiles, frames = self._tiled(rows, row_sigma, method, steps, row_labels, guidance, generator,
                                                 overlap, tile_batch, keep)
            out = out.float()
            out = back(out)
            frames = None if frames is None else [(t, back(f)) for t, f in frames]
            tiles = tiles[::per_image]
            if self.kind == "diffusion":
                t_star = [int(t) for t in step_for_sigma(self.schedule, row_sigma[::per_image])]
        if alpha is not None:
            out = torch.cat([out, alpha.clamp(0, 1)], dim=1)
        how = None if sigma != "auto" else ("learned" if self._learned_estimate(colour) else "wavelet-MAD")
        return out.clamp(0, 1), DenoiseInfo([float(s) for s in sig], estimated, t_star, method, how,
                                            None if labels is None else [int(k) for k in labels], tiles, frames)

    def _chain_calls(self, method: str, steps: int, sigma: torch.Tensor) -> set[int]:
        """The network calls of the reverse chain to keep: up to :data:`CHAIN_FRAMES`, evenly spaced, the last one
        included. One chain for all images: they must enter it at one step."""
        if self.kind != "diffusion":
            raise SiamdiffError("{chain} follows a diffusion model's reverse chain; this model has none", "chain")
        entry = {int(t) for t in step_for_sigma(self.schedule, sigma)}
        if len(entry) > 1:
            raise SiamdiffError("{chain} follows one reverse chain: give images of one noise level (one image, or "
                                "one {sigma} for all)", "chain", "sigma")
        calls = self._calls_per_image(method, steps, entry.pop())
        return {int(k) for k in np.linspace(0, calls - 1, min(calls, CHAIN_FRAMES)).round()}

    def _calls_per_image(self, method: str, steps: int, t_star: int) -> int:
        """Network calls of ``method`` on one image (or tile) of the model's size entering the chain at ``t_star``
        (guidance doubles them)."""
        return {"tweedie": 1, "ddim": steps, "ancestral": t_star + 1}.get(method, 1)

    def _check_calls(self, rows: torch.Tensor, sigma: torch.Tensor, method: str, steps: int, guided: bool,
                     overlap: int, max_calls: int | None) -> None:
        """Refuse, before any of it is done, work of more than ``max_calls`` network calls on tiles of the model's
        size: tiles of each image (its padded size) × calls of the method from its entry step."""
        if max_calls is None or self.net is None:
            return
        size = self.image_size
        h, w = rows.shape[-2:]
        tiles = 1 if (h, w) == (size, size) else len(positions(max(h, size), max(w, size), size, overlap))
        entry = step_for_sigma(self.schedule, sigma) if self.schedule is not None else torch.zeros(len(rows))
        per_tile = [self._calls_per_image(method, steps, int(t)) * (2 if guided else 1) for t in entry]
        calls = tiles * sum(per_tile)
        if calls > max_calls:
            raise SiamdiffError(f"this would take {calls:,} network calls ({len(rows)} image(s) or channel(s) of "
                                f"{tiles:,} tile(s), {max(per_tile):,} call(s) each with {method}), more than the "
                                f"limit of {max_calls:,}: use tweedie, fewer {{steps}} or a smaller image", "steps")

    def _overlap(self, overlap: int | None) -> int:
        if self.image_size is None:
            return 0
        if overlap is None:
            return self.image_size // 4
        require(isinstance(overlap, numbers.Integral) and not isinstance(overlap, bool)
                and 0 <= overlap < self.image_size, "overlap", f"from 0 to {self.image_size - 1} pixels", overlap)
        return int(overlap)

    def _network(self, x: torch.Tensor, sigma: torch.Tensor, method: str, steps: int, labels: torch.Tensor | None,
                 guidance: float, generator: torch.Generator, trace: _Chain | None = None) -> torch.Tensor:
        """The model's method on images of its size (``trace``: of a diffusion model's chain)."""
        if method == "direct":
            t = torch.zeros(len(x), dtype=torch.long, device=x.device)
            return ((self.net(x * 2 - 1, t, None) + 1) / 2).clamp(0, 1)
        if method == "vae":
            return self.net.reconstruct(x.clamp(0, 1))
        return denoise(self.net, self.schedule, x, sigma, method, steps, labels, guidance, generator, trace)[0]

    def _tiled(self, rows: torch.Tensor, sigma: torch.Tensor, method: str, steps: int, labels: torch.Tensor | None,
               guidance: float, generator: torch.Generator, overlap: int, tile_batch: int, keep: set[int] | None
               ) -> tuple[torch.Tensor, list[int], list[tuple[int, torch.Tensor]] | None]:
        """:meth:`_network` on images of any size: a batch of images of the model's size in one call, as given;
        any other image in tiles, ``tile_batch`` at a time, blended (memory bounded by the tiles, not the image).
        With ``keep``, also the chain's estimates at those calls, blended the same way."""
        size = self.image_size
        n, c, h, w = rows.shape
        if (h, w) == (size, size):
            trace = None if keep is None else _Chain(keep)
            out = self._network(rows, sigma, method, steps, labels, guidance, generator, trace)
            return out, [1] * n, None if trace is None else trace.frames
        out, counts, chains = torch.empty_like(rows), [], []
        for i in range(n):
            image = pad_to(rows[i], size)
            blend = Blend(tuple(image.shape), size, overlap, device=rows.device)
            frame_blends = [Blend(tuple(image.shape), size, overlap, device=rows.device) for _ in keep or ()]
            count, steps_kept = 0, []
            for places, tiles in batches(image, size, overlap, tile_batch):
                k = len(tiles)
                trace = None if keep is None else _Chain(keep)
                blend.add(places, self._network(tiles, sigma[i].expand(k), method, steps,
                                                None if labels is None else labels[i].expand(k), guidance, generator,
                                                trace))
                for frame_blend, (_, frame) in zip(frame_blends, trace.frames if trace else ()):
                    frame_blend.add(places, frame)
                steps_kept = [t for t, _ in trace.frames] if trace else []
                count += k
            out[i] = blend.result()[:, :h, :w]
            counts.append(count)
            chains.append([fb.result()[:, :h, :w] for fb in frame_blends])
        if keep is None:
            return out, counts, None
        return out, counts, [(t, torch.stack([frames[k] for frames in chains])) for k, t in enumerate(steps_kept)]

    def check_sample(self, n: int = 16, method: str = "ddim", steps: int = 50, label: int | None = None,
                     guidance: float = 1.0, seed: int = 0, batch_size: int = 256) -> None:
        """Refuse settings :meth:`sample` cannot use, before any work (the same arguments)."""
        if self.kind != "diffusion":
            raise SiamdiffError("sampling needs a diffusion model")
        if method not in ("ddim", "ddpm"):
            raise SiamdiffError(f"unknown {{method}} '{method}': use ddim or ddpm", "method")
        require(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1, "n", "a positive number", n)
        if isinstance(label, str):
            raise SiamdiffError(f"{{label}} must be a class number, got '{label}'", "label")
        self._check_steps(method, steps)
        _guidance(guidance)
        check_seed(seed)
        c, s = self.channels, self.image_size
        refusal = over_memory(n * c * s * s * 4, f"{n} images of {s}x{s}", "ask for fewer with {n}")
        if refusal:
            raise SiamdiffError(refusal, "n")
        self._labels(label, torch.zeros(1, c, s, s), torch.zeros(1))  # a class the model lacks

    @torch.no_grad()
    def sample(self, n: int = 16, method: str = "ddim", steps: int = 50, label: int | None = None,
               guidance: float = 1.0, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
        """``n`` new images ``(n, C, S, S)`` in [0, 1] drawn from pure noise by DDIM (``steps`` network calls) or
        the DDPM chain (every step), ``batch_size`` at a time (memory stays bounded whatever ``n``)."""
        self.check_sample(n, method, steps, label, guidance, seed, batch_size)
        c, s = self.channels, self.image_size
        device = self.device
        gen = torch.Generator(device=device).manual_seed(int(seed))
        out = []
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            x = torch.randn((k, c, s, s), generator=gen, device=device)
            t = torch.full((k,), self.schedule.steps - 1, dtype=torch.long, device=device)
            labels = self._labels(label, x, torch.zeros(k))
            w = guidance if labels is not None else 0.0
            x0 = ddim(self.net, self.schedule, x, t, steps, labels, w) if method == "ddim" else \
                ancestral(self.net, self.schedule, x, t, labels, w, generator=gen)
            out.append(((x0 + 1) / 2).clamp(0, 1))
        return torch.cat(out)


class _Compiled(nn.Module):
    """``torch.compile`` of a network (static shapes: one graph per input shape), keeping its ``config`` and turning
    a compiler failure into a one-line error."""

    def __init__(self, net: nn.Module, methods: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.config = getattr(net, "config", None)
        self.compiled = torch.compile(net, dynamic=False)
        self.methods = {name: torch.compile(getattr(net, name), dynamic=False) for name in methods}
        self.uncompiled = {"net": net}  # its other methods, as they are (a dict: not a second copy of the module)

    def forward(self, *args: Any) -> torch.Tensor:
        return self._call(self.compiled, *args)

    def __getattr__(self, name: str) -> Any:
        if name in self.__dict__.get("methods", {}):
            return lambda *args: self._call(self.__dict__["methods"][name], *args)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["uncompiled"]["net"], name)

    @staticmethod
    def _call(fn: Any, *args: Any) -> torch.Tensor:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - inductor raises many types (no compiler, unsupported op)
            raise SiamdiffError(f"torch.compile failed ({type(exc).__name__}: {first_line(exc)[:200]}); use the "
                                f"network without compile()") from None


def output_paths(inputs: list[Path], out: Path) -> list[Path]:
    """Where each denoised image goes: ``out`` itself for one input named ``*.png`` (its folder must exist), else
    ``out/<stem>.png`` in the folder ``out`` (made if its parent exists).

    Every target is checked before anything is written; an input is never overwritten.
    """
    suffix = out.suffix.lower()
    if suffix == ".png" and not out.is_dir():
        if len(inputs) != 1:
            raise SiamdiffError(f"{{out}} '{out}' is one file but there are {len(inputs)} inputs: give a folder", "out")
        targets = [check_writable(out)]
    elif suffix in IMAGE_EXTENSIONS and not out.is_dir():
        raise SiamdiffError(f"denoised images are written as PNG: name {{out}} '{out.with_suffix('.png')}' or a "
                            f"folder", "out")
    elif out.exists() and not out.is_dir():
        raise SiamdiffError(f"{{out}} '{out}' is a file; give a folder for several inputs", "out")
    else:
        if not out.exists() and (suffix or not out.parent.is_dir()):
            raise SiamdiffError(f"{{out}} '{out}' is neither a .png file nor a folder that exists or can be made "
                                f"in an existing one", "out")
        stems = [p.stem for p in inputs]
        if len(set(stems)) != len(stems):
            raise SiamdiffError("several inputs share a file name; denoise them into separate folders")
        targets = [out / f"{p.stem}.png" for p in inputs]
    resolved_inputs = {p.resolve() for p in inputs}
    for t in targets:
        if t.resolve() in resolved_inputs:
            raise SiamdiffError(f"refusing to overwrite the input '{t}': choose another {{out}}", "out")
        if t.is_dir():
            raise SiamdiffError(f"cannot write '{t}': it is a folder")
    return targets


STRIP_HEIGHT = 256  # frames of a taller image are shown this high in the chain's strip (the frames keep their size)


def chain_strip(noisy: torch.Tensor, chain: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """One image's noisy input ``(C, H, W)`` followed by the estimates of its reverse chain, side by side, 2 white
    pixels apart, at most :data:`STRIP_HEIGHT` high: ``(C, h, w)`` in [0, 1]."""
    frames = [noisy[:chain[0][1].shape[0]], *(f for _, f in chain)]
    h = frames[0].shape[-2]
    if h > STRIP_HEIGHT:
        w = max(1, round(frames[0].shape[-1] * STRIP_HEIGHT / h))
        shown = [F.interpolate(f[None], size=(STRIP_HEIGHT, w), mode="area")[0] for f in frames]
    else:
        shown = frames
    gap = torch.ones(shown[0].shape[0], shown[0].shape[1], 2)
    return torch.cat([piece for f in shown for piece in (f, gap)][:-1], dim=-1)


def write_chain(folder: Path, stem: str, noisy: torch.Tensor, chain: list[tuple[int, torch.Tensor]]) -> list[str]:
    """One image's reverse chain into ``folder``: each kept estimate as ``<stem>-chain-<k>-t<step>.png`` and the
    strip of :func:`chain_strip` as ``<stem>-chain.png``. Returns the paths, the strip first."""
    paths = [folder / f"{stem}-chain.png", *(folder / f"{stem}-chain-{k:02d}-t{t:04d}.png"
                                             for k, (t, _) in enumerate(chain))]
    for path, image in zip(paths, [chain_strip(noisy, chain), *(f for _, f in chain)]):
        write_png_atomic(to_uint8(image), path)
    return [str(p) for p in paths]


def denoise_one(denoiser: Denoiser, image: torch.Tensor, chain: bool = False, **options: Any
                ) -> tuple[torch.Tensor, dict[str, Any], list[tuple[int, torch.Tensor]] | None]:
    """Denoise one image (a batch of one, as :func:`~siamdiff.data.inputs.as_batch` gives) with
    :meth:`Denoiser.denoise` and describe what was done: the one code path of ``siamdiff denoise`` and the web API.

    A ``guidance`` given without a ``label`` is ignored. Returns the cleaned image ``(C, H, W)``, its record (``sigma`` used, ``sigma_estimated``, ``sigma_estimator``,
    ``t_start``, ``method``, ``label``, ``tiles``, ``width``, ``height``) and, with ``chain``, the reverse chain as
    ``(step, estimate (C, H, W))`` pairs (else None)."""
    if options.get("label") is None:
        options["guidance"] = 0.0  # guidance keeps a class: without one there is nothing to guide towards
    clean, info = denoiser.denoise(image, chain=chain, **options)
    record = {"sigma": info.sigma[0], "sigma_estimated": info.sigma_estimated[0],
              "sigma_estimator": info.sigma_estimator, "t_start": info.t_start[0], "method": info.method,
              "label": None if info.labels is None else info.labels[0], "tiles": info.tiles[0],
              "width": int(clean.shape[-1]), "height": int(clean.shape[-2])}
    frames = None if info.chain is None else [(t, f[0]) for t, f in info.chain]
    return clean[0], record, frames


def denoise_files(denoiser: Denoiser, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                  save_chain: str | os.PathLike | None = None, **options: Any) -> list[dict[str, Any]]:
    """Denoise image files into PNGs, one file at a time: ``out`` is the file for one input named ``*.png``, else a
    folder receiving ``<stem>.png`` per input. Every target is checked before anything is written, and an input is
    never overwritten. An input that cannot be read is skipped and recorded with its ``error``; any other refusal
    (a bad option) stops before the first file is written. ``save_chain``: a folder for each input's reverse chain
    (:func:`write_chain`). ``options`` go to :meth:`Denoiser.denoise`.

    Returns one record per input: ``path`` (the input), ``output``, ``sigma`` (used), ``sigma_estimated``,
    ``sigma_estimator``, ``t_start``, ``method``, ``label``, ``tiles``, ``width``, ``height`` (and ``chain``: the
    files of the chain) — or ``path`` and ``error``."""
    paths = [Path(p) for p in inputs]
    targets = output_paths(paths, Path(out))
    chain_folder = None if save_chain is None else Path(save_chain)
    if chain_folder is not None and chain_folder.exists() and not chain_folder.is_dir():
        raise SiamdiffError(f"{{save_chain}} '{chain_folder}' is a file: give a folder", "save_chain")
    records: list[dict[str, Any]] = []
    with output_folder(targets[0].parent), output_folder(chain_folder or targets[0].parent):
        for src, dst in zip(paths, targets):
            try:
                image = as_batch(src)
            except ImageReadError as exc:
                records.append({"path": str(src), "error": str(exc)})
                continue
            clean, record, frames = denoise_one(denoiser, image, chain=chain_folder is not None, **options)
            write_png_atomic(to_uint8(clean), dst)
            chain = {} if frames is None else {"chain": write_chain(chain_folder, dst.stem, image[0], frames)}
            records.append({"path": str(src), "output": str(dst), **record, **chain})
        if not any("output" in r for r in records):
            raise SiamdiffError(f"none of the {len(paths)} input(s) could be read" if len(paths) > 1 else
                                records[0]["error"])
    return records
