"""The data layer: official file layouts, leak-free splits, downloads checked by MD5, folders, the sample."""

import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from siamdiff.core.errors import SiamdiffError
from siamdiff.data import datasets as ds
from siamdiff.data.augment import random_cutout, random_flip, random_translate
from siamdiff.data.folder import folder_split_indices


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6000), ("t10k", 100)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_idx_splits_never_leak(fake_mnist):
    train = ds.load_dataset("mnist", "train", fake_mnist)
    val = ds.load_dataset("mnist", "val", fake_mnist)
    both = ds.load_dataset("mnist", "train+val", fake_mnist)
    test = ds.load_dataset("mnist", "test", fake_mnist)
    assert (len(train), len(val), len(both), len(test)) == (1000, 5000, 6000, 100)
    assert train.images.dtype == torch.uint8 and train.shape == (1, 28, 28)
    val_idx, train_idx = ds._val_partition(6000)
    assert not set(val_idx) & set(train_idx) and len(set(val_idx) | set(train_idx)) == 6000
    assert torch.equal(both.images[torch.as_tensor(val_idx)], val.images)
    # the same partition every time
    assert torch.equal(ds.load_dataset("mnist", "val", fake_mnist).images, val.images)


def test_missing_files_and_bad_names_are_clear(tmp_path, monkeypatch):
    with pytest.raises(SiamdiffError, match="not found.*pass download, give data_dir or set"):
        ds.load_dataset("mnist", "test", tmp_path)  # the library names its parameters, the CLI its flags
    with pytest.raises(SiamdiffError, match="unknown dataset"):
        ds.load_dataset("imagenet", "test", tmp_path)
    with pytest.raises(SiamdiffError, match="unknown split"):
        ds.load_dataset("mnist", "dev", tmp_path)
    assert ds.canonical_name("FashionMNIST") == "fashion-mnist" and ds.canonical_name("CIFAR-10") == "cifar10"
    monkeypatch.setenv(ds.DATA_ENV, str(tmp_path / "env"))
    assert ds.data_folder() == tmp_path / "env"
    assert ds.data_folder(tmp_path / "x") == tmp_path / "x"


def test_corrupt_idx_is_reported(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / f"{stem}.gz").write_bytes(b"garbage")
    with pytest.raises(SiamdiffError, match="cannot read IDX"):
        ds.load_dataset("mnist", "test", tmp_path)


def test_download_checks_md5_and_leaves_no_partial_file(tmp_path):
    src = tmp_path / "mirror"
    src.mkdir()
    payload = b"hello dataset"
    (src / "f.gz").write_bytes(payload)
    good = hashlib.md5(payload).hexdigest()
    dest = tmp_path / "dest"
    path = ds._download((src.as_uri() + "/",), "f.gz", good, dest)
    assert path.read_bytes() == payload
    with pytest.raises(SiamdiffError, match="MD5 mismatch"):
        ds._download((src.as_uri() + "/",), "f.gz", "0" * 32, tmp_path / "dest2")
    assert list((tmp_path / "dest2").iterdir()) == []


def test_cifar_batches_read_and_unsafe_pickles_refused(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": list(range(10))}, f, protocol=2)
    test = ds.load_dataset("cifar10", "test", tmp_path)
    assert test.shape == (3, 32, 32) and torch.equal(test.images[3].reshape(-1), torch.from_numpy(data[3]))
    # read as gray: each image as PIL converts it (the oracle), as a folder's colour files are read
    gray = ds.load_dataset("cifar10", "test", tmp_path, channels=1)
    pil = [np.asarray(Image.fromarray(np.ascontiguousarray(im.permute(1, 2, 0).numpy())).convert("L"))
           for im in test.images]
    assert gray.shape == (1, 32, 32) and torch.equal(gray.images[:, 0], torch.from_numpy(np.stack(pil)))
    assert torch.equal(gray.labels, test.labels)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f, protocol=2)
    with pytest.raises(SiamdiffError, match="refusing to load"):
        ds.load_dataset("cifar10", "test", tmp_path)


def test_embedded_sample_is_small_and_balanced():
    for name in ds.BUILTIN:
        sample = ds.load_sample(name)
        assert len(sample) == 300
        assert np.bincount(sample.labels.numpy()).tolist() == [30] * 10
    assert ds.load_dataset("sample:cifar10", "test").shape == (3, 32, 32)


def test_folder_split_is_disjoint_and_stratified():
    labels = np.repeat(np.arange(4), [30, 10, 4, 2])
    parts = {s: folder_split_indices(labels, s) for s in ("train", "val", "test")}
    allidx = np.concatenate(list(parts.values()))
    assert len(allidx) == len(set(allidx)) == len(labels)
    assert np.bincount(labels[parts["val"]], minlength=4).tolist() == [3, 2, 1, 0]  # 10%, at least 2 from 6 up
    assert set(labels[parts["test"]]) == {0, 1, 2}  # the 2-image class stays in train
    assert np.array_equal(folder_split_indices(labels, "train"), parts["train"])


def test_augmentations_keep_shape_and_content():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    flipped = random_flip(x, g)
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x))
    moved = random_translate(x, 1, g)
    assert moved.shape == x.shape and moved.dtype == x.dtype
    assert torch.equal(random_translate(x, 0, g), x)


