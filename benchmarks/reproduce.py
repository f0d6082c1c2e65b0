"""Rebuild every shipped model from scratch with its default recipe, evaluate it, install it with its model card,
and regenerate the benchmark tables: the one command behind the weights in src/siamdiff/weights/.

    python benchmarks/reproduce.py --data-dir ../shared/data                        # everything shipped
    python benchmarks/reproduce.py --data-dir ../shared/data --only similarity:cifar10
    python benchmarks/reproduce.py --data-dir ../shared/data --benchmark-models     # also the benchmark-only models
    python benchmarks/reproduce.py --data-dir ../shared/data --budget full          # the longer recipes

Jobs run in order (for each dataset: classifier, noise estimator, diffusion model, similarity model; then the
benchmark-only models), each in its run folder ``RUNS/<kind>-<dataset>``; every epoch is checkpointed, so a stopped
or killed run continues where it was when the same command is given again (a finished job is read back from its
``done.json``, even when its recipe has changed since; a job in training whose recipe changed is refused by the
training loop's resume check — remove its folder to train it again). Each job prints one progress
line with its time. A shipped job's model is copied to float16 and evaluated as shipped; the shipped model it would
replace is evaluated beside it by the same protocol, and the rebuilt one is installed together with its card
(``<kind>-<dataset>.json``: the command, data, recipe, time, hardware and metrics) only when it scores at least as
well (``--install always``: whatever it scores). The summary goes to
docs/benchmarks/reproduce.{json,md}; the tables are rebuilt by benchmarks/similarity.py and benchmarks/denoise.py,
run as this command's last steps (``--no-tables`` leaves them).

Budgets: ``default`` trains each model for its recipe's own epochs (the defaults of ``siamdiff train``); ``full``
trains the models for longer (``FULL_EPOCHS``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, ROOT, command, provenance, write  # noqa: E402

DATASETS = ("mnist", "fashion-mnist", "cifar10")
SHIPPED_KINDS = ("classifier", "noise-estimator", "ddpm", "similarity")  # in order: the diffusion eval uses both before
DENOISE_SIGMAS = (0.1, 0.2, 0.3, 0.5)
# epochs of the longer budget, by (kind, dataset); a kind or dataset not named keeps its recipe's epochs
FULL_EPOCHS = {"similarity:cifar10": 60, "similarity:fashion-mnist": 40, "similarity:mnist": 20, "ddpm:mnist": 40,
               "ddpm:fashion-mnist": 40, "ddpm:cifar10": 40}
# The grayscale twin of the CIFAR-10 diffusion model: fine-tuned from it on CIFAR-10 read as gray (luma), one short
# one-cycle run at a fine-tuning learning rate — the colour model already knows gray images; what it must learn is
# noise that is the same in every channel.
GRAY_TWIN = {"channels": 1, "init": "cifar10", "epochs": 1, "batch_size": 64, "lr": 4e-4, "max_batches": 600}


@dataclass(frozen=True)
class Job:
    """One model to train: ``siamdiff train KIND --dataset DATASET --model DESIGN`` with ``options``. A benchmark-only
    model has a ``name`` (its job is ``NAME:DATASET``) and the ``model`` name benchmarks/denoise.py and
    similarity.py look for under ``--models`` (the folder ``<dataset>-<model>``); a shipped one replaces the
    shipped model of its kind."""

    kind: str
    dataset: str
    design: str | None = None
    name: str | None = None
    model: str | None = None
    options: dict = field(default_factory=dict)
    variant: str = ""  # of a shipped model: "gray", the grayscale twin of a colour model (``<file kind>-D-gray``)

    @property
    def ships(self) -> bool:
        return self.name is None

    @property
    def key(self) -> str:
        return f"{self.name or self.kind}{'-' + self.variant if self.variant else ''}:{self.dataset}"

    @property
    def folder(self) -> str:
        return self.key.replace(":", "-") if self.ships else f"{self.dataset}-{self.model}"

    @property
    def gray(self) -> bool:
        return self.options.get("channels") == 1


def jobs(datasets: tuple[str, ...] = DATASETS, benchmark_models: bool = False) -> list[Job]:
    """The shipped models of each dataset, then (``benchmark_models``) the models only the benchmarks use."""
    out = [Job(kind, d) for d in datasets for kind in SHIPPED_KINDS]
    if "cifar10" in datasets:  # gray photos: the colour diffusion model fine-tuned on CIFAR-10 read as gray
        out.insert(out.index(Job("ddpm", "cifar10")) + 1, Job("ddpm", "cifar10", variant="gray", options=GRAY_TWIN))
    if benchmark_models:
        for d in datasets:
            out += [Job("similarity", d, "seed", "similarity-seed", "seed"),
                    Job("denoiser", d, "default", "denoiser", "denoiser"),
                    Job("ddpm", d, "seed", "ddpm-seed", "ddpm-seed"),
                    Job("vae", d, "default", "vae-conv", "vae-conv")]
            if d != "cifar10":
                out += [Job("vae", d, "seed", "vae-seed", "vae-seed"),
                        Job("ddpm", d, "unet", "ddpm-32", "ddpm-32", {"image_size": 32})]
    return out


WEIGHTS = ROOT / "src" / "siamdiff" / "weights"


def shipped_name(kind: str, dataset: str, variant: str = "") -> str:
    """``<file kind>-<dataset>[-<variant>]``: the name of the shipped model a job of train kind ``kind`` installs (its
    file kind is the training table's, e.g. ``ddpm`` -> ``diffusion``)."""
    from siamdiff.training.kinds import KINDS

    return f"{KINDS[kind].file_kind}-{dataset}" + (f"-{variant}" if variant else "")


def seconds_text(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def train_job(job: Job, run: Path, args: argparse.Namespace) -> list[dict]:
    """Train (or continue training) ``job`` in ``run``; returns its history."""
    from siamdiff.training import TrainOptions, train

    settings = {"model": job.design, "epochs": FULL_EPOCHS.get(job.key) if args.budget == "full" else None,
                "device": args.device, **job.options}
    if args.smoke:  # the tiny designs for a few batches: the mechanism, in seconds (tests)
        settings.update(model="tiny", epochs=1, max_batches=2)
    options = TrainOptions(**settings)
    resume = (run / "state.pt").is_file()
    return train(job.kind, job.dataset, run, options, data_dir=args.data_dir, resume=resume, overwrite=not resume,
                 command=args.command)


def evaluate_job(job: Job, model: Path, args: argparse.Namespace) -> dict:
    """The metrics of ``model`` on the test split (the shipped protocol of its kind)."""
    if job.kind == "similarity":
        from siamdiff.similarity.api import SimilarityModel
        from siamdiff.similarity.evaluate import evaluate

        m = evaluate(SimilarityModel.load(model), job.dataset, args.data_dir, n_hard=0)
        return {k: m[k] for k in ("recall_at_1", "recall_at_5", "map_at_r", "verification_accuracy", "roc_auc",
                                  "eer")}
    if job.kind == "classifier":
        return {"test_accuracy": classifier_accuracy(model, job.dataset, args.data_dir)}
    from siamdiff.reconstruction.evaluate import evaluate_denoise

    if job.kind == "noise-estimator":
        rows = evaluate_denoise(job.dataset, list(DENOISE_SIGMAS), "noisy", n=args.n_eval, estimator=model,
                                data_dir=args.data_dir, device=args.device)
        return {"sigma_rel_error": {str(r["sigma"]): round(r["sigma_rel_error"], 4) for r in rows}}
    if job.kind in ("ddpm", "denoiser") and job.design != "seed" and "image_size" not in job.options:
        method = "tweedie" if job.kind == "ddpm" else "direct"
        # a gray model of colour data: σ by wavelet-MAD (the colour estimator reads noise across channels)
        estimator = "wavelet" if job.gray else args.weights / f"sigma-{job.dataset}.safetensors"
        rows = evaluate_denoise(job.dataset, list(DENOISE_SIGMAS), method, model, n=args.n_eval, estimator=estimator,
                                data_dir=args.data_dir, device=args.device)
        return {"psnr": {str(r["sigma"]): round(r["psnr"], 3) for r in rows},
                "ssim": {str(r["sigma"]): round(r["ssim"], 4) for r in rows}, "n": args.n_eval,
                "protocol": f"`siamdiff eval denoise --method {method}`, sigma estimated by "
                            + ("wavelet-MAD" if job.gray else "the shipped noise estimator")
                            + f", first {args.n_eval} test images" + (" read as gray" if job.gray else "")}
    return {}


def classifier_accuracy(model: Path, dataset: str, data_dir: str) -> float:
    import torch

    from siamdiff.core.checkpoint import load_model
    from siamdiff.data.datasets import load_splits

    net, _ = load_model(model, kind="classifier")
    (test,) = load_splits(dataset, ("test",), data_dir, False, None, None)
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(test.images[s:s + 500]).argmax(1) == test.labels[s:s + 500]).sum())
                      for s in range(0, len(test), 500))
    return round(correct / len(test), 4)


