"""Figure helpers shared by every picture siamdiff draws: a headless pyplot, atomic PNG saving, image display."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .files import atomic_write


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    """``fig`` as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return buffer.getvalue()


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically and close it; returns the path."""
    path = Path(path)
    data = figure_png(fig)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return path


def show_image(ax, image: np.ndarray) -> None:
    """Draw a ``(C, H, W)`` uint8 image on ``ax`` without ticks (gray for one channel)."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image.transpose(1, 2, 0))
    ax.set_xticks([])
    ax.set_yticks([])
