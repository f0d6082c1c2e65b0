"""Similarity benchmark: the evaluation protocol of docs/similarity.md on the shipped models (and on other models
given by ``--models``), pair-scoring and search latency and the 2AFC agreement of the graded score and its peers,
written to docs/benchmarks/similarity.{json,md}.

    python benchmarks/similarity.py --data-dir ../shared/data                      # the shipped models
    python benchmarks/similarity.py --data-dir ../shared/data --models runs/bench   # also DIR/<dataset>-seed/
    python benchmarks/similarity.py --data-dir ../shared/data --latency-only        # latency again
    python benchmarks/similarity.py --data-dir ../shared/data --agreement-only      # 2AFC agreement again

Each row records the `siamdiff eval similarity` command that gives it alone, and the command that trained the
model (from the shipped model card, or from the model file).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, card, describe, provenance, time_calls, write  # noqa: E402

DATASETS = ("mnist", "fashion-mnist", "cifar10")
DESIGNS = ("seed", "default")
METRICS = ("recall_at_1", "recall_at_5", "map_at_r", "verification_accuracy", "roc_auc", "eer", "hard_accuracy",
           "hard_accuracy_ssim")


def models_of(dataset: str, args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(design, --model value)`` of the rows of a dataset: the shipped model, and any found under ``--models``."""
    found = [("default", dataset)]
    if args.models:
        for design in DESIGNS:
            path = args.models / f"{dataset}-{design}" / "model.safetensors"
            if path.is_file():
                found = [f for f in found if f[0] != design] + [(design, str(path))]
    return sorted(found, key=lambda f: DESIGNS.index(f[0]))


