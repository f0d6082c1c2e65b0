"""Datasets as uint8 tensors: MNIST, Fashion-MNIST, CIFAR-10, an image folder, and the embedded sample.

Every dataset is loaded once into an :class:`ImageSet` (images ``(N, C, H, W)`` uint8, labels ``(N,)`` int64).
Splits never leak: ``val`` is carved from the official training set with a fixed seed and removed from
``train``; ``test`` is the official test set. Files are read from the official layouts under a data folder
(torchvision's ``MNIST/raw``, ``FashionMNIST/raw`` and the ``cifar-10-batches-py`` pickles); when they are
missing and downloading is allowed, they are fetched and checked against their published MD5 sums.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import shutil
import struct
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..core.errors import SiamdiffError
from ..core.files import make_folder
from ..core.registry import DATASETS, canonical
from .folder import load_folder_splits
from .imageio import luma
from .types import ImageSet

log = logging.getLogger(__name__)

DATA_ENV = "SIAMDIFF_DATA"
VAL_SIZE = 5000
VAL_SEED = 20260
SPLITS = ("train", "val", "test", "train+val")
NATIVE_CHANNELS = {"mnist": 1, "fashion-mnist": 1, "cifar10": 3}

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle boot"]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class _IdxSpec:
    folder: str
    classes: list[str]
    mirrors: tuple[str, ...]
    md5: dict[str, str]  # gzipped file name -> MD5 of the official download


_IDX_SPECS = {
    "mnist": _IdxSpec("MNIST", MNIST_CLASSES,
                      ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
                      {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                       "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                       "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                       "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion-mnist": _IdxSpec("FashionMNIST", FASHION_CLASSES,
                              ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
                              {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                               "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                               "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                               "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
BUILTIN = DATASETS


def data_folder(explicit: str | os.PathLike | None = None) -> Path:
    """The data folder: ``explicit`` (``--data-dir``), else ``$SIAMDIFF_DATA``, else ``~/.cache/siamdiff/data``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path.home() / ".cache" / "siamdiff" / "data"


def canonical_name(name: str) -> str:
    """Normalise a dataset name (``MNIST``, ``fashion_mnist``, ``CIFAR-10`` ...); ``folder:PATH`` passes through."""
    if name.startswith("folder:"):
        if not name[len("folder:"):].strip():  # an empty path would read the current folder
            raise SiamdiffError("folder: needs a path, e.g. folder:my_images")
        return name
    key = canonical(name)
    if key is None:
        raise SiamdiffError(f"unknown dataset '{name}': use one of {', '.join(BUILTIN)}, folder:PATH or sample:NAME")
    return key


def refuse_shape_options(name: str, image_size: int | None = None, channels: int | None = None) -> None:
    """Refuse ``image_size`` for a built-in dataset, and ``channels`` other than its own or 1, before any data is
    read: its images are read at their size, so the options would be silently ignored — except that a colour
    dataset is read as gray with ``channels`` 1 (:func:`load_splits`). They apply to ``folder:`` datasets (and to
    the model's size in ``train ddpm``, whose caller leaves ``image_size`` out); ``sample:`` and ``folder:`` names
    pass."""
    if name.startswith(("folder:", "sample:")):
        return
    name = canonical_name(name)  # an unknown name gets the loader's error
    if image_size is not None:
        raise SiamdiffError(f"{{image_size}} applies to folder datasets only; '{name}' has a fixed size",
                            "image_size")
    if channels is not None and channels not in (1, NATIVE_CHANNELS[name]):
        raise SiamdiffError(f"{{channels}} {channels} does not apply to '{name}': its images are grayscale (a colour "
                            f"dataset is read as gray with {{channels}} 1)", "channels")


