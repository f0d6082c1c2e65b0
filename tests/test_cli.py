"""The command line: results on good input; one line, exit code 2 and nothing written on bad input."""

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamdiff.cli import main
from siamdiff.core.checkpoint import save_model
from siamdiff.nets.convnet import PRESETS, EmbeddingNet


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _png_header(width, height):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = d / "good.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(good)
    (d / "text.png").write_text("hello, I am text")
    (d / "empty.png").write_bytes(b"")
    (d / "truncated.png").write_bytes(good.read_bytes()[:40])
    (d / "zero.png").write_bytes(_png_header(0, 10))
    (d / "bomb.png").write_bytes(_png_header(30000, 30000))
    (d / "emptydir").mkdir()
    return d


@pytest.mark.parametrize("name", ["missing.png", "text.png", "empty.png", "truncated.png", "zero.png", "bomb.png"])
def test_similarity_bad_images(capsys, tiny_model, bad_files, name):
    code, out, err = run(capsys, "similarity", bad_files / name, bad_files / "good.png", "--model", tiny_model)
    assert code == 2 and out == ""
    assert err.startswith("siamdiff: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert name in err


def test_similarity_json_and_text(capsys, tiny_model, digit_folder):
    a, b = sorted(digit_folder.rglob("*.png"))[:2]
    code, out, _ = run(capsys, "similarity", a, b, "--model", tiny_model, "--json")
    result = json.loads(out)
    assert code == 0 and 0 <= result["probability"] <= 1 and result["distance"] >= 0
    code, out, _ = run(capsys, "similarity", a, a, "--model", tiny_model)
    assert code == 0 and "distance 0.000" in out


def test_unknown_model_and_foreign_checkpoint(capsys, tmp_path, bad_files):
    good = bad_files / "good.png"
    code, _, err = run(capsys, "similarity", good, good, "--model", "imagenet")
    assert code == 2 and "unknown model 'imagenet'" in err
    other = EmbeddingNet(PRESETS["default-mnist"])
    path = save_model(tmp_path / "other.safetensors", other, "similarity", PRESETS["tiny-1"].to_dict())
    code, _, err = run(capsys, "similarity", good, good, "--model", path)
    assert code == 2 and "cannot load weights" in err
    foreign = tmp_path / "foreign.safetensors"
    save_model(foreign, other, "denoiser", {})
    code, _, err = run(capsys, "similarity", good, good, "--model", foreign)
    assert code == 2 and "not a similarity model" in err


def test_damaged_indexes_wrong_targets_and_odd_names_are_one_line_errors(capsys, tiny_model, digit_folder,
                                                                          bad_files, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    good = bad_files / "good.png"
    idx = tmp_path / "i.safetensors"
    assert run(capsys, "index", digit_folder, "--out", idx, "--model", tiny_model)[0] == 0
    with safe_open(str(idx), "numpy") as f:
        meta = f.metadata()
    tensors = load_file(str(idx))
    tensors["embeddings"][-1] = np.nan
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)
    for index, message in ((tmp_path / "nan.safetensors", "not finite"), (tmp_path, "is a folder"),
                           (good, "not a siamdiff index")):
        code, _, err = run(capsys, "search", good, "--index", index, "--model", tiny_model)
        assert code == 2 and message in err and err.count("\n") == 1, err
    code, _, err = run(capsys, "index", digit_folder, "--out", tmp_path / "no" / "i.safetensors", "--model",
                       tiny_model)
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "similarity", good, good, "--model", tmp_path)
    assert code == 2 and "holds no model.safetensors" in err
    code, _, err = run(capsys, "similarity", good, tmp_path / "new\nline.png", "--model", tiny_model)
    assert code == 2 and err.count("\n") == 1 and "new\\nline" in err, err
    code, _, err = run(capsys, "plot", "similarity", "--model", tiny_model, "--dataset", "nope", "--out",
                       tmp_path / "plots")
    assert code == 2 and not (tmp_path / "plots").exists()


