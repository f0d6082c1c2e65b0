"""Index and search: incremental updates, exact nearest neighbours, refusing foreign indexes."""

import json
import shutil

import numpy as np
import pytest

from siamdiff.core.errors import SiamdiffError
from siamdiff.similarity.api import SimilarityModel
from siamdiff.similarity.index import Index, build_index, build_ivf, nearest, search


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
    assert counts == {"added": 80, "updated": 0, "kept": 0, "removed": 0, "skipped": 0}
    # a second run embeds nothing new; a new file and a bad file are noticed
    (digit_folder / "0" / "bad.png").write_text("not an image")
    extra = sorted(digit_folder.rglob("*.png"))[0]
    (digit_folder / "new.png").write_bytes(extra.read_bytes())
    try:
        index2, counts2 = build_index(digit_folder, model, out)
    finally:
        (digit_folder / "0" / "bad.png").unlink()
        (digit_folder / "new.png").unlink()
    assert counts2 == {"added": 1, "updated": 0, "kept": 80, "removed": 0, "skipped": 1}
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


def test_a_changed_file_counts_as_updated_and_a_gone_one_as_removed(tiny_model, digit_folder, tmp_path):
    model = SimilarityModel.load(tiny_model)
    folder = tmp_path / "digits"
    shutil.copytree(digit_folder, folder)
    out = tmp_path / "idx.safetensors"
    build_index(folder, model, out)
    files = sorted(folder.rglob("*.png"))
    files[0].write_bytes(files[1].read_bytes())
    files[2].unlink()
    index, counts = build_index(folder, model, out)
    assert counts == {"added": 0, "updated": 1, "kept": 78, "removed": 1, "skipped": 0}
    row = index.names.index(str(files[0].relative_to(folder)))
    assert np.allclose(index.embeddings[row], index.embeddings[index.names.index(str(files[1].relative_to(folder)))])


def test_a_folder_moved_with_its_index_still_works(tiny_model, digit_folder, tmp_path):
    model = SimilarityModel.load(tiny_model)
    shutil.copytree(digit_folder, tmp_path / "a" / "digits")
    build_index(tmp_path / "a" / "digits", model, tmp_path / "a" / "idx.safetensors")
    (tmp_path / "a").rename(tmp_path / "b")
    index = Index.load(tmp_path / "b" / "idx.safetensors")
    assert index.root == str((tmp_path / "b" / "digits").resolve())
    query = sorted((tmp_path / "b" / "digits").rglob("*.png"))[3]
    hit = search(index, model, query, k=1)[0]
    assert hit["path"] == str(query.resolve()) and hit["similarity"] is not None
    # indexed again from its new place: nothing is embedded again
    assert build_index(tmp_path / "b" / "digits", model, tmp_path / "b" / "idx.safetensors")[1]["kept"] == 80


def test_a_folder_moved_away_from_its_index_is_a_warning_and_can_be_indexed_again(tiny_model, digit_folder,
                                                                                  tmp_path, caplog):
    model = SimilarityModel.load(tiny_model)
    shutil.copytree(digit_folder, tmp_path / "digits")
    out = tmp_path / "idx.safetensors"
    build_index(tmp_path / "digits", model, out)
    (tmp_path / "digits").rename(tmp_path / "elsewhere")
    Index.load(out)
    assert "is not there any more" in caplog.text
    assert build_index(tmp_path / "elsewhere", model, out)[1]["kept"] == 80


