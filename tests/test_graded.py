"""The graded similarity score (category first, appearance second) and the 2AFC triplets it is measured on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from siamdiff.similarity.agreement import KINDS, NEAREST, agreement, near_copies, triplets
from siamdiff.similarity.graded import SHIFT, WEIGHT, graded, shift_cosine


def shifted_cosines(a: torch.Tensor, b: torch.Tensor, shift: int) -> torch.Tensor:
    """The oracle: every shift in turn, cosine over the overlap (torch's cosine_similarity)."""
    h, w = a.shape[-2:]
    best = torch.zeros(len(a), dtype=torch.float64)
    for dy in range(-min(shift, h - 1), min(shift, h - 1) + 1):
        for dx in range(-min(shift, w - 1), min(shift, w - 1) + 1):
            pa = a[..., max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)].flatten(1).double()
            pb = b[..., max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)].flatten(1).double()
            best = torch.maximum(best, F.cosine_similarity(pa, pb, dim=1, eps=1e-12))
    return best.clamp(0, 1)


@pytest.mark.parametrize("shape", [(3, 4, 9, 7), (2, 1, 28, 28), (1, 2, 3, 3), (5, 3, 32, 32), (2, 2, 1, 6)])
def test_shift_cosine_is_the_oracle(shape):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    b[0] = a[0].roll(1, dims=-1)  # a shifted copy: 1 over the overlap
    got = shift_cosine(a, b)
    assert torch.allclose(got.double(), shifted_cosines(a, b, SHIFT), atol=1e-5)
    if shape[-1] > 1:
        assert got[0] > 0.999
    assert (shift_cosine(-a, a) < 1e-6).all()  # opposite maps: 0, not negative


def test_graded_score_orders_category_then_appearance():
    p_same, p_other = np.array([0.999, 0.999, 0.999]), 0.4
    q = np.array([1.0, 0.95, 0.3])  # a copy, an alike image, an unlike one
    s = graded(p_same, q)
    assert s[0] > s[1] > s[2] >= 0.999 * (1 - WEIGHT) - 1e-12
    assert graded(p_other, 1.0) <= p_other < s[2]  # however alike, another category stays below
    assert graded(0.0, 1.0) == 0.0 and graded(1.0, 1.0) == 1.0


@pytest.fixture(scope="module")
def sample():
    from siamdiff.data.datasets import load_sample

    return load_sample("mnist")


@pytest.mark.parametrize("kind", KINDS)
def test_triplets_are_what_they_say(sample, kind):
    images, labels = sample.images, sample.labels.numpy()
    a, e, o = triplets(images, labels, kind, n=40)
    assert a.shape == e.shape == o.shape and len(a) == 40 and a.dtype == torch.uint8
    rows = {bytes(x.numpy()): i for i, x in enumerate(images)}
    la = labels[[rows[bytes(x.numpy())] for x in a]]
    lo = labels[[rows[bytes(x.numpy())] for x in o]]
    d = lambda x, y: (x.float() - y.float()).flatten(1).norm(dim=1)  # noqa: E731
    assert not any(torch.equal(x, y) for x, y in zip(a, o))  # the anchor itself is never a choice
    if kind == "category":
        le = labels[[rows[bytes(x.numpy())] for x in e]]
        assert (le == la).all() and (lo != la).all()
        assert (d(a, o) < d(a, e)).float().mean() > 0.9  # the other class looks more alike: hard for pixels
    elif kind == "near-copy":
        assert (lo == la).all() and (d(a, e) > 0).all()
    else:
        le = labels[[rows[bytes(x.numpy())] for x in e]]
        assert (le == la).all() and (lo == la).all() and (d(a, e) < d(a, o)).all()
    again = triplets(images, labels, kind, n=40)
    assert all(torch.equal(x, y) for x, y in zip((a, e, o), again))  # seeded


def test_near_copies_are_shifted_darker_and_noisy(sample):
    x = sample.images[:50]
    copies = near_copies(x, np.random.default_rng(0))
    assert copies.shape == x.shape and copies.dtype == torch.uint8
    assert 0.8 < copies.float().mean() / x.float().mean() < 1.0  # darker on average
    assert (copies != x).any(dim=(1, 2, 3)).all()


def test_agreement_counts_ties_half():
    a = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    score = lambda x, y: y.reshape(len(y), -1).astype(float).sum(1)  # noqa: E731 - higher for brighter
    bright, dark = torch.full_like(a, 9), torch.full_like(a, 1)
    assert agreement(score, a, bright, dark) == 1.0 and agreement(score, a, dark, bright) == 0.0
    assert agreement(score, a, dark, dark) == 0.5


def test_shipped_score_ranks_copy_alike_unlike_and_category(sample):
    """The contract on the embedded sample with the shipped MNIST model: near copy > alike of the class > unlike
    of the class > another class, in most triplets."""
    from siamdiff.similarity.api import SimilarityModel

    model = SimilarityModel.load("mnist")
    images, labels = sample.images, sample.labels.numpy()
    for kind, least in (("near-copy", 0.95), ("graded", 0.9), ("category", 0.9)):
        a, e, o = triplets(images, labels, kind, n=100)
        assert agreement(lambda x, y: model.score_batch(x, y)["similarity"], a, e, o) >= least, kind
    a = images[labels == 7][:1].numpy()
    row = model.score(a[0].transpose(1, 2, 0), a[0].transpose(1, 2, 0))
    assert row["similarity"] > 0.99 and row["appearance"] > 0.999 and row["same"]
    assert set(row) == {"similarity", "probability", "distance", "same", "appearance"}


def test_score_batch_is_score(sample):
    from siamdiff.similarity.api import SimilarityModel

    model = SimilarityModel.load("mnist")
    a, b = sample.images[:6].numpy(), sample.images[6:12].numpy()
    batch = model.score_batch(a, b)
    for k in range(6):
        one = model.score(a[k].transpose(1, 2, 0), b[k].transpose(1, 2, 0))
        for key, value in one.items():
            assert value == pytest.approx(batch[key][k], abs=1e-6), key


def test_triplets_refuse_what_they_cannot_build():
    from siamdiff.core.errors import SiamdiffError

    images = torch.zeros(NEAREST + 1, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(SiamdiffError, match="two classes"):
        triplets(images, np.zeros(NEAREST + 1, np.int64), "graded")
    with pytest.raises(SiamdiffError, match="unknown triplet kind"):
        triplets(images, np.zeros(NEAREST + 1, np.int64), "vibes")
