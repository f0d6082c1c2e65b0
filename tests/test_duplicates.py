"""``siamdiff duplicates``: near copies grouped without chaining, candidate pairs against brute force, a report that
finds planted copies, and bad input as one line with exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from siamdiff.cli import main
from siamdiff.data.datasets import load_sample
from siamdiff.data.imageio import write_png_atomic
from siamdiff.similarity import duplicates
from siamdiff.similarity.agreement import near_copies
from siamdiff.similarity.api import SimilarityModel


def test_groups_do_not_chain():
    # 0 ~ 1 and 1 ~ 2 but not 0 ~ 2: 1 goes with its nearer neighbour, 0 and 2 are not put together
    assert duplicates.complete_link_groups(3, {(0, 1): 0.97, (1, 2): 0.99}) == [[1, 2]]
    # a triangle is one group; a separate pair is another, the larger group first
    pairs = {(0, 1): 0.96, (0, 2): 0.98, (1, 2): 0.97, (3, 5): 0.99}
    assert duplicates.complete_link_groups(6, pairs) == [[0, 1, 2], [3, 5]]
    # a fourth image joins only when it is near all three
    pairs.update({(2, 4): 0.995, (1, 4): 0.96})
    # 2 ~ 4 merge first; 0 is not near 4, so it stays out; 1 is near both and joins
    assert duplicates.complete_link_groups(6, pairs) == [[1, 2, 4], [3, 5]]


def test_candidate_pairs_are_those_of_brute_force(monkeypatch):
    model = SimilarityModel.load("mnist")
    emb = model.embed(load_sample("mnist").images[:120])
    monkeypatch.setattr(duplicates, "CELLS", 1000)  # several blocks of rows
    i, j = duplicates.candidate_pairs(model, emb, 0.9)
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    bi, bj = np.nonzero(np.triu(model.probability(d) >= 0.9, k=1))
    assert sorted(zip(i.tolist(), j.tolist())) == sorted(zip(bi.tolist(), bj.tolist()))
    assert len(i) > 100  # the check compared real pairs


@pytest.fixture
def planted(tmp_path):
    """40 sample digits, and near copies (a pixel's shift, darker, noisy) of five of them in another folder."""
    data = load_sample("mnist")
    folder = tmp_path / "photos"
    (folder / "copies").mkdir(parents=True)
    originals = list(range(0, 200, 5))
    for k in originals:
        write_png_atomic(data.images[k].numpy()[0], folder / f"{k:03d}.png")
    copies = near_copies(data.images[originals[:5]], np.random.default_rng(0))
    for k, image in zip(originals[:5], copies):
        write_png_atomic(image.numpy()[0], folder / "copies" / f"{k:03d}-copy.png")
    return folder


def test_duplicates_finds_the_planted_copies(planted, capsys):
    assert main(["duplicates", str(planted), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 45 and report["skipped"] == 0
    assert report["threshold"] == duplicates.THRESHOLD
    copies = [g for g in report["groups"] if any("-copy" in p for p in g)]
    assert len(copies) >= 4  # the validation rate of found copies is about 0.99 on MNIST
    for g in copies:
        names = {p.rsplit("/", 1)[-1][:3] for p in g}
        assert len(names) == 1, g  # a copy is grouped with its own original, never with another's
    assert all(s >= duplicates.THRESHOLD for s in report["similarity"])


def test_text_report_and_a_stricter_threshold(planted, capsys):
    assert main(["duplicates", str(planted), "--threshold", "0.9999"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("45 images: 0 group(s)")


def test_unreadable_files_are_counted(planted, capsys, caplog):
    (planted / "broken.png").write_bytes(b"not a png")
    assert main(["duplicates", str(planted), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "broken.png" in caplog.records[0].getMessage()


@pytest.mark.parametrize("make, argv, words", [
    (lambda p: p.mkdir(), [], "no images"),
    (lambda p: None, [], "no such folder"),
    (lambda p: p.mkdir(), ["--threshold", "1.5"], "--threshold must be in (0, 1]"),
    (lambda p: (p.mkdir(), (p / "a.png").write_bytes(b"x")), [], "no readable images"),
    (lambda p: p.mkdir(), ["--model", "src/siamdiff/weights/diffusion-mnist.safetensors"], "not a similarity"),
])
def test_refusals(tmp_path, capsys, make, argv, words):
    folder = tmp_path / "folder"
    make(folder)
    assert main(["duplicates", str(folder), *argv]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert words in lines[-1] and lines[-1].startswith("siamdiff: error: ")
    assert sum(line.startswith("siamdiff: error") for line in lines) == 1


def test_the_api_takes_a_model_and_a_folder(planted):
    report = duplicates.find_duplicates(planted, SimilarityModel.load("mnist"), threshold=0.9)
    assert set(report) == {"folder", "images", "skipped", "threshold", "groups", "similarity"}
    assert len(report["groups"]) == len(report["similarity"]) >= 5  # a lower threshold: more groups
    sizes = [len(g) for g in report["groups"]]
    assert sizes == sorted(sizes, reverse=True) and min(report["similarity"]) >= 0.9
