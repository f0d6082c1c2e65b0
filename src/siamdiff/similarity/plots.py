"""Pictures people look at: pairs with their scores, the ROC curve, a 2-D map of embeddings with thumbnails."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.files import output_folder
from ..core.plotting import pyplot, save_figure, show_image
from ..data.datasets import ImageSet, load_dataset
from .api import SimilarityModel
from .explain import contributions, overlay, overlay_scale
from .metrics import roc_auc, roc_curve
from .pairs import balanced_pairs


def plot_pairs(model: SimilarityModel, data: ImageSet, path: Path, pairs: tuple[np.ndarray, ...],
               title: str = "", explain: bool = False) -> Path:
    """A grid of pairs, each with its graded similarity, the probability of "same category" and whether the decision
    is right; with ``explain``, each image under the map of where its agreement with the other comes from
    (:mod:`siamdiff.similarity.explain`)."""
    plt = pyplot()
    i, j, same = pairs
    a, b = data.images[i].numpy(), data.images[j].numpy()
    scores = model.score_batch(a, b)
    if explain:
        maps_a, maps_b, _ = contributions(model.net, a, b)
    cols = 4
    rows = -(-len(i) // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.0 * cols * 1.25, rows * 1.6))
    axes = np.atleast_2d(axes)
    for k in range(rows * cols):
        left, right = axes[k // cols, 2 * (k % cols)], axes[k // cols, 2 * (k % cols) + 1]
        if k >= len(i):
            left.axis("off")
            right.axis("off")
            continue
        if explain:
            scale = overlay_scale(a.shape[-1], maps_a[k], maps_b[k])
            overlay(left, a[k], maps_a[k], scale)
            overlay(right, b[k], maps_b[k], scale)
        else:
            show_image(left, a[k])
            show_image(right, b[k])
        ok = bool(scores["same"][k]) == bool(same[k])
        names = (data.classes[int(data.labels[i[k]])], data.classes[int(data.labels[j[k]])])
        left.set_title(f"s={scores['similarity'][k]:.2f} p={scores['probability'][k]:.2f}", fontsize=8, loc="left",
                       color="green" if ok else "red")
        right.set_title(f"{names[0]}|{names[1]}", fontsize=7, loc="right")
    what = "graded similarity s and probability p of one category (green = decision right)"
    if explain:
        what += "; red: regions that make the pair similar, blue: that make it differ"
    fig.suptitle(f"{title or 'Pairs'}: {what}", fontsize=9)
    return save_figure(fig, path)


def plot_roc(model: SimilarityModel, data: ImageSet, path: Path, n_pairs: int = 2000) -> Path:
    plt = pyplot()
    i, j, same = balanced_pairs(data.labels.numpy(), n_pairs, seed=0)
    emb = model.embed(data.images)
    d = np.linalg.norm(emb[i] - emb[j], axis=1)
    fpr, tpr, _ = roc_curve(-d, same.astype(bool))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc(-d, same.astype(bool)):.4f}")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC, {len(i)} balanced pairs of {data.name}", fontsize=9)
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def project_2d(emb: np.ndarray, method: str = "tsne") -> np.ndarray:
    """A 2-D map ``(N, 2)`` of embeddings: t-SNE (scikit-learn, seed 0) or the first two principal components.

    A 2-d embedding (the seed design's) is shown as it is.
    """
    if emb.shape[1] <= 2:
        return emb[:, :2]
    if method == "tsne" and len(emb) > 5:
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(30.0, (len(emb) - 1) / 3), init="pca", random_state=0).fit_transform(emb)
    centred = emb - emb.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_map(model: SimilarityModel, data: ImageSet, path: Path, thumbnails: int = 120,
             max_points: int = 2000) -> Path:
    """Test embeddings mapped to 2-D (t-SNE), coloured by class, with image thumbnails on a subset."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    plt = pyplot()
    if len(data) > max_points:
        data = data.subset(np.random.default_rng(0).choice(len(data), max_points, replace=False))
    xy = project_2d(model.embed(data.images))
    labels = data.labels.numpy()
    fig, ax = plt.subplots(figsize=(8, 8))
    cmap = plt.get_cmap("tab10")
    for c in np.unique(labels):
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(c % 10), label=data.classes[c], alpha=0.6)
    rng = np.random.default_rng(0)
    for k in rng.choice(len(xy), size=min(thumbnails, len(xy)), replace=False):
        img = data.images[k].numpy()
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        box = OffsetImage(img, zoom=0.7, cmap="gray" if img.ndim == 2 else None)
        ax.add_artist(AnnotationBbox(box, xy[k], frameon=True, pad=0.05,
                                     bboxprops={"edgecolor": cmap(labels[k] % 10), "linewidth": 1.2}))
    ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_title(f"{data.name} test embeddings, t-SNE map", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)


def plot_all(model: SimilarityModel, dataset: str, out: str | os.PathLike, data_dir: str | None = None,
             download: bool = False, explain: bool = False) -> list[Path]:
    """Write ``pairs.png``, ``hard_pairs.png``, ``roc.png`` and ``map.png`` for ``dataset``'s test split into ``out``;
    with ``explain``, the pairs drawn under the maps of why they are similar."""
    from .evaluate import check_compatible, hard_pairs

    data = load_dataset(dataset, "test", data_dir, download, image_size=model.image_size, channels=model.channels)
    check_compatible(model, data)
    i, j, same = balanced_pairs(data.labels.numpy(), 8, seed=3)
    hi, hj, hs = hard_pairs(data.images, data.labels.numpy(), 4, seed=4)
    with output_folder(out) as out:  # only once the data is there: a bad dataset leaves no empty folder behind
        return [plot_pairs(model, data, out / "pairs.png", (i, j, same), "Random pairs", explain),
                plot_pairs(model, data, out / "hard_pairs.png", (hi, hj, hs),
                           "Hard pairs: look-alikes of different classes (top), unlike members of one class (bottom)",
                           explain),
                plot_roc(model, data, out / "roc.png"),
                plot_map(model, data, out / "map.png")]
