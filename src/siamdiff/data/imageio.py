"""Reading and writing images as uint8 numpy arrays, safely.

Every failure a user can cause (a missing, empty, truncated, non-image or
oversized file) becomes an :class:`~siamdiff.errors.ImageReadError` with a
one-line message that names the file; no raw PIL or ``OSError`` traceback
escapes :func:`read_image`.

Conventions:

* :func:`read_image` and :func:`fit_to` work with channels-last arrays of
  shape ``(H, W, C)``, dtype ``uint8``, ``C`` being 1 (grayscale) or 3 (RGB).
* :func:`read_folder` returns a channels-first batch ``(N, C, H, W)``, ready
  to become a torch tensor.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..core import config
from ..core.errors import ImageReadError
from ..core.files import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "UPLOAD_FORMATS",
    "FolderImages",
    "fit_to",
    "image_to_array",
    "encode_png",
    "list_images",
    "read_folder",
    "read_image",
    "read_image_bytes",
    "write_png_atomic",
]

logger = logging.getLogger(__name__)

#: Lowercase file suffixes treated as images by :func:`list_images`.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".pgm",
        ".ppm",
        ".pbm",
        ".pnm",
    }
)

#: Images with more pixels than this are refused as possible decompression bombs.
MAX_PIXELS: int = 64_000_000

_BOMB_PIXELS_RE = re.compile(r"\((\d+) pixels\)")


class _ReadFailure(ImageReadError):
    """An :class:`ImageReadError` that also remembers its reason without the file name."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"cannot read '{os.fspath(path)}': {reason}")
        self.path = Path(path)
        self.reason = reason


def _check_channels(channels: int | None, allow_none: bool) -> None:
    if channels is None and allow_none:
        return
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")


class _TruncatedOverride:
    """Book-keeping for switching PIL's global LOAD_TRUNCATED_IMAGES off while we decode.

    Several threads may read at once: the first to need the override saves the
    global setting and sets it to False, the last one out restores it. A
    thread that finds the setting False because another thread switched it
    off still joins the override, so the setting cannot be restored under it.
    """

    lock = threading.Lock()
    active = 0
    saved = False


@contextlib.contextmanager
def _truncated_images_refused() -> Iterator[None]:
    """Make sure PIL refuses truncated images inside the block, then restore the setting."""
    state = _TruncatedOverride
    with state.lock:
        join = state.active > 0 or bool(ImageFile.LOAD_TRUNCATED_IMAGES)
        if join:
            if state.active == 0:
                state.saved = ImageFile.LOAD_TRUNCATED_IMAGES
            state.active += 1
            ImageFile.LOAD_TRUNCATED_IMAGES = False
    if not join:
        # The common case: PIL already refuses truncated images; change nothing.
        yield
        return
    try:
        yield
    finally:
        with state.lock:
            state.active -= 1
            if state.active == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = state.saved


def _too_large_reason(pixels: int | None, limit: int) -> str:
    if pixels is None or pixels <= limit:  # PIL's own guard fired (its limit is the same as ours)
        return f"image is too large (> {limit} pixels), refusing a possible decompression bomb"
    return f"image is too large ({pixels} pixels > {limit}), refusing a possible decompression bomb"


