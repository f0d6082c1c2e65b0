"""tools/stage_data.py: the datasets packed losslessly for a machine that takes 64 MiB per call, and rebuilt."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import stage_data  # noqa: E402

from siamdiff.data.datasets import read_cifar_batch  # noqa: E402


@pytest.mark.parametrize("n", [1, 99, 100, 257])
def test_mosaic_round_trip(n):
    images = np.random.default_rng(n).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    picture = stage_data._mosaic(images)
    assert picture.shape == (-(-n // 100) * 32, 3200, 3)
    assert np.array_equal(stage_data._unmosaic(picture, n), images)
    # image k sits at row k // 100, column k % 100, channels last
    k = n - 1
    r, c = divmod(k, 100)
    assert np.array_equal(picture[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32], images[k].transpose(1, 2, 0))


def _pack_one(tmp_path, images, labels):
    import io

    from PIL import Image

    part = tmp_path / "part"
    part.mkdir()
    buf = io.BytesIO()
    Image.fromarray(stage_data._mosaic(images)).save(buf, "WEBP", lossless=True, quality=100, method=0)
    (part / "data_batch_1.webp").write_bytes(buf.getvalue())
    np.save(part / "data_batch_1.labels.npy", labels.astype(np.uint8))
    manifest = {"data_batch_1": {"n": len(labels), "sha256_images": stage_data._sha(images),
                                 "sha256_labels": stage_data._sha(labels)}}
    (part / "manifest.json").write_text(json.dumps(manifest))
    return part


def test_unpack_rebuilds_an_official_batch_and_checks_it(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (150, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 150).astype(np.int64)
    part = _pack_one(tmp_path, images, labels)
    stage_data.unpack(part, tmp_path / "data")
    got_images, got_labels = read_cifar_batch(tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1")
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    manifest = json.loads((part / "manifest.json").read_text())
    manifest["data_batch_1"]["sha256_labels"] = "0" * 64
    (part / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="does not match"):
        stage_data.unpack(part, tmp_path / "data2")