def test_index_and_search(capsys, tiny_model, digit_folder, bad_files, tmp_path):
    idx = tmp_path / "digits.safetensors"
    code, out, _ = run(capsys, "index", digit_folder, "--out", idx, "--model", tiny_model)
    assert code == 0 and "80 images" in out
    query = sorted(digit_folder.rglob("*.png"))[3]
    code, out, _ = run(capsys, "search", query, "--index", idx, "-k", 3, "--json")
    hits = json.loads(out)["results"]
    assert code == 0 and len(hits) == 3 and hits[0]["path"] == str(query.resolve())
    for k in (0, -1):
        code, _, err = run(capsys, "search", query, "--index", idx, "-k", k)
        assert code == 2 and "-k must be a positive number" in err
    code, _, err = run(capsys, "index", bad_files / "emptydir", "--out", tmp_path / "e.safetensors", "--model",
                       tiny_model)
    assert code == 2 and "no" in err and not (tmp_path / "e.safetensors").exists()
    code, _, err = run(capsys, "search", query, "--index", bad_files / "text.png")
    assert code == 2 and "cannot open index" in err


def test_index_by_another_model_is_refused(capsys, tiny_model, digit_folder, tmp_path):
    idx = tmp_path / "digits.safetensors"
    assert run(capsys, "index", digit_folder, "--out", idx, "--model", tiny_model)[0] == 0
    other = EmbeddingNet(PRESETS["tiny-1"])
    other_path = save_model(tmp_path / "o.safetensors", other, "similarity", PRESETS["tiny-1"].to_dict(),
                            {"calibration": {"intercept": 0, "slope": -1, "threshold": 1}})
    before = idx.read_bytes()
    code, _, err = run(capsys, "index", digit_folder, "--out", idx, "--model", other_path)
    assert code == 2 and "another model" in err and idx.read_bytes() == before
    code, _, err = run(capsys, "search", sorted(digit_folder.rglob("*.png"))[0], "--index", idx, "--model",
                       other_path)
    assert code == 2 and "another model" in err


def test_a_model_with_a_calibration_that_is_not_finite_is_refused(capsys, tmp_path, digit_folder):
    net = EmbeddingNet(PRESETS["tiny-1"])
    path = save_model(tmp_path / "nan.safetensors", net, "similarity", PRESETS["tiny-1"].to_dict(),
                      {"calibration": {"intercept": float("nan"), "slope": -1, "threshold": 1}})
    images = sorted(digit_folder.rglob("*.png"))[:2]
    code, out, err = run(capsys, "similarity", *images, "--model", path, "--json")
    assert code == 2 and json.loads(out)["error"] in err and "damaged calibration" in err


