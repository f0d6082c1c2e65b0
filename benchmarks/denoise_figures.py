"""The reconstruction pictures of docs/reconstruction.md, from the benchmark's models and its JSON.

    python benchmarks/denoise_figures.py --runs runs/s7 --data-dir ../shared/data

Writes docs/images/: the report's VAE four-row grid (seed MLP VAE and the convolutional VAE, MNIST, sigma 0.1 and
0.3), one MNIST reverse chain from the noisy input to the output, PSNR-versus-sigma curves per dataset (unclipped,
from docs/benchmarks/denoise.json) and denoised grids at sigma 0.5 and 1.0 with class flips marked, without and with
guidance. Noise: the benchmark's (first test images, seed 1000 + round(1000 sigma)).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from siamdiff.core.checkpoint import load_model  # noqa: E402
from siamdiff.data.datasets import load_dataset  # noqa: E402
from siamdiff.reconstruction.api import Denoiser  # noqa: E402
from siamdiff.reconstruction.diffusion import denoise  # noqa: E402
from siamdiff.reconstruction.noise import gaussian  # noqa: E402
from siamdiff.reconstruction.plots import plot_chain, plot_flips, plot_psnr_curves, plot_vae_grid  # noqa: E402


def noisy_of(clean: torch.Tensor, sigma: float) -> torch.Tensor:
    return gaussian(clean, sigma, torch.Generator().manual_seed(1000 + round(1000 * sigma)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
    args = parser.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = load_dataset("mnist", "test", args.data_dir)
    clean = test.images[:10].float() / 255
    for name in ("vae-seed", "vae-conv"):
        vae, _ = load_model(runs / f"mnist-{name}" / "model.safetensors", kind="vae")
        for sigma in (0.1, 0.3):
            print(plot_vae_grid(vae.eval(), clean, noisy_of(clean, sigma), out / f"mnist-{name}-sigma-{sigma}.png"))
    den = Denoiser(*load_model(runs / "mnist-ddpm" / "model.safetensors", kind="diffusion"))
    eight = int((test.labels == 8).nonzero()[0])
    x = test.images[eight:eight + 1].float() / 255
    print(plot_chain(den.net, den.schedule, noisy_of(x, 0.5), 0.5, out / "mnist-chain-sigma-0.5.png",
                     generator=torch.Generator().manual_seed(0)))
    result = json.loads((ROOT / "docs" / "benchmarks" / "denoise.json").read_text())
    keep = {"tweedie", "ddim", "ancestral", "direct", "noisy", "nlm", "wavelet", "seed-tweedie",
            "seed-ancestral (true sigma)", "vae-seed", "vae-conv", "tweedie (32x32)"}
    for dataset in dict.fromkeys(r["dataset"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["dataset"] == dataset and not r["clip"] and r["name"] in keep]
        print(plot_psnr_curves(rows, out / f"{dataset}-psnr-vs-sigma.png", f"{dataset}, unclipped, blind"))
    clf, _ = load_model(runs / "mnist-classifier" / "model.safetensors", kind="classifier")
    est, _ = load_model(runs / "mnist-estimator" / "model.safetensors", kind="sigma")
    den = Denoiser(den.net, den.meta, estimator=est, classifier=clf)
    first = torch.arange(12)
    clean = test.images[first].float() / 255
    truth = test.labels[first]
    for sigma in (0.5, 1.0):
        noisy = noisy_of(clean, sigma)
        outputs, predicted = {}, {}
        for label, name in ((None, "no guidance"), ("auto", "label auto"), ("true", "true label")):
            if label == "true":
                sig = torch.as_tensor(den.estimate_sigma(noisy), dtype=torch.float64)
                restored, _ = denoise(den.net, den.schedule, noisy, sig, "tweedie", labels=truth, guidance=1.0)
            else:
                restored, _ = den.denoise(noisy, "auto", "tweedie", label=label, guidance=1.0 if label else 0.0)
            outputs[name] = restored
            with torch.no_grad():
                predicted[name] = clf(restored).argmax(1)
        print(plot_flips(clean, noisy, outputs, truth, predicted, test.classes, out / f"mnist-flips-sigma-{sigma}.png"))


if __name__ == "__main__":
    main()
