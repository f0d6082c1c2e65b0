"""Hard-pair mining, calibration and pictures."""

import numpy as np
import pytest
import torch
from PIL import Image

from siamdiff.similarity.api import SimilarityModel
from siamdiff.similarity.calibration import Calibration, calibrate, fit_logistic
from siamdiff.similarity.evaluate import hard_pairs, ssim_scores
from siamdiff.similarity.plots import plot_all, project_2d


def test_hard_pairs_by_brute_force():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (40, 1, 6, 6), dtype=np.uint8))
    labels = np.repeat(np.arange(4), 10)
    i, j, same = hard_pairs(images, labels, 15, seed=5)
    flat = images.reshape(40, -1).double().numpy() / 255
    dist = np.linalg.norm(flat[:, None] - flat[None], axis=2)
    n = 15
    assert np.all(same[:n] == 0) and np.all(same[n:] == 1)
    for a, b in zip(i[:n], j[:n]):
        other = labels != labels[a]
        assert labels[b] != labels[a] and dist[a, b] == pytest.approx(dist[a][other].min())
    for a, b in zip(i[n:], j[n:]):
        mine = (labels == labels[a]) & (np.arange(40) != a)
        assert labels[b] == labels[a] and b != a and dist[a, b] == pytest.approx(dist[a][mine].max())


def test_ssim_of_identical_images_is_one():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 16, 16), dtype=np.uint8))
    s = ssim_scores(images, np.array([0, 1]), np.array([0, 2]))
    assert s[0] == pytest.approx(1.0) and s[1] < 0.5


def test_logistic_fit_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is the test oracle")
    rng = np.random.default_rng(0)
    d = np.concatenate([rng.normal(0.5, 0.2, 500), rng.normal(1.0, 0.2, 500)])
    y = np.concatenate([np.ones(500), np.zeros(500)])
    a, b = fit_logistic(d, y, l2=0.0)
    ref = sklearn.LogisticRegression(C=1e6).fit(d[:, None], y)
    assert a == pytest.approx(ref.intercept_[0], rel=1e-3) and b == pytest.approx(ref.coef_[0, 0], rel=1e-3)


def test_calibration_on_separable_pairs_stays_finite_and_ordered():
    d = np.array([0.1, 0.2, 0.3, 1.1, 1.2, 1.3])
    same = np.array([1, 1, 1, 0, 0, 0])
    cal = calibrate(d, same)
    assert 0.3 < cal.threshold < 1.1
    p = cal.probability(d)
    assert np.all(np.isfinite(p)) and np.all(np.diff(p) <= 0) and p[0] > 0.9 and p[-1] < 0.1
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_project_2d_keeps_the_main_direction():
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(0, 10, 200), rng.normal(0, 0.1, 200), rng.normal(0, 0.1, 200)], axis=1)
    xy = project_2d(x, method="pca")
    assert xy.shape == (200, 2) and abs(np.corrcoef(xy[:, 0], x[:, 0])[0, 1]) > 0.99


def test_plots_are_written(tiny_model, tmp_path):
    paths = plot_all(SimilarityModel.load(tiny_model), "sample:mnist", tmp_path)
    assert [p.name for p in paths] == ["pairs.png", "hard_pairs.png", "roc.png", "map.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.size[0] > 200 and im.size[1] > 150
            assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas
