"""The photo benchmark's seam measure compares the same pixels at a tile border and inside shifted tiles."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from photos import BAND, noisy_of, seam_mask  # noqa: E402


def test_the_seam_bands_of_a_tiling_and_of_the_half_shifted_one_do_not_meet():
    tile, overlap = 32, 8
    rows = seam_mask(300, 451, tile, overlap)[:, 0]  # which rows lie at a horizontal border
    moved = seam_mask(300, 451, tile, overlap, shift=(tile - overlap) // 2)[:, 0]
    assert rows.any() and moved.any()
    # they meet only where the last tile of each tiling is moved in to end at the image's edge
    assert not (rows & moved)[:300 - 2 * tile].any()
    edges = [y for y in range(1, 300) if rows[y] and not rows[y - 1]]
    assert edges[:2] == [24 - BAND, 32 - BAND]  # the second tile starts at 24, the first ends at 32
    assert not seam_mask(32, 32, tile, overlap).any()  # one tile: no inner border


def test_noise_as_a_file_is_8_bit_and_seeded():
    clean = np.full((8, 8, 1), 0.5)
    a, b = noisy_of(clean, 0.1, seed=3), noisy_of(clean, 0.1, seed=3)
    assert np.array_equal(a, b) and np.allclose(a * 255, np.round(a * 255)) and 0 <= a.min() <= a.max() <= 1
