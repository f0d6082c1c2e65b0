"""Unseen classes, the protocol of metric learning: train on classes 0-4, retrieve and verify on classes 5-9; and the
seen-class protocol beside it. siamdiff's embedding against a classifier-embedding baseline — the penultimate layer
(pooled trunk features, cosine) of a cross-entropy classifier with the same backbone, data and epochs — on MNIST,
Fashion-MNIST and CIFAR-10, written to docs/benchmarks/unseen.{json,md}.

    python benchmarks/unseen.py --data-dir ../shared/data                  # trains 6 models into runs/unseen/
    python benchmarks/unseen.py --data-dir ../shared/data --datasets mnist

Resumable: a run folder that already holds the model its command makes is evaluated again, not retrained. Each row
records the training command (run as a subprocess, exactly as a user would type it) and the model's training time.
The seen-class rows evaluate the shipped similarity model and the shipped classifier of the dataset (their own
recipes and budgets, listed in the table). Verification uses each model's threshold from the validation split of
the classes it was trained on.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, describe, provenance, write  # noqa: E402

DATASETS = ("mnist", "fashion-mnist", "cifar10")
SEEN, UNSEEN = tuple(range(5)), tuple(range(5, 10))
METRICS = ("recall_at_1", "map_at_r", "verification_accuracy", "roc_auc")
METHODS = ("siamdiff", "classifier embedding")


def classifier_embedding(path: str | Path, data_dir: str, classes: tuple[int, ...] | None):
    """The classifier's penultimate layer as a :class:`SimilarityModel`: the pooled trunk features, unit length
    (mirror-averaged for datasets whose similarity recipe flips images, as siamdiff's models are), calibrated on the
    validation pairs of the classes it was trained on, as ``train similarity`` calibrates."""
    import numpy as np
    from torch import nn

    from siamdiff.core.checkpoint import load_model
    from siamdiff.data.datasets import load_dataset
    from siamdiff.nets.convnet import EmbeddingNet
    from siamdiff.similarity.api import SimilarityModel
    from siamdiff.similarity.calibration import calibrate
    from siamdiff.similarity.embed import embed
    from siamdiff.similarity.pairs import balanced_pairs
    from siamdiff.similarity.task import RECIPES, VAL_PAIR_SEED, VAL_PAIRS

    classifier, meta = load_model(path, kind="classifier")
    dataset = meta["extra"]["dataset"]
    width = classifier.head.in_features
    config = replace(classifier.config, embed_dim=width, normalize=True,
                     mirror_average=RECIPES[("default", dataset)].flip)
    net = EmbeddingNet(config)
    net.features.load_state_dict(classifier.features.state_dict())
    net.head = nn.Identity()
    net.eval()
    val = load_dataset(dataset, "val", data_dir, classes=classes)
    i, j, same = balanced_pairs(val.labels.numpy(), VAL_PAIRS, VAL_PAIR_SEED)
    emb = embed(net, val.images)
    calibration = calibrate(np.linalg.norm(emb[i] - emb[j], axis=1), same)
    extra = {"calibration": calibration.to_dict(), "classes": val.classes, "dataset": dataset}
    return SimilarityModel(net, {"extra": extra}, f"classifier embedding of {path}")


def trained(kind: str, dataset: str, args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Train (unless done) the ``kind`` model of ``dataset`` on classes 0-4 with the similarity recipe's epochs;
    returns its model file and the training command."""
    from siamdiff.core.checkpoint import read_metadata
    from siamdiff.similarity.task import RECIPES

    out = args.runs / f"{dataset}-{kind}-0-4"
    epochs = args.epochs or RECIPES[("default", dataset)].train.epochs
    argv = ["siamdiff", "train", kind, "--dataset", dataset, "--data-dir", args.data_dir, "--classes", "0-4",
            "--epochs", str(epochs), "--out", str(out)]
    if args.max_batches:  # smoke runs
        argv += ["--max-batches", str(args.max_batches)]
    model = out / "model.safetensors"
    extra = read_metadata(model)["extra"] if model.is_file() else {}
    given = [a for a in shlex.split(extra.get("command", "")) if a not in ("--resume", "--overwrite")]
    if given == argv and len(extra.get("history", [])) == epochs:  # this command, run to its end
        print(f"{dataset} {kind}: done already ({model})", flush=True)
        return model, argv
    print(f"{dataset} {kind}: {shlex.join(argv)}", flush=True)
    resume = ["--resume"] if given == argv and (out / "state.pt").is_file() else ["--overwrite"]
    subprocess.run([sys.executable, "-m", *argv, *resume], check=True)
    return model, argv


def budget(model: str | Path, kind: str) -> dict:
    """Epochs, training seconds and commands recorded in a model file, over the runs it was fine-tuned from too."""
    from siamdiff.core.checkpoint import read_metadata
    from siamdiff.core.registry import resolve

    extra = read_metadata(resolve(kind, model))["extra"]
    history = extra.get("history", [])
    epochs, seconds, commands = [len(history)], sum(h.get("seconds", 0.0) for h in history), [extra.get("command")]
    init = extra.get("init")
    while init:
        epochs.insert(0, init["epochs"])
        seconds += init["train_seconds"]
        commands.insert(0, init["command"])
        init = init.get("previous")
    return {"epochs": " + ".join(map(str, epochs)), "train_seconds": round(seconds, 1), "commands": commands,
            "device": history[-1].get("device") if history else None}


def row(dataset: str, protocol: str, method: str, model, spent: dict, classes, data_dir: str) -> dict:
    from siamdiff.similarity.evaluate import evaluate

    metrics = evaluate(model, dataset, data_dir, classes=classes)
    print(f"{dataset} {protocol} {method}: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in METRICS), flush=True)
    return {"dataset": dataset, "protocol": protocol, "method": method, **spent,
            "metrics": {k: metrics[k] for k in (*METRICS, "eer", "gallery")}}


def rows_of(dataset: str, args: argparse.Namespace) -> list[dict]:
    from siamdiff.core.registry import shipped_path
    from siamdiff.similarity.api import SimilarityModel

    out = []
    for kind, method in (("similarity", "siamdiff"), ("classifier", "classifier embedding")):
        path, argv = trained(kind, dataset, args)
        model = SimilarityModel.load(path) if kind == "similarity" else classifier_embedding(path, args.data_dir, SEEN)
        out.append(row(dataset, "unseen classes 5-9", method, model, budget(path, kind), UNSEEN, args.data_dir))
    for kind, method in (("similarity", "siamdiff"), ("classifier", "classifier embedding")):
        path = shipped_path(kind, dataset)
        model = SimilarityModel.load(dataset) if kind == "similarity" else \
            classifier_embedding(path, args.data_dir, None)
        out.append(row(dataset, "seen classes 0-9", method, model, budget(path, kind), None, args.data_dir))
    return out


def markdown(result: dict) -> str:
    lines = ["# Unseen classes", "",
             f"Generated by `{result['command']}` at code version `{result['code_version']}` on "
             f"{describe(result['hardware'])}, {result['date']}.", "",
             "Unseen: trained on classes 0-4 (their train split; threshold from their validation split), evaluated "
             "on the test images of classes 5-9 against the train images of classes 5-9, with 10,000 balanced "
             "test pairs of classes 5-9. Seen: the shipped models on all classes, the usual protocol "
             "(docs/similarity.md). The classifier embedding is the penultimate layer (pooled trunk features, "
             "cosine) of a cross-entropy classifier with the same backbone; on the unseen rows it was trained on "
             "the same data for the same epochs.", "",
             "| dataset | protocol | method | epochs | train s | trained on | R@1 | MAP@R | verif. acc | ROC-AUC |",
             "|---" * 10 + "|"]
    for r in result["rows"]:
        m = r["metrics"]
        lines.append(f"| {r['dataset']} | {r['protocol']} | {r['method']} | {r['epochs']} | {r['train_seconds']:.0f} "
                     f"| {r['device']} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |")
    lines += ["", "Training commands:", ""]
    for r in result["rows"]:
        lines.append(f"- {r['dataset']}, {r['protocol']}, {r['method']}: "
                     + " then ".join(f"`{c}`" for c in r["commands"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--runs", type=Path, default=Path("runs/unseen"), help="run folders of the trained models")
    parser.add_argument("--epochs", type=int, help="epochs of every trained model (default: the similarity "
                                                  "recipe's for the dataset)")
    parser.add_argument("--max-batches", type=int, help="cap batches per epoch (smoke runs)")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    result = {**provenance(), "rows": [r for d in args.datasets for r in rows_of(d, args)]}
    write(result, markdown(result), args.out, "unseen")
    print(f"wrote {args.out / 'unseen.md'}")


if __name__ == "__main__":
    main()
