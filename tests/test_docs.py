"""The docs stay true: the README's result tables are the benchmark JSON's numbers, and no committed file names a
folder of the machine it was made on."""

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:tmp|work|root|home|Users|mnt|var/folders)/[\w.+-]")


def _committed() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def test_no_committed_file_names_a_machine_folder():
    from safetensors import safe_open

    found = []
    for path in _committed():
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                text = json.dumps(f.metadata())
        elif path.suffix in (".md", ".json", ".txt", ".toml", ".cfg", ".yaml", ".yml", ".sh") or path.name == "run":
            text = path.read_text(errors="replace")
        else:
            continue
        found += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in MACHINE_PATH.finditer(text)]
    assert not found, found


def _table(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after the line that starts with ``heading``."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not set("".join(cells)) <= set("-: "):
            rows.append(cells)
    return rows


def test_readme_similarity_table_is_the_benchmarks():
    result = json.loads((ROOT / "docs" / "benchmarks" / "similarity.json").read_text())
    rows = {r["dataset"]: r["metrics"] for r in result["rows"] if r["model"] == "default"}
    table = _table((ROOT / "README.md").read_text(), "Similarity of the shipped models")
    header, body = table[0], table[1:]
    keys = {"recall@1": "recall_at_1", "MAP@R": "map_at_r", "verification accuracy": "verification_accuracy",
            "ROC-AUC": "roc_auc", "hard pairs: siamdiff": "hard_accuracy", "hard pairs: pixel SSIM": "hard_accuracy_ssim"}
    names = {"MNIST": "mnist", "Fashion-MNIST": "fashion-mnist", "CIFAR-10": "cifar10"}
    assert len(body) == 3
    for cells in body:
        metrics = rows[names[cells[0]]]
        for title, cell in zip(header[1:], cells[1:]):
            assert cell == f"{metrics[keys[title]]:.4f}", (cells[0], title)


def test_readme_denoising_table_is_the_benchmarks():
    result = json.loads((ROOT / "docs" / "benchmarks" / "denoise.json").read_text())
    table = _table((ROOT / "README.md").read_text(), "Denoising, MNIST")
    header, body = table[0], table[1:]
    sigmas = [float(h.removeprefix("σ ")) for h in header[1:]]
    assert body
    for cells in body:
        name = re.match(r"`([^`]+)`", cells[0])[1]  # the benchmark's row name, in backticks
        for sigma, cell in zip(sigmas, cells[1:]):
            row = next(r for r in result["rows"] if (r["dataset"], r["name"], r["sigma"], r["clip"]) ==
                       ("mnist", name, sigma, False))
            assert cell == f"{row['psnr']:.2f}", (name, sigma)


def test_readme_photo_lines_are_the_benchmarks():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("Denoising photos"):].split("\n## ")[0].split("\n### ")[0]
    quoted = [line for line in section.splitlines() if line.startswith("- ")]
    written = (ROOT / "docs" / "benchmarks" / "photos.md").read_text().splitlines()
    assert quoted and all(line in written for line in quoted), quoted


def test_readme_training_table_is_the_rebuild():
    result = json.loads((ROOT / "docs" / "benchmarks" / "reproduce.json").read_text())
    jobs = {r["job"]: r for r in result["jobs"]}
    text = (ROOT / "README.md").read_text()
    table = _table(text, "### Training on a 2-core CPU")
    header, body = table[0], table[1:]
    assert header[:4] == ["job", "epochs", "training min", "recall@1"] and body
    for cells in body:
        job = jobs[cells[0].strip("`")]
        assert cells[1] == str(job["epochs"]) and cells[2] == f"{job['train_seconds'] / 60:.1f}"
        assert cells[3] == f"{job['metrics']['recall_at_1']:.4f}"
        assert f"`{job['command']}`" in text  # the command that made the row is written beside the table


