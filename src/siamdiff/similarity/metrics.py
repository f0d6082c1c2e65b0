"""Evaluation metrics for verification (pairs) and retrieval (embeddings).

Pure functions over numpy arrays; torch tensors are accepted anywhere an
array is and are moved to the CPU first (except the embeddings given to
:func:`knn_search` / :func:`retrieval_metrics`, which stay on their device).

Verification: ``scores`` are similarity scores, higher meaning "more likely
the same identity"; ``same`` says whether each pair really is the same.

Retrieval: the metric-learning definitions of Musgrave, Belongie & Lim,
"A Metric Learning Reality Check" (ECCV 2020): Recall@k (a hit if any of the
top k neighbours shares the query's label, Oh Song et al. 2016) and MAP@R.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "roc_curve",
    "roc_auc",
    "equal_error_rate",
    "best_threshold",
    "verification_accuracy",
    "knn_search",
    "recall_at_k",
    "map_at_r",
    "retrieval_metrics",
    "leave_one_out",
]


# --------------------------------------------------------------------------- helpers


def _to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_pairs(scores: Any, same: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate verification inputs: (N,) finite float scores and (N,) bool labels."""
    s = _to_numpy(scores).astype(np.float64, copy=False)
    y = _to_numpy(same)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and same must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"scores and same differ in length: {s.shape[0]} vs {y.shape[0]}")
    if s.shape[0] == 0:
        raise ValueError("no pairs given")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    if y.dtype != np.bool_:
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("same must be boolean (or 0/1)")
        y = y.astype(bool)
    return s, y