def test_cutout_zeroes_one_square_per_image_cut_at_the_edges():
    x = torch.full((64, 3, 8, 8), 200, dtype=torch.uint8)
    out = random_cutout(x, 4, torch.Generator().manual_seed(0))
    assert out.dtype == x.dtype and torch.equal(x, torch.full_like(x, 200))  # input untouched
    holes = out == 0
    assert torch.equal(holes, holes[:, :1].expand_as(holes))  # the same square in every channel
    for hole in holes[:, 0]:
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert hole.sum() == len(rows) * len(cols)  # a rectangle ...
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4  # ... of at most 4 x 4, never empty
        assert rows.max() - rows.min() + 1 == len(rows)  # contiguous
        assert len(rows) == 4 or rows.min() == 0 or rows.max() == 7  # shorter only where cut by an edge
        assert len(cols) == 4 or cols.min() == 0 or cols.max() == 7
    assert (holes[:, 0].sum((1, 2)) == 16).any() and (holes[:, 0].sum((1, 2)) < 16).any()
    assert torch.equal(random_cutout(x, 0), x)


def test_real_mnist_and_cifar_counts(data_root):
    test = ds.load_dataset("mnist", "test", data_root)
    assert len(test) == 10_000 and np.bincount(test.labels.numpy())[1] == 1135
    val = ds.load_dataset("fashion-mnist", "val", data_root)
    assert len(val) == ds.VAL_SIZE
    cifar = ds.load_dataset("cifar10", "test", data_root)
    assert cifar.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_folder_classes_are_first_level_folders(tmp_path):
    from PIL import Image

    from siamdiff.data.imageio import read_folder

    for rel in ("cats/a.png", "cats/nested/b.png", "dogs/c.png", "stray.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / rel)
    found = read_folder(tmp_path, 1, (5, 5), class_from_parent=True)
    assert sorted(found.labels) == ["cats", "cats", "dogs"]
    assert [(p.name, reason) for p, reason in found.skipped] == [("stray.png", "not inside a class folder")]


def test_folder_image_size_out_of_range_is_refused_before_reading(tmp_path):
    with pytest.raises(SiamdiffError, match="not a side from 1 to"):
        ds.load_splits(f"folder:{tmp_path}", ("train",), image_size=100_000)  # would allocate 10 GB per image


def test_folder_that_would_not_fit_in_memory_is_refused_before_reading(tmp_path, monkeypatch):
    from PIL import Image

    from siamdiff.core import config

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(8):
            Image.fromarray(np.full((20, 20), 30 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    monkeypatch.setattr(config, "IMAGE_MEMORY_BYTES", 16 * 3 * 64 * 64 - 1)  # one byte short at 64x64 RGB
    with pytest.raises(SiamdiffError, match="reading the 16 images of .* at 64x64 would take 0.0 GiB, over the limit"):
        ds.load_splits(f"folder:{tmp_path}", ("train",), image_size=64, channels=3)
    assert ds.load_splits(f"folder:{tmp_path}", ("train",), image_size=63, channels=3)[0].shape == (3, 63, 63)
    monkeypatch.setenv(config.MEMORY_ENV, "1")  # the user's own limit replaces the default
    assert ds.load_splits(f"folder:{tmp_path}", ("train",), image_size=64, channels=3)[0].shape == (3, 64, 64)
    for text in ("lots", "inf", "0", "-1"):
        monkeypatch.setenv(config.MEMORY_ENV, text)
        with pytest.raises(SiamdiffError, match="SIAMDIFF_MEMORY_GB must be a positive number of GiB"):
            ds.load_splits(f"folder:{tmp_path}", ("train",), image_size=64, channels=3)


def test_training_apis_refuse_size_options_a_builtin_dataset_would_ignore(tmp_path):
    """The Python API refuses them as the CLI does, before any data is read (the data folder here is empty)."""
    from siamdiff.training import TrainOptions, train

    out, empty = tmp_path / "run", tmp_path / "no-data"
    for call, message in (
            (lambda: train("denoiser", "MNIST", out, TrainOptions(image_size=16), data_dir=empty),
             "image_size applies to folder datasets only; 'mnist' has a fixed size"),
            (lambda: train("similarity", "fashion-mnist", out, TrainOptions(image_size=32, channels=3),
                           data_dir=empty),
             "image_size applies to folder datasets only"),
            (lambda: train("ddpm", "fashion-mnist", out, TrainOptions(channels=3), data_dir=empty),
             "channels 3 does not apply to 'fashion-mnist': its images are grayscale")):
        with pytest.raises(SiamdiffError, match=message):
            call()
        assert not out.exists()
    with pytest.raises(SiamdiffError, match="unknown dataset 'mnsit'"):
        train("denoiser", "mnsit", out, TrainOptions(image_size=16), data_dir=empty)


def test_a_class_selection_keeps_those_classes_relabelled_in_order(fake_mnist):
    full = ds.load_dataset("mnist", "test", fake_mnist)
    chosen = ds.load_dataset("mnist", "test", fake_mnist, classes=(7, 5))
    assert chosen.classes == [full.classes[7], full.classes[5]]
    keep = (full.labels == 7) | (full.labels == 5)
    assert torch.equal(chosen.images, full.images[keep])
    assert torch.equal(chosen.labels, (full.labels[keep] == 5).long())  # 7 -> 0, 5 -> 1
    train, val = ds.load_splits("mnist", ("train", "val"), fake_mnist, classes=tuple(range(5)))
    assert set(train.labels.tolist()) == set(val.labels.tolist()) == set(range(5)) and len(train.classes) == 5


@pytest.mark.parametrize("classes", [(), (3, 3), (10,), (-1,)])
def test_a_wrong_class_selection_is_one_error(fake_mnist, classes):
    with pytest.raises(SiamdiffError, match="classes must be distinct class numbers from 0 to 9"):
        ds.load_dataset("mnist", "test", fake_mnist, classes=classes)