def _composite_over_white(values: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend ``values`` (H, W) or (H, W, C) uint8 over white using ``alpha`` (H, W) uint8."""
    v = values.astype(np.uint32)
    a = alpha.astype(np.uint32)
    if v.ndim == 3:
        a = a[:, :, None]
    out = (v * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 16-bit grayscale (any integer dtype) to uint8 by dropping the low byte."""
    v = np.clip(values.astype(np.int64), 0, 65535)
    return (v >> 8).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map float grayscale to uint8: [0, 1] if the maximum is <= 1, else [0, 255]; clipped."""
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if v.size and float(v.max()) <= 1.0:
        v = v * 255.0
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def _pil_to_array(img: Image.Image, keep_alpha: bool = False) -> np.ndarray:
    """Convert a loaded PIL image of any supported mode to (H, W, 1) or (H, W, 3) uint8.

    Grayscale-like modes ('1', 'L', 'LA', 'I;16*', 'I', 'F') give one channel;
    everything else (palette, RGB, RGBA, CMYK, YCbCr, ...) gives three.
    Alpha is composited over a white background, or with ``keep_alpha`` kept as
    a last channel: (H, W, 2) for gray and alpha, (H, W, 4) for RGBA.
    """
    mode = img.mode
    transparency = "transparency" in img.info
    if mode == "1":
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
    elif mode == "L" and not transparency:
        gray = np.asarray(img, dtype=np.uint8)
    elif mode in ("L", "LA", "La"):
        # 'L' here carries a tRNS colour key: convert('LA') turns it into alpha.
        la = np.asarray(img if mode == "LA" else img.convert("LA"), dtype=np.uint8)
        if keep_alpha:
            return np.ascontiguousarray(la.reshape(img.height, img.width, 2))
        gray = _composite_over_white(la[:, :, 0], la[:, :, 1])
    elif mode.startswith("I;16") or mode == "I":
        gray = _sixteen_bit_to_uint8(np.asarray(img))
    elif mode == "F":
        gray = _float_to_uint8(np.asarray(img))
    elif mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and transparency):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)
        if keep_alpha:
            return np.ascontiguousarray(rgba.reshape(img.height, img.width, 4))
        return _composite_over_white(rgba[:, :, :3], rgba[:, :, 3])
    else:
        # Palette, RGB, CMYK, YCbCr, LAB, HSV, RGBX, ...
        rgb = img if mode == "RGB" else img.convert("RGB")
        return np.asarray(rgb, dtype=np.uint8).reshape(rgb.height, rgb.width, 3)
    return gray.reshape(img.height, img.width, 1)


def image_to_array(img: Image.Image, keep_alpha: bool = False) -> np.ndarray:
    """An in-memory PIL image as a uint8 array ``(H, W, C)``, converted as :func:`read_image` converts files."""
    try:
        img.load()
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read the PIL image: {exc}") from None
    return np.ascontiguousarray(_pil_to_array(img, keep_alpha))


def luma(rgb: np.ndarray, axis: int = -1) -> np.ndarray:
    """The ITU-R 601-2 luma of uint8 RGB ``rgb`` along ``axis`` (kept, of size 1), rounded exactly as PIL's
    ``convert("L")`` rounds it (``(19595 R + 38470 G + 7471 B + 2^15) >> 16``), for whole datasets at once."""
    r, g, b = (np.take(rgb, i, axis=axis).astype(np.uint32) for i in range(3))
    return np.expand_dims(((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8), axis)


def _to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """Convert an (H, W, 1|3) uint8 array to (H, W, channels): luma for colour->gray, replication for gray->colour."""
    have = array.shape[2]
    if have == channels:
        return array
    if channels == 3:
        return np.repeat(array, 3, axis=2)
    return luma(array, axis=2)


def read_image(path: str | os.PathLike[str], channels: int | None = None, keep_alpha: bool = False) -> np.ndarray:
    """Read one image file as a uint8 array of shape (H, W, C).

    Args:
        path: the image file.
        channels: ``None`` keeps grayscale images as one channel and gives
            three (RGB) for everything else; ``1`` converts colour to
            grayscale with PIL's ``'L'`` conversion (ITU-R 601-2 luma);
            ``3`` replicates grayscale into RGB.
        keep_alpha: keep an alpha channel as the last channel instead of
            compositing over white (with ``channels`` None only).

    Returns:
        ``np.ndarray`` of dtype uint8 and shape (H, W, C), C in {1, 3}. EXIF
        orientation is applied (so H, W are those of the displayed image);
        alpha is composited over white; 16-bit grayscale is mapped by
        ``value >> 8``; float images are taken as [0, 1] when their maximum
        is <= 1, else [0, 255], and clipped; multi-frame files give their
        first frame.

    Raises:
        ImageReadError: missing file, directory, empty file, not an image,
            truncated or corrupt data, zero width or height, more than
            :data:`MAX_PIXELS` pixels, or an OS error such as a permission
            denial. The message is one line and names the file.
        ValueError: ``channels`` is not None, 1 or 3.
    """
    _check_channels(channels, allow_none=True)
    p = Path(path)
    try:
        if p.is_dir():
            raise _ReadFailure(p, "is a directory")
        size_bytes = p.stat().st_size
    except FileNotFoundError:
        raise _ReadFailure(p, "no such file") from None
    except PermissionError:
        raise _ReadFailure(p, "permission denied") from None
    except OSError as exc:
        raise _ReadFailure(p, _os_reason(exc)) from None
    if size_bytes == 0:
        raise _ReadFailure(p, "file is empty")

    return _decode(p, p, channels, keep_alpha)


def _decode(source: Path | io.BytesIO, p: str | os.PathLike[str], channels: int | None, keep_alpha: bool,
            max_pixels: int | None = None, formats: tuple[str, ...] | None = None) -> np.ndarray:
    """Decode an image from a file or bytes (``p`` names it in messages): the one decoder of files and uploads.
    ``max_pixels`` None: :data:`MAX_PIXELS`."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings(), _truncated_images_refused():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=formats) as img:
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise _ReadFailure(p, f"image has zero width or height ({width}x{height})")
                if width * height > max_pixels:
                    raise _ReadFailure(p, _too_large_reason(width * height, max_pixels))
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                img.load()
                img = _exif_transposed(img, p)
                array = _pil_to_array(img, keep_alpha and channels is None)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        match = _BOMB_PIXELS_RE.search(str(exc))
        raise _ReadFailure(p, _too_large_reason(int(match.group(1)) if match else None, max_pixels)) from None
    except UnidentifiedImageError:
        raise _ReadFailure(p, "not an image file") from None
    except FileNotFoundError:
        raise _ReadFailure(p, "no such file") from None
    except PermissionError:
        raise _ReadFailure(p, "permission denied") from None
    except MemoryError:
        raise _ReadFailure(p, "not enough memory to decode the image") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
            ZeroDivisionError, OverflowError, struct.error, zlib.error) as exc:
        # PIL signals broken data with a zoo of exception types ("image file is
        # truncated", "broken data stream", struct.error, ...).
        logger.debug("decoding %s failed: %r", p, exc)
        raise _ReadFailure(p, "image is truncated or corrupt") from None

    if channels is not None:
        array = _to_channels(array, channels)
    return np.ascontiguousarray(array)


