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


def test_sigma_net_config_without_design_fields_is_the_first_design():
    # checkpoints written before the log-energy design have no "norm"/"pool" keys: they must rebuild as they were
    net = SigmaNet(SigmaNetConfig.from_dict({"in_channels": 1, "widths": [4, 8]}))
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules()) and net.head.in_features == 16
    new = SigmaNet(SigmaNetConfig(1, (4, 8), norm=False, pool="log-energy"))
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in new.modules()) and new.head.in_features == 8
    full = SigmaNet(SigmaNetConfig(1, (4, 8), norm=False, pool="log-energy", range_features=True, hidden=16))
    assert full.head[0].in_features == 8 + 4 and full(torch.rand(3, 1, 12, 12)).shape == (3,)
    with pytest.raises(ValueError, match="pooling"):
        SigmaNet(SigmaNetConfig(1, (4,), pool="max"))


def test_log_energy_sigma_net_learns_noise_levels_quickly():
    # a tiny estimator learns sigma over two decades on textured images within 200 steps
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    net = SigmaNet(SigmaNetConfig(1, (8, 8), norm=False, pool="log-energy"))
    opt = torch.optim.Adam(net.parameters(), 1e-2)

    def batch(n):
        clean = torch.nn.functional.avg_pool2d(torch.rand(n, 1, 16, 16, generator=g), 5, 1)  # smooth texture
        sigma = torch.exp(torch.empty(n).uniform_(np.log(0.01), np.log(1.0), generator=g))
        return gaussian(clean, sigma, g), sigma

    for _ in range(200):
        y, sigma = batch(64)
        loss = (net.log_sigma(y) - sigma.log()).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    y, sigma = batch(256)
    with torch.no_grad():
        err = relative_error(net(y), sigma)
    assert np.median(err) < 0.1, np.median(err)
