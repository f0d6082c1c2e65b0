"""Similarity benchmark: train (or reuse) the seed design and the default model per dataset, evaluate them with the
protocol of docs/similarity.md, time pair scoring and index search, and write docs/benchmarks/similarity.{json,md}.

    python benchmarks/similarity.py --data-dir ../shared/data                # train what is missing, evaluate
    python benchmarks/similarity.py --data-dir ../shared/data --ship         # also ship the default models evaluated
    python benchmarks/similarity.py --data-dir ../shared/data --only cifar10:seed --epochs cifar10:seed=2

Each row records the exact training and evaluation commands, so it can be reproduced alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("mnist", "fashion-mnist", "cifar10")
MODELS = ("seed", "default")
METRICS = ("recall_at_1", "recall_at_5", "map_at_r", "verification_accuracy", "roc_auc", "eer", "hard_accuracy",
           "hard_accuracy_ssim")


def hardware() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from siamdiff.core.training.loop import cpu_has_bf16_matrix_units

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    # with bfloat16 matrix units (AMX) CPU training runs under bfloat16 autocast, as on a GPU
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "cpu_bf16_matrix_units": cpu_has_bf16_matrix_units(), "torch": torch.__version__,
            "python": platform.python_version()}


def code_version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(cmd: list[str]) -> tuple[str, float]:
    began = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-2000:]}")
    return proc.stdout, time.perf_counter() - began


def train_and_eval(dataset: str, model: str, args: argparse.Namespace) -> dict:
    out = Path(args.runs) / f"{dataset}-{model}"
    cmd = ["siamdiff", "train", "similarity", "--dataset", dataset, "--model", model, "--out", str(out),
           "--data-dir", args.data_dir]
    epochs = args.epochs.get(f"{dataset}:{model}")
    if epochs:
        cmd += ["--epochs", str(epochs)]
    exe = [sys.executable, "-m", "siamdiff"]
    log_path = out / "log.jsonl"
    if args.retrain or not log_path.is_file():
        _, seconds = run(exe + cmd[1:] + (["--overwrite"] if out.exists() else []))
        print(f"trained {dataset}:{model} in {seconds:.0f} s", flush=True)
    history = [json.loads(line) for line in log_path.read_text().splitlines()]
    from siamdiff.core.checkpoint import read_metadata

    planned = read_metadata(out / "model.safetensors")["extra"]["recipe"]["train"]["epochs"]
    if epochs and int(epochs) != planned:
        raise SystemExit(f"{out} was trained for {planned} epochs, not {epochs}: pass --retrain")
    if len(history) < planned:  # an interrupted run: continue it
        run(exe + cmd[1:] + ["--resume"])
        history = [json.loads(line) for line in log_path.read_text().splitlines()]
    train_seconds = sum(h["seconds"] for h in history)
    extra = read_metadata(out / "model.safetensors")["extra"]  # after any --resume above: the finished model's
    recorded = extra.get("command")
    if recorded:  # the command that trained this model (it may have run elsewhere, e.g. on a GPU machine)
        cmd = shlex.split(recorded)
    from siamdiff.core.checkpoint import save_float16_copy

    shipped = save_float16_copy(out / "model.safetensors", out / "model-float16.safetensors")  # evaluated as shipped
    ecmd = ["siamdiff", "eval", "similarity", "--model", str(shipped), "--dataset", dataset,
            "--data-dir", args.data_dir, "--json"]
    stdout, _ = run(exe + ecmd[1:])
    metrics = json.loads(stdout)
    print(f"evaluated {dataset}:{model}: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in METRICS), flush=True)
    row = {"dataset": dataset, "model": model, "epochs": len(history), "train_seconds": round(train_seconds, 1),
           "train_device": history[-1].get("device", "cpu"),
           "train_command": shlex.join(cmd), "eval_command": shlex.join(ecmd), "metrics": metrics,
           "model_path": str(shipped)}
    return {**row, "init": extra["init"]} if extra.get("init") else row


def earlier_runs(row: dict) -> list[dict]:
    """The runs a fine-tuned row's model started from, oldest first (each: command, epochs, seconds, device)."""
    chain, init = [], row.get("init")
    while init:
        chain.append(init)
        init = init.get("previous")
    return chain[::-1]