DATA = ("{d} official train split minus a 5,000-image validation split (seed 20260); validation after every epoch; "
        "metrics on the official test split")


def model_card(job: Job, run: Path, record: dict) -> dict:
    """The card installed beside a shipped model: what made it, from what data, in what time, on what, how good."""
    from siamdiff.core.checkpoint import read_metadata

    meta = read_metadata(run / "model.safetensors")
    extra, history = meta["extra"], meta["extra"]["history"]
    card = {"name": shipped_name(job.kind, job.dataset, job.variant), "kind": meta["kind"], "dataset": job.dataset,
            "command": record["command"],
            "rebuild": f"python benchmarks/reproduce.py --data-dir ../shared/data --only {job.key}"
                       + (f" --budget {record['budget']}" if record["budget"] != "default" else ""),
            "budget": record["budget"], "data": DATA.format(d=job.dataset), "epochs": record["epochs"],
            "train_seconds": record["train_seconds"], "train_device": record["device"],
            "hardware": record["hardware"], "code_version": record["code_version"], "date": record["date"],
            "config": meta["config"], "recipe": extra.get("recipe"), "validation": history[-1],
            "weights": "float16 copy of the trained float32 weights (the EMA weights for diffusion models); the "
                       "metrics are the float16 copy's", "metrics": record["metrics"]}
    if job.gray:
        card["data"] += "; the images read as gray (ITU-R 601-2 luma, as PIL converts them)"
    if extra.get("init"):  # fine-tuned: the model it started from, with that model's own command and time
        card["init"] = extra["init"]
    if "calibration" in extra:
        card["calibration"] = extra["calibration"]
    return card