#: The formats :func:`read_image_bytes` decodes (PIL names): what a browser or a camera sends, nothing that runs an
#: external program (PIL's EPS plug-in calls Ghostscript).
UPLOAD_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def read_image_bytes(data: bytes, name: str = "upload", channels: int | None = None, keep_alpha: bool = False,
                     max_pixels: int | None = None) -> np.ndarray:
    """Decode an uploaded image as :func:`read_image` reads a file, from its content alone (its name and declared
    type are not trusted): one of :data:`UPLOAD_FORMATS`, at most ``max_pixels`` pixels (default :data:`MAX_PIXELS`;
    checked from the header, before decoding). ``name`` names it in the one-line :class:`ImageReadError`."""
    _check_channels(channels, allow_none=True)
    if not data:
        raise _ReadFailure(name, "file is empty")
    return _decode(io.BytesIO(data), name, channels, keep_alpha, max_pixels, UPLOAD_FORMATS)


def _os_reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else "cannot be read"


def _exif_transposed(img: Image.Image, path: Path) -> Image.Image:
    """Apply the EXIF orientation tag; a broken EXIF block only earns a debug log."""
    try:
        transposed = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF must not make a good image unreadable
        logger.debug("ignoring unreadable EXIF orientation in %s: %r", path, exc)
        return img
    return img if transposed is None else transposed


