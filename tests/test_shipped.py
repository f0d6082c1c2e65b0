"""The shipped weights, their model cards, and the demo that uses them."""

import json
import re
import shlex
from itertools import takewhile

import pytest

from siamdiff.core.registry import DATASETS as SHIPPED
from siamdiff.core.registry import shipped_path
from siamdiff.demo import run_demo
from siamdiff.nets.convnet import EmbedConfig
from siamdiff.similarity.api import SimilarityModel
from siamdiff.similarity.evaluate import evaluate

CARD_FIELDS = ("command", "data", "train_seconds", "hardware", "metrics", "config", "calibration")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_has_card_and_loads(name):
    path = shipped_path("similarity", name)
    card = json.loads(path.with_suffix(".json").read_text())
    for field in CARD_FIELDS:
        assert field in card, field
    # made by the project's rebuild command (for this model alone or for several), or — a model no rebuild has beaten
    # yet — by its training command, with the runs it was fine-tuned from
    words = shlex.split(card["command"])
    if words[:2] == ["python", "benchmarks/reproduce.py"]:
        only = list(takewhile(lambda w: not w.startswith("--"), words[words.index("--only") + 1:])) \
            if "--only" in words else [f"similarity:{name}"]
        assert f"similarity:{name}" in only, card["command"]
        assert card["rebuild"].endswith(f"--only similarity:{name}") or "--budget" in card["rebuild"]
    else:
        init, commands = card.get("init"), [card["command"]]
        while init:
            commands.append(init["command"])
            init = init.get("previous")
        for command in commands:
            words = shlex.split(command)
            assert words[0] == "siamdiff" and [w for w in words[1:] if w not in ("-v", "--verbose")][:2] == \
                ["train", "similarity"], command
            assert words[words.index("--dataset") + 1] == name, command
    model = SimilarityModel.load(name)
    assert model.dataset == name and len(model.classes) == 10
    assert EmbedConfig.from_dict(card["config"]) == model.net.config
    assert card["calibration"] == model.meta["extra"]["calibration"]
    assert card["metrics"]["recall_at_1"] > 0.9 and card["train_seconds"] > 0


@pytest.mark.parametrize("name,floor", [("mnist", 0.95), ("fashion-mnist", 0.7), ("cifar10", 0.5)])
def test_shipped_models_retrieve_on_the_sample(name, floor):
    # 300 sample images, leave-one-out: a small check that the weights are the trained ones, not a benchmark
    result = evaluate(SimilarityModel.load(name), f"sample:{name}", n_pairs=1000, n_hard=0)
    assert result["recall_at_1"] >= floor and result["roc_auc"] > 0.8


def test_demo_writes_report_pictures_and_index(tmp_path):
    report = run_demo(tmp_path / "demo")
    text = report.read_text()
    for name in SHIPPED:
        assert f"## {name}" in text
        assert (tmp_path / "demo" / "plots" / name / "map.png").is_file()
        assert (tmp_path / "demo" / "plots" / name / "why.png").is_file()  # siamdiff explain's picture
        assert (tmp_path / "demo" / f"index-{name}.safetensors").is_file()
    denoisers = [n for n in SHIPPED if shipped_path("diffusion", n).is_file()]
    for name in denoisers:
        assert f"## denoising {name}" in text
        assert (tmp_path / "demo" / "plots" / name / "denoise-sigma-0.3.png").is_file()
    photo = re.search(r"PSNR ([\d.]+) dB noisy, ([\d.]+) dB denoised", text.split("## denoising a photo")[1])
    assert float(photo[2]) > float(photo[1]) + 6 and (tmp_path / "demo" / "photo" / "chelsea-denoised.png").is_file()
    assert (tmp_path / "demo" / "report.html").read_text().count("<img") == 5 * len(SHIPPED) + 3 * len(denoisers) + 2
    # a second run reuses the images and the index and gives the same scores
    assert run_demo(tmp_path / "demo").read_text().split("Demo took")[0] == text.split("Demo took")[0]


RECONSTRUCTION_KINDS = ("diffusion", "sigma", "classifier")


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("kind", RECONSTRUCTION_KINDS)
def test_shipped_reconstruction_models_have_cards(name, kind):
    from siamdiff.core.checkpoint import load_model

    path = shipped_path(kind, name)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["kind"] == kind and card["dataset"] == name
    assert card["command"].startswith("siamdiff train ") and f"--dataset {name}" in card["command"]
    assert card["epochs_completed"] >= 1 and card["train_seconds"] > 0 and card["train_device"]
    net, meta = load_model(path, kind=kind)
    assert meta["extra"]["dataset"] == name
    if kind == "diffusion":
        assert {r["sigma"] for r in card["benchmark"] if not r["clip"]} >= {0.1, 0.3, 0.5}


@pytest.mark.parametrize("name,gain,floor", [("mnist", 8.0, 0.9), ("fashion-mnist", 6.0, 0.7), ("cifar10", 6.0, 0.4)])
def test_shipped_denoiser_cleans_the_sample(name, gain, floor):
    # 30 sample images, sigma 0.3, blind: a small check that the shipped weights are trained ones, not a benchmark
    import torch

    from siamdiff.data.datasets import load_sample
    from siamdiff.reconstruction.metrics import psnr
    from siamdiff.reconstruction.noise import gaussian
    from siamdiff.reconstruction.pipeline import Denoiser

    den = Denoiser.load(name)
    assert den.estimator is not None and den.classifier is not None
    data = load_sample(name)
    clean = data.images[::10].float() / 255
    noisy = gaussian(clean, 0.3, torch.Generator().manual_seed(0))
    out, info = den.denoise(noisy, "auto", "tweedie")
    assert info.sigma_estimator == "learned" and abs(float(torch.tensor(info.sigma).median()) - 0.3) < 0.05
    assert float(psnr(out, clean).mean()) > float(psnr(noisy.clamp(0, 1), clean).mean()) + gain
    with torch.no_grad():
        assert float((den.classifier(out).argmax(1) == data.labels[::10]).float().mean()) >= floor