def install(job: Job, run: Path, record: dict, args: argparse.Namespace) -> None:
    """Install the run's float16 copy as the shipped model of its kind, with its card (an unchanged file is left as
    it is)."""
    from siamdiff.core.checkpoint import save_float16_copy

    args.weights.mkdir(parents=True, exist_ok=True)
    name = shipped_name(job.kind, job.dataset, job.variant)
    card = model_card(job, run, record)
    save_float16_copy(run / "model-float16.safetensors", args.weights / f"{name}.safetensors")
    write_json(args.weights / f"{name}.json", card)


def write_json(path: Path, data: dict) -> None:
    """``data`` as indented JSON, written whole (a job's record, a model card)."""
    from siamdiff.core.files import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def run_job(job: Job, runs: Path, args: argparse.Namespace, meta: dict) -> dict:
    """Train and evaluate one job (or read its record when an earlier run of this command finished it), then install
    it when it ships."""
    from siamdiff.core.checkpoint import save_float16_copy

    run = runs / job.folder
    done = run / "done.json"
    if done.is_file():
        record = json.loads(done.read_text())
    else:
        began = time.perf_counter()
        history = train_job(job, run, args)
        save_float16_copy(run / "model.safetensors", run / "model-float16.safetensors")
        metrics = evaluate_job(job, run / "model-float16.safetensors", args)
        record = {"job": job.key, "command": meta["command"], "code_version": meta["code_version"],
                  "hardware": meta["hardware"], "date": meta["date"], "budget": args.budget, "kind": job.kind,
                  "dataset": job.dataset, "variant": job.variant, "design": job.design, "ships": job.ships,
                  "epochs": len(history),
                  "train_seconds": round(sum(h["seconds"] + h.get("eval_seconds", 0.0) for h in history), 1),
                  "job_seconds": round(time.perf_counter() - began, 1), "device": history[-1]["device"],
                  "validation": {k: v for k, v in history[-1].items() if k.startswith("val_")}, "metrics": metrics}
        write_json(done, record)
    if job.ships and not args.no_ship:
        if "kept" not in record or args.install == "always":  # decided once, when the job is first installed
            record["kept"] = keep(job, record, args)
            write_json(done, record)
        if record["kept"] == "rebuilt":
            install(job, run, record, args)
    return record