def test_a_killed_index_run_continues_without_embedding_again(tiny_model, digit_folder, tmp_path, monkeypatch):
    model = SimilarityModel.load(tiny_model)
    out = tmp_path / "idx.safetensors"
    embedded = []
    original = model.embed

    def dies_at_the_third_batch(images, *args, **kwargs):
        if len(embedded) == 2:
            raise KeyboardInterrupt  # as kill would, after two batches were embedded and saved
        embedded.append(len(images))
        return original(images, *args, **kwargs)

    monkeypatch.setattr(model, "embed", dies_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        build_index(digit_folder, model, out, batch_size=16, save_every=0)
    assert len(Index.load(out).names) == 32
    monkeypatch.setattr(model, "embed", original)
    index, counts = build_index(digit_folder, model, out, batch_size=16)
    assert counts["kept"] == 32 and counts["added"] == 48
    fresh = build_index(digit_folder, model, tmp_path / "fresh.safetensors")[0]
    rows = [fresh.names.index(n) for n in index.names]
    assert np.allclose(index.embeddings, fresh.embeddings[rows], atol=1e-5)


def test_ivf_search_reaches_the_recall_it_promises_and_is_stored(tiny_model, digit_folder, tmp_path):
    pytest.importorskip("faiss", reason="faiss is the optional large-collection backend")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 16)).astype(np.float32)
    x = (centres[rng.integers(0, 50, 20_000)] + 0.3 * rng.normal(size=(20_000, 16))).astype(np.float32)
    ivf, info = build_ivf(x, k=5, queries=300)
    assert info["nlist"] == min(int(4 * np.sqrt(20_000)), 20_000 // 39)
    assert info["recall"] >= 0.95 and 1 <= info["nprobe"] < info["nlist"]
    # measured again on other queries, against brute force
    q = (centres[rng.integers(0, 50, 200)] + 0.3 * rng.normal(size=(200, 16))).astype(np.float32)
    index = Index(x, [f"{i}.png" for i in range(len(x))], [(0, 0)] * len(x), "f", "m", ivf=ivf, ivf_info=info)
    _, exact = index.nearest(q, 5, "exact")
    _, approx = index.nearest(q, 5)
    assert index.search_kind() == "ivf"
    assert np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx, exact)]) >= 0.9
    with pytest.raises(SiamdiffError, match="not finite"):
        index.nearest(np.full((1, 16), np.nan, np.float32), 5)
    # a build asked for IVF stores it with what was measured; an index without one refuses "ivf"
    model = SimilarityModel.load(tiny_model)
    built, _ = build_index(digit_folder, model, tmp_path / "i.safetensors", faiss="ivf")
    loaded = Index.load(tmp_path / "i.safetensors")
    assert loaded.search_kind() == "ivf" and loaded.ivf_info == built.ivf_info and loaded.ivf.ntotal == 80
    assert len(search(loaded, model, sorted(digit_folder.rglob("*.png"))[0], k=3)) <= 3
    plain, _ = build_index(digit_folder, model, tmp_path / "p.safetensors", faiss="none")
    with pytest.raises(SiamdiffError, match="has no IVF"):
        plain.nearest(plain.embeddings[:1], 3, "ivf")


def test_an_ivf_search_that_finds_fewer_than_k_drops_the_missing(tmp_path):
    pytest.importorskip("faiss", reason="faiss is the optional large-collection backend")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    ivf, info = build_ivf(x, k=5, queries=50)
    index = Index(x, [str(i) for i in range(400)], [(0, 0)] * 400, "f", "m", ivf=ivf, ivf_info={**info, "nprobe": 1})
    dist, rows = index.nearest(x[:3], 399)  # one cell of ten holds far fewer than 399
    assert rows.shape[1] < 399 and (rows >= 0).all() and np.isfinite(dist).all()


def test_an_index_of_the_first_format_is_read(tmp_path, tiny_model, digit_folder):
    from safetensors.numpy import save_file

    files = sorted(digit_folder.rglob("*.png"))[:3]
    meta = {"format": "siamdiff-index/1", "fingerprint": "f", "model": "m", "folder": str(digit_folder.resolve()),
            "paths": json.dumps([str(f.resolve()) for f in files]), "stamps": json.dumps([[1, 2]] * 3)}
    save_file({"embeddings": np.zeros((3, 4), np.float32)}, str(tmp_path / "old.safetensors"), metadata=meta)
    index = Index.load(tmp_path / "old.safetensors")
    assert index.names == [str(f.relative_to(digit_folder)) for f in files]
    assert index.paths == [str(f.resolve()) for f in files]


def test_exact_search_of_an_index_is_brute_force_with_its_norms_kept():
    rng = np.random.default_rng(3)
    g, q = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
    index = Index(g, [str(i) for i in range(300)], [(0, 0)] * 300, "f", "m")
    brute = np.linalg.norm(q[:, None, :] - g[None, :, :], axis=2)
    for _ in range(2):  # the second search uses the kept norms
        d, rows = index.nearest(q, 3, "exact")
        assert np.array_equal(rows, np.argsort(brute, axis=1)[:, :3])
        assert np.allclose(d, np.sort(brute, axis=1)[:, :3], atol=1e-4)
    index.embeddings = g[:100]  # an index made smaller: its norms again
    assert index.nearest(q, 1, "exact")[1].max() < 100
    index.embeddings = g[::-1].copy()  # other embeddings of the same number: their norms, not the old ones
    index.names = [str(i) for i in range(300)]
    assert np.array_equal(index.nearest(q, 3, "exact")[1], 299 - np.argsort(brute, axis=1)[:, :3])
