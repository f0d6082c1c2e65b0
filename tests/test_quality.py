"""Image-quality metrics against scikit-image, and noise-level estimation."""

import numpy as np
import pytest
import torch

from siamdiff.reconstruction.estimate import SigmaNet, SigmaNetConfig, relative_error, wavelet_sigma
from siamdiff.reconstruction.metrics import psnr, ssim
from siamdiff.reconstruction.noise import gaussian


def test_psnr_matches_skimage_and_by_hand():
    from skimage.metrics import peak_signal_noise_ratio

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 1, 16, 16, generator=g), torch.rand(3, 1, 16, 16, generator=g)
    ours = psnr(a, b)
    for k in range(3):
        ref = peak_signal_noise_ratio(b[k].numpy().astype(np.float64), a[k].numpy().astype(np.float64),
                                      data_range=1.0)
        assert ours[k].item() == pytest.approx(ref, rel=1e-9)
    # MSE 0.01 -> 20 dB
    assert psnr(torch.full((1, 1, 2, 2), 0.6), torch.full((1, 1, 2, 2), 0.5)).item() == pytest.approx(20.0)


def test_ssim_identical_is_one_and_noise_lowers_it():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=g)
    assert np.allclose(ssim(x, x), 1.0)
    assert np.all(ssim(gaussian(x, 0.3, g), x) < 0.9)


def test_wavelet_sigma_on_flat_images():
    g = torch.Generator().manual_seed(2)
    x = torch.full((4, 1, 64, 64), 0.5)
    sigmas = torch.tensor([0.02, 0.05, 0.1, 0.2])
    est = wavelet_sigma(gaussian(x, sigmas, g))
    assert np.all(relative_error(est, sigmas.numpy()) < 0.1), est


def test_sigma_net_is_positive_and_shaped():
    net = SigmaNet(SigmaNetConfig(3, (4, 8))).eval()
    out = net(torch.rand(5, 3, 32, 32))
    assert out.shape == (5,) and torch.all(out > 0)
