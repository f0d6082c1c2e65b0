"""The rebuild command at tiny scale: jobs train, install float16 weights with cards
that name the command, skip when finished, and continue a stopped job instead of starting it again."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduce  # noqa: E402


def _rebuild(tmp_path: Path, data_root: str, *only: str) -> list[str]:
    reproduce.main(["--data-dir", data_root, "--smoke", "--only", *only, "--runs", str(tmp_path / "runs"),
                    "--weights", str(tmp_path / "weights"), "--out", str(tmp_path / "out"), "--no-tables",
                    "--n-eval", "8"])
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
    assert next(line for line in table.splitlines() if line.startswith("| ddpm:mnist |")).endswith("| no |")
