"""Model files: round trip gives identical weights; damaged or foreign files give clear errors."""

import json

import pytest
import torch

from siamdiff.core.checkpoint import load_model, read_metadata, save_model
from siamdiff.core.errors import CheckpointError, SiamdiffError
from siamdiff.nets.convnet import PRESETS, EmbedConfig, EmbeddingNet, preset


@pytest.mark.parametrize("name", ["tiny-1", "tiny-3", "seed-mnist", "default-mnist"])
def test_round_trip_identical_weights(tmp_path, name):
    torch.manual_seed(0)
    net = EmbeddingNet(PRESETS[name]).eval()
    x = torch.randint(0, 256, (5, net.config.in_channels, net.config.image_size, net.config.image_size),
                      dtype=torch.uint8)
    path = save_model(tmp_path / "m.safetensors", net, "similarity", net.config.to_dict(), {"note": "x"})
    loaded, meta = load_model(path, kind="similarity")
    assert meta["extra"] == {"note": "x"}
    reloaded = loaded.state_dict()
    assert all(torch.equal(v, reloaded[k]) for k, v in net.state_dict().items())
    # loaded weights are channels-last (other CPU kernels): same function up to float rounding
    assert torch.allclose(net(x), loaded(x), atol=1e-5)
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_embeddings_are_unit_length_and_seed_is_2d():
    x = torch.rand(3, 1, 28, 28)
    z = EmbeddingNet(PRESETS["default-mnist"]).eval()(x)
    assert z.shape == (3, 64) and torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    assert EmbeddingNet(PRESETS["seed-mnist"]).eval()(x).shape == (3, 2)


def test_mirror_average_embeds_an_image_and_its_mirror_alike():
    from dataclasses import replace

    from siamdiff.similarity.task import recipe
    from siamdiff.training import TrainOptions

    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    net = EmbeddingNet(replace(PRESETS["tiny-3"], mirror_average=True)).eval()
    z = net(x)
    assert torch.allclose(z, net(x.flip(3)), atol=1e-6) and torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
    plain = EmbeddingNet(PRESETS["tiny-3"]).eval()
    plain.load_state_dict(net.state_dict())
    assert not torch.allclose(plain(x), plain(x.flip(3)), atol=1e-3)
    # the mean of the two outputs, then normalised; in training (one view, augmented) the plain output
    expected = torch.nn.functional.normalize(plain.head(plain.features((x - 0.5) / 0.5))
                                             + plain.head(plain.features((x.flip(3) - 0.5) / 0.5)), dim=1)
    assert torch.allclose(z, expected, atol=1e-5)
    assert torch.allclose(net.train()(x), plain.train()(x), atol=1e-5)
    # the recipe sets it exactly for models trained with random mirrors, and never for the seed design
    assert recipe("cifar10", 3, 32, TrainOptions(model="default")).model.mirror_average
    assert recipe("fashion-mnist", 1, 28, TrainOptions(model="default")).model.mirror_average
    assert not recipe("mnist", 1, 28, TrainOptions(model="default")).model.mirror_average
    assert not recipe("cifar10", 3, 32, TrainOptions(model="seed")).model.mirror_average


def test_wrong_kind_wrong_architecture_and_garbage(tmp_path):
    net = EmbeddingNet(PRESETS["tiny-1"])
    path = save_model(tmp_path / "m.safetensors", net, "similarity", net.config.to_dict())
    with pytest.raises(CheckpointError, match="not a denoiser model"):
        load_model(path, kind="denoiser")
    # another architecture's weights under this config: shapes differ
    other = EmbeddingNet(PRESETS["default-mnist"])
    bad = save_model(tmp_path / "bad.safetensors", other, "similarity", net.config.to_dict())
    with pytest.raises(CheckpointError, match="cannot load weights"):
        load_model(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match="not a safetensors model file"):
        read_metadata(junk)
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("size", [10 ** 6, 0, "28"])
def test_a_damaged_image_size_is_refused_before_building(tmp_path, size):
    net = EmbeddingNet(PRESETS["tiny-1"])
    path = save_model(tmp_path / "m.safetensors", net, "similarity", {**net.config.to_dict(), "image_size": size})
    with pytest.raises(CheckpointError, match="damaged config"):
        load_model(path)  # image_size 10**6 used to load, then hang on its first image


def test_save_into_missing_folder_is_clear(tmp_path):
    net = EmbeddingNet(PRESETS["tiny-1"])
    with pytest.raises(SiamdiffError, match="does not exist"):
        save_model(tmp_path / "no" / "m.safetensors", net, "similarity", net.config.to_dict())


def test_config_round_trips_through_json():
    cfg = preset("default", "mnist", 1, 28)
    assert EmbedConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    folder = preset("default", "folder:x", 3, 48)
    assert folder.in_channels == 3 and folder.image_size == 48


def test_float16_copy_keeps_metadata_and_loads_as_float32(tmp_path):
    from siamdiff.core.checkpoint import save_float16_copy

    torch.manual_seed(0)
    model = EmbeddingNet(PRESETS["tiny-1"]).eval()
    src = save_model(tmp_path / "a.safetensors", model, "similarity", PRESETS["tiny-1"].to_dict(), {"note": "x"})
    dest = save_float16_copy(src, tmp_path / "b.safetensors")
    assert read_metadata(dest) == read_metadata(src)
    assert dest.stat().st_size < src.stat().st_size
    copy, _ = load_model(dest, kind="similarity")
    for (k, a), b in zip(model.state_dict().items(), copy.state_dict().values()):
        assert b.dtype == a.dtype, k  # cast back to the network's own dtype
        assert torch.equal(b, a.half().to(a.dtype) if a.is_floating_point() else a), k
    with pytest.raises(CheckpointError):
        save_float16_copy(tmp_path / "missing.safetensors", tmp_path / "c.safetensors")


def test_float16_copy_leaves_an_identical_copy_alone(tmp_path):
    from siamdiff.core.checkpoint import save_float16_copy

    torch.manual_seed(0)
    model = EmbeddingNet(PRESETS["tiny-1"]).eval()
    src = save_model(tmp_path / "a.safetensors", model, "similarity", PRESETS["tiny-1"].to_dict(), {"note": "x"})
    dest = save_float16_copy(src, tmp_path / "b.safetensors")
    dest.write_bytes(dest.read_bytes())  # same content, new modification time
    stamp = dest.stat().st_mtime_ns
    save_float16_copy(src, dest)
    assert dest.stat().st_mtime_ns == stamp  # not rewritten
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    src = save_model(src, model, "similarity", PRESETS["tiny-1"].to_dict(), {"note": "x"})
    save_float16_copy(src, dest)
    copy, _ = load_model(dest, kind="similarity")
    assert torch.equal(next(copy.parameters()), next(model.parameters()).half().float())  # changed: rewritten