def list_images(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """List image files under ``folder``, sorted.

    A file counts as an image when its suffix, lowercased, is in
    :data:`IMAGE_EXTENSIONS`. Hidden files and hidden directories (names
    starting with '.') are skipped; symbolic links to directories are not
    followed.

    Raises:
        ImageReadError: ``folder`` does not exist or is not a directory.
    """
    root = Path(folder)
    if not root.exists():
        raise ImageReadError(f"cannot read folder '{root}': no such folder")
    if not root.is_dir():
        raise ImageReadError(f"cannot read folder '{root}': not a directory")

    def is_image(name: str) -> bool:
        return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS

    found: list[Path] = []
    if recursive:
        def on_error(exc: OSError) -> None:
            logger.warning("skipping unreadable folder %s: %s", exc.filename, exc.strerror)

        for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            base = Path(dirpath)
            found.extend(base / f for f in filenames if is_image(f) and (base / f).is_file())
    else:
        try:
            entries = list(root.iterdir())
        except OSError as exc:
            raise ImageReadError(f"cannot read folder '{root}': {_os_reason(exc)}") from None
        found.extend(e for e in entries if is_image(e.name) and e.is_file())
    return sorted(found)


def fit_to(image: np.ndarray, channels: int, size: tuple[int, int]) -> np.ndarray:
    """Convert an image to a given number of channels and size.

    Args:
        image: uint8 array of shape (H, W, C) with C in {1, 3} (a 2-D
            (H, W) array is taken as grayscale).
        channels: 1 or 3. Colour -> gray uses PIL's ``'L'`` conversion
            (ITU-R 601-2 luma); gray -> colour replicates the channel.
        size: target ``(height, width)``. Any other size is resized, whole
            (no crop), with bilinear resampling that antialiases when
            downscaling; the aspect ratio is NOT preserved.

    Returns:
        uint8 array of shape (height, width, channels).

    Raises:
        ValueError: wrong dtype, shape, channel count or size.
    """
    _check_channels(channels, allow_none=False)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected an image of shape (H, W, 1|3), got {image.shape}")
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be two positive integers (height, width), got {size!r}")

    array = _to_channels(image, channels)
    if array.shape[:2] != (height, width):
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(f"cannot resize an empty image of shape {image.shape}")
        if channels == 1:
            pil = Image.fromarray(np.ascontiguousarray(array[:, :, 0]))
        else:
            pil = Image.fromarray(np.ascontiguousarray(array))
        resized = pil.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
        array = np.asarray(resized, dtype=np.uint8).reshape(height, width, channels)
    return np.ascontiguousarray(array)


@dataclass(frozen=True)
class FolderImages:
    """Images read from a folder by :func:`read_folder`.

    Attributes:
        images: uint8 array of shape (N, C, H, W) -- channels FIRST.
        paths: the N files read, in the order of ``images``.
        labels: for each image, the path of its parent folder relative to the
            folder read, as a POSIX string (``"cats"`` for
            ``folder/cats/x.png``, ``"."`` for a file directly in it); None
            unless ``class_from_parent`` was set.
        skipped: ``(path, reason)`` for each file that could not be read.
    """

    images: np.ndarray
    paths: list[Path]
    labels: list[str] | None
    skipped: list[tuple[Path, str]]


def read_folder(
    folder: str | os.PathLike[str],
    channels: int,
    size: tuple[int, int],
    recursive: bool = True,
    class_from_parent: bool = False,
) -> FolderImages:
    """Read every image under ``folder`` into one batch.

    Each file found by :func:`list_images` is read with :func:`read_image`
    and brought to ``channels`` and ``size`` = (height, width) with
    :func:`fit_to`. Unreadable files are recorded in ``skipped`` (with a
    one-line reason, also logged as a warning) rather than aborting.

    Returns:
        :class:`FolderImages` whose ``images`` has shape
        (N, channels, height, width), dtype uint8.

    Raises:
        ImageReadError: the folder is missing or not a directory, holds no
            image files, or none of them could be read.
        ValueError: bad ``channels`` or ``size``.
    """
    _check_channels(channels, allow_none=False)
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be two positive integers (height, width), got {size!r}")
    root = Path(folder)
    files = list_images(root, recursive=recursive)
    if not files:
        raise ImageReadError(f"no images found in '{root}'")

    refusal = config.over_memory(len(files) * channels * height * width,
                                 f"reading the {len(files)} images of '{root}' at {width}x{height}",
                                 "use a smaller image size or fewer images")
    if refusal:
        raise ImageReadError(refusal)
    batch = np.empty((len(files), channels, height, width), dtype=np.uint8)
    paths: list[Path] = []
    labels: list[str] = []
    skipped: list[tuple[Path, str]] = []
    for file in files:
        relative = file.relative_to(root)
        if class_from_parent and len(relative.parts) < 2:
            logger.info("skipping %s: not inside a class folder", file)
            skipped.append((file, "not inside a class folder"))
            continue
        try:
            array = read_image(file, channels)
        except ImageReadError as exc:
            reason = getattr(exc, "reason", str(exc))
            logger.info("skipping %s: %s", file, reason)
            skipped.append((file, reason))
            continue
        batch[len(paths)] = fit_to(array, channels, (height, width)).transpose(2, 0, 1)
        paths.append(file)
        if class_from_parent:
            labels.append(relative.parts[0])  # the class is the first folder under the root

    if not paths:
        if class_from_parent and all(reason == "not inside a class folder" for _, reason in skipped):
            raise ImageReadError(f"no images inside class folders of '{root}': put them in '{root}/<class>/'")
        raise ImageReadError(
            f"no readable images in '{root}': all {len(files)} files unreadable"
        )
    images = batch if len(paths) == len(files) else batch[: len(paths)].copy()
    return FolderImages(
        images=images,
        paths=paths,
        labels=labels if class_from_parent else None,
        skipped=skipped,
    )


def write_png_atomic(array: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write a uint8 image as PNG, atomically.

    The data goes to a temporary file in the destination folder, is flushed
    and fsynced, then moved over ``path`` with :func:`os.replace`, so a crash
    leaves either the old file or the complete new one, never half a PNG.

    Args:
        array: uint8 array of shape (H, W), (H, W, 1), (H, W, 2) (gray and alpha), (H, W, 3) or (H, W, 4).
        path: destination file.

    Raises:
        SiamdiffError: the destination folder is missing or not writable,
            ``path`` is a directory, or the write fails.
        ValueError: wrong dtype or shape.
    """
    data = encode_png(array)  # checks the array before any file is touched
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def encode_png(array: np.ndarray) -> bytes:
    """A uint8 image ``(H, W)`` or ``(H, W, 1|2|3|4)`` as the bytes of a PNG file (L, LA, RGB or RGBA by its
    channels)."""
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (2, 3, 4))):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 1|2|3|4), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"cannot write an empty image of shape {array.shape}")
    image = Image.fromarray(np.ascontiguousarray(array), mode="LA" if array.ndim == 3 and array.shape[2] == 2 else
                            None)  # L, LA, RGB or RGBA from the shape
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


