"""U-Nets and DDPM training on tiny presets: shapes, conditioning, EMA, exact resume, checkpoint round trip."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import fit_killed_after_first_epoch, same_weights

from siamdiff.core.checkpoint import load_model
from siamdiff.data.datasets import ImageSet
from siamdiff.reconstruction.diffusion import denoise
from siamdiff.reconstruction.models import PRESETS, UNetConfig, build_from_config
from siamdiff.reconstruction.schedule import Schedule
from siamdiff.reconstruction.tasks import DiffusionRecipe, DiffusionTask
from siamdiff.training import TrainConfig, fit


def _data(n=48, size=8):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    images = (torch.rand(n, 1, size, size, generator=g) * 60).to(torch.uint8)
    images[:, :, 2:6, 2 + labels[0]:4] = 255
    return ImageSet("toy", "train", images, labels, ["a", "b", "c"])


def _recipe(**kw):
    return DiffusionRecipe(PRESETS["tiny"], TrainConfig(epochs=2, batch_size=16, lr=2e-3, device="cpu", **kw),
                           schedule=Schedule("cosine", 50))


@pytest.mark.parametrize("name", ["tiny", "seed"])
def test_unets_keep_shape(name):
    cfg = PRESETS[name] if name == "tiny" else UNetConfig("seed", 1, 16, (4, 8, 16), time_dim=8)
    net = build_from_config(cfg.to_dict()).eval()
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.tensor([0, 7])
    assert net(x, t, torch.tensor([0, 1]) if cfg.num_classes else None).shape == x.shape


def test_unet_handles_odd_sizes_and_no_class_label():
    cfg = UNetConfig("unet", 1, 28, (4, 8, 8), blocks=1, time_dim=8, num_classes=10, groups=2)
    net = build_from_config(cfg.to_dict()).eval()
    x = torch.randn(3, 1, 28, 28)
    t = torch.tensor([1, 2, 3])
    assert net(x, t).shape == x.shape
    # None means the "no class" label, index num_classes
    assert torch.equal(net(x, t, None), net(x, t, torch.full((3,), 10)))
    assert not torch.equal(net(x, t, torch.zeros(3, dtype=torch.long)), net(x, t, None))


def test_ddpm_training_writes_ema_model_and_resumes_exactly(tmp_path):
    data = _data()
    fit(DiffusionTask(_recipe(), data, data), tmp_path / "full")
    net, meta = load_model(tmp_path / "full" / "model.safetensors", kind="diffusion")
    assert meta["extra"]["weights"] == "ema" and meta["extra"]["schedule"]["kind"] == "cosine"

    fit_killed_after_first_epoch(DiffusionTask(_recipe(), data, data), tmp_path / "cut")
    fit(DiffusionTask(_recipe(), data, data), tmp_path / "cut", resume=True)
    assert same_weights(tmp_path / "full" / "model.safetensors", tmp_path / "cut" / "model.safetensors")


def test_trained_tiny_model_plugs_into_denoise(tmp_path):
    data = _data()
    fit(DiffusionTask(_recipe(), data, data), tmp_path)
    net, meta = load_model(tmp_path / "model.safetensors", kind="diffusion")
    schedule = Schedule(**meta["extra"]["schedule"])
    y = data.images[:4].float() / 255
    with torch.no_grad():
        out, t_star = denoise(net, schedule, y, 0.2, method="ddim", steps=3, labels=data.labels[:4],
                              guidance=1.0)
    assert out.shape == y.shape and out.min() >= 0 and out.max() <= 1 and torch.all(t_star > 0)


def test_a_grayscale_copy_of_a_colour_unet_is_its_channel_mean_on_gray_images():
    from siamdiff.reconstruction.models import grayscale_copy

    torch.manual_seed(0)
    net = build_from_config(replace(PRESETS["tiny"], in_channels=3).to_dict()).eval()
    for p in net.parameters():  # no layer left at a zero start, which would make the equality trivial
        p.data.normal_(0, 0.3)
    gray = grayscale_copy(net).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 40]), torch.tensor([0, 3])
    with torch.no_grad():
        expected = net(x.expand(2, 3, 8, 8), t, y)
        assert gray.config.in_channels == 1 and expected.std(1).mean() > 0.1  # the channels differ
        torch.testing.assert_close(gray(x, t, y), expected.mean(1, keepdim=True), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="3-channel model"):
        grayscale_copy(gray)


def test_train_fine_tunes_a_colour_diffusion_model_into_a_grayscale_one(tmp_path):
    """``--channels 1 --init COLOUR``: the colour images read as gray, the start the grayscale copy of the model."""
    from PIL import Image

    from siamdiff.core.errors import SiamdiffError
    from siamdiff.reconstruction.models import grayscale_copy
    from siamdiff.training import TrainOptions, train

    rng = np.random.default_rng(0)
    for k in range(12):
        (tmp_path / "data" / f"c{k % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "data" / f"c{k % 3}/{k}.png")
    data = f"folder:{tmp_path / 'data'}"
    train("ddpm", data, tmp_path / "colour", TrainOptions(model="tiny", epochs=1, image_size=8, device="cpu"))
    # a learning rate too small to move the weights: the model written is where fine-tuning started
    train("ddpm", data, tmp_path / "gray", TrainOptions(epochs=1, lr=1e-12, channels=1, init=str(tmp_path / "colour"),
                                                         device="cpu"))
    colour, _ = load_model(tmp_path / "colour" / "model.safetensors", kind="diffusion")
    gray, meta = load_model(tmp_path / "gray" / "model.safetensors", kind="diffusion")
    assert gray.config.in_channels == 1 and meta["extra"]["init"]["from"].endswith("model.safetensors")
    start = grayscale_copy(colour).state_dict()
    for name, w in gray.state_dict().items():
        torch.testing.assert_close(w, start[name], rtol=0, atol=1e-6)
    with pytest.raises(SiamdiffError, match="was trained on images with 1 channel"):  # gray to colour: no such start
        train("ddpm", data, tmp_path / "back", TrainOptions(epochs=1, channels=3, init=str(tmp_path / "gray"),
                                                             device="cpu"))