def is_installed(record: dict, weights: Path) -> bool:
    """Whether the installed model of a shipped job's kind is that job's model (its command and last validation):
    a rebuilt model that was not kept (a better one stays installed) shows as not installed."""
    from siamdiff.core.checkpoint import read_metadata

    path = weights / f"{shipped_name(record['kind'], record['dataset'], record.get('variant', ''))}.safetensors"
    if not record["ships"] or not path.is_file():
        return False
    extra = read_metadata(path)["extra"]
    last = (extra.get("history") or [{}])[-1]
    return extra.get("command") == record["command"] and \
        all(last.get(k) == v for k, v in record["validation"].items())


# the category job's figures a rebuilt similarity model must match, with their names in the summary
SIMILARITY_FIGURES = {"recall_at_1": "recall@1", "verification_accuracy": "verification", "roc_auc": "ROC-AUC"}


def figures(metrics: dict) -> tuple[float, ...] | None:
    """The figures, each higher better, by which a rebuilt model and the shipped model of its kind are compared — the
    rebuilt one is installed only when it is at least as good in every one: a similarity model's recall@1,
    verification accuracy and ROC-AUC (the category job: a model that retrieves better but verifies worse does not
    replace one); a classifier's accuracy; a denoiser's mean PSNR over the σ; minus a noise estimator's mean relative
    error of σ̂. ``None`` for metrics with none of them."""
    if "recall_at_1" in metrics:
        return tuple(metrics[k] for k in SIMILARITY_FIGURES)
    if "test_accuracy" in metrics:
        return (metrics["test_accuracy"],)
    if "psnr" in metrics:
        return (sum(metrics["psnr"].values()) / len(metrics["psnr"]),)
    if "sigma_rel_error" in metrics:
        return (-sum(metrics["sigma_rel_error"].values()) / len(metrics["sigma_rel_error"]),)
    return None


def keep(job: Job, record: dict, args: argparse.Namespace) -> str:
    """``"rebuilt"`` when the rebuilt model is to be installed, else ``"shipped"``: the shipped model of its kind is
    evaluated by the same protocol, in this run, and stays unless the rebuilt one is at least as good in each of
    :func:`figures` (the shipped model's metrics go to the record)."""
    shipped = args.weights / f"{shipped_name(job.kind, job.dataset, job.variant)}.safetensors"
    rebuilt = figures(record["metrics"])
    if args.install == "always" or not shipped.is_file() or rebuilt is None:
        return "rebuilt"
    record["shipped_metrics"] = evaluate_job(job, shipped, args)
    better = all(a >= b for a, b in zip(rebuilt, figures(record["shipped_metrics"])))
    return "rebuilt" if better else "shipped"


def headline(record: dict, key: str = "metrics") -> str:
    m = record[key]
    if "recall_at_1" in m:
        return ", ".join(f"{name} {m[k]:.4f}" for k, name in SIMILARITY_FIGURES.items())
    if "test_accuracy" in m:
        return f"accuracy {m['test_accuracy']:.4f}"
    if "psnr" in m:
        return "PSNR " + " / ".join(f"{v:.2f}" for v in m["psnr"].values()) + " dB at sigma " + \
            " / ".join(m["psnr"])
    if "sigma_rel_error" in m:
        return "sigma error " + " / ".join(f"{v:.3f}" for v in m["sigma_rel_error"].values())
    return ", ".join(f"{k} {v:.4f}" for k, v in record["validation"].items())


