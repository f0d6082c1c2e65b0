"""The evaluation protocol for similarity (written out in docs/similarity.md).

* Verification: 10,000 balanced test pairs (seed 0); the decision threshold is the one stored in the model,
  chosen on validation pairs at training time, never on test. ``roc_auc`` and ``eer`` use ``-distance``.
* Retrieval: every test image queried against the train split as gallery (recall@1, recall@5, MAP@R).
* Hard pairs (the report's claim): for ``n_hard`` test images, the most pixel-similar image of another class
  (hard negative, smallest pixel L2 distance) and the least pixel-similar image of the same class (hard positive,
  largest pixel L2), both searched over the whole test set. The same pairs are decided by siamdiff's threshold and
  by a pixel-SSIM threshold chosen on hard pairs built the same way from the validation split.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..core.config import over_memory
from ..core.errors import SiamdiffError, require
from ..data.datasets import ImageSet, load_splits
from .api import SimilarityModel
from .metrics import best_threshold, equal_error_rate, leave_one_out, retrieval_metrics, roc_auc, verification_accuracy
from .pairs import balanced_pairs, pixel_anchors, pixel_distances

log = logging.getLogger(__name__)
TEST_PAIRS = 10_000
TEST_PAIR_SEED = 0
HARD_SEED = 2


def hard_pairs(images: torch.Tensor, labels: np.ndarray, n: int, seed: int = HARD_SEED
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` hard negatives then ``n`` hard positives for ``n`` random anchors: ``(i, j, same)``.

    Hard negative: nearest image of another class in pixel L2; hard positive: farthest image of the same class.
    """
    anchors = pixel_anchors(labels, n, np.random.default_rng(seed), 1, "hard pairs")
    neg, pos = [], []
    for a, d2, same in pixel_distances(images, labels, anchors):
        neg.append(d2.masked_fill(same, float("inf")).argmin(1))
        far = d2.masked_fill(~same, float("-inf"))
        far[torch.arange(len(a)), a] = float("-inf")
        pos.append(far.argmax(1))
    i = np.concatenate([anchors, anchors])
    j = np.concatenate([torch.cat(neg).numpy(), torch.cat(pos).numpy()])
    same = np.concatenate([np.zeros(len(anchors), np.int64), np.ones(len(anchors), np.int64)])
    return i, j, same


def ssim_scores(images: torch.Tensor, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Structural similarity (scikit-image, data range 255) of each pair of uint8 images ``(N, C, H, W)``."""
    from skimage.metrics import structural_similarity

    x = images.numpy()
    channel_axis = 0 if x.shape[1] > 1 else None
    out = np.empty(len(i))
    for k, (a, b) in enumerate(zip(i, j)):
        ia, ib = (x[a], x[b]) if channel_axis is not None else (x[a, 0], x[b, 0])
        out[k] = structural_similarity(ia, ib, data_range=255, channel_axis=channel_axis)
    return out


def _pair_distance(emb: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.linalg.norm(emb[i] - emb[j], axis=1)


def evaluate(model: SimilarityModel, dataset: str, data_dir: str | None = None, download: bool = False,
             n_pairs: int = TEST_PAIRS, n_hard: int = 1000, gallery: str = "train",
             classes: tuple[int, ...] | None = None) -> dict:
    """Run the whole protocol; returns one flat dict of metrics (see the module docstring). ``classes``: on the
    images of these classes only — others than the model was trained on, for the unseen-class protocol."""
    began = time.perf_counter()
    if model.calibration is None:
        raise SiamdiffError("model has no calibration; it cannot make verification decisions")
    require(isinstance(n_pairs, int) and n_pairs >= 2, "n_pairs", "at least 2 (half same-class, half different)",
            n_pairs)
    require(isinstance(n_hard, int) and n_hard >= 0, "n_hard", "0 or more", n_hard)
    refusal = over_memory(32 * n_pairs, f"{n_pairs:,} pairs", "ask for fewer with {n_pairs}")  # 2 indices, 2 floats
    if refusal:
        raise SiamdiffError(refusal, "n_pairs")
    sample = dataset.startswith("sample:")
    use_train = gallery == "train" and not sample
    use_val = n_hard > 0 and not sample  # the sample has no validation split: hard pairs fit SSIM on test
    splits = ("test",) + (("train",) if use_train else ()) + (("val",) if use_val else ())
    # folder datasets are read at the model's size; each source file is read once for all splits
    loaded = dict(zip(splits, load_splits(dataset, splits, data_dir, download, model.image_size, model.channels,
                                          classes)))
    test = loaded["test"]
    check_compatible(model, test)
    test_emb = model.embed(test.images)
    test_labels = test.labels.numpy()
    i, j, same = balanced_pairs(test_labels, n_pairs, TEST_PAIR_SEED)
    d = _pair_distance(test_emb, i, j)
    out: dict = {"dataset": test.name, "model": model.source, "n_pairs": int(n_pairs),
                 "threshold": model.calibration.threshold,
                 "verification_accuracy": verification_accuracy(-d, same.astype(bool), -model.calibration.threshold),
                 "roc_auc": roc_auc(-d, same.astype(bool)), "eer": equal_error_rate(-d, same.astype(bool))}
    if use_train:
        gal = loaded["train"]
        out.update(retrieval_metrics(test_emb, test_labels, model.embed(gal.images), gal.labels.numpy()))
        out["gallery"] = f"train ({len(gal)} images)"
    else:
        out.update(leave_one_out(test_emb, test_labels))
        out["gallery"] = f"test, leave-one-out ({len(test)} images)"
    if n_hard > 0:
        out.update(_hard_pair_test(model, loaded.get("val", test), test, test_emb, n_hard))
    out["seconds"] = round(time.perf_counter() - began, 2)
    return out


def _hard_pair_test(model: SimilarityModel, val: ImageSet, test: ImageSet, test_emb: np.ndarray, n_hard: int
                    ) -> dict:
    """Hard pairs of ``test``; the SSIM threshold is fitted on hard pairs of ``val`` (the embedded sample has no
    validation split, so there it is fitted on the sample itself)."""
    vi, vj, vsame = hard_pairs(val.images, val.labels.numpy(), n_hard, seed=HARD_SEED + 1)
    ssim_threshold = best_threshold(ssim_scores(val.images, vi, vj), vsame.astype(bool))
    i, j, same = hard_pairs(test.images, test.labels.numpy(), n_hard)
    d = _pair_distance(test_emb, i, j)
    s = ssim_scores(test.images, i, j)
    pred_model = d <= model.calibration.threshold
    truth = same.astype(bool)
    return {"hard_pairs": int(len(i)),
            "hard_accuracy": float((pred_model == truth).mean()),
            "hard_accuracy_ssim": float(((s >= ssim_threshold) == truth).mean()),
            "hard_negative_accuracy": float((~pred_model[~truth]).mean()),
            "hard_positive_accuracy": float(pred_model[truth].mean())}


def check_compatible(model: SimilarityModel, data: ImageSet) -> None:
    """Refuse a dataset whose images are not of the model's channels and size."""
    c, h, w = data.shape
    if (c, h, w) != (model.channels, model.image_size, model.image_size):
        raise SiamdiffError(f"model expects {model.channels}x{model.image_size}x{model.image_size} images but "
                            f"dataset '{data.name}' has {c}x{h}x{w}")
