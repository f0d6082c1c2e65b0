"""Noise, schedules and denoising-by-diffusion, checked with closed forms and oracle models on small tensors."""

import math

import pytest
import torch

from siamdiff.reconstruction.diffusion import ancestral, ddim, ddim_steps, denoise, predict_eps, tweedie
from siamdiff.reconstruction.noise import gaussian, salt_and_pepper, to_file
from siamdiff.reconstruction.schedule import Schedule, add_noise, sigma_for_step, step_for_sigma

LINEAR = Schedule("linear", 300)  # the report's
COSINE = Schedule("cosine", 1000)


def test_linear_schedule_is_the_reports():
    b = LINEAR.betas
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02) and len(b) == 300
    assert LINEAR.alpha_bar[0].item() == pytest.approx(1 - 1e-4)


def test_cosine_alpha_bar_matches_its_formula():
    ab = COSINE.alpha_bar
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert ab[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-6)
    assert torch.all(ab[1:] < ab[:-1])


@pytest.mark.parametrize("schedule", [LINEAR, COSINE])
def test_step_for_sigma_inverts_sigma_for_step(schedule):
    for t in (3, 50, 120, 250):
        assert step_for_sigma(schedule, sigma_for_step(schedule, t)).item() == t
    # (1 - ab) / ab = (2 sigma)^2 at the chosen step, to within the grid
    t = step_for_sigma(schedule, torch.tensor([0.1, 0.3]))
    ab = schedule.alpha_bar[t]
    assert torch.allclose(((1 - ab) / ab).sqrt() / 2, torch.tensor([0.1, 0.3], dtype=torch.float64), rtol=0.03)


def test_gaussian_noise_statistics_and_file_version():
    g = torch.Generator().manual_seed(0)
    x = torch.full((4, 1, 64, 64), 0.5)
    y = gaussian(x, 0.2, g)
    assert (y - x).std().item() == pytest.approx(0.2, rel=0.02) and abs((y - x).mean().item()) < 0.01
    f = gaussian(x, 0.2, g, clip=True)
    assert f.min() >= 0 and f.max() <= 1 and torch.allclose(f * 255, torch.round(f * 255))
    assert torch.equal(to_file(torch.tensor([-0.2, 0.5, 1.3])), torch.tensor([0.0, 128 / 255, 1.0]))
    with pytest.raises(ValueError):
        gaussian(x, -0.1)


def test_salt_and_pepper_fraction():
    g = torch.Generator().manual_seed(0)
    x = torch.full((2, 3, 50, 50), 0.5)
    y = salt_and_pepper(x, 0.1, g)
    hit = (y != 0.5).any(dim=1)
    assert hit.float().mean().item() == pytest.approx(0.1, abs=0.02)
    assert set(torch.unique(y).tolist()) == {0.0, 0.5, 1.0}


def _wiener_eps(schedule, s2):
    """The exact E[eps | x_t] when every pixel of x_0 is N(0, s2): a model with zero learning error."""
    def model(x, t, labels):
        ab = schedule.alpha_bar[t].to(x.dtype).view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * x / (ab * s2 + 1 - ab)
    return model


def test_tweedie_with_exact_model_is_the_wiener_filter():
    g = torch.Generator().manual_seed(1)
    s2 = 0.3
    t = torch.tensor([40, 120])
    sigma = sigma_for_step(COSINE, t)  # exactly on the grid
    x0 = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64) * math.sqrt(s2)
    noisy = x0 + 2 * sigma.view(-1, 1, 1, 1) * torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    y = (noisy + 1) / 2
    out, t_star = denoise(_wiener_eps(COSINE, s2), COSINE, y, sigma, method="tweedie")
    assert torch.equal(t_star, t)
    wiener = s2 / (s2 + 4 * sigma.view(-1, 1, 1, 1) ** 2) * noisy
    assert torch.allclose(out, ((wiener + 1) / 2).clamp(0, 1), atol=1e-9)