def _roc_counts(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (fp, tp) counts per distinct score, descending; first entry is (0, 0).

    Returns ``(fps, tps, thresholds)``, each of shape (M + 1,) where M is the
    number of distinct scores; ``thresholds[0] == +inf`` and ``thresholds[j]``
    (j >= 1) is the j-th largest distinct score. ``fps[j]``/``tps[j]`` count the
    negatives/positives with ``score >= thresholds[j]``.
    """
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # Last index of each group of equal scores.
    ends = np.flatnonzero(np.diff(s_sorted) != 0)
    ends = np.append(ends, s_sorted.shape[0] - 1)
    tps = np.cumsum(y_sorted, dtype=np.int64)[ends]
    fps = (ends + 1).astype(np.int64) - tps
    zero = np.zeros(1, dtype=np.int64)
    thresholds = np.concatenate([[np.inf], s_sorted[ends]])
    return np.concatenate([zero, fps]), np.concatenate([zero, tps]), thresholds


def _class_sizes(y: np.ndarray) -> tuple[int, int]:
    n_pos = int(np.count_nonzero(y))
    n_neg = int(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"need both same and different pairs (got {n_pos} same, {n_neg} different)"
        )
    return n_pos, n_neg


# --------------------------------------------------------------------------- verification


def roc_curve(scores: Any, same: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of the rule ``score >= threshold`` -> "same".

    Args:
        scores: (N,) float similarity scores, higher = more likely the same.
        same: (N,) bool ground truth.

    Returns:
        ``(fpr, tpr, thresholds)``, each (M + 1,) where M is the number of
        distinct scores. Equal scores are grouped into one point. The first
        point is (0, 0) with threshold ``+inf``; thresholds then descend through
        the distinct scores, the last point being (1, 1).

    Raises:
        ValueError: bad shapes, non-finite scores, or only one class present.
    """
    s, y = _check_pairs(scores, same)
    n_pos, n_neg = _class_sizes(y)
    fps, tps, thresholds = _roc_counts(s, y)
    return fps / n_neg, tps / n_pos, thresholds


def roc_auc(scores: Any, same: Any) -> float:
    """Area under the ROC curve; ties count 1/2 (the Mann-Whitney U statistic).

    Equals ``sklearn.metrics.roc_auc_score(same, scores)``. The area is summed
    exactly in integer arithmetic and divided once at the end.

    Args:
        scores: (N,) float, higher = more likely the same.
        same: (N,) bool.
    """
    s, y = _check_pairs(scores, same)
    n_pos, n_neg = _class_sizes(y)
    fps, tps, _ = _roc_counts(s, y)
    # Trapezoids in count units: 2 * area = sum dFP * (TP_prev + TP_cur).
    twice_area = int(np.sum(np.diff(fps) * (tps[1:] + tps[:-1])))
    return twice_area / (2.0 * n_pos * n_neg)


def equal_error_rate(scores: Any, same: Any) -> float:
    """Equal error rate: where false-accept rate (FPR) equals false-reject rate (1 - TPR).

    The ROC points are joined by straight lines; the EER is the value at which
    that polyline crosses FAR == FRR.

    Args:
        scores: (N,) float, higher = more likely the same.
        same: (N,) bool.
    """
    fpr, tpr, _ = roc_curve(scores, same)
    frr = 1.0 - tpr
    diff = fpr - frr  # non-decreasing from -1 (first point) to +1 (last point)
    i = int(np.argmax(diff >= 0))
    if diff[i] == 0:
        return float((fpr[i] + frr[i]) / 2.0)
    # Crossing lies strictly between points i-1 and i (i >= 1 since diff[0] == -1).
    t = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def best_threshold(scores: Any, same: Any) -> float:
    """Threshold maximising the accuracy of ``score >= threshold`` -> "same".

    Meant for VALIDATION pairs; report accuracy on test pairs with
    :func:`verification_accuracy`. Candidates are the midpoints between
    consecutive distinct scores, plus one point below the lowest score (accept
    all) and one above the highest (reject all), each half the mean gap
    between distinct scores away (1.0 away if all scores are equal). Ties in
    accuracy go to the highest threshold.

    Args:
        scores: (N,) float, higher = more likely the same.
        same: (N,) bool.
    """
    s, y = _check_pairs(scores, same)
    n_pos = int(np.count_nonzero(y))
    n_neg = int(y.shape[0] - n_pos)
    fps, tps, thresholds = _roc_counts(s, y)
    # Cut j accepts the j highest distinct-score groups (j = 0: accept none).
    correct = tps + (n_neg - fps)
    j = int(np.argmax(correct))
    distinct = thresholds[1:]  # descending
    m = distinct.shape[0]
    margin = 0.5 * (distinct[0] - distinct[-1]) / (m - 1) if m > 1 else 1.0
    if j == 0:
        return float(distinct[0] + margin)
    if j == m:
        return float(distinct[-1] - margin)
    return float((distinct[j - 1] + distinct[j]) / 2.0)


def verification_accuracy(scores: Any, same: Any, threshold: float) -> float:
    """Fraction of pairs classified correctly by ``score >= threshold`` -> "same".

    Args:
        scores: (N,) float.
        same: (N,) bool.
        threshold: scalar, e.g. from :func:`best_threshold` on validation pairs.
    """
    s, y = _check_pairs(scores, same)
    return float(np.mean((s >= threshold) == y))


# --------------------------------------------------------------------------- retrieval


def _as_float_tensor(x: Any, device: torch.device | None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().to(dtype=torch.float32)
    if device is not None:
        t = t.to(device)
    if t.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, dim), got shape {tuple(t.shape)}")
    return t


def _knn_chunks(
    queries: Any,
    gallery: Any,
    k: int,
    exclude_self: bool,
    chunk: int,
    gallery_sq: torch.Tensor | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, distances, indices)`` for consecutive chunks of queries.

    ``distances``/``indices`` are (chunk, k) tensors on the computing device,
    sorted by increasing Euclidean distance.
    """
    device = queries.device if isinstance(queries, torch.Tensor) else None
    q = _as_float_tensor(queries, device)
    g = _as_float_tensor(gallery, q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"dimension mismatch: queries {q.shape[1]}, gallery {g.shape[1]}")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    if exclude_self and q.shape[0] != g.shape[0]:
        raise ValueError("exclude_self needs queries and gallery to be the same set")
    available = g.shape[0] - (1 if exclude_self else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k={k} must be between 1 and {available} (gallery size)")
    g_sq = (g * g).sum(dim=1) if gallery_sq is None else gallery_sq.to(g.device)
    with torch.no_grad():
        for start in range(0, q.shape[0], chunk):
            qc = q[start : start + chunk]
            d2 = (qc * qc).sum(dim=1, keepdim=True) + g_sq[None, :] - 2.0 * (qc @ g.T)
            d2.clamp_(min=0.0)
            if exclude_self:
                rows = torch.arange(qc.shape[0], device=q.device)
                d2[rows, rows + start] = float("inf")
            dist2, idx = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            del d2
            yield start, dist2.sqrt_(), idx


def knn_search(
    queries: Any,
    gallery: Any,
    k: int,
    exclude_self: bool = False,
    chunk: int = 1024,
    gallery_sq: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by Euclidean distance, in chunks of queries.

    Computed with torch (float32) on the queries' device if they are a tensor,
    else on the CPU; memory is about ``chunk * G`` floats at a time.

    Args:
        queries: (Q, D) float embeddings.
        gallery: (G, D) float embeddings.
        k: number of neighbours, 1 <= k <= G (G - 1 with ``exclude_self``).
        exclude_self: queries *are* the gallery (same order); never return a
            query's own index.
        chunk: queries per block.
        gallery_sq: the gallery's squared norms ``(G,)``, when the caller keeps them (one pass over the gallery
            less per call: an index searched many times).

    Returns:
        ``(distances, indices)``: numpy arrays (Q, k), float32 and int64,
        sorted by increasing distance.
    """
    dists, idxs = [], []
    for _, d, i in _knn_chunks(queries, gallery, k, exclude_self, chunk, gallery_sq):
        dists.append(d.cpu().numpy())
        idxs.append(i.cpu().numpy())
    if not dists:
        return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
    return np.concatenate(dists), np.concatenate(idxs).astype(np.int64, copy=False)


def _recall_hits(
    query_labels: np.ndarray, neighbor_labels: np.ndarray, ks: Sequence[int]
) -> dict[int, np.ndarray]:
    """Per-query bool hit vectors for each k: any of the first k neighbours has the query's label."""
    match = neighbor_labels == query_labels[:, None]
    # first_hit[i] = 0-based rank of the first match, or K if none.
    first_hit = np.where(match.any(axis=1), match.argmax(axis=1), match.shape[1])
    return {int(k): first_hit < k for k in ks}


def recall_at_k(
    query_labels: Any, neighbor_labels: Any, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Recall@k as in metric learning: fraction of queries with at least one
    same-label item among their top k neighbours.

    Args:
        query_labels: (Q,) labels.
        neighbor_labels: (Q, K) labels of each query's neighbours, nearest first;
            K >= max(ks).
        ks: the k values.

    Returns:
        ``{k: recall}``. Every query counts (a query whose label is absent from
        the gallery simply scores 0; :func:`retrieval_metrics` skips those).
    """
    ql = _to_numpy(query_labels)
    nl = _to_numpy(neighbor_labels)
    if nl.ndim != 2 or ql.ndim != 1 or nl.shape[0] != ql.shape[0]:
        raise ValueError(
            f"expected query_labels (Q,) and neighbor_labels (Q, K), got {ql.shape}, {nl.shape}"
        )
    if any(k < 1 or k > nl.shape[1] for k in ks):
        raise ValueError(f"every k in {tuple(ks)} must be in 1..{nl.shape[1]}")
    if ql.shape[0] == 0:
        raise ValueError("no queries given")
    hits = _recall_hits(ql, nl, ks)
    return {k: float(h.mean()) for k, h in hits.items()}


def _label_counts_for(query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """R per query: number of gallery items with the query's label (0 if none), shape (Q,)."""
    uniq, counts = np.unique(gallery_labels, return_counts=True)
    if uniq.shape[0] == 0:
        return np.zeros(query_labels.shape[0], dtype=np.int64)
    pos = np.minimum(np.searchsorted(uniq, query_labels), uniq.shape[0] - 1)
    found = uniq[pos] == query_labels
    return np.where(found, counts[pos], 0).astype(np.int64)


def _ap_at_r(query_labels: np.ndarray, neighbor_labels: np.ndarray, r: np.ndarray) -> np.ndarray:
    """AP@R per query (all R > 0); neighbor_labels has at least max(r) columns."""
    r_max = int(r.max())
    nl = neighbor_labels[:, :r_max]
    cols = np.arange(1, r_max + 1)
    rel = (nl == query_labels[:, None]) & (cols[None, :] <= r[:, None])
    precision = np.cumsum(rel, axis=1) / cols[None, :]
    return (precision * rel).sum(axis=1) / r


def map_at_r(
    query_labels: Any, neighbor_labels: Any, gallery_labels: Any, chunk: int = 1024
) -> float:
    """MAP@R (Musgrave, Belongie & Lim, ECCV 2020).

    For each query, R = number of gallery items with its label and
    AP@R = (1/R) * sum_{i=1..R} P(i) * rel(i), where rel(i) says whether the
    i-th neighbour has the query's label and P(i) is the precision of the first
    i neighbours. The result is the mean over queries. Queries whose label is
    absent from the gallery (R = 0) are skipped, as pytorch-metric-learning
    does; NaN if every query is skipped.

    Args:
        query_labels: (Q,) labels.
        neighbor_labels: (Q, K) neighbour labels, nearest first, K >= max R.
        gallery_labels: (G,) labels of the whole gallery searched.
        chunk: queries processed at a time (bounds memory to chunk * max R).

    Raises:
        ValueError: if K < max R, or shapes disagree.
    """
    ql = _to_numpy(query_labels)
    nl = _to_numpy(neighbor_labels)
    gl = _to_numpy(gallery_labels)
    if ql.ndim != 1 or nl.ndim != 2 or gl.ndim != 1 or nl.shape[0] != ql.shape[0]:
        raise ValueError(
            f"expected query_labels (Q,), neighbor_labels (Q, K), gallery_labels (G,); "
            f"got {ql.shape}, {nl.shape}, {gl.shape}"
        )
    r = _label_counts_for(ql, gl)
    keep = r > 0
    if not keep.any():
        return float("nan")
    if int(r.max()) > nl.shape[1]:
        raise ValueError(
            f"neighbor_labels has {nl.shape[1]} columns but MAP@R needs {int(r.max())} (max R)"
        )
    ql, nl, r = ql[keep], nl[keep], r[keep]
    total = 0.0
    for start in range(0, ql.shape[0], chunk):
        sl = slice(start, start + chunk)
        total += float(_ap_at_r(ql[sl], nl[sl], r[sl]).sum())
    return total / ql.shape[0]


def retrieval_metrics(
    query_emb: Any,
    query_labels: Any,
    gallery_emb: Any,
    gallery_labels: Any,
    ks: Sequence[int] = (1, 5),
    chunk: int = 512,
) -> dict[str, float | int]:
    """Recall@k for each k in ``ks`` and MAP@R in one chunked exact-kNN pass.

    k = max(max(ks), max R). Each chunk of queries is ranked against the whole
    gallery, its neighbour labels gathered, its metrics accumulated and the
    chunk discarded, so memory is about ``chunk * (G + k)`` values (60,000 x 64
    gallery, 10,000 queries: well under 1 GB).

    Queries whose label does not occur in the gallery are skipped for every
    metric (as pytorch-metric-learning's AccuracyCalculator does); metrics are
    NaN if all are skipped. ``n_queries`` is Q, the number of queries given.

    Args:
        query_emb: (Q, D) float embeddings; query_labels: (Q,) labels.
        gallery_emb: (G, D) float embeddings; gallery_labels: (G,) labels.
        ks: the k values for recall@k.
        chunk: queries per block.
        gallery_sq: the gallery's squared norms ``(G,)``, when the caller keeps them (one pass over the gallery
            less per call: an index searched many times).

    Returns:
        ``{"recall_at_<k>": float for each k, "map_at_r": float, "n_queries": Q}``.
    """
    ql = _to_numpy(query_labels)
    gl = _to_numpy(gallery_labels)
    n_q = int(ql.shape[0])
    if ql.ndim != 1 or gl.ndim != 1:
        raise ValueError("labels must be 1-D")
    if len(query_emb) != n_q or len(gallery_emb) != gl.shape[0]:
        raise ValueError("embeddings and labels differ in length")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError("ks must be a non-empty sequence of positive ints")
    r = _label_counts_for(ql, gl)
    keep = r > 0
    n_kept = int(keep.sum())
    out: dict[str, float | int] = {}
    if n_kept == 0:
        out.update({f"recall_at_{k}": float("nan") for k in ks})
        out["map_at_r"] = float("nan")
        out["n_queries"] = n_q
        return out
    k = max(max(ks), int(r.max()))
    hit_sums = {kk: 0 for kk in ks}
    ap_sum = 0.0
    for start, _, idx in _knn_chunks(query_emb, gallery_emb, k, False, chunk):
        sl = slice(start, start + idx.shape[0])
        m = keep[sl]
        if not m.any():
            continue
        nl = gl[idx.cpu().numpy()][m]
        q = ql[sl][m]
        for kk, h in _recall_hits(q, nl, ks).items():
            hit_sums[kk] += int(h.sum())
        ap_sum += float(_ap_at_r(q, nl, r[sl][m]).sum())
    out.update({f"recall_at_{kk}": hit_sums[kk] / n_kept for kk in ks})
    out["map_at_r"] = ap_sum / n_kept
    out["n_queries"] = n_q
    return out


def leave_one_out(emb: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Retrieval of every image against all the others (a set with no separate gallery): recall@1, recall@5 and
    MAP@R, where R of a query is its class size minus itself."""
    labels = _to_numpy(labels)
    r = np.bincount(labels)[labels] - 1
    _, idx = knn_search(emb, emb, max(5, int(r.max())), exclude_self=True)
    rec = recall_at_k(labels, labels[idx], ks=(1, 5))
    ok = r > 0
    ap = float(_ap_at_r(labels[ok], labels[idx][ok], r[ok]).mean()) if ok.any() else float("nan")
    return {"recall_at_1": rec[1], "recall_at_5": rec[5], "map_at_r": ap, "n_queries": len(labels)}