def classes_of(name: str) -> list[str]:
    return CIFAR_CLASSES if name == "cifar10" else _IDX_SPECS[name].classes


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                 image_size: int | None = None, channels: int | None = None,
                 classes: tuple[int, ...] | None = None) -> ImageSet:
    """Load one split of a dataset.

    name: ``mnist``, ``fashion-mnist``, ``cifar10``, ``sample:NAME`` (the embedded sample, test split only)
    or ``folder:PATH`` (``PATH/<class>/<images>``; needs ``image_size`` and ``channels``, defaults 32 and 3).
    A built-in dataset is read at its own size; ``channels`` 1 reads CIFAR-10 as gray (the luma of
    :func:`~siamdiff.data.imageio.luma`, as a folder's colour images are read), any other value leaves it as it is.
    split: ``train`` (official train minus validation), ``val``, ``test`` or ``train+val``.
    classes: only the images of these classes, relabelled in that order (:meth:`ImageSet.only`).
    """
    return load_splits(name, (split,), data_dir, download, image_size, channels, classes)[0]


def load_splits(name: str, splits: tuple[str, ...], data_dir: str | os.PathLike | None = None, download: bool = False,
                image_size: int | None = None, channels: int | None = None,
                classes: tuple[int, ...] | None = None) -> list[ImageSet]:
    """Several splits of one dataset (see :func:`load_dataset`), reading each source once: ``train`` and ``val``
    come from the same official training files, and a folder is read from disk a single time."""
    loaded = _load_splits(name, splits, data_dir, download, image_size, channels)
    return loaded if classes is None else [data.only(classes) for data in loaded]


def _load_splits(name: str, splits: tuple[str, ...], data_dir: str | os.PathLike | None, download: bool,
                 image_size: int | None, channels: int | None) -> list[ImageSet]:
    for split in splits:
        if split not in SPLITS:
            raise SiamdiffError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    if name.startswith("sample:"):
        if set(splits) != {"test"}:
            raise SiamdiffError("the embedded sample has a test split only; train on the full dataset or a folder")
        return [load_sample(canonical_name(name[len("sample:"):]))] * len(splits)
    name = canonical_name(name)
    if name.startswith("folder:"):
        return load_folder_splits(name[len("folder:"):], splits, 32 if image_size is None else image_size,
                                  channels or 3)
    folder = data_folder(data_dir)
    sources: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for split in splits:
        official = "test" if split == "test" else "train"
        if official not in sources:
            sources[official] = _load_cifar(folder, official, download) if name == "cifar10" else \
                _load_idx(folder, _IDX_SPECS[name], official, download)
            if channels == 1 and sources[official][0].shape[1] == 3:  # colour read as gray, as a folder would be
                sources[official] = (luma(sources[official][0], axis=1), sources[official][1])
        images, labels = sources[official]
        if split != "test":
            val_idx, train_idx = _val_partition(len(labels))
            keep = {"train": train_idx, "val": val_idx, "train+val": np.arange(len(labels))}[split]
            images, labels = images[keep], labels[keep]
        out.append(ImageSet(name, split, torch.from_numpy(np.ascontiguousarray(images)),
                            torch.from_numpy(labels.astype(np.int64)), classes_of(name)))
    return out


