"""Denoising benchmark: every method of the evaluation protocol (docs/reconstruction.md) with the shipped models, on
each dataset's first test images, written to docs/benchmarks/denoise.{json,md}.

    python benchmarks/denoise.py --data-dir ../shared/data                     # every row of the shipped models
    python benchmarks/denoise.py --data-dir ../shared/data --models runs/bench  # and of the benchmark-only models
    python benchmarks/denoise.py --data-dir ../shared/data --latency-only       # this machine's latency record
    python benchmarks/denoise.py --data-dir ../shared/data --markdown-only      # denoise.md again from the JSON
    python benchmarks/denoise.py --data-dir ../shared/data --datasets mnist --rows tweedie --n 100 --out /tmp/b

Rows come from the shipped diffusion models with their noise estimators and classifiers, from the model-free
baselines, and — when ``--models DIR`` holds them as ``DIR/<dataset>-<name>/model.safetensors`` — from the models
only the benchmarks use (the direct denoiser, the seed design, the VAEs, the U-Net on the seed's 32x32 grid). Each
row is one `siamdiff eval denoise` call run in this process; the row keeps that command, and rows of non-shipped
models keep the command that trained them. ``--resume`` continues a run that was stopped, keeping the rows it made.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, card, describe, provenance, time_calls, write  # noqa: E402

SIGMAS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
GUIDANCE_SIGMAS = (0.5, 1.0)
DATASETS = ("mnist", "fashion-mnist", "cifar10")
GRAY = ("mnist", "fashion-mnist")
# the models only the benchmarks use: name -> how to train it (appended to `siamdiff train`)
BENCHMARK_MODELS = {"denoiser": "denoiser --model default", "ddpm-seed": "ddpm --model seed",
                    "vae-seed": "vae --model seed", "vae-conv": "vae --model default",
                    "ddpm-32": "ddpm --model unet --image-size 32"}


@dataclass(frozen=True)
class Row:
    """One line of the tables: a method, its model (``shipped``, a benchmark model's name, or None), its settings."""

    name: str
    method: str
    model: str | None = None
    clips: tuple[bool, ...] = (False, True)
    sigmas: tuple[float, ...] = SIGMAS
    chain: bool = False  # measured on the first --n-chain images (the chains are slow on a CPU)
    sigma_mode: str = "auto"
    labels: str = "none"
    declip: bool = False
    estimator: str | None = None  # None: the shipped estimator of the dataset; "wavelet": wavelet-MAD
    image_size: int | None = None
    datasets: tuple[str, ...] = DATASETS
    needs: tuple[str, ...] = field(default=())  # benchmark models that must be present for this row


ROWS = (
    Row("tweedie", "tweedie", "shipped"),
    Row("tweedie, declipped", "tweedie", "shipped", clips=(True,), declip=True),
    Row("ddim", "ddim", "shipped"),
    Row("ancestral", "ancestral", "shipped", clips=(False,), chain=True),
    Row("ancestral", "ancestral", "shipped", clips=(True,), chain=True, datasets=GRAY),
    Row("noisy", "noisy"),
    Row("nlm", "nlm"),
    Row("wavelet", "wavelet"),
    Row("sigma by wavelet-MAD", "noisy", estimator="wavelet"),
    *(Row(f"{method}, labels {labels}", method, "shipped", clips=(False,), sigmas=GUIDANCE_SIGMAS, labels=labels)
      for labels in ("none", "predicted", "true") for method in ("tweedie", "ddim")),
    *(Row(f"{method} ({'32x32' if size else 'native'}, true sigma)", method, clips=(False,), sigma_mode="true",
          image_size=size, datasets=GRAY) for size in (None, 32) for method in ("noisy", "nlm", "wavelet")),
    Row("direct", "direct", "denoiser"),
    Row("seed-tweedie", "tweedie", "ddpm-seed"),
    Row("seed-ancestral (true sigma)", "ancestral", "ddpm-seed", chain=True, sigma_mode="true"),
    Row("vae-seed", "vae", "vae-seed", datasets=GRAY),
    Row("vae-conv", "vae", "vae-conv"),
    Row("tweedie (32x32)", "tweedie", "ddpm-32", clips=(False,), datasets=("mnist",)),
    Row("tweedie, chain images", "tweedie", "shipped", clips=(False,), chain=True, needs=("ddpm-seed",)),
    Row("tweedie (32x32), chain images", "tweedie", "ddpm-32", clips=(False,), chain=True, datasets=("mnist",)),
)


def model_of(row: Row, dataset: str, models: Path | None) -> str | None:
    """The ``--model`` of a row: the shipped name, a benchmark model's file, or None (model-free)."""
    if row.model in (None, "shipped"):
        return None if row.model is None else dataset
    return str(models / f"{dataset}-{row.model}" / "model.safetensors") if models else None


def available(row: Row, dataset: str, models: Path | None) -> bool:
    if dataset not in row.datasets:
        return False
    wanted = [row.model] if row.model not in (None, "shipped") else []
    return all(models is not None and (models / f"{dataset}-{m}" / "model.safetensors").is_file()
               for m in [*wanted, *row.needs])


def cli_command(row: Row, dataset: str, clip: bool, model: str | None, n: int, args: argparse.Namespace) -> str:
    """The `siamdiff eval denoise` command that gives this row alone."""
    cmd = ["siamdiff", "eval", "denoise", "--dataset", dataset, "--method", row.method,
           "--sigmas", ",".join(str(s) for s in row.sigmas), "--n", str(n), "--sigma-mode", row.sigma_mode,
           "--labels", row.labels, "--classifier", dataset, "--data-dir", args.data_dir, "--json"]
    cmd += ["--model", model] if model else []
    cmd += ["--estimator", row.estimator or dataset] if row.sigma_mode == "auto" else []
    cmd += ["--clip"] if clip else []
    cmd += [] if row.declip else ["--no-declip"]
    cmd += ["--image-size", str(row.image_size)] if row.image_size else []
    return shlex.join(cmd)


def trained_by(path: str | None) -> str | None:
    """The command recorded in a (non-shipped) model file."""
    if path is None:
        return None
    from siamdiff.core.checkpoint import read_metadata

    return read_metadata(path)["extra"].get("command")


def measure(row: Row, dataset: str, clip: bool, args: argparse.Namespace) -> list[dict]:
    from siamdiff.reconstruction.evaluate import evaluate_denoise

    model = model_of(row, dataset, args.models)
    n = args.n_chain if row.chain else args.n
    rows = evaluate_denoise(dataset, list(row.sigmas), row.method, model, n, clip, row.sigma_mode,
                            (row.estimator or dataset) if row.sigma_mode == "auto" else None, dataset, row.labels,
                            data_dir=args.data_dir, batch_size=args.batch_size, image_size=row.image_size,
                            device=args.device, declip=row.declip)
    extra = {"dataset": dataset, "name": row.name, "command": cli_command(row, dataset, clip, model, n, args)}
    if row.model not in (None, "shipped"):
        extra["train_command"] = trained_by(model)
    print(f"{dataset} {row.name} clip={clip}: " + ", ".join(f"{r['sigma']}: {r['psnr']:.2f} dB" for r in rows),
          flush=True)
    return [{**r, **extra} for r in rows]


def clean_accuracy(dataset: str, args: argparse.Namespace) -> dict:
    """The shipped classifier's accuracy on clean test images (the ceiling of the class-accuracy columns)."""
    import torch

    from siamdiff.data.datasets import load_dataset
    from siamdiff.reconstruction.pipeline import Denoiser

    den = Denoiser.load(None, classifier=dataset, kind=None)
    test = load_dataset(dataset, "test", args.data_dir)
    pred = torch.cat([den.classify(test.images[s:s + 500].float() / 255) for s in range(0, len(test), 500)])
    correct = pred == test.labels
    return {"first_n": float(correct[:args.n].float().mean()), "n": min(args.n, len(test)),
            "full_test": float(correct.float().mean()), "n_test": len(test)}


def latency(repeats: int = 100) -> dict:
    """Median (p25-p75) ms on the CPU with 2 threads for one 28x28 image and the shipped MNIST model: tweedie with
    sigma given, tweedie blind (learned estimator + network), DDIM with 10 steps (blind); then the same after
    ``Denoiser.compile()`` (its one-time compile time recorded). CPUs differ by 2x, so each machine keeps its own
    record."""
    import time

    import torch

    from siamdiff.data.datasets import load_sample
    from siamdiff.reconstruction.noise import gaussian
    from siamdiff.reconstruction.pipeline import Denoiser

    torch.set_num_threads(2)
    den = Denoiser.load("mnist")
    image = gaussian(load_sample("mnist").images[:1].float() / 255, 0.3, torch.Generator().manual_seed(0))

    def timed(**kw) -> dict:
        return time_calls(lambda: den.denoise(image, **kw), repeats, digits=2)

    with torch.inference_mode():
        result = {"tweedie, sigma given": timed(sigma=0.3), "tweedie, blind": timed(sigma="auto"),
                  "ddim 10 steps, blind": timed(sigma="auto", method="ddim", steps=10), "threads": 2,
                  "repeats": repeats, **provenance()}
        began = time.perf_counter()
        den.compile().denoise(image, sigma="auto")  # compiles the network and the estimator for this shape
        result["compile_seconds"] = round(time.perf_counter() - began, 1)
        result.update({"compiled: tweedie, sigma given": timed(sigma=0.3), "compiled: tweedie, blind": timed(
            sigma="auto"), "compiled: ddim 10 steps, blind": timed(sigma="auto", method="ddim", steps=10)})
    result["machine"] = f"{result['hardware']['cpu']} ({result['hardware']['cores']} cores)"
    return result


# ------------------------------------------------------------------------------------------------ markdown
def _find(result: dict, dataset: str, name: str, sigma: float, clip: bool = False) -> dict | None:
    return next((r for r in result["rows"] if (r["dataset"], r["name"], r["sigma"], r["clip"]) ==
                 (dataset, name, sigma, clip)), None)


def _datasets(result: dict) -> list[str]:
    return list(dict.fromkeys(r["dataset"] for r in result["rows"]))


def summary(result: dict) -> list[str]:
    """The comparison tables, read off the rows (blind = sigma estimated by the learned estimator)."""
    lines = ["## Noise-level estimation", "", "Median relative error of the estimated sigma, unclipped (as a file in "
             "brackets):", "", "| dataset | estimator | " + " | ".join(f"sigma {s}" for s in SIGMAS) + " |",
             "|---|---|" + "---|" * len(SIGMAS)]
    for dataset in _datasets(result):
        for label, name in (("learned", "noisy"), ("wavelet-MAD", "sigma by wavelet-MAD")):
            cells = []
            for sigma in SIGMAS:
                u, c = _find(result, dataset, name, sigma), _find(result, dataset, name, sigma, True)
                cells.append(("" if not u else f"{u['sigma_rel_error']:.3f}")
                             + ("" if not c else f" ({c['sigma_rel_error']:.3f})"))
            lines.append(f"| {dataset} | {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Guidance", "", "Class flip rate (1 - class accuracy of the outputs), tweedie, unclipped, blind:",
              "", "| dataset | sigma | no guidance | label auto (predicted from the unguided estimate) | true label |",
              "|---|---|---|---|---|"]
    for dataset in _datasets(result):
        for sigma in GUIDANCE_SIGMAS:
            cells = [_find(result, dataset, f"tweedie, labels {k}", sigma) for k in ("none", "predicted", "true")]
            lines.append(f"| {dataset} | {sigma} | " + " | ".join(
                "" if c is None else f"{1 - c['class_accuracy']:.3f}" for c in cells) + " |")
    lines += ["", "## Files", "", "As a file (clipped, 8-bit), blind: tweedie as is and after undoing the clipping "
              "bias (what `siamdiff denoise` and `eval denoise` do by default):", "",
              "| dataset | sigma | tweedie dB (class acc) | declipped dB (class acc) |", "|---|---|---|---|"]
    for dataset in _datasets(result):
        for sigma in SIGMAS:
            t, dc = _find(result, dataset, "tweedie", sigma, True), _find(result, dataset, "tweedie, declipped", sigma,
                                                                         True)
            if t and dc:
                lines.append(f"| {dataset} | {sigma} | {t['psnr']:.2f} ({t['class_accuracy']:.3f}) | "
                             f"{dc['psnr']:.2f} ({dc['class_accuracy']:.3f}) |")
    grid = [(d, s) for d in _datasets(result) for s in SIGMAS if _find(result, d, "nlm (32x32, true sigma)", s)]
    if grid:
        lines += ["", "## The 32x32 grid", "", "The report measured its design on digits resized to 32x32, with the "
                  "noise drawn there. The model-free methods, told the true sigma, on the native grid and on that one "
                  "(PSNR dB; a positive difference: the 32x32 task is easier):", "",
                  "| dataset | sigma | noisy native / 32x32 | NLM native / 32x32 (diff) | wavelet native / 32x32 "
                  "(diff) |", "|---|---|---|---|---|"]
        for dataset, sigma in grid:
            cells = []
            for method in ("noisy", "nlm", "wavelet"):
                a = _find(result, dataset, f"{method} (native, true sigma)", sigma)
                b = _find(result, dataset, f"{method} (32x32, true sigma)", sigma)
                cells.append("" if not (a and b) else f"{a['psnr']:.2f} / {b['psnr']:.2f}"
                             + ("" if method == "noisy" else f" ({b['psnr'] - a['psnr']:+.2f})"))
            lines.append(f"| {dataset} | {sigma} | " + " | ".join(cells) + " |")
    direct = [(d, s) for d in _datasets(result) for s in SIGMAS if _find(result, d, "direct", s)]
    if direct:
        lines += ["", "## Against the supervised direct denoiser", "", "Unclipped, blind, same images:", "",
                  "| dataset | sigma | tweedie dB | direct dB | tweedie - direct |", "|---|---|---|---|---|"]
        for dataset, sigma in direct:
            t, d = _find(result, dataset, "tweedie", sigma), _find(result, dataset, "direct", sigma)
            lines.append(f"| {dataset} | {sigma} | {t['psnr']:.2f} | {d['psnr']:.2f} | {t['psnr'] - d['psnr']:+.2f} |")
    return lines + [""]


def shipped_models(datasets: list[str]) -> list[str]:
    """The shipped models the rows use, each with the command that trained it (from its model card)."""
    lines = ["## Models", "", "The shipped models of the rows, with the commands that trained them (their model cards; `a + b`: a "
             "model of a epochs fine-tuned for b more):", "",
             "| model | trained by | epochs | seconds | on |", "|---|---|---|---|---|"]
    for dataset in datasets:
        for kind in ("diffusion", "sigma", "classifier"):
            c = card(kind, dataset)
            if c is None:
                continue
            runs = [*([c["init"]] if c.get("init") else []), c]  # a fine-tuned model: the run it started from
            lines.append(f"| {kind}-{dataset} | " + " then ".join(f"`{r['command']}`" for r in runs) + " | "
                         + " + ".join(str(r.get("epochs_completed", r.get("epochs"))) for r in runs) + " | "
                         + f"{sum(r['train_seconds'] for r in runs):.0f} | "
                         + " + ".join(str(r["train_device"]) for r in runs) + " |")
    return lines + [""]


def markdown(result: dict) -> str:
    lines = ["# Denoising benchmark", "",
             f"Measured by `{result['command']}` at code version `{result['code_version']}` on "
             f"{describe(result['hardware'])}, {result['date']}. Each row's own `siamdiff eval denoise` command (and "
             f"the training command of a model that is not shipped) is in denoise.json.", "",
             "Protocol (docs/reconstruction.md): the first n test images at native resolution (a model made for "
             "another size, and rows marked 32x32: the clean images resized to it, the noise drawn there), Gaussian "
             "noise with a fixed seed per sigma; blind rows use the shipped learned sigma estimate; class accuracy by "
             "the shipped classifier; ms/image is the whole `Denoiser.denoise` call (sigma, labels, method) per "
             "image.", "", *shipped_models(_datasets(result))]
    for dataset in _datasets(result):
        acc = result.get("classifier_clean_accuracy", {}).get(dataset)
        if acc:
            lines += [f"{dataset}: the classifier's accuracy on clean test images is {acc['first_n']:.4f} on the "
                      f"first {acc['n']} and {acc['full_test']:.4f} on all {acc['n_test']}.", ""]
        for clip in (False, True):
            rows = [r for r in result["rows"] if r["dataset"] == dataset and r["clip"] == clip]
            if not rows:
                continue
            lines += [f"## {dataset}, {'as a file (clipped, 8-bit)' if clip else 'unclipped'}", "",
                      "| method | sigma | PSNR dB | SSIM | class acc | sigma rel. err | ms/image | n |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in rows:
                acc = "" if r["class_accuracy"] is None else f"{r['class_accuracy']:.4f}"
                err = "" if r["sigma_rel_error"] is None else f"{r['sigma_rel_error']:.3f}"
                lines.append(f"| {r['name']} | {r['sigma']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {acc} | {err} | "
                             f"{1000 * r['seconds_per_image']:.2f} | {r['n']} |")
            lines.append("")
    if result.get("skipped"):
        lines += ["Rows left out because their models are not shipped (they need `--models DIR` with the models "
                  "trained by `siamdiff train " + "`, `siamdiff train ".join(BENCHMARK_MODELS.values()) + "`): "
                  + ", ".join(sorted(set(result["skipped"]))) + ".", ""]
    if result.get("latency"):
        runs = result["latency"]
        ops = [k for k, v in runs[0].items() if isinstance(v, dict) and "median_ms" in v]
        lines += ["## Latency", "", f"CPU, {runs[0]['threads']} threads, one 28x28 MNIST image, shipped model, median "
                  f"ms (p25-p75) of {runs[0]['repeats']} calls after 10 warm-up calls; 'compiled' rows after "
                  "`Denoiser.compile()`. One column per machine, each with its own code version and command "
                  "(below).", "",
                  "| operation | " + " | ".join(r["machine"] for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
        for op in ops:
            lines.append(f"| {op} | " + " | ".join(f"{r[op]['median_ms']} ({r[op]['p25_ms']}-{r[op]['p75_ms']})"
                                                  for r in runs) + " |")
        lines += [""] + [f"- {r['machine']}: code `{r['code_version']}`, torch {r['hardware']['torch']}, {r['date']}, "
                         f"first compiled call {r['compile_seconds']} s; `{r['command']}`" for r in runs] + [""]
    return "\n".join(lines + summary(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--rows", nargs="*", default=[], help="only these row names (e.g. tweedie nlm)")
    parser.add_argument("--n", type=int, default=1000, help="test images per row")
    parser.add_argument("--n-chain", type=int, default=200, help="test images of the chain rows")
    parser.add_argument("--models", type=Path, help="folder of benchmark-only models: DIR/<dataset>-<name>/")
    parser.add_argument("--device", default="auto", help="where the networks run")
    parser.add_argument("--batch-size", type=int, default=250, help="images per network batch")
    parser.add_argument("--latency-only", action="store_true", help="measure this machine's latency record again")
    parser.add_argument("--resume", action="store_true", help="keep the rows a stopped run of this command made")
    parser.add_argument("--markdown-only", action="store_true", help="write denoise.md again from denoise.json")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    path = args.out / "denoise.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    previous["latency"] = [r for r in previous.get("latency", []) if "machine" in r]  # this script's records
    if args.markdown_only:
        write(previous, markdown(previous), args.out, "denoise")
        return
    if args.latency_only:  # replaces this machine's record; other machines' records stay
        measured = latency()
        previous["latency"] = [r for r in previous.get("latency", []) if r["machine"] != measured["machine"]] + \
            [measured]
        write(previous, markdown(previous), args.out, "denoise")
        print(json.dumps({k: v for k, v in measured.items() if isinstance(v, dict) and "median_ms" in v}))
        return
    result = {**provenance(), "rows": [], "skipped": [], "classifier_clean_accuracy": {},
              "latency": previous.get("latency", [])}
    done = set()
    if args.resume and previous.get("command", "").replace(" --resume", "") == result["command"].replace(
            " --resume", ""):
        result.update(rows=previous["rows"], classifier_clean_accuracy=previous["classifier_clean_accuracy"])
        done = {(r["dataset"], r["name"], r["clip"]) for r in previous["rows"]}
    for dataset in args.datasets:
        for row in ROWS:
            if args.rows and row.name not in args.rows:
                continue
            if not available(row, dataset, args.models):
                if dataset in row.datasets:
                    result["skipped"].append(row.name)
                continue
            for clip in row.clips:
                if (dataset, row.name, clip) not in done:
                    result["rows"] += measure(row, dataset, clip, args)
                    write(result, markdown(result), args.out, "denoise")  # a stopped run keeps what it did
        if dataset not in result["classifier_clean_accuracy"]:
            result["classifier_clean_accuracy"][dataset] = clean_accuracy(dataset, args)
    write(result, markdown(result), args.out, "denoise")
    print(f"wrote {args.out / 'denoise.md'}")


if __name__ == "__main__":
    main()
