"""Index and search: incremental updates, exact nearest neighbours, refusing foreign indexes."""

import numpy as np
import pytest

from siamdiff.core.errors import SiamdiffError
from siamdiff.similarity.api import SimilarityModel
from siamdiff.similarity.index import Index, build_index, nearest, search


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(0)
    g, q = rng.normal(size=(500, 16)).astype(np.float32), rng.normal(size=(3, 16)).astype(np.float32)
    d, idx = nearest(g, q, 4)
    brute = np.linalg.norm(q[:, None, :] - g[None, :, :], axis=2)
    assert np.array_equal(idx, np.argsort(brute, axis=1)[:, :4])
    assert np.allclose(d, np.sort(brute, axis=1)[:, :4], atol=1e-4)


def test_index_build_update_and_search(tiny_model, digit_folder, tmp_path):
    model = SimilarityModel.load(tiny_model)
    out = tmp_path / "idx.safetensors"
    index, counts = build_index(digit_folder, model, out)
    assert counts == {"added": 80, "kept": 0, "removed": 0, "skipped": 0}
    # a second run embeds nothing new; a new file and a bad file are noticed
    (digit_folder / "0" / "bad.png").write_text("not an image")
    extra = sorted(digit_folder.rglob("*.png"))[0]
    (digit_folder / "new.png").write_bytes(extra.read_bytes())
    try:
        index2, counts2 = build_index(digit_folder, model, out)
    finally:
        (digit_folder / "0" / "bad.png").unlink()
        (digit_folder / "new.png").unlink()
    assert counts2 == {"added": 1, "kept": 80, "removed": 0, "skipped": 1}
    assert np.array_equal(index2.embeddings[:80], index.embeddings)
    hits = search(Index.load(out), model, extra, k=3)
    assert len(hits) == 3 and hits[0]["distance"] == pytest.approx(0.0, abs=1e-3)
    assert hits[0]["distance"] <= hits[1]["distance"] <= hits[2]["distance"]
    assert all(0.0 <= h["probability"] <= 1.0 for h in hits)


def test_search_refuses_bad_k_and_other_models(tiny_model, digit_folder, tmp_path):
    model = SimilarityModel.load(tiny_model)
    index, _ = build_index(digit_folder, model, tmp_path / "i.safetensors")
    with pytest.raises(SiamdiffError, match="positive"):
        search(index, model, np.zeros((28, 28, 1), np.uint8), k=0)
    index.fingerprint, index.model = "someone-else", "other.safetensors"
    with pytest.raises(SiamdiffError, match="another model"):
        search(index, model, np.zeros((28, 28, 1), np.uint8), k=1)
    with pytest.raises(SiamdiffError, match="another model"):
        index.save(tmp_path / "j.safetensors")
        build_index(digit_folder, model, tmp_path / "j.safetensors")


def test_an_index_is_not_updated_from_another_folder(tiny_model, digit_folder, tmp_path):
    model = SimilarityModel.load(tiny_model)
    out = tmp_path / "idx.safetensors"
    build_index(digit_folder, model, out)
    before = out.read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes(sorted(digit_folder.rglob("*.png"))[0].read_bytes())
    with pytest.raises(SiamdiffError, match="holds the images of"):
        build_index(other, model, out)  # would have dropped the 80 images of digit_folder
    assert out.read_bytes() == before
    assert Index.load(out).folder == str(digit_folder.resolve())
    # the same folder named another way (relative, with a trailing ..) is the same folder
    assert build_index(digit_folder / "0" / "..", model, out)[1]["kept"] == 80


def test_score_is_symmetric_and_identity_is_closest(tiny_model, digit_folder):
    model = SimilarityModel.load(tiny_model)
    files = sorted(digit_folder.rglob("*.png"))
    ab, ba = model.score(files[0], files[5]), model.score(files[5], files[0])
    assert ab["distance"] == pytest.approx(ba["distance"], abs=1e-5)
    same = model.score(files[0], files[0])
    assert same["distance"] == pytest.approx(0.0, abs=1e-3) and same["probability"] >= ab["probability"]
    # colour and other sizes are converted the documented way
    rgb = np.repeat(np.zeros((56, 40, 1), np.uint8), 3, axis=2)
    assert model.prepare(rgb).shape == (1, 28, 28)


def test_faiss_search_matches_exact():
    pytest.importorskip("faiss", reason="faiss is the optional large-collection backend")
    rng = np.random.default_rng(1)
    g, q = rng.normal(size=(2000, 32)).astype(np.float32), rng.normal(size=(5, 32)).astype(np.float32)
    d_exact, i_exact = nearest(g, q, 10)
    d_faiss, i_faiss = nearest(g, q, 10, use_faiss=True)
    assert np.array_equal(i_exact, i_faiss)
    assert np.allclose(d_exact, d_faiss, atol=1e-3)