def time_calls(fn, repeats: int, digits: int = 3) -> dict:
    """Median and quartiles (ms) of ``repeats`` calls of ``fn`` after 10 warm-up calls."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    q = np.percentile(times, [25, 50, 75])
    return {"median_ms": round(float(q[1]), digits), "p25_ms": round(float(q[0]), digits),
            "p75_ms": round(float(q[2]), digits)}


def latency(model_path: str, data_dir: str, dataset: str, repeats: int = 200) -> dict:
    """Median and spread (ms) of scoring one pair, and of one search query against the train split (2 threads)."""
    import torch

    from siamdiff.data.datasets import load_dataset
    from siamdiff.similarity.api import SimilarityModel
    from siamdiff.similarity.index import Index, search

    torch.set_num_threads(2)
    model = SimilarityModel.load(model_path)
    test = load_dataset(dataset, "test", data_dir)
    train = load_dataset(dataset, "train+val", data_dir)
    a = test.images[0].numpy().transpose(1, 2, 0)
    b = test.images[1].numpy().transpose(1, 2, 0)

    with torch.inference_mode():
        pair = time_calls(lambda: model.score(a, b), repeats)
        index = Index(model.embed(train.images), [str(i) for i in range(len(train))],
                      [(0, 0)] * len(train), model.fingerprint, model_path)
        query = time_calls(lambda: search(index, model, a, k=5), repeats)
    return {"score_pair": pair, "search_query": query, "index_size": len(train), "threads": 2}


def _float_dtypes(path: str) -> set[str]:
    """The safetensors dtype names (``F16``, ``F32``, ...) of the floating-point tensors in ``path``, read from the
    file's header without loading the weights."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {d for d in (f.get_slice(k).get_dtype() for k in f.keys()) if d.startswith(("F", "BF"))}


def write_card(row: dict, hw: dict, version: str, dest: Path) -> None:
    from siamdiff.core.checkpoint import read_metadata

    meta = read_metadata(row["model_path"])
    card = {"name": f"similarity-{row['dataset']}", "kind": "similarity", "dataset": row["dataset"],
            "data": f"{row['dataset']} official train split minus a 5,000-image validation split (seed 20260); "
                    f"calibration on 10,000 validation pairs; metrics on the official test split",
            "command": row["train_command"], "eval_command": row["eval_command"], "epochs": row["epochs"],
            "train_seconds": row["train_seconds"], "train_device": row.get("train_device", "cpu"),
            "hardware": hw, "code_version": version,
            "config": meta["config"], "recipe": meta["extra"].get("recipe"),
            "calibration": meta["extra"].get("calibration"), "metrics": row["metrics"],
            "weights": "float16 copy of the trained float32 weights; the metrics are the float16 copy's"
            if _float_dtypes(row["model_path"]) == {"F16"} else "as trained"}
    if row.get("init"):  # fine-tuned: the run(s) it started from, with their own commands and times
        card["init"] = row["init"]
        card["data"] += "; fine-tuned from the model named in 'init' on the same data"
    shutil.copyfile(row["model_path"], dest / f"similarity-{row['dataset']}.safetensors")
    (dest / f"similarity-{row['dataset']}.json").write_text(json.dumps(card, indent=2) + "\n")