def _val_partition(n: int, size: int = VAL_SIZE, seed: int = VAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (validation, train) index arrays, both sorted, with a fixed seed."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:size]), np.sort(perm[size:])


# ---------------------------------------------------------------------------------------------- IDX (MNIST)
def _load_idx(folder: Path, spec: _IdxSpec, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    raw = folder / spec.folder / "raw"
    prefix = "train" if split == "train" else "t10k"
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    paths = []
    for stem in names:
        path = _find_idx(raw, stem)
        if path is None:
            if not download:
                raise SiamdiffError(f"{spec.folder} file '{stem}.gz' not found under '{raw}': pass {{download}}, "
                                    f"give {{data_dir}} or set ${DATA_ENV}", "download", "data_dir")
            path = _download(spec.mirrors, f"{stem}.gz", spec.md5[f"{stem}.gz"], raw)
        paths.append(path)
    images = _read_idx(paths[0], expect_dims=3)[:, None]
    labels = _read_idx(paths[1], expect_dims=1)
    if len(images) != len(labels):
        raise SiamdiffError(f"'{paths[0]}' has {len(images)} images but '{paths[1]}' has {len(labels)} labels")
    return images, labels


def _find_idx(raw: Path, stem: str) -> Path | None:
    for candidate in (raw / f"{stem}.gz", raw / stem):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, expect_dims: int) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, dims = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08 or dims != expect_dims:
            raise ValueError("bad magic number")
        shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
        return array.reshape(shape).copy()
    except (OSError, ValueError, struct.error, EOFError, zlib.error) as exc:
        raise SiamdiffError(f"cannot read IDX file '{path}': {exc}") from None


# ------------------------------------------------------------------------------------------------ CIFAR-10
def _load_cifar(folder: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    base = folder / "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if not all((base / f).is_file() for f in files):
        if not download:
            raise SiamdiffError(f"CIFAR-10 batches not found under '{base}': pass {{download}}, give {{data_dir}} "
                                f"or set ${DATA_ENV}", "download", "data_dir")
        archive = _download((_CIFAR_URL.rsplit("/", 1)[0] + "/",), "cifar-10-python.tar.gz", _CIFAR_MD5, folder)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(folder, filter="data")
    images, labels = [], []
    for f in files:
        batch = read_cifar_batch(base / f)
        images.append(batch[0])
        labels.append(batch[1])
    return np.concatenate(images), np.concatenate(labels)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: only numpy array reconstruction is allowed, nothing else runs."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _SafeUnpickler(f, encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (OSError, KeyError, ValueError, TypeError, pickle.UnpicklingError, EOFError) as exc:
        raise SiamdiffError(f"cannot read CIFAR-10 batch '{path}': {exc}") from None
    return data, labels


# ------------------------------------------------------------------------------------------------ download
def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(mirrors: tuple[str, ...], filename: str, md5: str, dest: Path, timeout: float = 60.0) -> Path:
    """Fetch ``filename`` from the first mirror that answers and check its MD5; the file appears only if valid."""
    make_folder(dest)
    target = dest / filename
    if target.is_file() and _md5(target) == md5:
        return target
    errors = []
    part = dest / f".{filename}.part"
    for mirror in mirrors:
        try:
            request = urllib.request.Request(mirror + filename, headers={"User-Agent": "siamdiff"})
            with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as f:
                shutil.copyfileobj(response, f, 1 << 20)
            if _md5(part) != md5:
                raise ValueError(f"MD5 mismatch (expected {md5})")
            os.replace(part, target)
            log.info("downloaded %s", target)
            return target
        except (OSError, ValueError) as exc:  # URLError is an OSError
            errors.append(f"{mirror}: {exc}")
        finally:
            part.unlink(missing_ok=True)
    raise SiamdiffError(f"could not download {filename}: " + "; ".join(errors))


# ------------------------------------------------------------------------------------------ embedded sample
SAMPLE_PER_CLASS = 30


def load_sample(name: str) -> ImageSet:
    """The embedded sample: the first 30 test images of each class (300 images), shipped inside the package."""
    name = canonical_name(name)
    ref = resources.files("siamdiff.data").joinpath("sample", f"{name}.npz")
    with resources.as_file(ref) as path, np.load(path) as npz:
        images, labels = npz["images"], npz["labels"]
    return ImageSet(name, "test", torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)),
                    classes_of(name))


def make_sample(name: str, data_dir: str | os.PathLike | None, out: Path, per_class: int = SAMPLE_PER_CLASS) -> Path:
    """Write the embedded sample for ``name`` (first ``per_class`` test images of each class) to ``out``."""
    test = load_dataset(name, "test", data_dir)
    labels = test.labels.numpy()
    idx = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(test.classes))]))
    make_folder(out.parent)
    np.savez_compressed(out, images=test.images.numpy()[idx], labels=labels[idx].astype(np.uint8), index=idx)
    return out
