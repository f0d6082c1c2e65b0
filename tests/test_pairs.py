"""Pair and triplet builders: balance, correctness of classes, reproducibility."""

import numpy as np
import pytest

from siamdiff.similarity.pairs import balanced_pairs, balanced_triplets, seed_pairs

LABELS = np.repeat(np.arange(5), [10, 20, 5, 8, 1])


def test_seed_pairs_cover_every_image_once_with_correct_classes():
    i, j, same = seed_pairs(LABELS, seed=0)
    assert sorted(i.tolist()) == list(range(len(LABELS)))
    assert np.array_equal(LABELS[i] == LABELS[j], same == 1)
    # a fair coin: with 44 anchors, far from all-same or all-different
    assert 8 < same.sum() < 36
    # partners of "same" pairs are another image unless the class has one image only (class 4)
    multi = (same == 1) & (LABELS[i] != 4)
    assert np.all(i[multi] != j[multi])


def test_balanced_pairs_exact_half_and_reproducible():
    i, j, same = balanced_pairs(LABELS, 1000, seed=3)
    assert same.sum() == 500
    assert np.array_equal(LABELS[i] == LABELS[j], same == 1)
    i2, j2, same2 = balanced_pairs(LABELS, 1000, seed=3)
    assert np.array_equal(i, i2) and np.array_equal(j, j2) and np.array_equal(same, same2)
    i3, _, _ = balanced_pairs(LABELS, 1000, seed=4)
    assert not np.array_equal(i, i3)


def test_negative_classes_are_uniform_over_other_classes():
    labels = np.repeat(np.arange(4), [1000, 10, 10, 10])
    i, j, same = balanced_pairs(labels, 20000, seed=0)
    neg = (same == 0) & (labels[i] == 0)
    counts = np.bincount(labels[j[neg]], minlength=4)
    assert counts[0] == 0
    assert counts[1:].min() > 0.8 * counts[1:].max(), counts  # uniform over classes, not over images


def test_triplets_have_right_classes():
    a, p, n = balanced_triplets(LABELS, 200, seed=1)
    assert np.all(LABELS[a] == LABELS[p]) and np.all(LABELS[a] != LABELS[n])


def test_one_class_is_refused():
    with pytest.raises(ValueError):
        balanced_pairs(np.zeros(5, dtype=int), 4, seed=0)