def _oracle(schedule, x0):
    """A model that knows x_0 (the labels say which image it is): every x_0 estimate is exact."""
    def model(x, t, labels):
        ab = schedule.alpha_bar[t].to(x.dtype).view(-1, 1, 1, 1)
        return (x - ab.sqrt() * x0[labels]) / (1 - ab).sqrt()
    return model


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_ddim_with_oracle_recovers_x0(steps):
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor([30, 200, 500])
    x_t = add_noise(COSINE, x0, t, torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64))
    assert torch.allclose(ddim(_oracle(COSINE, x0), COSINE, x_t, t, steps, torch.arange(3)), x0, atol=1e-7)


def test_ddim_one_step_is_tweedie_and_steps_are_monotone():
    model = _wiener_eps(COSINE, 0.2)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([100, 300])
    assert torch.allclose(ddim(model, COSINE, x, t, 1, clip=False), tweedie(model, COSINE, x, t))
    seq = ddim_steps(torch.tensor([100]), 4)
    assert [int(s) for s in seq] == [100, 75, 50, 25, -1]


def test_ancestral_with_oracle_ends_at_x0_and_is_seeded():
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor([5, 40])
    x_t = add_noise(LINEAR, x0, t, torch.randn(2, 1, 6, 6, generator=g, dtype=torch.float64))
    out = ancestral(_oracle(LINEAR, x0), LINEAR, x_t, t, torch.arange(2), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-7)


def test_ancestral_posterior_sample_has_twice_the_mmse_error():
    """Theory behind the '~3 dB': on Gaussian data a posterior sample's MSE is twice the posterior mean's."""
    g = torch.Generator().manual_seed(4)
    s2, n = 0.25, 4000
    t = torch.full((n,), 60)
    sigma = sigma_for_step(LINEAR, 60)
    x0 = torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64) * math.sqrt(s2)
    x = x0 + 2 * sigma * torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64)
    x_t = LINEAR.alpha_bar[60].sqrt() * x
    model = _wiener_eps(LINEAR, s2)
    mmse = (tweedie(model, LINEAR, x_t, t) - x0).pow(2).mean()
    sample = ancestral(model, LINEAR, x_t, t, clip=False, generator=torch.Generator().manual_seed(5))
    ratio = ((sample - x0).pow(2).mean() / mmse).item()
    assert ratio == pytest.approx(2.0, rel=0.1), ratio


def test_classifier_free_guidance_formula():
    def model(x, t, labels):
        return torch.ones_like(x) if labels is None else torch.full_like(x, 3.0)
    x, t, y = torch.zeros(1, 1, 2, 2), torch.tensor([5]), torch.tensor([1])
    assert torch.allclose(predict_eps(model, x, t, y, 2.0), torch.full_like(x, 3 * 3.0 - 2 * 1.0))
    assert torch.allclose(predict_eps(model, x, t, None, 2.0), torch.ones_like(x))


def test_declip_removes_the_bias_that_clipping_adds():
    from siamdiff.reconstruction.noise import declip, gaussian

    gen = torch.Generator().manual_seed(0)
    clean = torch.zeros(4, 1, 64, 64)
    clean[:, :, :, 32:] = 1.0  # half background (0), half highlight (1)
    sigma = 0.3
    as_file = gaussian(clean, sigma, gen, clip=True)
    bias = (as_file - clean).mean(dim=(0, 1, 2))
    # clipping loses the noise beyond the boundary: +sigma/sqrt(2 pi) on the dark half, minus that on the bright
    expected = sigma / (2 * torch.pi) ** 0.5
    assert abs(bias[:32].mean() - expected) < 0.01 and abs(bias[32:].mean() + expected) < 0.01
    fixed = declip(as_file, sigma)
    assert abs((fixed - clean).mean(dim=(0, 1, 2))[:32].mean()) < 0.01
    assert abs((fixed - clean).mean(dim=(0, 1, 2))[32:].mean()) < 0.01
    # pixels strictly inside (0, 1) are untouched; unclipped float images (values outside [0, 1]) are left alone
    inside = (as_file > 0) & (as_file < 1)
    assert torch.equal(fixed[inside], as_file[inside])
    unclipped = gaussian(clean, sigma, gen)
    assert torch.equal(declip(unclipped, sigma), unclipped)
