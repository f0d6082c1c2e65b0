"""The GPU-session tooling under benchmarks/: lossless data staging and the epoch planner."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import device_run  # noqa: E402
import stage_data  # noqa: E402

from siamdiff.data.datasets import _read_cifar_batch  # noqa: E402


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
    got_images, got_labels = _read_cifar_batch(tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1")
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    manifest = json.loads((part / "manifest.json").read_text())
    manifest["data_batch_1"]["sha256_labels"] = "0" * 64
    (part / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="does not match"):
        stage_data.unpack(part, tmp_path / "data2")


def _plan(tmp_path, budget, s_per_batch):
    probe = {f"{d}-{j}": {"s_per_batch": s_per_batch} for d, j in device_run.jobs(list(device_run.DATASETS))}
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    args = type("Args", (), {"probe": str(tmp_path / "probe.json"), "datasets": list(device_run.DATASETS),
                             "tiny": False, "lanes": 14, "budget": budget})()
    return device_run.plan(args)


def test_planner_fits_the_budget_and_keeps_minimums(tmp_path):
    chosen = _plan(tmp_path, 600, 0.01)
    epochs = {(d, j): e for d, j, e, _ in chosen}
    assert len(chosen) == len(device_run.jobs(list(device_run.DATASETS)))
    for (d, j), e in epochs.items():
        assert e >= device_run.JOBS[j][4]
    # a longest-first schedule of the estimated costs on 14 lanes ends within the budget
    lanes = [0.0] * 14
    for *_, cost in chosen:
        lanes[lanes.index(min(lanes))] += cost
    assert max(lanes) <= 600
    # a slower machine gets fewer epochs, never fewer than the minimum
    slow = {(d, j): e for d, j, e, _ in _plan(tmp_path, 600, 0.1)}
    assert all(slow[k] <= epochs[k] for k in epochs) and slow != epochs
    assert all(e >= device_run.JOBS[j][4] for (d, j), e in slow.items())
