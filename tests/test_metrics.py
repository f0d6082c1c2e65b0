"""Tests for siamdiff.similarity.metrics (verification and retrieval metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics
import torch

from siamdiff.similarity.metrics import (
    best_threshold,
    equal_error_rate,
    knn_search,
    map_at_r,
    recall_at_k,
    retrieval_metrics,
    roc_auc,
    roc_curve,
    verification_accuracy,
)


def _random_pairs(seed: int, n: int = 400, ties: bool = False):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.4
    scores = rng.normal(size=n) + 0.8 * same
    if ties:
        scores = np.round(scores, 1)  # many equal scores, across both classes
    return scores, same


# --------------------------------------------------------------------------- ROC / AUC


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn(seed, ties):
    scores, same = _random_pairs(seed, ties=ties)
    if ties:
        assert np.unique(scores).size < scores.size / 4
    assert abs(roc_auc(scores, same) - sklearn.metrics.roc_auc_score(same, scores)) <= 1e-12


def test_roc_auc_hand_case_ties_count_half():
    # pos {2, 1}, neg {1, 0}: pairs (2>1), (2>0), (1=1 -> 1/2), (1>0) -> 3.5 / 4
    assert roc_auc([2.0, 1.0, 1.0, 0.0], [True, True, False, False]) == pytest.approx(0.875, abs=1e-15)
    # torch input gives the same
    assert roc_auc(torch.tensor([2.0, 1.0, 1.0, 0.0]), torch.tensor([1, 1, 0, 0])) == pytest.approx(0.875)


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_matches_sklearn(ties):
    scores, same = _random_pairs(7, ties=ties)
    fpr, tpr, thr = roc_curve(scores, same)
    sk_fpr, sk_tpr, sk_thr = sklearn.metrics.roc_curve(same, scores, drop_intermediate=False)
    assert (fpr[0], tpr[0], thr[0]) == (0.0, 0.0, np.inf)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    # sklearn also groups ties and starts at (0, 0), so the points coincide one-to-one.
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-15)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])
    assert thr.size == np.unique(scores).size + 1
    assert np.all(np.diff(thr) < 0)
    trap = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert trap == pytest.approx(sklearn.metrics.roc_auc_score(same, scores), abs=1e-12)


def test_single_class_raises():
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError):
        equal_error_rate([0.1, 0.2], [False, False])
    with pytest.raises(ValueError):
        roc_curve([0.1, np.nan], [True, False])


# --------------------------------------------------------------------------- EER


def test_eer_separable_is_zero_and_inverted_is_one():
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    same = np.array([True, True, True, False, False])
    assert equal_error_rate(scores, same) == 0.0
    assert equal_error_rate(-scores, same) == 1.0


def test_eer_hand_cases():
    # pos {.9, .8, .6}, neg {.7, .5}: ROC points as (FAR, FRR):
    # (0,1) (0,2/3) (0,1/3) (1/2,1/3) (1/2,0) (1,0).
    # FAR-FRR changes sign on the segment (0,1/3)->(1/2,1/3), where FRR = 1/3,
    # so FAR = FRR = 1/3.
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    same = [True, True, False, True, False]
    assert equal_error_rate(scores, same) == pytest.approx(1 / 3, abs=1e-15)
    # pos {.9, .7}, neg {.8, .6}: the point after .8 is exactly (1/2, 1/2).
    assert equal_error_rate([0.9, 0.8, 0.7, 0.6], [True, False, True, False]) == 0.5
    # pos {.9, .6}, neg {.8, .7, .5}: (1/3,1/2) -> (2/3,1/2) crosses at 1/2.
    assert equal_error_rate([0.9, 0.8, 0.7, 0.6, 0.5], [True, False, False, True, False]) == pytest.approx(0.5)


def test_eer_identical_distributions_near_half():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=20000)
    same = rng.random(20000) < 0.5
    assert abs(equal_error_rate(scores, same) - 0.5) < 0.03


# --------------------------------------------------------------------------- threshold / accuracy


def test_best_threshold_hand_case():
    # descending: .9T .7T .4F .35T .3T | .2F .1F  (4 same, 3 different)
    # correct after accepting the top j: j=0..7 -> 3,4,5,4,5,6,5,4; best j=5 -> mid(.3,.2)
    scores = [0.1, 0.2, 0.3, 0.35, 0.4, 0.7, 0.9]
    same = [False, False, True, True, False, True, True]
    t = best_threshold(scores, same)
    assert t == pytest.approx(0.25)
    assert verification_accuracy(scores, same, t) == pytest.approx(6 / 7)


def test_best_threshold_groups_ties():
    # Two pairs share 0.5 (one same, one different): they can only be accepted together.
    # descending groups: .8T | .5{T,F} | .2F  -> correct j=0..3: 2,3,3,2; first best: mid(.8,.5)
    scores = [0.8, 0.5, 0.5, 0.2]
    same = [True, True, False, False]
    assert best_threshold(scores, same) == pytest.approx(0.65)


def test_best_threshold_separable_and_one_class():
    rng = np.random.default_rng(4)
    pos = rng.uniform(0.6, 1.0, 50)
    neg = rng.uniform(-1.0, 0.4, 70)
    scores = np.concatenate([pos, neg])
    same = np.concatenate([np.ones(50, bool), np.zeros(70, bool)])
    t = best_threshold(scores, same)
    assert neg.max() < t < pos.min()
    assert t == pytest.approx((neg.max() + pos.min()) / 2)
    assert verification_accuracy(scores, same, t) == 1.0
    # Only one class: accept all / reject all, strictly outside the score range.
    assert best_threshold([0.2, 0.4], [True, True]) < 0.2
    assert best_threshold([0.2, 0.4], [False, False]) > 0.4


def test_verification_accuracy_hand_case():
    # predictions (score >= .5): F, T, T; truth F, T, F -> 2/3 correct
    assert verification_accuracy([0.1, 0.5, 0.9], [False, True, False], 0.5) == pytest.approx(2 / 3)
    assert verification_accuracy([0.1, 0.5, 0.9], [False, True, False], 0.95) == pytest.approx(2 / 3)
    assert verification_accuracy([0.1, 0.5, 0.9], [False, True, False], 0.0) == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- kNN


def _brute_knn(q, g, k, exclude_self=False):
    d = np.sqrt(((q[:, None, :].astype(np.float64) - g[None, :, :]) ** 2).sum(-1))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


def test_knn_search_matches_brute_force():
    rng = np.random.default_rng(5)
    q = rng.normal(size=(37, 8)).astype(np.float32)
    g = rng.normal(size=(101, 8)).astype(np.float32)
    d, i = knn_search(q, g, k=6, chunk=10)
    bd, bi = _brute_knn(q, g, 6)
    assert d.shape == (37, 6) and i.shape == (37, 6) and i.dtype == np.int64
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-4, atol=1e-4)
    # torch input, one chunk, same answer
    d2, i2 = knn_search(torch.from_numpy(q), torch.from_numpy(g), k=6)
    np.testing.assert_array_equal(i2, bi)


def test_knn_search_exclude_self():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(45, 8)).astype(np.float32)
    d, i = knn_search(x, x, k=4, exclude_self=True, chunk=8)
    bd, bi = _brute_knn(x, x, 4, exclude_self=True)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-4, atol=1e-4)
    assert not np.any(i == np.arange(45)[:, None])
    # without exclusion each point is its own nearest neighbour
    _, i_self = knn_search(x, x, k=1, chunk=8)
    np.testing.assert_array_equal(i_self[:, 0], np.arange(45))
    with pytest.raises(ValueError):
        knn_search(x, x, k=45, exclude_self=True)


# --------------------------------------------------------------------------- recall@k, MAP@R by hand


def test_recall_at_k_hand_case():
    query_labels = np.array([0, 1, 2])
    neighbor_labels = np.array([[0, 1, 1], [0, 0, 1], [1, 1, 0]])
    # q0: first match at rank 1; q1: first match at rank 3; q2: never.
    # recall@1 = 1/3, recall@2 = 1/3, recall@3 = 2/3
    r = recall_at_k(query_labels, neighbor_labels, ks=(1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3), 3: pytest.approx(2 / 3)}
    with pytest.raises(ValueError):
        recall_at_k(query_labels, neighbor_labels, ks=(5,))


def test_map_at_r_hand_case():
    gallery_labels = np.array([0, 0, 0, 1, 1, 2])  # R: label0 -> 3, label1 -> 2, label2 -> 1
    query_labels = np.array([0, 1, 2])
    neighbor_labels = np.array([[0, 1, 0], [0, 1, 1], [2, 0, 0]])
    # q0 (R=3): rel 1,0,1 -> (P(1) + P(3)) / 3 = (1 + 2/3) / 3 = 5/9
    # q1 (R=2): rel 0,1 (3rd column is beyond R) -> P(2)/2 = (1/2)/2 = 1/4
    # q2 (R=1): rel 1 -> 1
    # MAP@R = (5/9 + 1/4 + 1) / 3 = 65/108
    expected = 65 / 108
    assert map_at_r(query_labels, neighbor_labels, gallery_labels) == pytest.approx(expected, abs=1e-15)
    assert map_at_r(query_labels, neighbor_labels, gallery_labels, chunk=1) == pytest.approx(expected, abs=1e-15)
    # A query whose label is absent from the gallery (R = 0) is skipped.
    assert map_at_r(
        np.array([0, 1, 2, 9]), np.vstack([neighbor_labels, [0, 0, 0]]), gallery_labels
    ) == pytest.approx(expected, abs=1e-15)
    # Too few neighbour columns for R = 3.
    with pytest.raises(ValueError):
        map_at_r(query_labels, neighbor_labels[:, :2], gallery_labels)


# --------------------------------------------------------------------------- cross-check with PML


def _clustered(seed, n, n_classes=5, dim=8, spread=1.0):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(100).normal(size=(n_classes, dim)) * 1.5
    labels = rng.integers(0, n_classes, size=n)
    emb = centers[labels] + spread * rng.normal(size=(n, dim))
    return emb.astype(np.float32), labels


def test_retrieval_metrics_match_pytorch_metric_learning():
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    gallery, gallery_labels = _clustered(10, 200)
    query, query_labels = _clustered(11, 50)
    query_labels[:3] = 7  # lone queries: label absent from the gallery (both skip them)

    # faiss is not installed (PML's default kNN), and LpDistance normalises by default:
    # use plain Euclidean distance.
    calc = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r"),
        k="max_bin_count",
        device=torch.device("cpu"),
        knn_func=CustomKNN(LpDistance(normalize_embeddings=False)),
    )
    pml = calc.get_accuracy(query, query_labels, gallery, gallery_labels, ref_includes_query=False)

    ours = retrieval_metrics(query, query_labels, gallery, gallery_labels, ks=(1, 5), chunk=16)
    assert ours["n_queries"] == 50
    assert 0.2 < ours["map_at_r"] < 0.95  # non-trivial case
    assert ours["recall_at_1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert ours["recall_at_1"] <= ours["recall_at_5"]

    # The standalone functions on knn_search output agree too (on non-lone queries).
    r_max = int(np.bincount(gallery_labels).max())
    _, idx = knn_search(query, gallery, k=r_max)
    nl = gallery_labels[idx]
    assert map_at_r(query_labels, nl, gallery_labels) == pytest.approx(ours["map_at_r"], abs=1e-12)
    rec = recall_at_k(query_labels[3:], nl[3:], ks=(1, 5))
    assert rec[1] == pytest.approx(ours["recall_at_1"], abs=1e-12)
    assert rec[5] == pytest.approx(ours["recall_at_5"], abs=1e-12)


def test_retrieval_metrics_chunking_invariant():
    gallery, gallery_labels = _clustered(20, 150, n_classes=4)
    query, query_labels = _clustered(21, 40, n_classes=4)
    small = retrieval_metrics(query, query_labels, gallery, gallery_labels, ks=(1, 5), chunk=7)
    big = retrieval_metrics(query, query_labels, gallery, gallery_labels, ks=(1, 5), chunk=1000)
    assert set(small) == {"recall_at_1", "recall_at_5", "map_at_r", "n_queries"}
    assert small["n_queries"] == big["n_queries"] == 40
    assert small["recall_at_1"] == big["recall_at_1"]
    assert small["recall_at_5"] == big["recall_at_5"]
    assert small["map_at_r"] == pytest.approx(big["map_at_r"], abs=1e-12)
    assert 0.0 < small["map_at_r"] < 1.0