def machine(record: dict) -> str:
    """Where a job ran, for its row: the GPU, or the CPU, its cores and whether it multiplies bfloat16 in hardware
    (the training loop's autocast then runs)."""
    hw = record["hardware"]
    if record["device"] == "cuda":
        return hw["gpu"]
    return f"{hw['cpu']}, {hw['cores']} cores, {'bfloat16' if hw['cpu_bf16'] else 'float32'}"


def markdown(result: dict) -> str:
    made_by = list(dict.fromkeys(f"`{r['command']}` (code `{r['code_version']}`, {r['date']})"
                                 for r in result["jobs"]))
    torch_versions = sorted({r["hardware"]["torch"] for r in result["jobs"]})
    lines = ["# Rebuilding the shipped models", "",
             "Made by: " + "; ".join(made_by) + "  ",
             f"torch {', '.join(torch_versions)}; each row names the machine it ran on.", "",
             "Every model trained from scratch with its default recipe (`siamdiff train KIND --dataset D`); metrics "
             "of its float16 copy on the official test split (similarity: docs/similarity.md's protocol; "
             "denoisers: blind, the first test images). Train minutes are the training loop's own (all epochs, "
             "validation included); job minutes add evaluation and installing. Installed: whether that copy is the "
             "shipped model now; a rebuilt model is installed only when it scores at least as well as the shipped "
             "one it would replace, evaluated beside it in the same run by the same protocol (the shipped model's "
             "figure is given when it stayed).", "",
             "| job | epochs | train min | job min | machine | result | installed |",
             "|---|---:|---:|---:|---|---|---|"]
    for r in result["jobs"]:
        if r["installed"]:
            installed = "yes"
        elif r.get("kept") == "shipped":
            installed = f"no: shipped model better, {headline(r, 'shipped_metrics')}"
        else:
            installed = "no: run with --no-ship" if "--no-ship" in shlex.split(r["command"]) else "no"
        lines.append(f"| {r['job']} | {r['epochs']} | {r['train_seconds'] / 60:.1f} | {r['job_seconds'] / 60:.1f} | "
                     f"{machine(r)} | {headline(r)} | {installed} |")
    lines += ["", f"Total: {result['train_seconds'] / 60:.1f} min of training, {result['job_seconds'] / 60:.1f} min "
              "of jobs."]
    pairs = [(r, d) for r in result["jobs"] if r["kind"] == "ddpm" and "psnr" in r["metrics"]
             for d in result["jobs"] if d["kind"] == "denoiser" and d["dataset"] == r["dataset"]
             and "psnr" in d["metrics"]]
    if pairs:
        lines += ["", "Blind tweedie (diffusion model) against the supervised direct denoiser of the same run:", "",
                  "| dataset | sigma | tweedie dB | direct dB | difference |", "|---|---:|---:|---:|---:|"]
        for r, d in pairs:
            for s, v in r["metrics"]["psnr"].items():
                w = d["metrics"]["psnr"][s]
                lines.append(f"| {r['dataset']} | {s} | {v:.2f} | {w:.2f} | {v - w:+.2f} |")
    return "\n".join(lines) + "\n"


