"""``siamdiff explain``: the maps split the cosine of the two embeddings exactly, they follow the model (occluding
what they mark changes the score more than occluding what they do not; a network with random weights draws other
maps), and bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from siamdiff.cli import main
from siamdiff.data.datasets import load_sample
from siamdiff.nets.convnet import EmbeddingNet, preset
from siamdiff.similarity.api import SimilarityModel
from siamdiff.similarity.explain import contributions, heat


def same_class_pairs(labels: np.ndarray, per_class: int = 2) -> list[tuple[int, int]]:
    pairs = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)[:2 * per_class]
        pairs += [(int(rows[2 * k]), int(rows[2 * k + 1])) for k in range(per_class)]
    return pairs


@pytest.mark.parametrize("name", ["mnist", "cifar10"])  # cifar10: mirror averaging
def test_maps_sum_to_the_cosine_of_the_embeddings(name):
    model, data = SimilarityModel.load(name), load_sample(name)
    images = data.images.numpy()
    a, b = images[:6], images[6:12]
    map_a, map_b, cosine = contributions(model.net, a, b)
    emb = model.embed(np.concatenate([a, b]))
    expected = (emb[:6] * emb[6:]).sum(1)
    np.testing.assert_allclose(cosine, expected, atol=1e-5)
    np.testing.assert_allclose(map_a.sum((1, 2)), cosine, atol=1e-9)
    np.testing.assert_allclose(map_b.sum((1, 2)), cosine, atol=1e-9)
    assert map_a.shape[1:] == ((7, 7) if name == "mnist" else (4, 4))


def test_the_seed_design_decomposes_too():
    torch.manual_seed(0)
    net = EmbeddingNet(preset("seed", "mnist", 1, 28)).eval()
    for m in net.modules():  # batch norms with statistics of their own, not the identity they start as
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    images = load_sample("mnist").images.numpy()[:4]
    map_a, _, cosine = contributions(net, images[:2], images[2:])
    z = net(torch.as_tensor(images)).detach()
    expected = torch.nn.functional.cosine_similarity(z[:2], z[2:]).numpy()
    np.testing.assert_allclose(map_a.sum((1, 2)), expected, atol=1e-5)
    np.testing.assert_allclose(cosine, expected, atol=1e-5)


def test_locations_refuse_training_mode():
    net = EmbeddingNet(preset("tiny", "mnist", 1, 28)).train()
    with pytest.raises(ValueError, match="eval mode"):
        net.locations(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


def occlusion_wins(model: SimilarityModel, images: np.ndarray, pairs: list[tuple[int, int]],
                   maps_from: torch.nn.Module | None = None) -> int:
    """How many pairs lose more of the model's cosine when a quarter of A's pixels with the most heat are blacked
    out than when the quarter with the least is (of the pixels that carry ink, for digits); the heat from the maps
    of ``maps_from`` (default: the model's own network)."""
    wins = 0
    for i, j in pairs:
        map_a, _, _ = contributions(model.net if maps_from is None else maps_from, images[i][None], images[j][None])
        h = heat(map_a[0], images.shape[-1]).ravel()
        lit = np.flatnonzero(images[i].max(0).ravel() > 0)
        ranked = lit[np.argsort(h[lit])]
        quarter = len(ranked) // 4

        def cosine_without(pixels: np.ndarray) -> float:
            x = images[i].reshape(images.shape[1], -1).copy()
            x[:, pixels] = 0
            emb = model.embed(np.stack([x.reshape(images[i].shape), images[j]]))
            return float(emb[0] @ emb[1])

        whole = cosine_without(np.zeros(0, int))
        wins += whole - cosine_without(ranked[-quarter:]) > whole - cosine_without(ranked[:quarter])
    return wins


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_occluding_what_the_map_marks_matters_more(name):
    """Faithfulness (occlusion agreement), and the model-randomisation check of Adebayo et al. 2018 ("Sanity checks
    for saliency maps") in its functional form: maps drawn by the same network with random weights — which would
    still mark the ink if the maps came from the image alone — pick the pixels that matter to the trained model no
    better than chance."""
    model, data = SimilarityModel.load(name), load_sample(name)
    pairs, images = same_class_pairs(data.labels.numpy()), data.images.numpy()
    trained = occlusion_wins(model, images, pairs)
    torch.manual_seed(0)
    random = occlusion_wins(model, images, pairs, maps_from=EmbeddingNet(replace(model.net.config)).eval())
    assert trained >= 0.75 * len(pairs)
    assert random <= 0.65 * len(pairs) and trained - random >= 0.2 * len(pairs)


@pytest.fixture
def pair(tmp_path):
    data = load_sample("mnist")
    paths = []
    for k in (0, 1):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(data.images[k].numpy()[0]).save(paths[-1])
    return paths


def test_explain_writes_the_picture_and_the_maps(pair, tmp_path, capsys):
    out = tmp_path / "why.png"
    assert main(["explain", str(pair[0]), str(pair[1]), "--out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    score = SimilarityModel.load("mnist").score(pair[0], pair[1])
    assert {k: record[k] for k in score} == pytest.approx(score)
    assert np.sum(record["map_a"]) == pytest.approx(record["cosine"], abs=1e-4)
    assert np.array(record["map_b"]).shape == (7, 7) and record["output"] == str(out)
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > 300


@pytest.mark.parametrize("argv, words", [
    (["--out", "{tmp}/why.jpg"], ".png file"),
    (["--out", "{tmp}/why.png", "--model", "src/siamdiff/weights/classifier-mnist.safetensors"], "not a similarity"),
    (["--out", "{tmp}/missing/why.png"], "does not exist"),
])
def test_explain_refusals_write_nothing(pair, tmp_path, capsys, argv, words):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    before = set(tmp_path.rglob("*"))
    assert main(["explain", str(pair[0]), str(pair[1]), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert set(tmp_path.rglob("*")) == before


def test_explain_of_an_unreadable_image_writes_nothing(pair, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["explain", str(pair[0]), str(bad), "--out", str(tmp_path / "why.png")]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert not (tmp_path / "why.png").exists()


def test_plot_similarity_explain(tmp_path):
    assert main(["plot", "similarity", "--out", str(tmp_path / "plots"), "--explain"]) == 0
    assert (tmp_path / "plots" / "pairs.png").stat().st_size > 10_000
