"""The pictures of docs/reconstruction.md, from the shipped models and docs/benchmarks/denoise.json.

    python benchmarks/denoise_figures.py --data-dir ../shared/data
    python benchmarks/denoise_figures.py --data-dir ../shared/data --models runs/bench   # also the VAE grids

Writes docs/images/: PSNR-versus-sigma curves per dataset (unclipped rows of the benchmark JSON), one MNIST reverse
chain from the noisy input to the output, and denoised grids at sigma 0.5 and 1.0 with class flips marked, without
and with guidance; with ``--models DIR`` also the report's VAE four-row grids (``DIR/mnist-vae-seed``,
``DIR/mnist-vae-conv``). Noise: the benchmark's (first test images, seed 1000 + round(1000 sigma)).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CURVES = ("tweedie", "ddim", "ancestral", "direct", "noisy", "nlm", "wavelet", "seed-tweedie",
          "seed-ancestral (true sigma)", "vae-seed", "vae-conv", "tweedie (32x32)")


def main() -> None:
    from siamdiff.core.checkpoint import load_model
    from siamdiff.data.datasets import load_dataset
    from siamdiff.reconstruction.evaluate import noisy_images
    from siamdiff.reconstruction.pipeline import Denoiser
    from siamdiff.reconstruction.plots import plot_chain, plot_flips, plot_psnr_curves, plot_vae_grid

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--models", type=Path, help="folder of benchmark-only models (DIR/<dataset>-<name>/)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = json.loads((ROOT / "docs" / "benchmarks" / "denoise.json").read_text())
    for dataset in dict.fromkeys(r["dataset"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["dataset"] == dataset and not r["clip"] and r["name"] in CURVES]
        print(plot_psnr_curves(rows, args.out / f"{dataset}-psnr-vs-sigma.png", f"{dataset}, unclipped, blind"))
    test = load_dataset("mnist", "test", args.data_dir)
    den = Denoiser.load("mnist")
    eight = int((test.labels == 8).nonzero()[0])
    x = test.images[eight:eight + 1].float() / 255
    print(plot_chain(den.net, den.schedule, noisy_images(x, 0.5, False), 0.5, args.out / "mnist-chain-sigma-0.5.png",
                     generator=torch.Generator().manual_seed(0)))
    clean, truth = test.images[:12].float() / 255, test.labels[:12]
    for sigma in (0.5, 1.0):
        noisy = noisy_images(clean, sigma, False)
        outputs, predicted = {}, {}
        for label, name in ((None, "no guidance"), ("auto", "label auto"), (truth, "true label")):
            outputs[name], _ = den.denoise(noisy, "auto", "tweedie", label=label,
                                           guidance=0.0 if label is None else 1.0)
            predicted[name] = den.classify(outputs[name])
        print(plot_flips(clean, noisy, outputs, truth, predicted, test.classes,
                         args.out / f"mnist-flips-sigma-{sigma}.png"))
    for name in ("vae-seed", "vae-conv"):
        path = args.models / f"mnist-{name}" / "model.safetensors" if args.models else None
        if path is None or not path.is_file():
            continue
        vae, _ = load_model(path, kind="vae")
        for sigma in (0.1, 0.3):
            print(plot_vae_grid(vae, clean[:10], noisy_images(clean[:10], sigma, False),
                                args.out / f"mnist-{name}-sigma-{sigma}.png"))


if __name__ == "__main__":
    main()