def tables(selected: list[Job], runs: Path, args: argparse.Namespace) -> None:
    """Rebuild the benchmark tables over the installed models, with the commands the README and docs publish (and
    the benchmark-only models of this run when it trained them)."""
    bench = ["--models", os.path.relpath(runs, ROOT)] if any(not j.ships for j in selected) else []
    steps = []
    if any(j.kind == "similarity" for j in selected):
        steps.append(["benchmarks/similarity.py", "--data-dir", args.data_dir, *bench])
    if any(j.kind != "similarity" for j in selected):
        steps.append(["benchmarks/denoise.py", "--data-dir", args.data_dir, "--n", str(args.n_table), "--n-chain",
                      str(args.n_chain), *bench])
    for step in steps:
        began = time.perf_counter()
        print("tables: python " + shlex.join(step), flush=True)
        subprocess.run([sys.executable, *step], cwd=ROOT, check=True)
        print(f"tables: {step[0]} done in {seconds_text(time.perf_counter() - began)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--only", nargs="+", metavar="KIND:DATASET", help="these jobs only (e.g. similarity:cifar10)")
    parser.add_argument("--budget", choices=("default", "full"), default="default")
    parser.add_argument("--benchmark-models", action="store_true", help="also the models only the benchmarks use")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "reproduce", help="the run folders")
    parser.add_argument("--n-eval", type=int, default=500, help="test images of each denoiser's evaluation")
    parser.add_argument("--n-table", type=int, default=500, help="test images per row of the denoise tables")
    parser.add_argument("--n-chain", type=int, default=20, help="test images of the denoise tables' chain rows")
    parser.add_argument("--no-ship", action="store_true", help="train and evaluate, but install nothing")
    parser.add_argument("--install", choices=("better", "always"), default="better",
                        help="install a rebuilt model only when it scores at least as well as the shipped one "
                             "(better, evaluated side by side) or whatever it scores (always)")
    parser.add_argument("--no-tables", action="store_true", help="leave the benchmark tables as they are")
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="where shipped models are installed")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--summary-only", action="store_true",
                        help="write reproduce.md again from reproduce.json (and what is installed now)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # what made the models: this command as typed (or as called, from Python)
    args.command = command() if argv is None else "python benchmarks/reproduce.py " + shlex.join(argv)

    everything = jobs(benchmark_models=True)
    selected = jobs(benchmark_models=args.benchmark_models)
    if args.only:
        known = {j.key: j for j in everything}
        unknown = [k for k in args.only if k not in known]
        if unknown:
            parser.error(f"unknown job {unknown[0]}: use one of {', '.join(known)}")
        selected = [j for j in everything if j.key in args.only]
    runs = args.runs / args.budget
    meta = {**provenance(), "command": args.command}
    records, began = [], time.perf_counter()
    if args.summary_only:
        selected = []
    for i, job in enumerate(selected, 1):
        t = time.perf_counter()
        print(f"[{i}/{len(selected)}] {job.key}: training", flush=True)
        record = run_job(job, runs, args, meta)
        records.append(record)
        print(f"[{i}/{len(selected)}] {job.key}: {record['epochs']} epochs, train {seconds_text(record['train_seconds'])}"
              f", this run {seconds_text(time.perf_counter() - t)}, {headline(record)}"
              + (f"; the shipped model stays ({headline(record, 'shipped_metrics')})" if record.get("kept") == "shipped"
                 else ""), flush=True)
    summary = args.out / "reproduce.json"  # rows of jobs not run now are kept, each with the command that made it
    previous = json.loads(summary.read_text()) if summary.is_file() else {"jobs": []}
    kept = previous["jobs"]
    order = [j.key for j in everything]
    records = sorted([r for r in kept if r["job"] not in {n["job"] for n in records}] + records,
                     key=lambda r: order.index(r["job"]) if r["job"] in order else len(order))
    for r in records:
        r["installed"] = is_installed(r, args.weights)
    if args.summary_only:  # the rows' own commands stay; the summary's provenance is the last run's
        meta = {k: v for k, v in previous.items() if k != "jobs"}
    result = {**meta, "budget": args.budget, "jobs": records,
              "train_seconds": round(sum(r["train_seconds"] for r in records), 1),
              "job_seconds": round(sum(r["job_seconds"] for r in records), 1)}
    write(result, markdown(result), args.out, "reproduce")
    print(f"all {len(records)} jobs in {seconds_text(time.perf_counter() - began)} (this run)", flush=True)
    if not args.no_tables and not args.no_ship:
        tables(selected, runs, args)


if __name__ == "__main__":
    main()
