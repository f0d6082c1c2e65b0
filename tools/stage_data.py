"""Carry the datasets to a GPU machine that can take at most 64 MiB per call, and rebuild the official layouts there.

    python tools/stage_data.py pack --data-dir ../shared/data --out stage        # here: stage/part{1,2,3}
    python tools/stage_data.py unpack stage/part1 --to /tmp/siamdiff-data        # there, once per part

MNIST and Fashion-MNIST travel as their official gzip files (part 1). CIFAR-10 batches travel as lossless WebP
mosaics (100 x 100 images of 32 x 32, ~17 MB per 10,000 images instead of 31 MB): batches 1-2 in part 2, 3-5 in part
3. Only the first ``--test-n`` CIFAR-10 test images travel (the GPU runs evaluate the first 1,000; the full test set
is evaluated here). Unpacking checks the SHA-256 of every rebuilt array against the manifest written when packing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

GRID = 100  # images per mosaic row and column
PARTS = {"part1": ["MNIST", "FashionMNIST"], "part2": ["data_batch_1", "data_batch_2", "test_batch"],
         "part3": ["data_batch_3", "data_batch_4", "data_batch_5"]}


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _mosaic(images: np.ndarray) -> np.ndarray:
    """(N, 3, 32, 32) -> one (rows*32, GRID*32, 3) picture; N is padded with black images to a whole row."""
    n = len(images)
    rows = -(-n // GRID)
    padded = np.zeros((rows * GRID, 3, 32, 32), np.uint8)
    padded[:n] = images
    return padded.reshape(rows, GRID, 3, 32, 32).transpose(0, 3, 1, 4, 2).reshape(rows * 32, GRID * 32, 3)


def _unmosaic(picture: np.ndarray, n: int) -> np.ndarray:
    rows = picture.shape[0] // 32
    return picture.reshape(rows, 32, GRID, 32, 3).transpose(0, 2, 4, 1, 3).reshape(rows * GRID, 3, 32, 32)[:n]


def pack(data_dir: Path, out: Path, test_n: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from siamdiff.data.datasets import read_cifar_batch

    for part, items in PARTS.items():
        dest = out / part
        dest.mkdir(parents=True, exist_ok=True)
        manifest = {}
        for item in items:
            if item in ("MNIST", "FashionMNIST"):
                shutil.copytree(data_dir / item / "raw", dest / item / "raw", dirs_exist_ok=True)
                continue
            images, labels = read_cifar_batch(data_dir / "cifar-10-batches-py" / item)
            if item == "test_batch":
                images, labels = images[:test_n], labels[:test_n]
            buf = io.BytesIO()
            Image.fromarray(_mosaic(images)).save(buf, "WEBP", lossless=True, quality=100, method=4)
            (dest / f"{item}.webp").write_bytes(buf.getvalue())
            np.save(dest / f"{item}.labels.npy", labels.astype(np.uint8))
            manifest[item] = {"n": len(labels), "sha256_images": _sha(images), "sha256_labels": _sha(labels)}
        (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
        size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        print(f"{dest}: {size / 1e6:.1f} MB")
    shutil.copy(data_dir / "cifar-10-batches-py" / "batches.meta", out / "part2" / "batches.meta")


def unpack(part: Path, to: Path) -> None:
    manifest = json.loads((part / "manifest.json").read_text())
    for item in ("MNIST", "FashionMNIST"):
        if (part / item).is_dir():
            shutil.copytree(part / item, to / item, dirs_exist_ok=True)
    cifar = to / "cifar-10-batches-py"
    cifar.mkdir(parents=True, exist_ok=True)
    if (part / "batches.meta").is_file():
        shutil.copy(part / "batches.meta", cifar / "batches.meta")
    for item, facts in manifest.items():
        images = _unmosaic(np.asarray(Image.open(part / f"{item}.webp").convert("RGB")), facts["n"])
        labels = np.load(part / f"{item}.labels.npy").astype(np.int64)
        if _sha(images) != facts["sha256_images"] or _sha(labels) != facts["sha256_labels"]:
            raise SystemExit(f"{item}: rebuilt data does not match the manifest")
        batch = {"batch_label": item, "labels": labels.tolist(), "data": images.reshape(len(images), -1),
                 "filenames": [f"{item}_{i}.png" for i in range(len(images))]}
        with open(cifar / item, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        print(f"{cifar / item}: {len(images)} images, checksums match")


def fake_cifar(to: Path, n: int) -> None:
    """Random images in the CIFAR-10 layout: lets the speed probe run CIFAR-10 jobs before the real data is there."""
    rng = np.random.default_rng(0)
    cifar = to / "cifar-10-batches-py"
    cifar.mkdir(parents=True, exist_ok=True)
    for item in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"labels": rng.integers(0, 10, n).tolist(), "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with open(cifar / item, "wb") as f:
            pickle.dump(batch, f, protocol=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--test-n", type=int, default=1000)
    u = sub.add_parser("unpack")
    u.add_argument("part", type=Path)
    u.add_argument("--to", required=True, type=Path)
    f = sub.add_parser("fake-cifar")
    f.add_argument("--to", required=True, type=Path)
    f.add_argument("--n", type=int, default=9000, help="images per batch (5 batches: 4/5 of them train after validation)")
    args = parser.parse_args()
    if args.cmd == "fake-cifar":
        fake_cifar(args.to, args.n)
    elif args.cmd == "pack":
        pack(args.data_dir, args.out, args.test_n)
    else:
        unpack(args.part, args.to)


if __name__ == "__main__":
    main()
