"""The rebuild command at tiny scale: jobs train, install float16 weights with cards
that name the command, skip when finished, and continue a stopped job instead of starting it again."""

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduce  # noqa: E402


def _rebuild(tmp_path: Path, data_root: str, *only: str, options: tuple[str, ...] = ()) -> list[dict]:
    reproduce.main(["--data-dir", data_root, "--smoke", "--only", *only, "--runs", str(tmp_path / "runs"),
                    "--weights", str(tmp_path / "weights"), "--out", str(tmp_path / "out"), "--no-tables",
                    "--n-eval", "8", *options])
    return json.loads((tmp_path / "out" / "reproduce.json").read_text())["jobs"]


def test_rebuild_installs_models_with_cards_and_resumes(tmp_path, data_root, capsys):
    from siamdiff.core.checkpoint import load_model

    records = _rebuild(tmp_path, data_root, "noise-estimator:mnist", "ddpm:mnist")
    assert [r["job"] for r in records] == ["noise-estimator:mnist", "ddpm:mnist"]
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("[2/2] ddpm:mnist: 1 epochs, train ") and "PSNR" in line for line in lines)
    for kind in ("sigma", "diffusion"):
        card = json.loads((tmp_path / "weights" / f"{kind}-mnist.json").read_text())
        assert card["command"].startswith("python benchmarks/reproduce.py ") and card["kind"] == kind
        assert card["rebuild"] == "python benchmarks/reproduce.py --data-dir ../shared/data --only " + \
            ("noise-estimator:mnist" if kind == "sigma" else "ddpm:mnist")
        assert card["epochs"] == 1 and card["train_seconds"] >= 0 and card["hardware"]["cores"] >= 1
        net, meta = load_model(tmp_path / "weights" / f"{kind}-mnist.safetensors", kind=kind)
        assert next(iter(net.state_dict().values())).dtype.is_floating_point
    assert all(r["installed"] for r in records)
    diffusion = next(r for r in records if r["job"] == "ddpm:mnist")
    assert set(diffusion["metrics"]["psnr"]) == {"0.1", "0.2", "0.3", "0.5"}

    # a stop after training, before installing: the next run continues the job instead of training it again
    run = tmp_path / "runs" / "default" / "ddpm-mnist"
    (run / "done.json").unlink()
    trained = (run / "state.pt").stat().st_mtime_ns
    again = _rebuild(tmp_path, data_root, "noise-estimator:mnist", "ddpm:mnist")
    assert (run / "state.pt").stat().st_mtime_ns == trained and (run / "done.json").is_file()
    assert [r["job"] for r in again] == ["noise-estimator:mnist", "ddpm:mnist"]
    assert again[0] == records[0]  # finished: read back, not run again
    assert len((run / "log.jsonl").read_text().splitlines()) == 1


def test_rebuild_refuses_an_unknown_job(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        reproduce.main(["--data-dir", str(tmp_path), "--only", "similarity:svhn"])
    assert exc.value.code == 2 and "unknown job similarity:svhn" in capsys.readouterr().err


def test_every_shipped_kind_and_benchmark_model_has_a_job():
    keys = [j.key for j in reproduce.jobs(benchmark_models=True)]
    for dataset in reproduce.DATASETS:
        for kind in reproduce.SHIPPED_KINDS:
            assert f"{kind}:{dataset}" in keys
        assert f"denoiser:{dataset}" in keys and f"similarity-seed:{dataset}" in keys
    assert len(keys) == len(set(keys))
    # the folders of benchmark-only models are where benchmarks/denoise.py looks for them
    sys.path.insert(0, str(Path(reproduce.__file__).parent))
    from denoise import BENCHMARK_MODELS

    folders = {j.folder for j in reproduce.jobs(benchmark_models=True) if not j.ships}
    assert {f"mnist-{name}" for name in BENCHMARK_MODELS} <= folders


def test_summary_marks_a_rebuilt_model_that_was_not_kept(tmp_path, data_root):
    _rebuild(tmp_path, data_root, "noise-estimator:mnist", "ddpm:mnist")
    (tmp_path / "weights" / "diffusion-mnist.safetensors").unlink()  # put back by hand: another model is shipped
    reproduce.main(["--data-dir", data_root, "--summary-only", "--weights", str(tmp_path / "weights"), "--out",
                    str(tmp_path / "out")])
    rows = json.loads((tmp_path / "out" / "reproduce.json").read_text())["jobs"]
    assert [(r["job"], r["installed"]) for r in rows] == [("noise-estimator:mnist", True), ("ddpm:mnist", False)]
    table = (tmp_path / "out" / "reproduce.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| ddpm:mnist |"))
    hw = rows[1]["hardware"]
    assert row.endswith("| no |") and f"| {hw['cpu']}, {hw['cores']} cores, " in row  # the machine of its own run


