"""The one input contract of the Python API: what ``Denoiser.denoise`` and ``SimilarityModel.score/embed`` take.

An image is a path, a PIL image, a numpy array or a torch tensor. Arrays and tensors may be ``(H, W)``,
``(H, W, C)``, ``(C, H, W)`` or a batch ``(N, C, H, W)`` with ``C`` in 1–4 (2 and 4: an alpha channel last); a
3-d numpy array is read channels-last and a 3-d tensor channels-first when both readings are possible. ``uint8``
values are 0–255; float values are on the [0, 1] scale (noisy images may stray outside it). Anything else — other
dtypes, NaN, values that look like 0–255 floats, empty or 5-d arrays — is one :class:`SiamdiffError` naming the
parameter.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..core.errors import SiamdiffError
from .imageio import image_to_array, read_image

CHANNELS = (1, 2, 3, 4)
FLOAT_LIMIT = 10.0  # a float image beyond ±10 is on another scale (0-255 floats), not a noisy [0, 1] one


def _shape_error(param: str, shape: tuple[int, ...]) -> SiamdiffError:
    return SiamdiffError(f"{{{param}}} must be an image (H, W), (H, W, C), (C, H, W) or a batch (N, C, H, W) with C "
                         f"from 1 to 4, got shape {shape}", param)


def _channels_first(x: torch.Tensor, channels_last: bool, param: str) -> torch.Tensor:
    """A 2-d, 3-d or 4-d tensor as ``(N, C, H, W)``."""
    shape = tuple(x.shape)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        first, last = shape[0] in CHANNELS, shape[2] in CHANNELS
        if last and (channels_last or not first):
            x = x.permute(2, 0, 1)[None]
        elif first:
            x = x[None]
        else:
            raise _shape_error(param, shape)
    elif x.ndim == 4:
        if shape[1] not in CHANNELS:
            raise _shape_error(param, shape)
    else:
        raise _shape_error(param, shape)
    if 0 in x.shape:
        raise SiamdiffError(f"{{{param}}} is empty (shape {shape})", param)
    return x


def as_batch(images: object, param: str = "images", keep_alpha: bool = True) -> torch.Tensor:
    """Any accepted input as a float32 batch ``(N, C, H, W)`` on the [0, 1] scale (``uint8`` divided by 255).

    A path or a PIL image is read as :func:`~siamdiff.data.imageio.read_image` reads files. An alpha channel (2 or 4
    channels) is kept as the last channel when ``keep_alpha``; else the image is composited over white, whatever
    form it came in."""
    if isinstance(images, (str, os.PathLike)):
        if not str(images).strip():
            raise SiamdiffError(f"{{{param}}} is an empty path", param)
        images = read_image(images, keep_alpha=keep_alpha)
    elif type(images).__module__.startswith("PIL."):
        images = image_to_array(images, keep_alpha)
    if isinstance(images, np.ndarray):
        channels_last = True
        if images.dtype == object or not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
            raise SiamdiffError(f"{{{param}}} must be uint8 (0-255) or float (0-1) values, got {images.dtype}", param)
        array = np.ascontiguousarray(images)
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())  # PIL's arrays are read-only
    elif isinstance(images, torch.Tensor):
        channels_last = False
        tensor = images.detach().cpu()
    else:
        raise SiamdiffError(f"{{{param}}} must be a path, a PIL image, a numpy array or a torch tensor, got "
                            f"{type(images).__name__}", param)
    if tensor.dtype == torch.uint8:
        batch = _channels_first(tensor, channels_last, param).float() / 255.0
    elif tensor.is_floating_point():
        batch = _channels_first(tensor, channels_last, param).float()
        if not torch.isfinite(batch).all():
            raise SiamdiffError(f"{{{param}}} hold NaN or infinite values", param)
        if batch.abs().max() > FLOAT_LIMIT:
            raise SiamdiffError(f"{{{param}}} look like 0-255 values (up to {float(batch.abs().max()):g}): float "
                                f"images are on the [0, 1] scale; divide by 255 or pass uint8", param)
    else:
        raise SiamdiffError(f"{{{param}}} must be uint8 (0-255) or float (0-1) values, got {tensor.dtype}", param)
    if not keep_alpha and batch.shape[1] in (2, 4):  # over white, as files are read
        alpha = batch[:, -1:].clamp(0, 1)
        batch = batch[:, :-1].clamp(0, 1) * alpha + (1 - alpha)
    return batch.contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images ``(C, H, W)`` or ``(N, C, H, W)`` on the [0, 1] scale as uint8 arrays, channels last (``(H, W, C)``
    or ``(N, H, W, C)``): clipped to [0, 1] and rounded to the nearest of the 256 levels — what a PNG holds."""
    return torch.round(images.detach().clamp(0, 1) * 255).to(torch.uint8).cpu().movedim(-3, -1).numpy()