def training_of(model: str) -> dict:
    """How a model was trained: its command (and the runs it was fine-tuned from), epochs, seconds, device."""
    from siamdiff.core.checkpoint import read_metadata
    from siamdiff.core.registry import resolve

    extra = read_metadata(resolve("similarity", model))["extra"]
    history, runs, init = extra.get("history", []), [], extra.get("init")
    while init:
        runs.insert(0, {"command": init["command"], "epochs": init["epochs"], "train_seconds": init["train_seconds"]})
        init = init.get("previous")
    runs.append({"command": extra.get("command"), "epochs": len(history),
                 "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1)})
    return {"runs": runs, "train_device": history[-1].get("device") if history else None}


def evaluate(dataset: str, design: str, model: str, args: argparse.Namespace) -> dict:
    from siamdiff.similarity.api import SimilarityModel
    from siamdiff.similarity.evaluate import evaluate as protocol

    metrics = protocol(SimilarityModel.load(model), dataset, args.data_dir)
    command = shlex.join(["siamdiff", "eval", "similarity", "--model", model, "--dataset", dataset, "--data-dir",
                          args.data_dir, "--json"])
    print(f"{dataset}:{design}: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in METRICS), flush=True)
    shipped = card("similarity", dataset) if model == dataset else None
    return {"dataset": dataset, "model": design, "model_file": model, "eval_command": command, "metrics": metrics,
            "shipped": shipped is not None, **training_of(model)}


def latency(data_dir: str, repeats: int = 200) -> dict:
    """Median and spread (ms) of scoring one pair of test images, and of one search query against a 60,000-image
    index (the MNIST training images), with the shipped MNIST model on 2 CPU threads; and of explaining one pair of
    CIFAR-10 test images, picture included, with the shipped CIFAR-10 model."""
    import torch

    from siamdiff.data.datasets import load_dataset
    from siamdiff.similarity.api import SimilarityModel
    from siamdiff.similarity.explain import explanation_png
    from siamdiff.similarity.index import Index, search

    torch.set_num_threads(2)
    started = provenance()  # the code as it was when the measurement began
    model = SimilarityModel.load("mnist")
    test = load_dataset("mnist", "test", data_dir)
    a, b = (test.images[k].numpy().transpose(1, 2, 0) for k in (0, 1))
    with torch.inference_mode():
        pair = time_calls(lambda: model.score(a, b), repeats)
        gallery = load_dataset("mnist", "train+val", data_dir).images
        index = Index(model.embed(gallery), [str(i) for i in range(len(gallery))], [(0, 0)] * len(gallery),
                      model.fingerprint, "mnist")
        query = time_calls(lambda: search(index, model, a, k=5), repeats)
        pairs = pairs_per_second(model, test)
        colour = SimilarityModel.load("cifar10")
        photos = load_dataset("cifar10", "test", data_dir).images
        x, y = (photos[k].numpy().transpose(1, 2, 0) for k in (0, 1))
        why = time_calls(lambda: explanation_png(colour.explain(x, y)), max(repeats // 10, 5))
    return {"score_pair": pair, "search_query": query, "explain_pair": why, "pairs_from_files": pairs,
            "index_size": len(gallery), "threads": 2, "repeats": repeats, **started}


def pairs_per_second(model, test, files: int = 500, n: int = 10_000) -> dict:
    """``siamdiff similarity --pairs``'s work after start-up: ``n`` random pairs of ``files`` MNIST test images
    written as PNG files, scored by ``SimilarityModel.score_pairs`` (each file read once), timed once."""
    import tempfile
    import time

    import numpy as np

    from siamdiff.data.imageio import write_png_atomic

    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"{k}.png" for k in range(files)]
        for k, path in enumerate(paths):
            write_png_atomic(test.images[k].numpy()[0], path)
        rng = np.random.default_rng(0)
        pairs = [(str(paths[a]), str(paths[b])) for a, b in rng.integers(0, files, (n, 2))]
        began = time.perf_counter()
        records = model.score_pairs(pairs)
        seconds = time.perf_counter() - began
    assert not any("error" in r for r in records)
    return {"pairs": n, "files": files, "seconds": round(seconds, 3), "pairs_per_s": round(n / seconds, 1)}


SCORES = ("siamdiff graded score", "siamdiff embedding distance", "seed embedding distance", "classifier embedding",
          "pixel SSIM")


def scorers(dataset: str, args: argparse.Namespace) -> dict:
    """The scores the 2AFC agreement compares, as functions of two uint8 batches (higher: more similar): the shipped
    model's graded score and embedding distance, the seed design's (with ``--models``), the penultimate layer of the
    shipped classifier (cosine) and pixel SSIM."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from siamdiff.core.checkpoint import load_model
    from siamdiff.core.registry import shipped_path
    from siamdiff.similarity.api import SimilarityModel
    from siamdiff.similarity.evaluate import ssim_scores

    model = SimilarityModel.load(dataset)
    classifier, _ = load_model(shipped_path("classifier", dataset), kind="classifier")
    classifier.eval()

    @torch.no_grad()
    def penultimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        fa, fb = (classifier.pooled(torch.as_tensor(x)) for x in (a, b))
        return F.cosine_similarity(fa, fb, dim=1).numpy()

    def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ssim_scores(torch.as_tensor(np.concatenate([a, b])), np.arange(len(a)), np.arange(len(a), 2 * len(a)))

    out = {"siamdiff graded score": lambda a, b: model.score_batch(a, b)["similarity"],
           "siamdiff embedding distance": lambda a, b: -model.score_batch(a, b)["distance"],
           "classifier embedding": penultimate, "pixel SSIM": ssim}
    seed = args.models / f"{dataset}-seed" / "model.safetensors" if args.models else None
    if seed is not None and seed.is_file():
        seed_model = SimilarityModel.load(seed)
        out["seed embedding distance"] = lambda a, b: -np.linalg.norm(seed_model.embed(a) - seed_model.embed(b),
                                                                       axis=1)
    return out


GRID = {"weight": (0.05, 0.1, 0.2, 0.3, 0.5), "sharpness": (1, 4, 10, 20)}  # the graded score's settings tried
CATEGORY_SLACK = 0.01  # how much validation category agreement a setting may lose against the embedding distance


def validation_grid(dataset: str, val, n: int) -> list[dict]:
    """The graded score's 2AFC agreement on validation triplets for each setting of :data:`GRID`: how its weight
    and sharpness were chosen (never on test)."""
    import numpy as np

    from siamdiff.similarity import agreement as afc
    from siamdiff.similarity.api import SimilarityModel
    from siamdiff.similarity.graded import graded

    model = SimilarityModel.load(dataset)
    scored = {}
    for kind in afc.KINDS:
        a, e, o = (t.numpy() for t in afc.triplets(val.images, val.labels.numpy(), kind, n))
        scored[kind] = (model.score_batch(a, e), model.score_batch(a, o))
    def agree(e: np.ndarray, o: np.ndarray) -> float:
        return round(float(np.mean((e > o) + 0.5 * (e == o))), 4)

    rows = [{"dataset": dataset, "weight": None, "sharpness": None,
             "agreement": {kind: agree(-se["distance"], -so["distance"]) for kind, (se, so) in scored.items()}}]
    for weight in GRID["weight"]:
        for sharpness in GRID["sharpness"]:
            rows.append({"dataset": dataset, "weight": weight, "sharpness": sharpness, "agreement": {
                kind: agree(*(graded(s["probability"], s["appearance"], weight, sharpness) for s in (se, so)))
                for kind, (se, so) in scored.items()}})
    return rows


def chosen_setting(grid: list[dict]) -> tuple[float, float] | None:
    """Category first: among the settings whose validation category agreement is within :data:`CATEGORY_SLACK` of
    the embedding distance's on every dataset, the one with the highest mean near-copy and graded agreement."""
    reference = {g["dataset"]: g["agreement"]["category"] for g in grid if g["weight"] is None}
    settings = dict.fromkeys((g["weight"], g["sharpness"]) for g in grid if g["weight"] is not None)
    best, best_mean = None, -1.0
    for setting in settings:
        rows = [g for g in grid if (g["weight"], g["sharpness"]) == setting]
        if all(g["agreement"]["category"] >= reference[g["dataset"]] - CATEGORY_SLACK for g in rows):
            mean = sum(g["agreement"][k] for g in rows for k in ("near-copy", "graded")) / (2 * len(rows))
            if mean > best_mean:
                best, best_mean = setting, mean
    return best


THRESHOLDS = tuple(round(0.8 + 0.0025 * k, 4) for k in range(81))  # the duplicates thresholds tried, 0.8 to 1


def near_copy_rates(model, images, labels, threshold: float | None, n: int) -> dict:
    """On near-copy triplets: the graded similarity of each near copy and of each look-alike of its class, and at
    ``threshold`` (None: each of :data:`THRESHOLDS`) the share of copies found and of look-alikes refused."""
    from siamdiff.similarity import agreement as afc

    a, e, o = (t.numpy() for t in afc.triplets(images, labels, "near-copy", n))
    copies, alike = model.score_batch(a, e)["similarity"], model.score_batch(a, o)["similarity"]
    rates = {t: {"copies_found": round(float((copies >= t).mean()), 4),
                 "look_alikes_refused": round(float((alike < t).mean()), 4)}
             for t in ((threshold,) if threshold is not None else THRESHOLDS)}
    return rates


def duplicates_threshold(data_dir: str, datasets: list[str], n: int = 1000) -> dict:
    """The threshold of ``siamdiff duplicates``: on the validation near-copy triplets of every dataset, the one with
    the highest mean balanced accuracy (copies found, look-alikes refused); and the rates of the shipped threshold on
    the test triplets."""
    from siamdiff.data.datasets import load_splits
    from siamdiff.similarity.api import SimilarityModel
    from siamdiff.similarity.duplicates import THRESHOLD

    validation, test = {}, {}
    for dataset in datasets:
        val, tst = load_splits(dataset, ("val", "test"), data_dir)
        model = SimilarityModel.load(dataset)
        validation[dataset] = near_copy_rates(model, val.images, val.labels.numpy(), None, n)
        test[dataset] = near_copy_rates(model, tst.images, tst.labels.numpy(), THRESHOLD, n)[THRESHOLD]

    def balanced(t: float) -> float:
        return sum(sum(validation[d][t].values()) / 2 for d in datasets) / len(datasets)

    chosen = max(THRESHOLDS, key=lambda t: (balanced(t), -t))
    print(f"duplicates threshold on validation: {chosen} (balanced accuracy {balanced(chosen):.4f}); shipped "
          f"{THRESHOLD}", flush=True)
    return {"chosen": chosen, "balanced_accuracy": round(balanced(chosen), 4), "shipped": THRESHOLD,
            "validation_at_chosen": {d: validation[d][chosen] for d in datasets}, "test_at_shipped": test}


def agreement(data_dir: str, datasets: list[str], args: argparse.Namespace, n: int = 1000) -> dict:
    """2AFC agreement of each score on ``n`` triplets of each kind from each test split
    (:mod:`siamdiff.similarity.agreement`), and the graded score's settings tried on the validation split."""
    from siamdiff.data.datasets import load_splits
    from siamdiff.similarity import agreement as afc
    from siamdiff.similarity.graded import SHARPNESS, WEIGHT

    started = provenance()  # the code as it was when the measurement began
    rows, grid = [], []
    for dataset in datasets:
        val, test = load_splits(dataset, ("val", "test"), data_dir)
        grid += validation_grid(dataset, val, n)
        scores = scorers(dataset, args)
        for kind in afc.KINDS:
            triplet = afc.triplets(test.images, test.labels.numpy(), kind, n)
            row = {"dataset": dataset, "kind": kind, "triplets": len(triplet[0]),
                   "agreement": {name: round(afc.agreement(fn, *triplet), 4) for name, fn in scores.items()}}
            print(f"2AFC {dataset} {kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["agreement"].items()),
                  flush=True)
            rows.append(row)
    return {"rows": rows, "seed": afc.SEED, "weight": WEIGHT, "sharpness": SHARPNESS, "validation_grid": grid,
            "rule": list(chosen_setting(grid) or ()), "duplicates": duplicates_threshold(data_dir, datasets, n),
            **started}


def markdown(result: dict) -> str:
    lines = ["# Similarity benchmark", "",
             f"Generated by `{result['command']}` at code version `{result['code_version']}` on "
             f"{describe(result['hardware'])}, {result['date']}.", "",
             "Protocol (docs/similarity.md): 10,000 balanced test pairs (seed 0), threshold from validation; "
             "retrieval of every test image against the train split; hard pairs from 1,000 test anchors, "
             "SSIM threshold fitted on validation hard pairs.", "",
             "| dataset | model | shipped | epochs | train s | trained on | R@1 | R@5 | MAP@R | verif. acc | ROC-AUC | "
             "EER | hard acc | hard acc SSIM |", "|---" * 14 + "|"]
    for r in result["rows"]:
        m = r["metrics"]
        epochs = " + ".join(str(run["epochs"]) for run in r["runs"])
        seconds = sum(run["train_seconds"] for run in r["runs"])
        lines.append(f"| {r['dataset']} | {r['model']} | {'yes' if r['shipped'] else 'no'} | {epochs} | "
                     f"{seconds:.0f} | {r['train_device']} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |")
    lines += ["", "`a + b` epochs: a model of a epochs fine-tuned for b more. Each row's commands (training — a "
                  "fine-tuned model's earlier runs first —, then evaluation):", ""]
    for r in result["rows"]:
        train = " then ".join(f"`{run['command']}`" for run in r["runs"])
        lines.append(f"- {r['dataset']} / {r['model']}: {train} then `{r['eval_command']}`")
    lat = result.get("latency")
    if lat:
        lines += ["", f"Latency on the CPU with {lat['threads']} threads, shipped MNIST model, median (p25-p75) of "
                      f"{lat['repeats']} calls after 10 warm-up calls (`{lat['command']}`, {lat['date']}, "
                      f"{describe(lat['hardware'])}):", "",
                  "| operation | median ms | p25 ms | p75 ms |", "|---|---|---|---|",
                  f"| score one pair (two 28x28 arrays) | {lat['score_pair']['median_ms']} | "
                  f"{lat['score_pair']['p25_ms']} | {lat['score_pair']['p75_ms']} |",
                  f"| search one query, exact, {lat['index_size']:,}-image index, k=5 | "
                  f"{lat['search_query']['median_ms']} | {lat['search_query']['p25_ms']} | "
                  f"{lat['search_query']['p75_ms']} |"]
        if "explain_pair" in lat:
            why = lat["explain_pair"]
            lines.append(f"| explain one pair with its PNG picture (two 32x32 images, shipped CIFAR-10 model) | "
                         f"{why['median_ms']} | {why['p25_ms']} | {why['p75_ms']} |")
        if "pairs_from_files" in lat:
            many = lat["pairs_from_files"]
            lines += ["", f"`siamdiff similarity --pairs`'s work after start-up ({many['pairs']:,} random pairs of "
                          f"{many['files']} PNG files, each read once, scored in batches): {many['seconds']} s, "
                          f"{many['pairs_per_s']:,} pairs/s."]
    agree = result.get("agreement")
    if agree:
        names = [n for n in SCORES if any(n in r["agreement"] for r in agree["rows"])]
        lines += ["", f"2AFC agreement (docs/similarity.md): for triplets of the test split (anchor, expected, other; "
                      f"seed {agree['seed']}), how often each score ranks the expected image above the other "
                      f"(`{agree['command']}`, code `{agree['code_version']}`, {agree['date']}).", "",
                  "| dataset | triplets | n | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
        for r in agree["rows"]:
            cells = [f"{r['agreement'][n]:.4f}" if n in r["agreement"] else "" for n in names]
            lines.append(f"| {r['dataset']} | {r['kind']} | {r['triplets']} | " + " | ".join(cells) + " |")
        datasets = list(dict.fromkeys(r["dataset"] for r in agree["validation_grid"]))
        kinds = list(agree["validation_grid"][0]["agreement"])
        rule = tuple(agree["rule"]) if agree["rule"] else None
        lines += ["", f"The graded score's settings on validation triplets (the same construction on the validation "
                      f"split; the first row is the embedding distance). The rule — category first: among the "
                      f"settings within {CATEGORY_SLACK} of the embedding distance's category agreement on every "
                      f"dataset, the highest mean near-copy and graded agreement — picks weight "
                      f"{rule[0] if rule else '-'}, sharpness {rule[1] if rule else '-'}; the shipped setting is "
                      f"weight {agree['weight']}, sharpness {agree['sharpness']}.", "",
                  "| weight | sharpness | " + " | ".join(f"{d} {k}" for d in datasets for k in kinds) + " |",
                  "|---" * (2 + len(datasets) * len(kinds)) + "|"]
        for weight, sharpness in dict.fromkeys((g["weight"], g["sharpness"]) for g in agree["validation_grid"]):
            cells = [next(g for g in agree["validation_grid"] if (g["dataset"], g["weight"], g["sharpness"]) ==
                          (d, weight, sharpness))["agreement"][k] for d in datasets for k in kinds]
            mark = " (shipped)" if (weight, sharpness) == (agree["weight"], agree["sharpness"]) else ""
            name = "embedding distance" if weight is None else f"{weight}{mark}"
            lines.append(f"| {name} | {sharpness or ''} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
        dup = agree.get("duplicates")
        if dup:
            lines += ["", f"`siamdiff duplicates`: the threshold on the graded similarity with the highest mean "
                          f"balanced accuracy on the validation near-copy triplets (near copies found, look-alikes of "
                          f"their class refused) is {dup['chosen']} (balanced accuracy {dup['balanced_accuracy']}); "
                          f"the shipped default is {dup['shipped']}. On the test triplets at the shipped default:", "",
                      "| dataset | near copies found | look-alikes refused |", "|---|---|---|"]
            for dataset, rate in dup["test_at_shipped"].items():
                lines.append(f"| {dataset} | {rate['copies_found']:.4f} | {rate['look_alikes_refused']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--models", type=Path, help="folder of other models: DIR/<dataset>-<design>/")
    parser.add_argument("--latency-only", action="store_true", help="only measure the latency again")
    parser.add_argument("--agreement-only", action="store_true", help="only measure the 2AFC agreement again")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    path = args.out / "similarity.json"
    if args.latency_only or args.agreement_only:
        result = json.loads(path.read_text())
        if args.latency_only:
            result["latency"] = latency(args.data_dir)
        if args.agreement_only:
            result["agreement"] = agreement(args.data_dir, args.datasets, args)
    else:
        result = {**provenance(), "rows": [evaluate(d, design, model, args) for d in args.datasets
                                           for design, model in models_of(d, args)]}
        result["latency"] = latency(args.data_dir)
        result["agreement"] = agreement(args.data_dir, args.datasets, args)
    write(result, markdown(result), args.out, "similarity")
    print(f"wrote {args.out / 'similarity.md'}")


if __name__ == "__main__":
    main()
