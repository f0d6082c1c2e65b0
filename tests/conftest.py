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
