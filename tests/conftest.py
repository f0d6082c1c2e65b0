"""Shared fixtures: the real datasets when ../shared/data is present (else those tests skip, saying why)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SIAMDIFF_TEST_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def data_root() -> str:
    """The folder with the full datasets; tests that need it skip when it is missing."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"full datasets not found at {SHARED_DATA} (set SIAMDIFF_TEST_DATA)")
    return str(SHARED_DATA)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny similarity model trained for one short epoch on the embedded MNIST sample."""
    from siamdiff.data.datasets import load_sample
    from siamdiff.similarity.task import SimilarityTask, recipe
    from siamdiff.training import TrainOptions, fit

    data = load_sample("mnist")
    idx = torch.arange(len(data))
    r = recipe("mnist", 1, 28, TrainOptions(model="tiny", epochs=1, batch_size=50, device="cpu"))
    out = tmp_path_factory.mktemp("tiny_model")
    fit(SimilarityTask(r, data.subset(idx[idx % 3 != 0]), data.subset(idx[idx % 3 == 0])), out)
    return out / "model.safetensors"


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory) -> Path:
    """A folder of 80 sample digits (8 per class) as PNG files in class sub-folders."""
    from siamdiff.data.datasets import load_sample
    from siamdiff.data.imageio import write_png_atomic

    data = load_sample("mnist")
    root = tmp_path_factory.mktemp("digits")
    for k in range(0, 300, 3)[:80]:
        cls = root / data.classes[int(data.labels[k])]
        cls.mkdir(exist_ok=True)
        write_png_atomic(data.images[k].numpy()[0], cls / f"{k:03d}.png")
    return root


def fit_killed_after_first_epoch(task, out) -> None:
    """Run ``fit`` and kill it as the second epoch starts, as a stopped job would be; asserts it was cut there."""
    from siamdiff.training import fit

    class Killed(Exception):
        pass

    original = task.batches

    def dies_in_epoch_2(epoch, device):
        if epoch == 1:
            raise Killed
        return original(epoch, device)

    task.batches = dies_in_epoch_2
    with pytest.raises(Killed):
        fit(task, out)
    assert len((Path(out) / "log.jsonl").read_text().splitlines()) == 1


def same_weights(path_a, path_b) -> bool:
    """Whether two model files hold bit-identical weights."""
    from siamdiff.core.checkpoint import load_model

    a, b = load_model(path_a)[0].state_dict(), load_model(path_b)[0].state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
