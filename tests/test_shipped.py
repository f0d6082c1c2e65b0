"""The shipped weights, their model cards, and the demo that uses them."""

import json

import pytest

from siamdiff.demo import run_demo
from siamdiff.similarity.api import SHIPPED, SimilarityModel, shipped_path
from siamdiff.similarity.evaluate import evaluate
from siamdiff.similarity.models import EmbedConfig

CARD_FIELDS = ("command", "data", "train_seconds", "hardware", "metrics", "config", "calibration")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_has_card_and_loads(name):
    path = shipped_path("similarity", name)
    card = json.loads(path.with_suffix(".json").read_text())
    for field in CARD_FIELDS:
        assert field in card, field
    assert card["command"].startswith("siamdiff train similarity --dataset " + name)
    model = SimilarityModel.load(name)
    assert model.dataset == name and len(model.classes) == 10
    assert EmbedConfig.from_dict(card["config"]) == model.net.config
    assert card["calibration"] == model.meta["extra"]["calibration"]


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
        assert (tmp_path / "demo" / f"index-{name}.safetensors").is_file()
    assert (tmp_path / "demo" / "report.html").read_text().count("<img") == 4 * len(SHIPPED)
    # a second run reuses the images and the index and gives the same scores
    assert run_demo(tmp_path / "demo").read_text().split("Demo took")[0] == text.split("Demo took")[0]
