"""Metric-learning losses as pure functions of embeddings and labels.

Distances are Euclidean. ``same`` is 1 for a pair of one category (the report's ``y``), 0 otherwise.

* ``contrastive`` (the report's form): ``y·d² + (1 − y)·max(0, m² − d²)``
* ``hadsell`` (Hadsell, Chopra, LeCun 2006, without their factor ½): ``y·d² + (1 − y)·max(0, m − d)²``
* ``triplet`` (Schroff et al. 2015): ``max(0, d(a, p) − d(a, n) + m)``
* ``supcon`` (Khosla et al. 2020), on unit-length embeddings with temperature τ.
* ``normsoftmax`` (Zhai & Wu 2019, "Classification is a strong baseline for deep metric learning"): one learned
  unit-length *proxy* per class; cross-entropy over the cosine similarities of an embedding to the proxies divided
  by τ. Similar images are still those at a small distance — the proxies only exist during training.

The ``in_batch`` forms use every pair (or triplet) inside a batch and weight positives and negatives equally:
``mean over positive pairs + mean over negative pairs``, the same balance as the report's 50/50 pair builder, each
mean taken over the pairs that still cost something (non-zero terms), as pytorch-metric-learning does by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PAIR_FORMS = ("contrastive", "hadsell")
LOSSES = ("contrastive", "hadsell", "triplet", "supcon", "normsoftmax")
MARGIN_LOSSES = (*PAIR_FORMS, "triplet")  # the others have a temperature


def pair_terms(d: torch.Tensor, same: torch.Tensor, margin: float, form: str = "contrastive") -> torch.Tensor:
    """Per-pair contrastive terms ``(N,)`` for distances ``d (N,)`` and ``same (N,)`` in {0, 1}."""
    same = same.to(d.dtype)
    if form == "contrastive":
        neg = F.relu(margin ** 2 - d.pow(2))
    elif form == "hadsell":
        neg = F.relu(margin - d).pow(2)
    else:
        raise ValueError(f"unknown contrastive form '{form}': use one of {PAIR_FORMS}")
    return same * d.pow(2) + (1 - same) * neg


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, margin: float,
                     form: str = "contrastive") -> torch.Tensor:
    """Mean contrastive loss over explicit pairs: embeddings ``a, b (N, D)``, ``same (N,)``."""
    return pair_terms(_dist(a, b), same, margin, form).mean()


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # sqrt with a floor: the gradient of ||a - b|| is undefined at 0 (identical embeddings).
    return (a - b).pow(2).sum(dim=1).clamp_min(1e-12).sqrt()


def _pairwise(emb: torch.Tensor) -> torch.Tensor:
    sq = emb.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2 * emb @ emb.T).clamp_min(1e-12)
    return d2.sqrt()


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels[:, None] == labels[None, :]
    upper = torch.ones_like(same).triu(diagonal=1)
    return same & upper, ~same & upper


def _mean_nonzero(terms: torch.Tensor) -> torch.Tensor:
    """Mean over the terms that are not zero (0 when none): easy pairs do not dilute the hard ones."""
    active = terms > 0
    return terms[active].mean() if active.any() else terms.sum() * 0.0


def in_batch_contrastive(emb: torch.Tensor, labels: torch.Tensor, margin: float,
                         form: str = "contrastive") -> torch.Tensor:
    """Every pair of a batch: mean of the active positive terms + mean of the active negative terms.

    ``emb (B, D)``, ``labels (B,)``. "Active" terms are those above zero (pytorch-metric-learning's
    ``AvgNonZeroReducer``): most negative pairs of a batch are already beyond the margin, and averaging their zeros
    in would shrink the pull of the few hard negatives that matter.
    """
    d = _pairwise(emb)
    pos, neg = _masks(labels)
    terms = pair_terms(d, pos.to(d.dtype), margin, form)
    return _mean_nonzero(terms[pos]) + _mean_nonzero(terms[neg])


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float) -> torch.Tensor:
    """Mean triplet loss over explicit triplets ``(N, D)`` each."""
    return F.relu(_dist(anchor, positive) - _dist(anchor, negative) + margin).mean()


def in_batch_triplet(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Triplet loss over every valid (anchor, positive, negative) triplet of a batch, averaged over active ones."""
    d = _pairwise(emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    valid = (same & ~eye)[:, :, None] & (~same)[:, None, :]  # [a, p, n]
    return _mean_nonzero(F.relu(d[:, :, None] - d[:, None, :] + margin)[valid])


def supcon_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the L_out form), anchors without positives skipped."""
    z = F.normalize(emb, dim=1)
    logits = z @ z.T / temperature
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(dim=1)
    has = n_pos > 0
    if not has.any():
        return emb.sum() * 0.0
    mean_log_prob = log_prob.masked_fill(~pos, 0.0).sum(dim=1)[has] / n_pos[has]
    return -mean_log_prob.mean()


def normsoftmax_loss(emb: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor,
                     temperature: float = 0.05, label_smoothing: float = 0.0) -> torch.Tensor:
    """Normalized-softmax loss: ``emb (B, D)``, ``labels (B,)`` in ``[0, K)``, ``proxies (K, D)`` (any length);
    ``label_smoothing`` moves that share of each target to the uniform distribution (Szegedy et al. 2016)."""
    logits = F.normalize(emb, dim=1) @ F.normalize(proxies, dim=1).T / temperature
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


class Proxies(nn.Module):
    """The learned class proxies of :func:`normsoftmax_loss`: ``(n_classes, dim)``, trained with the network."""

    def __init__(self, n_classes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) / dim ** 0.5)


@dataclass(frozen=True)
class LossConfig:
    """Which loss and its one hyper-parameter (margin, or temperature for supcon and normsoftmax); normsoftmax also
    has a ``label_smoothing``."""

    name: str = "contrastive"
    margin: float = 1.0
    temperature: float = 0.1
    label_smoothing: float = 0.0

    @classmethod
    def default(cls, name: str, margin: float | None = None) -> LossConfig:
        """``name`` with its default hyper-parameter: margin 1 for the pair and triplet forms, temperature 0.1 for
        supcon (Khosla et al. 2020) and 0.05 for normsoftmax (Zhai & Wu 2019)."""
        return cls(name, 1.0 if margin is None else margin, 0.05 if name == "normsoftmax" else 0.1)

    def in_batch(self, proxies: Proxies | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``loss(emb (B, D), labels (B,)) -> scalar`` over every pair/triplet of the batch (``normsoftmax``: of
        every image against the class ``proxies``)."""
        if self.name in PAIR_FORMS:
            return lambda e, y: in_batch_contrastive(e, y, self.margin, self.name)
        if self.name == "triplet":
            return lambda e, y: in_batch_triplet(e, y, self.margin)
        if self.name == "supcon":
            return lambda e, y: supcon_loss(e, y, self.temperature)
        if self.name == "normsoftmax":
            if proxies is None:
                raise ValueError("the normsoftmax loss needs its class proxies")
            return lambda e, y: normsoftmax_loss(e, y, proxies.weight, self.temperature, self.label_smoothing)
        raise ValueError(f"unknown loss '{self.name}': use one of {', '.join(LOSSES)}")