def test_a_rebuilt_model_that_scores_worse_than_the_shipped_one_is_not_installed(tmp_path, data_root, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("sigma-mnist", "diffusion-mnist"):  # the shipped models, against two trained for two batches
        for suffix in (".safetensors", ".json"):
            shutil.copy(reproduce.WEIGHTS / f"{name}{suffix}", weights)
    before = {p.name: p.read_bytes() for p in weights.iterdir()}
    records = _rebuild(tmp_path, data_root, "noise-estimator:mnist", "ddpm:mnist")
    assert {p.name: p.read_bytes() for p in weights.iterdir()} == before
    for r in records:  # both evaluated in the same run by the same protocol
        assert r["kept"] == "shipped" and not r["installed"]
        assert set(r["shipped_metrics"]) == set(r["metrics"])
        assert reproduce.figures(r["shipped_metrics"]) > reproduce.figures(r["metrics"])
    assert "ddpm:mnist: 1 epochs" in capsys.readouterr().out.split("the shipped model stays (PSNR ")[0]
    row = next(line for line in (tmp_path / "out" / "reproduce.md").read_text().splitlines()
               if line.startswith("| ddpm:mnist |"))
    assert "| no: shipped model better, PSNR " in row

    # asked to, it installs them after all, without training again
    again = _rebuild(tmp_path, data_root, "noise-estimator:mnist", "ddpm:mnist", options=("--install", "always"))
    assert all(r["kept"] == "rebuilt" and r["installed"] for r in again)
    assert (weights / "diffusion-mnist.safetensors").read_bytes() != before["diffusion-mnist.safetensors"]
    assert [r["epochs"] for r in again] == [1, 1]


def test_the_comparison_figures_of_each_kind():
    similarity = {"recall_at_1": 0.9, "map_at_r": 0.5, "verification_accuracy": 0.8, "roc_auc": 0.95}
    assert reproduce.figures(similarity) == (0.9, 0.8, 0.95)
    assert reproduce.figures({"test_accuracy": 0.8}) == (0.8,)
    assert reproduce.figures({"psnr": {"0.1": 30.0, "0.5": 20.0}, "n": 8}) == (25.0,)
    assert reproduce.figures({"sigma_rel_error": {"0.1": 0.1, "0.5": 0.3}}) == (pytest.approx(-0.2),)  # lower better
    assert reproduce.figures({}) is None


def test_a_similarity_model_that_verifies_worse_stays_out_though_it_retrieves_better(tmp_path, monkeypatch):
    shipped = {"recall_at_1": 0.9960, "verification_accuracy": 0.9981, "roc_auc": 1.0}
    rebuilt = {"recall_at_1": 0.9967, "verification_accuracy": 0.9966, "roc_auc": 0.9999}
    monkeypatch.setattr(reproduce, "evaluate_job", lambda job, model, args: dict(shipped))
    (tmp_path / "similarity-mnist.safetensors").write_bytes(b"")
    args = argparse.Namespace(weights=tmp_path, install="better")
    job = reproduce.Job("similarity", "mnist")
    assert reproduce.keep(job, {"metrics": rebuilt}, args) == "shipped"
    assert reproduce.keep(job, {"metrics": {**shipped, "recall_at_1": 0.997}}, args) == "rebuilt"
    assert reproduce.keep(job, {"metrics": rebuilt}, argparse.Namespace(weights=tmp_path, install="always")) == \
        "rebuilt"


def test_a_run_with_no_ship_installs_nothing_and_says_so(tmp_path, data_root):
    records = _rebuild(tmp_path, data_root, "noise-estimator:mnist", options=("--no-ship",))
    assert not (tmp_path / "weights").exists() and not records[0]["installed"] and "kept" not in records[0]
    row = next(line for line in (tmp_path / "out" / "reproduce.md").read_text().splitlines()
               if line.startswith("| noise-estimator:mnist |"))
    assert row.endswith("| no: run with --no-ship |")
