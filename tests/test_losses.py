"""Losses against hand computations and against pytorch-metric-learning as an oracle."""

import math

import pytest
import torch

from siamdiff.similarity.losses import (LossConfig, Proxies, contrastive_loss, in_batch_contrastive,
                                        in_batch_triplet, normsoftmax_loss, pair_terms, supcon_loss, triplet_loss)


def test_contrastive_by_hand_both_forms():
    # pairs at distances 3 (same), 1 (different), 4 (different), margin 2
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, 1.0], [4.0, 0.0]])
    same = torch.tensor([1, 0, 0])
    # seed form: 3^2 = 9; max(0, 4 - 1) = 3; max(0, 4 - 16) = 0 -> mean 4
    assert contrastive_loss(a, b, same, 2.0, "contrastive").item() == pytest.approx(4.0)
    # Hadsell: 9; (2 - 1)^2 = 1; 0 -> mean 10/3
    assert contrastive_loss(a, b, same, 2.0, "hadsell").item() == pytest.approx(10 / 3)


def test_identical_positives_cost_nothing_and_far_negatives_too():
    e = torch.randn(4, 8)
    assert contrastive_loss(e, e.clone(), torch.ones(4), 1.0).item() == pytest.approx(0.0, abs=1e-10)
    far = e + 100.0
    assert contrastive_loss(e, far, torch.zeros(4), 1.0, "hadsell").item() == 0.0


def test_gradient_is_finite_for_identical_embeddings():
    e = torch.randn(3, 4, requires_grad=True)
    loss = contrastive_loss(e, e.detach().clone(), torch.zeros(3), 1.0, "hadsell")
    loss.backward()
    assert torch.isfinite(e.grad).all()


def test_unknown_form_is_refused():
    with pytest.raises(ValueError):
        pair_terms(torch.ones(1), torch.ones(1), 1.0, "nope")
    with pytest.raises(ValueError):
        LossConfig("nope").in_batch()


def test_triplet_by_hand():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    n = torch.tensor([[0.0, 3.0], [0.0, 1.0]])
    # max(0, 1 - 3 + 0.5) = 0; max(0, 2 - 1 + 0.5) = 1.5 -> mean 0.75
    assert triplet_loss(a, p, n, 0.5).item() == pytest.approx(0.75)


def test_in_batch_contrastive_equals_explicit_pairs():
    torch.manual_seed(0)
    e, y = torch.randn(7, 3), torch.tensor([0, 1, 0, 2, 1, 0, 2])
    pos, neg = [], []
    for i in range(7):
        for j in range(i + 1, 7):
            d = torch.dist(e[i], e[j])
            (pos if y[i] == y[j] else neg).append(d ** 2 if y[i] == y[j] else max(0.0, 1.5 ** 2 - d.item() ** 2))
    active = [n for n in neg if n > 0]  # only negatives inside the margin are averaged
    assert 0 < len(active) < len(neg)
    expected = sum(pos) / len(pos) + sum(active) / len(active)
    assert in_batch_contrastive(e, y, 1.5).item() == pytest.approx(float(expected), rel=1e-5)


def test_supcon_by_hand_two_pairs():
    # two classes, two unit embeddings each: z0=z1=(1,0), z2=z3=(0,1); tau=1
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    # for anchor 0: logits to 1,2,3 = 1,0,0 -> -log(e / (e + 2))
    expected = -math.log(math.e / (math.e + 2))
    assert supcon_loss(z, y, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_normsoftmax_by_hand():
    # proxies (2, 0) and (0, 3) -> unit (1, 0), (0, 1); embeddings (1, 0) of class 0 and (3, 4) of class 1; tau = 0.5
    emb = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    proxies = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    # cosines: first (1, 0), second (0.6, 0.8); logits = cos / 0.5
    first = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
    second = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    assert normsoftmax_loss(emb, y, proxies, 0.5).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_normsoftmax_label_smoothing_by_hand():
    # two classes, smoothing 0.2: the target is 0.9 on the true class, 0.1 on the other
    emb, proxies, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0])
    logp = torch.log_softmax(torch.tensor([2.0, 0.0]), 0)  # cosines (1, 0) over tau 0.5
    expected = -(0.9 * logp[0] + 0.1 * logp[1]).item()
    assert normsoftmax_loss(emb, y, proxies, 0.5, 0.2).item() == pytest.approx(expected, rel=1e-6)
    assert LossConfig("normsoftmax", temperature=0.5, label_smoothing=0.2).in_batch(
        Proxies(2, 2))(emb, y).item() > 0


def test_normsoftmax_trains_its_proxies_and_needs_them():
    proxies = Proxies(3, 4)
    e, y = torch.randn(6, 4, requires_grad=True), torch.tensor([0, 1, 2, 0, 1, 2])
    LossConfig("normsoftmax", temperature=0.05).in_batch(proxies)(e, y).backward()
    assert proxies.weight.grad is not None and proxies.weight.grad.abs().sum() > 0
    assert e.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="proxies"):
        LossConfig("normsoftmax").in_batch()


pml = pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is the test oracle")


def _pml(loss_cls, **kw):
    """A PML loss on raw Euclidean distances with its default reducer (AvgNonZeroReducer)."""
    from pytorch_metric_learning.distances import LpDistance

    return loss_cls(distance=LpDistance(normalize_embeddings=False, p=2, power=kw.pop("power", 1)), **kw)


def test_in_batch_contrastive_matches_pml():
    from pytorch_metric_learning.losses import ContrastiveLoss

    torch.manual_seed(1)
    e, y = torch.randn(32, 6), torch.randint(0, 4, (32,))
    m = 2.0
    # PML with power-2 distances: pos d^2, neg relu(m^2 - d^2), each averaged over its non-zero terms: our form.
    oracle = _pml(ContrastiveLoss, power=2, pos_margin=0.0, neg_margin=m ** 2)(e, y)
    assert in_batch_contrastive(e, y, m, "contrastive").item() == pytest.approx(oracle.item(), rel=1e-5)


def test_in_batch_triplet_matches_pml():
    from pytorch_metric_learning.losses import TripletMarginLoss

    torch.manual_seed(2)
    e, y = torch.randn(24, 5), torch.randint(0, 3, (24,))
    oracle = _pml(TripletMarginLoss, margin=0.3, triplets_per_anchor="all")(e, y)
    assert in_batch_triplet(e, y, 0.3).item() == pytest.approx(oracle.item(), rel=1e-5)


def test_supcon_matches_pml():
    from pytorch_metric_learning.losses import SupConLoss

    torch.manual_seed(3)
    e, y = torch.nn.functional.normalize(torch.randn(20, 8), dim=1), torch.randint(0, 4, (20,))
    from pytorch_metric_learning.reducers import MeanReducer

    oracle = SupConLoss(temperature=0.2, reducer=MeanReducer())(e, y)
    assert supcon_loss(e, y, 0.2).item() == pytest.approx(oracle.item(), rel=1e-4)


def test_normsoftmax_matches_pml():
    from pytorch_metric_learning.losses import NormalizedSoftmaxLoss
    from pytorch_metric_learning.reducers import MeanReducer

    torch.manual_seed(4)
    e, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    oracle = NormalizedSoftmaxLoss(5, 6, temperature=0.05, reducer=MeanReducer())
    ours = normsoftmax_loss(e, y, oracle.W.detach().T, 0.05)  # pml stores the proxies as columns
    assert ours.item() == pytest.approx(oracle(e, y).item(), rel=1e-5)
