"""VAEs, direct denoiser, classifier and noise estimator: losses by hand, tiny training runs through the CLI."""

import math

import pytest
import torch

from siamdiff.cli import main
from siamdiff.core.checkpoint import load_model
from siamdiff.reconstruction.vae import PRESETS, VAE, kl_divergence, vae_loss


def test_kl_of_standard_normal_is_zero_and_by_hand():
    assert torch.allclose(kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))
    # mu = 1, var = e: 0.5 * (e + 1 - 1 - 1) per dimension
    assert kl_divergence(torch.ones(1, 1), torch.ones(1, 1)).item() == pytest.approx(0.5 * (math.e - 1))


def test_vae_loss_by_hand():
    logits = torch.zeros(1, 1, 1, 2)  # p = 0.5 everywhere: BCE = 2 log 2
    x = torch.tensor([[[[0.0, 1.0]]]])
    assert vae_loss(logits, x, torch.zeros(1, 2), torch.zeros(1, 2)).item() == pytest.approx(2 * math.log(2))


@pytest.mark.parametrize("name", ["seed", "tiny"])
def test_vae_shapes(name):
    vae = VAE(PRESETS[name]).eval()
    x = torch.rand(3, 1, 28, 28)
    logits, mu, logvar = vae(x)
    assert logits.shape == x.shape and mu.shape == (3, PRESETS[name].latent)
    assert vae.reconstruct(x).shape == x.shape and vae.sample(2).shape == (2, 1, 28, 28)
    assert sum(p.numel() for p in VAE(PRESETS["seed"]).parameters()) == 784 * 400 + 400 + 2 * (400 * 20 + 20) + \
        20 * 400 + 400 + 400 * 784 + 784


@pytest.mark.parametrize("kind,kind_in_file", [("vae", "vae"), ("denoiser", "denoiser"),
                                               ("classifier", "classifier"), ("noise-estimator", "sigma")])
def test_tiny_training_through_the_cli(kind, kind_in_file, digit_folder, tmp_path):
    code = main(["train", kind, "--dataset", f"folder:{digit_folder}", "--model", "tiny", "--channels", "1",
                 "--image-size", "28", "--out", str(tmp_path)])
    assert code == 0
    net, meta = load_model(tmp_path / "model.safetensors", kind=kind_in_file)
    history = meta["extra"]["history"]
    assert len(history) == 1 and all(math.isfinite(v) for k, v in history[0].items() if k.startswith("val_"))
