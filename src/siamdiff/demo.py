"""``siamdiff demo``: the shipped models on the embedded sample, offline, in well under a minute on 2 cores.

Writes to one folder: the sample images as PNG files, a search index over them, pictures, and ``report.md`` /
``report.html`` with the scores and search results.
"""

from __future__ import annotations

import html
import logging
import time
from pathlib import Path

from .core.errors import SiamdiffError
from .core.files import atomic_write, make_folder
from .core.registry import shipped
from .data.datasets import load_sample
from .data.imageio import write_png_atomic
from .similarity.api import SimilarityModel
from .similarity.evaluate import evaluate
from .similarity.explain import save_explanation
from .similarity.index import Index, build_index, search
from .similarity.pairs import balanced_pairs
from .similarity.plots import plot_all

log = logging.getLogger(__name__)


def _write_sample_images(name: str, folder: Path) -> list[Path]:
    data = load_sample(name)
    paths = []
    for k in range(len(data)):
        cls = data.classes[int(data.labels[k])].replace("/", "-").replace(" ", "_")
        path = folder / cls / f"{k:03d}.png"
        make_folder(path.parent)
        if not path.exists():
            write_png_atomic(data.images[k].numpy().transpose(1, 2, 0), path)
        paths.append(path)
    return paths


def _section(name: str, out: Path) -> tuple[list[str], dict]:
    model = SimilarityModel.load(name)
    data = load_sample(name)
    lines = [f"## {name}", ""]
    paths = _write_sample_images(name, out / "images" / name)
    # A few pairs, scored from the written PNG files as a user would.
    i, j, same = balanced_pairs(data.labels.numpy(), 6, seed=7)
    lines += ["| image A | image B | truth | similarity | p(same) | appearance | distance | decision |",
              "|---|---|---|---|---|---|---|---|"]
    for a, b, s in zip(i, j, same):
        r = model.score(paths[a], paths[b])
        lines.append(f"| {paths[a].relative_to(out)} | {paths[b].relative_to(out)} | "
                     f"{'same' if s else 'different'} | {r['similarity']:.3f} | {r['probability']:.3f} | "
                     f"{r['appearance']:.3f} | {r['distance']:.3f} | "
                     f"{'same' if r['same'] else 'different'} |")
    # Why: the regions the first same-category pair's agreement comes from.
    a, b = next((a, b) for a, b, s in zip(i, j, same) if s)
    why = out / "plots" / name / "why.png"
    make_folder(why.parent)
    save_explanation(model.explain(paths[a], paths[b]), why, names=(paths[a].name, paths[b].name))
    lines += ["", f"Why `{paths[a].relative_to(out)}` and `{paths[b].relative_to(out)}` are similar "
                  f"(`siamdiff explain A B --model {name} --out why.png`): red regions make them similar, blue "
                  f"ones make them differ.", "", f"![why]({why.relative_to(out)})"]
    # Search: index the sample folder, query three images.
    index_path = out / f"index-{name}.safetensors"
    if index_path.exists() and Index.load(index_path).fingerprint != model.fingerprint:
        index_path.unlink()  # the demo's own index, made by earlier shipped weights
    index, _ = build_index(out / "images" / name, model, index_path)
    lines += ["", "Search (5 nearest in the sample index; the query itself comes first):", ""]
    for q in (0, len(paths) // 2, len(paths) - 1):
        hits = search(index, model, paths[q], k=5)
        shown = ", ".join(f"{Path(h['path']).parent.name}/{Path(h['path']).name} ({h['probability']:.2f})"
                          for h in hits)
        lines.append(f"- `{paths[q].relative_to(out)}` → {shown}")
    metrics = evaluate(model, f"sample:{name}", n_pairs=2000, n_hard=100)
    lines += ["", f"Metrics on the 300-image sample (leave-one-out retrieval, 2,000 pairs, 100 hard anchors; "
                  f"not the benchmark protocol): recall@1 {metrics['recall_at_1']:.3f}, "
                  f"verification accuracy {metrics['verification_accuracy']:.3f}, "
                  f"hard-pair accuracy {metrics['hard_accuracy']:.3f} vs pixel-SSIM "
                  f"{metrics['hard_accuracy_ssim']:.3f}.", ""]
    for picture in plot_all(model, f"sample:{name}", out / "plots" / name):
        lines.append(f"![{picture.stem}]({picture.relative_to(out)})")
    lines.append("")
    return lines, metrics


DEMO_SIGMAS = (0.1, 0.3, 0.5)


def _denoise_section(name: str, out: Path) -> list[str]:
    """Blind denoising of 10 sample images (one per class) at three noise levels with the shipped diffusion model:
    σ estimated by the shipped estimator, one network call (Tweedie), class kept checked by the shipped classifier."""
    import torch

    from .reconstruction.metrics import psnr
    from .reconstruction.noise import gaussian
    from .reconstruction.pipeline import Denoiser
    from .reconstruction.plots import plot_flips

    den = Denoiser.load(name)
    data = load_sample(name)
    first = [int((data.labels == c).nonzero()[0]) for c in range(len(data.classes))]
    clean = data.images[first].float() / 255.0
    truth = data.labels[first]
    lines = [f"## denoising {name}", "",
             "| sigma | sigma estimated (median) | PSNR noisy dB | PSNR denoised dB | outputs of the right class "
             "(of 10) |", "|---|---|---|---|---|"]
    pictures = []
    for sigma in DEMO_SIGMAS:
        noisy = gaussian(clean, sigma, torch.Generator().manual_seed(1000 + round(1000 * sigma)))
        restored, info = den.denoise(noisy, "auto", "tweedie")
        kept = den.classify(restored) if den.classifier is not None else None
        keep = "" if kept is None else f"{int((kept == truth).sum())}"
        lines.append(f"| {sigma} | {float(torch.tensor(info.sigma_estimated).median()):.3f} | "
                     f"{float(psnr(noisy.clamp(0, 1), clean).mean()):.2f} | {float(psnr(restored, clean).mean()):.2f}"
                     f" | {keep} |")
        if kept is not None:
            picture = plot_flips(clean, noisy, {"denoised": restored}, truth, {"denoised": kept}, data.classes,
                                 out / "plots" / name / f"denoise-sigma-{sigma}.png")
            pictures.append(f"![denoise sigma {sigma}]({picture.relative_to(out)})")
    lines += ["", *pictures, "", "Noise is added in memory (unclipped Gaussian, sigma on the [0, 1] scale). A red title marks an "
                  "output the shipped classifier puts in another class than the clean image's.", ""]
    return lines


PHOTO_SIGMA = 25 / 255


def _photo_section(out: Path, model: str = "cifar10") -> list[str]:
    """A real photo (scikit-image's bundled cat, 451x300, colour) saved with noise as an 8-bit PNG, then denoised
    from that file as a user would: any size in overlapping tiles of the model's, σ estimated once for the image."""
    import numpy as np
    from skimage.data import chelsea

    from .reconstruction.pipeline import Denoiser, denoise_files

    clean = chelsea().astype(np.float64) / 255
    noisy = np.clip(clean + PHOTO_SIGMA * np.random.default_rng(0).standard_normal(clean.shape), 0, 1)
    folder = make_folder(out / "photo")
    write_png_atomic((clean * 255).round().astype(np.uint8), folder / "chelsea.png")
    write_png_atomic((noisy * 255).round().astype(np.uint8), folder / "chelsea-noisy.png")
    record = denoise_files(Denoiser.load(model), [folder / "chelsea-noisy.png"], folder / "chelsea-denoised.png")[0]
    from PIL import Image

    with Image.open(record["output"]) as image:
        denoised = np.asarray(image, dtype=np.float64) / 255
    with Image.open(folder / "chelsea-noisy.png") as image:
        as_saved = np.asarray(image, dtype=np.float64) / 255

    def db(x: np.ndarray) -> float:
        return float(10 * np.log10(1 / np.mean((x - clean) ** 2)))

    return [f"## denoising a photo ({model} model)", "",
            f"`siamdiff denoise photo/chelsea-noisy.png --out photo/chelsea-denoised.png --model {model}`: a "
            f"{clean.shape[1]}x{clean.shape[0]} colour photo with noise of sigma {PHOTO_SIGMA * 255:.0f}/255, saved as "
            f"an 8-bit PNG; denoised in {record['tiles']} overlapping tiles; sigma estimated "
            f"{record['sigma_estimated'] * 255:.1f}/255; PSNR {db(as_saved):.2f} dB noisy, {db(denoised):.2f} dB "
            f"denoised.", "",
            "![noisy](photo/chelsea-noisy.png)", "![denoised](photo/chelsea-denoised.png)", ""]


REPORT_TITLE = "# siamdiff demo"
MARKER = ".siamdiff-demo"  # written first into a demo's folder: a later demo may replace what is there


def _is_demo_folder(out: Path) -> bool:
    """Whether ``out`` is empty or holds a demo, finished or stopped part-way (its marker, or the report of a demo
    made before the marker existed): only then may a demo write there, replacing and deleting its own files."""
    report = out / "report.md"
    return (not any(out.iterdir()) or (out / MARKER).is_file()
            or (report.is_file() and report.read_text(errors="replace").startswith(REPORT_TITLE)))


def run_demo(out: str | Path = "siamdiff-demo") -> Path:
    """Run the demo into ``out``; returns the path of ``report.md``."""
    began = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SiamdiffError(f"{{out}} '{out}' exists and is not a folder", "out")
    if out.is_dir() and not _is_demo_folder(out):
        raise SiamdiffError(f"{{out}} '{out}' holds other files: give a new or empty folder, or a previous demo's",
                            "out")
    make_folder(out)
    atomic_write(out / MARKER, lambda tmp: tmp.write_text(""))
    names = shipped("similarity")
    if not names:
        raise SiamdiffError("no shipped similarity weights are installed")
    lines = [REPORT_TITLE, "",
             "Similarity: the shipped Siamese models score pairs of the embedded sample images (30 test images "
             "per class), search an index of them, and draw the pictures. p(same) is the probability of "
             "\"same category\" calibrated on validation pairs. Denoising: the shipped diffusion models clean noisy "
             "versions of sample images and of a photo, with the noise level estimated.", ""]
    for name in names:
        section, _ = _section(name, out)
        lines += section
    for name in shipped("diffusion"):
        lines += _denoise_section(name, out)
    if "cifar10" in shipped("diffusion"):
        lines += _photo_section(out)
    lines.append(f"Demo took {time.perf_counter() - began:.1f} s.")
    text = "\n".join(lines) + "\n"
    report = atomic_write(out / "report.md", lambda tmp: tmp.write_text(text))
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(_to_html(lines)))
    return report


def _to_html(lines: list[str]) -> str:
    """A plain HTML rendering of the report's few markdown forms (headings, tables, images, bullets)."""
    body = []
    in_table = False
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            if not in_table:
                body.append("<table border=1 cellpadding=3>")
                in_table = True
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1:-1]
            body.append(f'<p><img src="{html.escape(src)}" style="max-width:100%"></p>')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    return "<!doctype html><meta charset=utf-8><title>siamdiff demo</title>\n" + "\n".join(body) + "\n"


__all__ = ["run_demo"]
