"""Near-duplicates in a folder: groups of images in which every two are near copies of each other.

Two images are near copies when their graded similarity (:mod:`siamdiff.similarity.graded`) is at least a threshold:
the score of a pair is at most its probability of one category, so only pairs whose embeddings are that close are
scored (the probability is computed for every pair, in blocks; the graded score only for those). Groups never chain:
they are built from the most similar pair down, and two groups merge only when every image of one is a near copy of
every image of the other (complete link), so A ~ B and B ~ C put A with C only when A ~ C. Nothing is moved or
deleted: this is a report.

The default threshold, :data:`THRESHOLD`, was chosen on the near-copy validation triplets of the three datasets (a
near copy of an image against the most alike other image of its class; ``python benchmarks/similarity.py
--agreement-only``): the threshold that best tells the two apart, pooled over the datasets.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..core.errors import SiamdiffError
from ..data.imageio import ImageReadError, list_images
from .api import SimilarityModel

THRESHOLD = 0.94  # the graded similarity from which two images are near copies (see the module's docstring)
CELLS = 1 << 23  # entries of the probability matrix computed at once (64 MB of float64)


def candidate_pairs(model: SimilarityModel, emb: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``(i, j)``, ``i < j``, whose probability of one category is at least ``threshold``: the only ones
    whose graded similarity can reach it."""
    rows, cols = [], []
    squared = (emb.astype(np.float64) ** 2).sum(1)
    step = max(1, CELLS // max(len(emb), 1))
    for s in range(0, len(emb), step):
        block = emb[s:s + step].astype(np.float64)
        d = np.sqrt(np.maximum(squared[s:s + step, None] + squared[None, :] - 2 * block @ emb.T.astype(np.float64), 0))
        i, j = np.nonzero(model.probability(d) >= threshold)
        i += s
        keep = i < j
        rows.append(i[keep])
        cols.append(j[keep])
    return np.concatenate(rows), np.concatenate(cols)


def complete_link_groups(n: int, pairs: dict[tuple[int, int], float]) -> list[list[int]]:
    """Groups of ``range(n)`` in which every two members form one of ``pairs`` (``(i, j)``, ``i < j`` -> score),
    merged from the highest score down; each group sorted, groups of two or more only, largest first."""
    group = list(range(n))
    members: dict[int, list[int]] = {k: [k] for k in range(n)}
    for (i, j), _ in sorted(pairs.items(), key=lambda item: (-item[1], item[0])):
        gi, gj = group[i], group[j]
        if gi == gj:
            continue
        if all((min(x, y), max(x, y)) in pairs for x in members[gi] for y in members[gj]):
            for x in members[gj]:
                group[x] = gi
            members[gi] += members.pop(gj)
    found = [sorted(m) for m in members.values() if len(m) > 1]
    return sorted(found, key=lambda m: (-len(m), m[0]))


def find_duplicates(folder: str | os.PathLike, model: SimilarityModel, threshold: float = THRESHOLD,
                    batch_size: int = 256) -> dict:
    """Groups of near copies among the images of ``folder`` (recursively):
    ``{"folder", "images", "skipped", "threshold", "groups": [[path, ...], ...], "similarity": [min, ...]}``, with
    each group's smallest similarity between two of its images. Unreadable files are skipped and counted."""
    if not 0 < threshold <= 1:
        raise SiamdiffError(f"{{threshold}} must be in (0, 1], got {threshold}", "threshold")
    try:
        files = list_images(folder)
    except ImageReadError as exc:
        raise SiamdiffError(str(exc)) from None
    if not files:
        raise SiamdiffError(f"no images in '{folder}'")
    arrays, kept = model.prepare_files(files, logging.WARNING)
    paths, skipped = [str(files[k]) for k in kept], len(files) - len(kept)
    if not arrays:
        raise SiamdiffError(f"no readable images in '{folder}' ({skipped} unreadable)")
    images = np.stack(arrays)
    emb = model.embed(images, batch_size=batch_size)
    i, j = candidate_pairs(model, emb, threshold)
    scores = np.zeros(0)
    if len(i):  # each image of a candidate pair embedded once, however many pairs it is in
        rows, where = np.unique(np.concatenate([i, j]), return_inverse=True)
        scores = model.score_indexed(images[rows], where[:len(i)], where[len(i):])["similarity"]
    near = {(int(a), int(b)): float(v) for a, b, v in zip(i, j, scores) if v >= threshold}
    groups = complete_link_groups(len(paths), near)
    smallest = [min(near[(x, y)] for k, x in enumerate(g) for y in g[k + 1:]) for g in groups]
    return {"folder": str(Path(folder)), "images": len(paths), "skipped": skipped, "threshold": threshold,
            "groups": [[paths[k] for k in g] for g in groups], "similarity": [round(v, 6) for v in smallest]}


__all__ = ["THRESHOLD", "candidate_pairs", "complete_link_groups", "find_duplicates"]