def markdown(result: dict) -> str:
    hw = result["hardware"]
    lines = ["# Similarity benchmark", "",
             f"Code version `{result['code_version']}`; hardware: {hw['cpu']}, {hw['cores']} cores"
             f"{', GPU ' + hw['gpu'] if hw['gpu'] else ', no GPU'}; torch {hw['torch']}. "
             f"Generated by `{result['command']}`.", "",
             "Protocol (docs/similarity.md): 10,000 balanced test pairs (seed 0), threshold from validation; "
             "retrieval of every test image against the train split; hard pairs from 1,000 test anchors, "
             "SSIM threshold fitted on validation hard pairs.", "",
             "| dataset | model | epochs | train s | trained on | R@1 | R@5 | MAP@R | verif. acc | ROC-AUC | EER | "
             "hard acc | hard acc SSIM | code |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        m, runs = r["metrics"], earlier_runs(r)
        epochs = " + ".join(str(x) for x in [*(e["epochs"] for e in runs), r["epochs"]])
        seconds = sum(e["train_seconds"] for e in runs) + r["train_seconds"]
        lines.append(f"| {r['dataset']} | {r['model']} | {epochs} | {seconds:.0f} | "
                     f"{r.get('train_device', 'cpu')} | "
                     + " | ".join(f"{m[k]:.4f}" for k in METRICS) + f" | `{r['code_version']}` |")
    lines += ["", "Commands per row (train — a fine-tuned model's earlier runs first —, then evaluate); "
                  "`a + b` epochs: a fine-tuning run of b epochs from a model trained for a:", ""]
    for r in result["rows"]:
        train = " then ".join(f"`{e['command']}`" for e in earlier_runs(r))
        lines += [f"- {r['dataset']} / {r['model']}: {train + ' then ' if train else ''}`{r['train_command']}` "
                  f"then `{r['eval_command']}`"]
    if result.get("latency"):
        lat = result["latency"]
        lines += ["", f"Latency on the CPU with {lat['threads']} threads, shipped MNIST model, median (p25-p75) of "
                      f"200 calls after 10 warm-up calls"
                      + (f" (`{result['latency_command']}`)" if result.get("latency_command") else "") + ":", "",
                  "| operation | median ms | p25 ms | p75 ms |", "|---|---|---|---|",
                  f"| score one pair (two 28x28 arrays) | {lat['score_pair']['median_ms']} | "
                  f"{lat['score_pair']['p25_ms']} | {lat['score_pair']['p75_ms']} |",
                  f"| search one query, exact, {lat['index_size']:,}-image index, k=5 | "
                  f"{lat['search_query']['median_ms']} | {lat['search_query']['p25_ms']} | "
                  f"{lat['search_query']['p75_ms']} |"]
    if result.get("notes"):
        lines += ["", *result["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "similarity"))
    parser.add_argument("--only", nargs="*", help="dataset:model pairs, e.g. mnist:default")
    parser.add_argument("--epochs", nargs="*", default=[], help="dataset:model=N overrides")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--ship", action="store_true", help="copy default models and cards into the package")
    parser.add_argument("--ship-only", action="store_true",
                        help="only copy the default models already in the JSON (no training or evaluation)")
    parser.add_argument("--latency-only", action="store_true", help="only measure the latency again")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    args = parser.parse_args()
    args.epochs = dict(e.split("=") for e in args.epochs)
    wanted = [tuple(x.split(":")) for x in args.only] if args.only else [(d, m) for d in DATASETS for m in MODELS]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "similarity.json"
    previous = json.loads(json_path.read_text()) if json_path.is_file() else {"rows": []}
    if args.latency_only:  # measure again on an idle machine, keep every other figure
        row = next(r for r in previous["rows"] if (r["dataset"], r["model"]) == ("mnist", "default"))
        previous["latency"] = latency(row["model_path"], args.data_dir, "mnist")
        previous["latency_command"] = "python " + shlex.join(["benchmarks/similarity.py", *sys.argv[1:]])
        json_path.write_text(json.dumps(previous, indent=2) + "\n")
        (out / "similarity.md").write_text(markdown(previous))
        print(json.dumps(previous["latency"]))
        return
    if args.ship_only:
        for r in previous["rows"]:
            if r["model"] == "default":
                write_card(r, r["hardware"], r["code_version"], ROOT / "src" / "siamdiff" / "weights")
                print(f"shipped {r['dataset']}")
        return
    rows = {(r["dataset"], r["model"]): r for r in previous["rows"]}
    hw, version = hardware(), code_version()
    for dataset, model in wanted:
        rows[(dataset, model)] = train_and_eval(dataset, model, args) | {"hardware": hw, "code_version": version}
    ordered = [rows[k] for d in DATASETS for m in MODELS if (k := (d, m)) in rows]
    result = {"command": "python " + shlex.join(["benchmarks/similarity.py", *sys.argv[1:]]),
              "code_version": version, "hardware": hw, "rows": ordered, "notes": previous.get("notes", [])}
    if ("mnist", "default") in rows:
        result["latency"] = latency(rows[("mnist", "default")]["model_path"], args.data_dir, "mnist")
    if args.ship:  # the default models evaluated by this run (--ship-only ships every default row of the JSON)
        dest = ROOT / "src" / "siamdiff" / "weights"
        for dataset, model in wanted:
            if model == "default":
                write_card(rows[(dataset, model)], hw, version, dest)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    (out / "similarity.md").write_text(markdown(result))
    print(f"wrote {json_path} and {out / 'similarity.md'}")


if __name__ == "__main__":
    main()