def test_similarity_pairs_is_one_line_per_pair(capsys, digit_folder, tmp_path):
    images = sorted(digit_folder.rglob("*.png"))
    pairs = [(images[0], images[1]), (images[2], tmp_path / "missing.png"), (images[3], images[0])]
    listing = tmp_path / "pairs.csv"
    listing.write_text("a,b\n" + "".join(f"{a},{b}\n\n" for a, b in pairs))
    code, out, err = run(capsys, "similarity", "--pairs", listing, "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 2 and len(records) == 3 and err.count("\n") == 1 and "missing.png" in err
    assert records[1] == {"a": str(pairs[1][0]), "b": str(pairs[1][1]), "error": records[1]["error"]}
    for (a, b), record in zip(pairs[::2], records[::2]):  # the same object as one pair at a time
        code, one, _ = run(capsys, "similarity", a, b, "--json")
        alone = json.loads(one)
        assert code == 0 and alone.keys() == record.keys()
        for key, value in alone.items():
            assert record[key] == (pytest.approx(value, abs=1e-5) if isinstance(value, float) else value), key


@pytest.mark.parametrize("text, argv, words", [
    ("x.png,y.png,z.png\n", [], "line 1: two image paths"),
    ("a,b\n", [], "holds no pairs"),
    ("x.png,y.png\n", ["x.png"], "not both"),
    (None, [], "give two images A B, or --pairs FILE"),
])
def test_similarity_pairs_refusals(capsys, tmp_path, text, argv, words):
    listing = tmp_path / "pairs.csv"
    extra = ["--pairs", listing] if text is not None else []
    if text is not None:
        listing.write_text(text)
    code, out, err = run(capsys, "similarity", *argv, *extra)
    assert code == 2 and out == "" and words in err and err.count("\n") == 1


def test_search_many_queries_is_one_line_per_query(capsys, tiny_model, digit_folder, tmp_path):
    idx = tmp_path / "digits.safetensors"
    assert run(capsys, "index", digit_folder, "--out", idx, "--model", tiny_model)[0] == 0
    images = sorted(digit_folder.rglob("*.png"))
    listing = tmp_path / "queries.txt"
    listing.write_text(f"{images[5]}\n\n{tmp_path / 'missing.png'}\n")
    code, out, err = run(capsys, "search", images[0], "--queries", listing, "--index", idx, "-k", 3, "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 2
    assert [r["path"] for r in records] == [str(images[0]), str(images[5]), str(tmp_path / "missing.png")]
    assert "error" in records[2] and "missing.png" in err and err.count("\n") == 1
    for record in records[:2]:
        code, one, _ = run(capsys, "search", record["path"], "--index", idx, "-k", 3, "--json")
        assert code == 0 and json.loads(one) == record


def test_index_and_train_print_one_json_object(capsys, tiny_model, digit_folder, tmp_path):
    idx = tmp_path / "digits.safetensors"
    code, out, _ = run(capsys, "index", digit_folder, "--out", idx, "--model", tiny_model, "--json")
    assert code == 0 and json.loads(out) == {"output": str(idx), "images": 80, "added": 80, "updated": 0, "kept": 0,
                                             "removed": 0, "skipped": 0, "search": "exact"}
    code, out, _ = run(capsys, "index", digit_folder, "--out", idx, "--model", tiny_model, "--json", "--faiss", "ivf")
    record = json.loads(out)
    assert code == 0 and record["kept"] == 80 and record["search"] == "ivf" and record["ivf"]["recall"] >= 0.95
    code, out, _ = run(capsys, "search", sorted(digit_folder.rglob("*.png"))[0], "--index", idx, "--json")
    assert code == 0 and json.loads(out)["search"] == "ivf" and json.loads(out)["recall"] == record["ivf"]["recall"]
    code, out, _ = run(capsys, "search", sorted(digit_folder.rglob("*.png"))[0], "--index", idx, "--json", "--exact")
    assert code == 0 and json.loads(out)["search"] == "exact" and len(json.loads(out)["results"]) == 5
    code, out, _ = run(capsys, "train", "similarity", "--dataset", f"folder:{digit_folder}", "--model", "tiny",
                       "--epochs", 1, "--channels", 1, "--image-size", 28, "--out", tmp_path / "run", "--json")
    record = json.loads(out)
    assert code == 0 and record["output"] == str(tmp_path / "run" / "model.safetensors") and record["epochs"] == 1
    assert 0 <= record["val_recall_at_1"] <= 1


def test_train_eval_cli_on_folder_dataset(capsys, digit_folder, tmp_path):
    out = tmp_path / "run"
    code, text, err = run(capsys, "train", "similarity", "--dataset", f"folder:{digit_folder}", "--model", "tiny",
                          "--epochs", 1, "--channels", 1, "--image-size", 28, "--out", out)
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and (out / "log.jsonl").is_file()
    code, text, err = run(capsys, "eval", "similarity", "--model", out, "--dataset", "sample:mnist", "--json",
                          "--n-pairs", 200, "--hard", 20)
    result = json.loads(text)
    for key in ("verification_accuracy", "roc_auc", "eer", "recall_at_1", "recall_at_5", "map_at_r", "n_pairs",
                "n_queries", "hard_accuracy", "hard_accuracy_ssim"):
        assert key in result
    assert code == 0 and result["n_pairs"] == 200 and result["n_queries"] == 300
    code, text, err = run(capsys, "eval", "similarity", "--model", out, "--dataset", f"folder:{digit_folder}",
                          "--json", "--n-pairs", 50, "--hard", 5)
    assert code == 0, err
    assert json.loads(text)["gallery"].startswith("train")


def test_train_similarity_fine_tunes_from_init(capsys, tiny_model, digit_folder, tmp_path):
    from siamdiff.core.checkpoint import load_model
    from siamdiff.nets.convnet import build_from_config

    # the folder is read at the model's size and channel count (the default for folders is 3 x 32 x 32)
    code, _, err = run(capsys, "train", "similarity", "--dataset", f"folder:{digit_folder}", "--epochs", 1,
                       "--lr", "1e-5", "--init", tiny_model, "--model", "seed", "--out", tmp_path / "ft")
    assert code == 0, err
    init, init_meta = load_model(tiny_model)
    tuned, meta = load_model(tmp_path / "ft" / "model.safetensors")
    assert meta["config"] == init_meta["config"]  # the network of --init, not --model's
    assert meta["extra"]["init"]["from"] == str(tiny_model) and meta["extra"]["init"]["epochs"] == 1
    fresh = build_from_config(init_meta["config"])
    moved = sum((a - b).abs().sum() for a, b in zip(tuned.state_dict().values(), init.state_dict().values()))
    apart = sum((a - b).abs().sum() for a, b in zip(fresh.state_dict().values(), init.state_dict().values()))
    assert 0 < moved < 0.05 * apart


def test_train_similarity_init_refuses_other_image_shapes(capsys, tiny_model, data_root, tmp_path):
    code, _, err = run(capsys, "train", "similarity", "--dataset", "cifar10", "--data-dir", data_root, "--init",
                       tiny_model, "--out", tmp_path / "rgb")
    assert code == 2 and "1-channel 28px images; 'cifar10' has 3-channel 32px" in err and err.count("\n") == 1
    assert not (tmp_path / "rgb").exists()


def _exit_code(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's errors
        return exc.code


@pytest.mark.parametrize("argv", [
    ["train", "similarity", "--dataset", "mnist", "--out", "{tmp}", "--epochs", "0"],
    ["train", "similarity", "--dataset", "nope", "--out", "{tmp}/x", "--data-dir", "{tmp}"],
    ["train", "similarity", "--dataset", "mnist", "--out", "{tmp}/y", "--data-dir", "{tmp}"],
    ["eval", "similarity", "--dataset", "sample:mnist", "--n-pairs", "-3"],
    ["search", "x.png", "--index", "{tmp}/none.safetensors", "-k", "abc"],
    ["frobnicate"],
    ["train", "similarity", "--dataset", "folder:{tmp}", "--out", "{tmp}/x", "--image-size", "100000"],
    ["train", "similarity", "--dataset", "folder:{tmp}", "--out", "{tmp}/x", "--epochs", str(2 ** 70)],
    ["train", "similarity", "--dataset", "folder:{tmp}", "--out", "{tmp}/x", "--lr", "1e300"],
    ["train", "similarity", "--dataset", "folder:{tmp}", "--out", "{tmp}/x", "--device", "mps"],
    ["eval", "similarity", "--dataset", "sample:mnist", "--n-pairs", str(2 ** 70)],
])
def test_bad_arguments_exit_2_with_one_line(capsys, tmp_path, argv):
    code = _exit_code([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("siamdiff: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / "model.safetensors").exists()


def test_python_dash_m_entry_point(tiny_model, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "siamdiff", "similarity", tmp_path / "nope.png", "b.png",
                           "--model", tiny_model], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("siamdiff: error:") and "nope.png" in proc.stderr and "no such file" in proc.stderr


def test_plot_on_a_folder_and_into_a_file(capsys, tiny_model, digit_folder, tmp_path):
    code, out, err = run(capsys, "plot", "similarity", "--model", tiny_model, "--dataset", f"folder:{digit_folder}",
                         "--out", tmp_path / "plots", "--json")
    assert code == 0, err
    assert (tmp_path / "plots" / "roc.png").is_file()
    assert {Path(json.loads(line)["output"]).name for line in out.splitlines()} == {"pairs.png", "hard_pairs.png",
                                                                                    "roc.png", "map.png"}
    (tmp_path / "afile").write_text("keep me")
    code, _, err = run(capsys, "plot", "similarity", "--model", tiny_model, "--out", tmp_path / "afile")
    assert code == 2 and err.count("\n") == 1 and (tmp_path / "afile").read_text() == "keep me"


def test_sample_is_test_only_and_pairs_need_two(capsys, tiny_model, tmp_path):
    code, _, err = run(capsys, "train", "similarity", "--dataset", "sample:mnist", "--out", tmp_path / "r")
    assert code == 2 and "test split only" in err
    code, _, err = run(capsys, "eval", "similarity", "--model", tiny_model, "--dataset", "sample:mnist",
                       "--n-pairs", 1)
    assert code == 2 and "at least 2" in err


def test_train_refuses_to_replace_a_run(capsys, digit_folder, tmp_path):
    args = ["train", "similarity", "--dataset", f"folder:{digit_folder}", "--model", "tiny", "--epochs", 1,
            "--channels", 1, "--image-size", 28, "--out", tmp_path]
    assert run(capsys, *args)[0] == 0
    before = (tmp_path / "model.safetensors").read_bytes()
    code, _, err = run(capsys, *args)
    assert code == 2 and "--overwrite" in err and (tmp_path / "model.safetensors").read_bytes() == before


def test_damaged_index_is_refused_and_never_rewritten(capsys, tiny_model, digit_folder, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    idx = tmp_path / "digits.safetensors"
    assert run(capsys, "index", digit_folder, "--out", idx, "--model", tiny_model)[0] == 0
    with safe_open(str(idx), framework="numpy") as f:
        meta = f.metadata()
    tensors = load_file(str(idx))
    emb = tensors["embeddings"]
    query = sorted(digit_folder.rglob("*.png"))[0]
    for name, change, extra, message in (
            ("narrow", {"embeddings": emb[:, :3]}, {}, "its embeddings have 3 numbers"),
            ("empty", {"embeddings": emb[:0], "stamps": tensors["stamps"][:0], "names": np.zeros(0, np.uint8)},
             {}, "no embeddings"),
            ("ints", {"embeddings": emb.astype(np.int32)}, {}, "not float ones"),
            ("stamps", {"stamps": tensors["stamps"][:5]}, {}, "differ in number"),
            ("ivf", {}, {"ivf": "[5"}, "its list of images is unreadable")):
        bad = tmp_path / f"{name}.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in {**tensors, **change}.items()}, str(bad),
                  metadata={**meta, **extra})
        before = bad.read_bytes()
        code, _, err = run(capsys, "search", query, "--index", bad, "--model", tiny_model)
        assert code == 2 and message in err and err.count("\n") == 1, (name, err)
        code, _, err = run(capsys, "index", digit_folder, "--out", bad, "--model", tiny_model)
        assert code == 2 and message in err and bad.read_bytes() == before, (name, err)
    code, _, err = run(capsys, "search", query, "--index", tiny_model)  # a model file, not an index
    assert code == 2 and "not a siamdiff index" in err


def test_index_of_a_model_trained_again_says_so(capsys, digit_folder, tmp_path):
    out, idx = tmp_path / "run", tmp_path / "digits.safetensors"
    train = ["train", "similarity", "--dataset", f"folder:{digit_folder}", "--model", "tiny", "--epochs", 1,
             "--channels", 1, "--image-size", 28, "--out", out]
    assert run(capsys, *train)[0] == 0
    assert run(capsys, "index", digit_folder, "--out", idx, "--model", out)[0] == 0
    assert run(capsys, *train, "--overwrite", "--seed", 1)[0] == 0
    code, _, err = run(capsys, "search", sorted(digit_folder.rglob("*.png"))[0], "--index", idx)
    assert code == 2 and "built by an earlier version of" in err and "build a new index" in err


def test_failed_training_starts_leave_no_folder_and_damaged_state_is_one_line(capsys, tiny_model, digit_folder,
                                                                              tmp_path):
    base = ["train", "similarity", "--dataset", f"folder:{digit_folder}", "--model", "tiny", "--epochs", 1,
            "--channels", 1, "--image-size", 28]
    for extra, message in ((["--resume"], "does not exist"), (["--device", "tpu"], "unknown device 'tpu'"),
                           (["--resume", "--overwrite"], "give one of them")):
        code, _, err = run(capsys, *base, "--out", tmp_path / "new", *extra)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "new").exists()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for content in (b"", b"\x00" * 40):
        (damaged / "state.pt").write_bytes(content)
        code, _, err = run(capsys, *base, "--out", damaged, "--resume")
        assert code == 2 and "damaged or not a siamdiff training state" in err and err.count("\n") == 1, err


def test_a_folder_of_unreadable_files_is_one_line_and_options_that_do_not_apply_are_refused(capsys, digit_folder,
                                                                                           tmp_path):
    junk = tmp_path / "junk" / "a"
    junk.mkdir(parents=True)
    (junk / "x.png").write_text("not an image")
    for argv in (["eval", "similarity", "--dataset", f"folder:{junk.parent}"],
                 ["index", junk.parent, "--out", tmp_path / "i.safetensors"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "unreadable" in err, err
    base = ["train", "similarity", "--dataset", f"folder:{digit_folder}", "--model", "tiny", "--epochs", 1,
            "--channels", 1, "--image-size", 28, "--out", tmp_path / "run"]
    for extra, message in ((["--loss", ""], "unknown --loss ''"),
                           (["--margin", 2], "--margin does not apply to the supcon loss")):
        code, _, err = run(capsys, *base, *extra)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists()


def test_search_with_an_empty_model_and_init_with_another_shape_are_refused(capsys, tiny_model, digit_folder,
                                                                             tmp_path):
    idx = tmp_path / "i.safetensors"
    assert run(capsys, "index", digit_folder, "--out", idx, "--model", tiny_model)[0] == 0
    code, _, err = run(capsys, "search", sorted(digit_folder.rglob("*.png"))[0], "--index", idx, "--model", "")
    assert code == 2 and "no model given" in err
    code, _, err = run(capsys, "train", "similarity", "--dataset", f"folder:{digit_folder}", "--init", tiny_model,
                       "--channels", 3, "--out", tmp_path / "ft")
    assert code == 2 and "leave out --channels" in err and err.count("\n") == 1 and not (tmp_path / "ft").exists()


def test_demo_never_overwrites_a_folder_of_other_files(capsys, tmp_path):
    from siamdiff.demo import MARKER, _is_demo_folder

    (tmp_path / "report.md").write_text("my notes\n")
    code, _, err = run(capsys, "demo", "--out", tmp_path)
    assert code == 2 and "holds other files" in err and err.count("\n") == 1
    assert (tmp_path / "report.md").read_text() == "my notes\n" and len(list(tmp_path.iterdir())) == 1
    mine = tmp_path / "mine"  # a user's index under the demo's file name: the demo would delete it
    mine.mkdir()
    (mine / "index-mnist.safetensors").write_bytes(b"x")
    assert not _is_demo_folder(mine)
    (mine / MARKER).touch()  # a demo stopped before its report leaves its marker: it may run there again
    assert _is_demo_folder(mine)


def test_a_command_that_fails_with_json_prints_an_error_object(capsys, tiny_model, tmp_path):
    code, out, err = run(capsys, "similarity", tmp_path / "none.png", tmp_path / "none.png", "--model", tiny_model,
                         "--json")
    assert code == 2 and err.count("\n") == 1 and json.loads(out) == {"error": err.strip()[len("siamdiff: error: "):]}
    assert "none.png" in json.loads(out)["error"]


def test_json_never_holds_nan_or_infinity(capsys):
    from siamdiff.cli import _print_json

    _print_json({"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": "nan"})
    assert json.loads(capsys.readouterr().out) == {"a": None, "b": [1.5, None, {"c": None}], "d": "nan"}
