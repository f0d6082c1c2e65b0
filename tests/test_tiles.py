"""Denoising any image: tiles blended without seams, one sigma per image, any channels, the input contract."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from siamdiff.core.errors import SiamdiffError
from siamdiff.data.datasets import load_sample
from siamdiff.data.inputs import as_batch, to_uint8
from siamdiff.reconstruction.diffusion import denoise
from siamdiff.reconstruction.noise import declip, gaussian
from siamdiff.reconstruction.pipeline import Denoiser
from siamdiff.reconstruction.tiles import Blend, batches, pad_to, positions, starts, window


@pytest.mark.parametrize("size,tile,overlap", [(28, 28, 7), (29, 28, 7), (100, 32, 8), (64, 32, 0), (33, 32, 31)])
def test_tiles_cover_the_side_and_end_at_its_edge(size, tile, overlap):
    s = starts(size, tile, overlap)
    assert s[0] == 0 and s[-1] == size - tile and all(b - a <= tile - overlap for a, b in zip(s, s[1:]))
    covered = np.zeros(size, bool)
    for a in s:
        covered[a:a + tile] = True
    assert covered.all()


def test_the_window_is_flat_inside_symmetric_and_never_zero():
    w = window(32, 8)
    assert torch.equal(w, w.T) and torch.equal(w, w.flip(0)) and w.min() > 0
    assert torch.all(w[8:24, 8:24] == 1) and w[0, 0] < w[4, 4] < w[8, 8]


@pytest.mark.parametrize("shape", [(3, 70, 93), (1, 28, 28), (1, 5, 40), (3, 1, 1), (1, 2, 300)])
def test_blending_tiles_that_are_left_alone_gives_the_image_back(shape):
    x = torch.rand(shape)
    padded = pad_to(x, 28)
    assert min(padded.shape[-2:]) >= 28 and torch.equal(padded[:, :shape[1], :shape[2]], x)
    blend = Blend(tuple(padded.shape), 28, 7)
    for places, tiles in batches(padded, 28, 7, 5):
        blend.add(places, tiles)
    torch.testing.assert_close(blend.result()[:, :shape[1], :shape[2]], x, atol=1e-6, rtol=0)
    assert len(positions(padded.shape[1], padded.shape[2], 28, 7)) >= 1


@pytest.fixture(scope="module")
def mnist():
    return Denoiser.load("mnist")


def _noisy(n=6, sigma=0.2, name="mnist"):
    return gaussian(load_sample(name).images[:n].float() / 255, sigma, torch.Generator().manual_seed(5))


def test_images_of_the_models_size_are_denoised_as_the_diffusion_functions_do(mnist):
    """One tile per image: exactly the batched algorithm — estimate, declip, one posterior-mean step."""
    x = _noisy()
    out, info = mnist.denoise(x)
    sigma = torch.as_tensor(mnist.estimate_sigma(x), dtype=torch.float64)
    want, _ = denoise(mnist.net, mnist.schedule, declip(x, sigma), sigma, "tweedie")
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
    assert info.tiles == [1] * 6


def test_a_large_image_is_denoised_in_tiles_with_one_sigma(mnist):
    clean = load_sample("mnist").images[:6].float() / 255
    big = torch.cat([torch.cat(list(clean[3 * r:3 * r + 3, 0]), dim=1) for r in range(2)])[None, None]  # 56 x 84
    noisy = gaussian(big, 0.2, torch.Generator().manual_seed(1))
    out, info = mnist.denoise(noisy)
    assert out.shape == big.shape and info.tiles == [12] and len(info.sigma) == 1
    assert abs(info.sigma[0] - 0.2) < 0.03  # pooled over the whole image
    gain = 10 * torch.log10(((noisy.clamp(0, 1) - big) ** 2).mean() / ((out - big) ** 2).mean())
    assert gain > 6  # a denoised image, not the noisy one
    again, _ = mnist.denoise(noisy, sigma=0.05, method="ancestral", seed=3)  # a short chain: t* of 0.05
    assert torch.equal(again, mnist.denoise(noisy, sigma=0.05, method="ancestral", seed=3)[0])  # seeded, tiles and all


def test_colour_into_a_grayscale_model_is_a_channel_at_a_time_and_alpha_is_kept(mnist):
    gray = _noisy(3)[:, 0]
    rgb = gray.permute(1, 2, 0)[None].permute(0, 3, 1, 2)  # (1, 3, 28, 28): the three digits as channels
    out, info = mnist.denoise(rgb, sigma=0.2)
    alone, _ = mnist.denoise(gray[:, None], sigma=0.2)
    torch.testing.assert_close(out[0], alone[:, 0], atol=1e-6, rtol=0)
    rgba = torch.cat([rgb, torch.full((1, 1, 28, 28), 0.25)], dim=1)
    with_alpha, _ = mnist.denoise(rgba, sigma=0.2)
    assert with_alpha.shape == (1, 4, 28, 28) and torch.all(with_alpha[0, 3] == 0.25)
    torch.testing.assert_close(with_alpha[:, :3], out, atol=1e-6, rtol=0)


def test_grayscale_into_a_colour_model_comes_back_gray():
    out, info = Denoiser.load("cifar10").denoise(_noisy(2, name="mnist")[:, :, :20, :20])
    assert out.shape == (2, 1, 20, 20) and info.tiles == [1, 1]  # padded to one 32x32 tile each


def test_every_form_of_one_image_gives_the_same_result(mnist, tmp_path):
    image = (_noisy(1)[0, 0].clamp(0, 1) * 255).round().to(torch.uint8)
    Image.fromarray(image.numpy()).save(tmp_path / "n.png")
    forms = [tmp_path / "n.png", str(tmp_path / "n.png"), Image.open(tmp_path / "n.png"), image.numpy(),
             image.numpy()[:, :, None], image[None], image[None, None], image.float() / 255,
             (image.float() / 255).numpy()[None]]
    want, _ = mnist.denoise(image[None, None].float() / 255)
    for form in forms:
        got, _ = mnist.denoise(form)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=lambda m: f"{type(form)}: {m}")


@pytest.mark.parametrize("bad,message", [
    (np.zeros((2, 1, 1, 28, 28), np.uint8), "must be an image"), (np.zeros((28, 28, 7), np.uint8), "must be an image"),
    (np.zeros((28, 28), np.int32), "uint8 (0-255) or float"), (torch.full((28, 28), float("nan")), "NaN"),
    (torch.full((28, 28), 200.0), "look like 0-255 values"), (np.zeros((0, 28)), "empty"), ("", "empty path"),
    ([1, 2], "must be a path, a PIL image"), ("missing.png", "no such file")])
def test_anything_else_is_one_clear_error(mnist, bad, message):
    with pytest.raises(SiamdiffError, match=re.escape(message)) as caught:
        mnist.denoise(bad)
    assert "\n" not in str(caught.value)


def test_label_auto_is_for_images_of_the_models_size(mnist):
    with pytest.raises(SiamdiffError, match="label auto names the class of images of the model's size"):
        mnist.denoise(torch.rand(1, 1, 40, 40), label="auto")
    with pytest.raises(SiamdiffError, match="overlap must be from 0 to 27"):
        mnist.denoise(torch.rand(1, 1, 40, 40), overlap=28)


def test_similarity_takes_the_same_inputs(tmp_path):
    from siamdiff.similarity.api import SimilarityModel

    model = SimilarityModel.load("mnist")
    image = load_sample("mnist").images[0, 0]
    Image.fromarray(image.numpy()).save(tmp_path / "a.png")
    want = model.embed([image.numpy()])
    for form in (tmp_path / "a.png", Image.open(tmp_path / "a.png"), image, image[None], image.float() / 255,
                 np.repeat(image.numpy()[:, :, None], 3, axis=2)):
        np.testing.assert_allclose(model.embed([form]), want, atol=1e-5)
    assert model.score(image.float() / 255, tmp_path / "a.png")["distance"] < 1e-5
    assert model.embed(image[None, None].float() / 255).shape == (1, 64)  # a batch of floats, converted
    with pytest.raises(SiamdiffError, match="must be one image, got a batch of 2"):
        model.score(load_sample("mnist").images[:2], image)


def test_as_batch_reads_channels_last_arrays_and_channels_first_tensors():
    assert as_batch(np.zeros((5, 6, 3), np.uint8)).shape == (1, 3, 5, 6)
    assert as_batch(torch.zeros(3, 5, 6)).shape == (1, 3, 5, 6)
    assert as_batch(np.zeros((3, 5, 6), np.uint8)).shape == (1, 3, 5, 6)  # last side not a channel count
    assert as_batch(torch.zeros(5, 6, 3)).shape == (1, 3, 5, 6)


def test_without_alpha_every_form_is_composited_over_white_and_to_uint8_undoes_the_scaling():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 51  # red 200 at alpha 0.2 over white: 0.2 * 200 / 255 + 0.8
    for form in (rgba, torch.from_numpy(rgba).permute(2, 0, 1), Image.fromarray(rgba, "RGBA")):
        x = as_batch(form, keep_alpha=False)
        assert x.shape == (1, 3, 4, 4)
        torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([0.2 * 200 / 255 + 0.8, 0.8, 0.8]), atol=2e-3, rtol=0)
    assert as_batch(rgba).shape == (1, 4, 4, 4)
    assert np.array_equal(to_uint8(as_batch(rgba))[0], rgba)
    assert np.array_equal(to_uint8(torch.tensor([[[-0.5, 0.5, 2.0]]])), np.array([[[0], [128], [255]]], np.uint8))


@pytest.mark.parametrize("method,steps,frames", [("tweedie", 10, 1), ("ddim", 4, 4), ("ancestral", 10, 10)])
def test_the_chain_ends_at_the_output_and_tiles_like_it(mnist, method, steps, frames):
    x, sigma = _noisy(2, 0.05), 0.05  # a short ancestral chain
    out, info = mnist.denoise(x, sigma=sigma, method=method, steps=steps, chain=True, seed=1)
    assert len(info.chain) == frames and info.chain[0][0] == info.t_start[0]
    assert [t for t, _ in info.chain] == sorted({t for t, _ in info.chain}, reverse=True)
    assert all(f.shape == x.shape and 0 <= f.min() and f.max() <= 1 for _, f in info.chain)
    if method != "ancestral":  # its last step returns the posterior mean, not the estimate of the call before
        torch.testing.assert_close(info.chain[-1][1], out, atol=1e-6, rtol=0)
    assert torch.equal(out, mnist.denoise(x, sigma=sigma, method=method, steps=steps, seed=1)[0])  # watching is free
    big = torch.cat([x[0, 0], x[1, 0]], dim=1)[None, None]  # 28 x 56: 3 tiles
    out, info = mnist.denoise(big, sigma=sigma, method=method, steps=steps, chain=True, seed=1)
    assert info.tiles == [3] and all(f.shape == big.shape for _, f in info.chain)
    if method != "ancestral":
        torch.testing.assert_close(info.chain[-1][1], out, atol=1e-6, rtol=0)


def test_the_chain_is_one_chain_of_a_diffusion_model(mnist):
    with pytest.raises(SiamdiffError, match="give images of one noise level"):
        mnist.denoise(torch.cat([_noisy(1, 0.1), _noisy(1, 0.5)]), chain=True)
    with pytest.raises(SiamdiffError, match="this model has none"):
        Denoiser.load(None, kind=None).denoise(_noisy(1), method="nlm", chain=True)


def test_a_sigma_beyond_training_is_denoised_with_a_warning_and_beyond_the_schedule_refused(mnist, caplog):
    x = _noisy(1)
    mnist.denoise(x, sigma=1.0)
    assert not caplog.records
    mnist.denoise(x, sigma=5)
    assert "beyond the noise levels the models were trained and measured on (0.01 to 1.2)" in caplog.text
    with pytest.raises(SiamdiffError, match="beyond the noise this model's schedule reaches"):
        mnist.denoise(x, sigma=1e6)


def test_gray_into_a_colour_model_gets_the_noise_that_model_knows():
    """Gray noise σ replicated, plus noise across the channels only: independent noise of √3·σ in each channel,
    and the mean over the channels is the gray image again, exactly."""
    from siamdiff.reconstruction.pipeline import _to_channels

    gray = torch.rand(1, 1, 200, 200)
    noise = 0.1 * torch.randn(1, 1, 200, 200, generator=torch.Generator().manual_seed(0))
    rows, sigma, per_image, back = _to_channels(gray + noise, 3, torch.tensor([0.1], dtype=torch.float64),
                                                torch.Generator().manual_seed(1))
    assert per_image == 1 and rows.shape == (1, 3, 200, 200) and abs(float(sigma[0]) - 0.1 * 3 ** 0.5) < 1e-12
    torch.testing.assert_close(back(rows), gray + noise, atol=1e-6, rtol=0)
    cov = torch.cov((rows - gray)[0].reshape(3, -1))
    torch.testing.assert_close(cov, torch.eye(3) * 0.03, atol=0.002, rtol=0)


def test_a_gray_photo_in_the_shipped_colour_model_is_denoised_by_its_grayscale_twin():
    from skimage.data import camera

    clean = torch.from_numpy(camera()[128:256, 128:256]).float()[None, None] / 255
    noisy = gaussian(clean, 25 / 255, torch.Generator().manual_seed(2), clip=True)
    cifar = Denoiser.load("cifar10")
    assert cifar.gray is not None and cifar.gray.channels == 1 and cifar.gray.classifier is cifar.classifier
    out, info = cifar.denoise(noisy)
    assert torch.equal(out, cifar.gray.denoise(noisy)[0])
    assert info.sigma_estimator == "wavelet-MAD" and abs(info.sigma[0] - 25 / 255) < 0.02
    gain = 10 * torch.log10(((noisy - clean) ** 2).mean() / ((out - clean) ** 2).mean())
    assert out.shape == clean.shape and gain > 6


def test_bfloat16_changes_the_output_far_less_than_the_noise_it_removes():
    den = Denoiser.load("cifar10")
    clean = load_sample("cifar10").images[:4].float() / 255
    noisy = gaussian(clean, 0.1, torch.Generator().manual_seed(4))
    exact, _ = den.denoise(noisy, sigma=0.1)
    fast, _ = den.denoise(noisy, sigma=0.1, precision="bf16")
    assert fast.dtype == torch.float32 and not torch.equal(fast, exact)  # it did run in bfloat16
    assert (fast - exact).pow(2).mean() < 0.01 * (exact - clean).pow(2).mean()
    with pytest.raises(SiamdiffError, match="precision must be fp32 or bf16"):
        den.denoise(noisy, precision="fp16")


def test_a_gray_image_goes_to_the_grayscale_twin_of_a_colour_model():
    from siamdiff.reconstruction.models import grayscale_copy

    cifar = Denoiser.load("cifar10")
    bare = Denoiser(cifar.net, cifar.meta, "cifar10", cifar.estimator, cifar.classifier)  # as without a twin
    twin = Denoiser(grayscale_copy(cifar.net), {**cifar.meta, "config": {**cifar.meta["config"], "in_channels": 1}},
                    "twin", None, cifar.classifier)
    both = Denoiser(cifar.net, cifar.meta, "cifar10", cifar.estimator, cifar.classifier, gray=twin)
    colour = _noisy(2, 0.1, "cifar10")
    gray = colour.mean(1, keepdim=True)
    assert torch.equal(both.denoise(gray)[0], twin.denoise(gray)[0])
    assert not torch.equal(both.denoise(gray)[0], bare.denoise(gray)[0])  # not the colour model's way
    assert torch.equal(both.denoise(colour)[0], bare.denoise(colour)[0])
    with_alpha = torch.cat([gray, torch.full_like(gray, 0.5)], dim=1)
    out, _ = both.denoise(with_alpha)
    assert out.shape == with_alpha.shape and torch.equal(out[:, :1], twin.denoise(gray)[0]) and torch.all(out[:, 1] == 0.5)
    _, info = both.denoise(gray, label="auto", guidance=1.0)  # the colour classifier sees gray images as colour
    assert len(info.labels) == 2
    with pytest.raises(SiamdiffError, match="grayscale twin is a 1-channel"):
        Denoiser(cifar.net, cifar.meta, "cifar10", gray=bare)