def test_readme_server_table_is_the_benchmark():
    result = json.loads((ROOT / "docs" / "benchmarks" / "serve.json").read_text())
    text = (ROOT / "README.md").read_text()
    header, *body = _table(text, "### Web server")
    assert header == ["request", "p50 ms", "p99 ms", "requests/s"] and len(body) == 4
    sequential, concurrent = result["similarity_sequential"], result["similarity_concurrent"]
    expected = [(sequential, f"{1000 / sequential['mean_ms']:.0f}"), (concurrent, str(concurrent["requests_per_s"])),
                (result["denoise"]["32x32"], ""), (result["denoise"]["256x256"], "")]
    for cells, (row, rate) in zip(body, expected):
        assert cells[1:] == [str(row["p50_ms"]), str(row["p99_ms"]), rate], cells
    fuzz = result["fuzz"]
    assert f"Of {fuzz['requests']:,} fuzzed requests" in text and f"{fuzz['status_5xx']} were" in text
    assert fuzz["healthy_after"] and f"`{result['command']}`" in text


def test_readme_agreement_table_is_the_benchmark():
    result = json.loads((ROOT / "docs" / "benchmarks" / "similarity.json").read_text())["agreement"]
    text = (ROOT / "README.md").read_text()
    header, *body = _table(text, "### 2AFC agreement")
    assert header[:2] == ["dataset", "triplets"] and len(body) == len(result["rows"])
    names = {"MNIST": "mnist", "Fashion-MNIST": "fashion-mnist", "CIFAR-10": "cifar10"}
    for cells, row in zip(body, result["rows"]):
        assert (names[cells[0]], cells[1]) == (row["dataset"], row["kind"])
        for title, cell in zip(header[2:], cells[2:]):
            assert cell == f"{row['agreement'][title]:.3f}", (cells[0], cells[1], title)
    assert f"`{result['command']}`" in text


def test_duplicates_threshold_is_the_benchmarks_choice():
    from siamdiff.similarity.duplicates import THRESHOLD

    chosen = json.loads((ROOT / "docs" / "benchmarks" / "similarity.json").read_text())["agreement"]["duplicates"]
    assert chosen["chosen"] == chosen["shipped"] == THRESHOLD
    assert f"The default threshold ({THRESHOLD})" in (ROOT / "docs" / "similarity.md").read_text()


def test_readme_unseen_table_is_the_benchmark():
    result = json.loads((ROOT / "docs" / "benchmarks" / "unseen.json").read_text())
    text = (ROOT / "README.md").read_text()
    header, *body = _table(text, "### Unseen classes")
    assert header[:3] == ["dataset", "protocol", "method"] and len(body) == len(result["rows"])
    keys = {"R@1": "recall_at_1", "MAP@R": "map_at_r", "verif. acc": "verification_accuracy", "ROC-AUC": "roc_auc"}
    names = {"MNIST": "mnist", "Fashion-MNIST": "fashion-mnist", "CIFAR-10": "cifar10"}
    for cells, row in zip(body, result["rows"]):
        assert (names[cells[0]], cells[1], cells[2]) == (row["dataset"], row["protocol"], row["method"])
        for title, cell in zip(header[3:], cells[3:]):
            assert cell == f"{row['metrics'][keys[title]]:.4f}", (cells[0], cells[1], cells[2], title)
    assert f"`{result['command']}`" in text


def test_readme_scale_table_is_the_benchmark():
    result = json.loads((ROOT / "docs" / "benchmarks" / "scale.json").read_text())
    text = (ROOT / "README.md").read_text()
    header, *body = _table(text, "### Scale")
    assert header == ["measure", "value"] and len(body) == 5
    m, f = result["million"], result["folder"]
    ivf, search = m["ivf"], m["search"]
    assert body[0][1] == f"{search['exact']['p50_ms']} ms"
    assert body[1][1] == (f"{search['ivf']['p50_ms']} ms; recall@5 {m['ivf_recall_at_5_new_queries']} on new "
                          f"queries, {ivf['recall']} measured at build (nprobe {ivf['nprobe']} of {ivf['nlist']})")
    assert body[2][1] == (f"{m['embed_images_per_s']:,} images/s; IVF built in {m['ivf_build_seconds']} s; peak "
                          f"memory {m['peak_rss_mib']:,} MiB")
    assert body[3][1] == f"{f['images_per_s']:,} images/s, peak memory {f['peak_rss_mib']:,} MiB"
    s = result["sigterm"]
    assert body[4][1] == (f"exit {s['exit_code']} after {s['exit_seconds_after_signal']} s, resumed bit-identically: "
                          f"{s['bit_identical']}")
    assert s["bit_identical"] and s["stopped_at"]["batches"] is not None and f"`{result['command']}`" in text
