"""The report's figures, done properly: the VAE four-row grid, the reverse chain as a strip, PSNR-versus-σ curves,
and a grid of denoised images with class flips marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.errors import SiamdiffError
from ..core.files import check_writable
from ..core.plotting import pyplot, save_figure, show_image
from ..data.imageio import write_png_atomic
from ..data.inputs import to_uint8
from .diffusion import alpha_bar_at, denoise
from .schedule import step_for_sigma


def _row(axes, images: torch.Tensor, label: str) -> None:
    for ax, img in zip(axes, images):
        show_image(ax, (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    axes[0].set_ylabel(label, fontsize=8)


def plot_vae_grid(vae, clean: torch.Tensor, noisy: torch.Tensor, path: Path) -> Path:
    """Four rows as in the report: originals, VAE reconstructions, noisy versions, VAE reconstructions of those."""
    plt = pyplot()
    n = len(clean)
    fig, axes = plt.subplots(4, n, figsize=(n * 0.9, 4 * 0.95))
    rows = [(clean, "original"), (vae.reconstruct(clean), "VAE(original)"), (noisy.clamp(0, 1), "noisy"),
            (vae.reconstruct(noisy.clamp(0, 1)), "VAE(noisy)")]
    for axes_row, (images, label) in zip(axes, rows):
        _row(axes_row, images, label)
    fig.suptitle("VAE: reconstructions of clean and of noisy inputs", fontsize=9)
    return save_figure(fig, path)


@torch.no_grad()
def plot_chain(net, schedule, noisy: torch.Tensor, sigma: float, path: Path, frames: int = 8,
               label: int | None = None, generator: torch.Generator | None = None) -> Path:
    """One image's ancestral reverse chain from t* to 0: x_t (top) and the current x̂_0 estimate (bottom)."""
    plt = pyplot()
    t_star = int(step_for_sigma(schedule, sigma))
    shown = sorted(set(np.linspace(t_star, 0, frames).round().astype(int).tolist()), reverse=True)
    states, estimates = [], []

    def keep(t: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        if int(t.max()) in shown:
            states.append((x_t / alpha_bar_at(schedule, t, x_t).sqrt() + 1) / 2)
            estimates.append((x0 + 1) / 2)

    labels = torch.tensor([label]) if label is not None else None
    out, _ = denoise(net, schedule, noisy, sigma, "ancestral", labels=labels,
                     guidance=1.0 if labels is not None else 0.0, generator=generator, trace=keep)
    fig, axes = plt.subplots(2, len(shown) + 1, figsize=((len(shown) + 1) * 0.95, 2.1))
    _row(axes[0], torch.cat([*states, out]), "x_t / sqrt(ab)")
    _row(axes[1], torch.cat([*estimates, out]), "estimate of x_0")
    for ax, t in zip(axes[0], [*shown, "out"]):
        ax.set_title(f"t={t}", fontsize=7)
    fig.suptitle(f"Reverse chain from t*={t_star} (sigma {sigma})", fontsize=9)
    return save_figure(fig, path)


def plot_psnr_curves(rows: list[dict], path: Path, title: str = "") -> Path:
    """PSNR against σ, one line per method, from benchmark rows ``{"name", "sigma", "psnr"}``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, name in enumerate(dict.fromkeys(r["name"] for r in rows)):
        pts = sorted((r["sigma"], r["psnr"]) for r in rows if r["name"] == name)
        # the colour cycle has 10 colours: later lines are dashed, so no two lines look the same
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name, ls=("-", "--", ":")[i // 10 % 3])
    ax.set_xscale("log")
    ax.set_xlabel("noise sigma ([0, 1] scale)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title or "PSNR versus noise level", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_flips(clean: torch.Tensor, noisy: torch.Tensor, outputs: dict[str, torch.Tensor], truth: torch.Tensor,
               predicted: dict[str, torch.Tensor], classes: list[str], path: Path) -> Path:
    """Rows: clean, noisy, then each method's output; a red title marks an output whose class flipped."""
    plt = pyplot()
    n = len(clean)
    fig, axes = plt.subplots(2 + len(outputs), n, figsize=(n * 0.95, (2 + len(outputs)) * 1.05))
    _row(axes[0], clean, "clean")
    _row(axes[1], noisy.clamp(0, 1), "noisy")
    for axes_row, (name, images) in zip(axes[2:], outputs.items()):
        _row(axes_row, images, name)
        for ax, p, t in zip(axes_row, predicted[name], truth):
            ax.set_title(classes[int(p)], fontsize=7, color="red" if p != t else "black")
    fig.suptitle("Denoised outputs; red: the classifier sees another class than the clean image's", fontsize=9)
    return save_figure(fig, path)


def save_grid(images: torch.Tensor, path: str | Path, columns: int = 8) -> Path:
    """Write images ``(N, C, H, W)`` in [0, 1] as one PNG grid with a 2-pixel gap."""
    path = Path(path)
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + 2), min(n, columns) * (w + 2), c), dtype=np.uint8)
    arr = to_uint8(images)
    for k in range(n):
        r, q = divmod(k, columns)
        grid[r * (h + 2):r * (h + 2) + h, q * (w + 2):q * (w + 2) + w] = arr[k]
    write_png_atomic(grid if c == 3 else grid[:, :, 0], path)
    return path


def sample_grid(denoiser, out: str | Path, **options) -> Path:
    """Draw new images with :meth:`~.pipeline.Denoiser.sample` (``options``) into the PNG grid ``out``, checked
    before the sampling."""
    denoiser.check_sample(**options)
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise SiamdiffError(f"{{out}} must be a .png file, got '{out}'", "out")
    check_writable(out)
    return save_grid(denoiser.sample(**options), out)
