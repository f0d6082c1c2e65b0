"""Why two images are similar: where in each image the agreement of their embeddings comes from.

The embedding is an affine head over the average of the trunk's last maps, so the cosine of two embeddings splits
exactly over the locations of those maps (Stylianou, Souvenir & Pless 2019, "Visualizing deep similarity
networks", WACV): with ``z_a = mean_i u_a(i)`` (``u_a(i)`` the head applied at location ``i`` of image A) and
``e_b = z_b / |z_b|``,

    cos(z_a, z_b) = Σ_i  u_a(i) · e_b / (|z_a| · h · w)

and the same for B. Each term says how much that region of A agrees with the whole of B: positive where the region
looks like what B is, negative where it looks like something else. The maps sum to the cosine, so they explain the
score the model gives and nothing else — unlike the gradient of the score, which vanishes for a pair the model
finds identical. The maps have the resolution of the trunk's last maps (7 × 7 for the 28 × 28 models, 4 × 4 for
CIFAR-10's), each cell seeing a larger patch of the image; the pictures upsample them bilinearly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.plotting import figure_png, pyplot, save_figure, show_image


@torch.no_grad()
def contributions(net: torch.nn.Module, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For uint8 batches ``a`` and ``b`` ``(N, C, S, S)``: the maps ``(N, h, w)`` of how much each location of
    ``a[k]`` (of ``b[k]``) adds to the cosine of the two embeddings, and those cosines ``(N,)``; each map sums to
    its pair's cosine."""
    if net.training:
        net.eval()
    device = next(net.parameters()).device
    la, lb = (net.locations(torch.tensor(np.asarray(x), device=device)).double() for x in (a, b))
    za, zb = la.mean((1, 2)), lb.mean((1, 2))
    cells = la.shape[1] * la.shape[2]

    def share(loc: torch.Tensor, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        direction = F.normalize(other, dim=1)
        return torch.einsum("nhwd,nd->nhw", loc, direction) / (own.norm(dim=1).clamp_min(1e-12) * cells)[:, None, None]

    cosine = F.cosine_similarity(za, zb, dim=1)
    return share(la, za, zb).cpu().numpy(), share(lb, zb, za).cpu().numpy(), cosine.cpu().numpy()


def heat(cell_map: np.ndarray, size: int) -> np.ndarray:
    """A cell map ``(h, w)`` upsampled to ``(size, size)`` (bilinear, cell centres aligned), per pixel of the
    image: the cell's share divided by the pixels it stands for."""
    t = torch.from_numpy(np.ascontiguousarray(cell_map, dtype=np.float64))[None, None]
    up = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    return up * cell_map.size / (size * size)


def overlay(ax, image: np.ndarray, cells: np.ndarray, scale: float) -> None:
    """``image`` ``(C, H, W)`` in gray, under its heat map: red where the region makes the pair similar, blue where it
    makes them differ."""
    gray = image.mean(0) if image.shape[0] > 1 else image[0]
    ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
    ax.imshow(heat(cells, image.shape[-1]), cmap="RdBu_r", vmin=-scale, vmax=scale, alpha=0.55,
              interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def overlay_scale(size: int, *cell_maps: np.ndarray) -> float:
    """One colour scale for the heat of maps drawn side by side on images of ``size`` pixels a side: their largest
    magnitude per pixel."""
    return max(max(float(np.abs(m).max()) * m.size for m in cell_maps) / (size * size), 1e-12)


def explain_figure(explanation: dict[str, Any], names: tuple[str, str] = ("A", "B")):
    """A figure of the two images of :meth:`SimilarityModel.explain`'s ``explanation`` and, beside each, where its
    agreement with the other comes from; titled with the pair's scores."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(7.2, 2.3))
    a, b, map_a, map_b = (explanation[k] for k in ("image_a", "image_b", "map_a", "map_b"))
    scale = overlay_scale(a.shape[-1], map_a, map_b)
    for k, (image, cells, name) in enumerate(((a, map_a, names[0]), (b, map_b, names[1]))):
        show_image(axes[2 * k], image)
        axes[2 * k].set_title(name, fontsize=8)
        overlay(axes[2 * k + 1], image, cells, scale)
        axes[2 * k + 1].set_title(f"why ({name})", fontsize=8)
    verdict = "same category" if explanation["same"] else "different categories"
    fig.suptitle(f"similarity {explanation['similarity']:.3f} ({verdict}; probability "
                 f"{explanation['probability']:.3f}, appearance {explanation['appearance']:.3f})\n"
                 "red: regions that make the two similar, blue: regions that make them differ", fontsize=8)
    return fig


def save_explanation(explanation: dict[str, Any], path: str | Path, names: tuple[str, str] = ("A", "B")) -> Path:
    """:func:`explain_figure` written as a PNG at ``path`` (atomically)."""
    return save_figure(explain_figure(explanation, names), path)


def explanation_png(explanation: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> bytes:
    """:func:`explain_figure` as PNG bytes."""
    return figure_png(explain_figure(explanation, names))


def explanation_json(explanation: dict[str, Any]) -> dict[str, Any]:
    """The scores, the cosine and the maps (nested lists, one value per region) of an explanation; not the images."""
    return {k: v.round(6).tolist() if k in ("map_a", "map_b") else v for k, v in explanation.items()
            if k not in ("image_a", "image_b")}


__all__ = ["contributions", "explain_figure", "explanation_json", "explanation_png", "heat", "overlay",
           "overlay_scale", "save_explanation"]
