"""Denoising benchmark: train (or reuse) every model of the reconstruction half per dataset, evaluate every method
with the protocol of docs/reconstruction.md, and write docs/benchmarks/denoise.{json,md}.

    python benchmarks/denoise.py --data-dir ../shared/data                       # all datasets, all sigmas
    python benchmarks/denoise.py --data-dir ../shared/data --datasets mnist --n 1000 --n-chain 200
    python benchmarks/denoise.py --data-dir ../shared/data --preset tiny --n 16   # smoke run of the harness

Every row records the `siamdiff eval denoise` command that produced it. Training commands are in the runs'
model files and in the JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from similarity import code_version, hardware, run as run_timed, time_calls  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

ROOT = Path(__file__).resolve().parents[1]
SIGMAS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
# name -> (train sub-command, --model value); the seed VAE only exists for 28x28 grayscale data
MODELS = {"ddpm": ("ddpm", "unet"), "ddpm-seed": ("ddpm", "seed"), "denoiser": ("denoiser", "default"),
          "classifier": ("classifier", "default"), "estimator": ("noise-estimator", "default"),
          "vae-seed": ("vae", "seed"), "vae-conv": ("vae", "default"), "ddpm-32": ("ddpm", "unet")}
# siamdiff's U-Net trained on the seed design's 32x32 grid (MNIST only) for as many epochs as the seed design had:
# the like-for-like comparison with the seed
SIZE = {"ddpm-32": 32}


def run(cmd: list[str]) -> str:
    """Run a ``siamdiff ...`` command line with this Python; its stdout."""
    return run_timed([sys.executable, "-m", "siamdiff", *cmd[1:]])[0]


def train(dataset: str, name: str, args: argparse.Namespace) -> Path:
    sub, model = MODELS[name]
    if args.preset == "tiny":
        model = "tiny" if name != "ddpm-seed" else "seed"
    out = Path(args.runs) / f"{dataset}-{name}"
    if not (out / "log.jsonl").is_file():
        if args.no_train:
            raise SystemExit(f"{out} holds no trained model (and --no-train was given)")
        cmd = ["siamdiff", "train", sub, "--dataset", dataset, "--model", model, "--out", str(out),
               "--data-dir", args.data_dir]
        epochs = args.epochs.get(f"{dataset}:{name}") or (1 if args.preset == "tiny" else None)
        if name in SIZE and not epochs:  # the seed's budget (trained before it: MODELS order)
            epochs = len((Path(args.runs) / f"{dataset}-ddpm-seed" / "log.jsonl").read_text().splitlines())
        if epochs:
            cmd += ["--epochs", str(epochs)]
        if args.preset == "tiny":
            cmd += ["--max-batches", "2"]
        cmd += ["--image-size", str(SIZE[name])] if name in SIZE else []
        run(cmd + (["--overwrite"] if out.exists() else []))
        print(f"trained {dataset}:{name}", flush=True)
    return out / "model.safetensors"


def evaluate(dataset: str, method: str, model: Path | None, models: dict, args: argparse.Namespace,
             clip: bool, sigmas: tuple[float, ...], n: int, sigma_mode: str = "auto", labels: str = "none",
             tag: str = "", estimator: bool = True, declip: bool = False, image_size: int | None = None) -> list[dict]:
    """Rows of ``siamdiff eval denoise`` with these settings, run in this process; each row keeps the command."""
    from siamdiff.reconstruction.evaluate import evaluate_denoise

    est = models.get("estimator") if sigma_mode == "auto" and estimator else None
    cmd = ["siamdiff", "eval", "denoise", "--dataset", dataset, "--method", method,
           "--sigmas", ",".join(str(s) for s in sigmas), "--n", str(n), "--sigma-mode", sigma_mode,
           "--classifier", str(models["classifier"]), "--labels", labels, "--data-dir", args.data_dir,
           "--device", args.device, "--batch-size", str(args.batch_size), "--json"]
    cmd += ["--estimator", str(est)] if est else []
    cmd += ["--model", str(model)] if model is not None else []
    cmd += ["--clip"] if clip else []
    cmd += ["--declip"] if declip else []
    cmd += ["--image-size", str(image_size)] if image_size else []
    rows = evaluate_denoise(dataset, list(sigmas), method, model, n, clip, sigma_mode, est, models["classifier"],
                            labels, data_root=args.data_dir, device=args.device, batch_size=args.batch_size,
                            declip=declip, image_size=image_size)
    hw = args.hardware
    for r in rows:
        r.update({"dataset": dataset, "name": tag or method, "command": shlex.join(cmd),
                  "hardware": hw["gpu"] if r["device"].startswith("cuda") else f"{hw['cpu']} ({hw['cores']} cores)"})
    print(f"{dataset} {tag or method} clip={clip}: "
          + ", ".join(f"{r['sigma']}: {r['psnr']:.2f} dB" for r in rows), flush=True)
    return rows


def benchmark_dataset(dataset: str, args: argparse.Namespace, emit) -> None:
    """``--part net``: every method that runs a network (fit for a GPU); ``--part cpu``: scikit-image baselines and
    the wavelet-MAD sigma row; ``--part all``: both. ``emit(rows)`` receives the rows of each evaluation as they
    come (the most important first: unclipped, then guidance, then as-a-file)."""
    names = [m for m in MODELS if not (m == "vae-seed" and dataset == "cifar10") and not (m in SIZE and
                                                                                        dataset != "mnist")]
    if args.part == "cpu":
        names = ["classifier", "estimator"]
    models = {m: train(dataset, m, args) for m in names}
    net, cpu = args.part in ("net", "all"), args.part in ("cpu", "all")

    def wanted(tag: str, clip: bool) -> bool:
        return (not args.rows or tag in args.rows) and ("file" if clip else "unclipped") in args.clips

    def block(clip: bool) -> None:
        specs = [("tweedie", models.get("ddpm"), "tweedie"), ("direct", models.get("denoiser"), "direct"),
                 ("noisy", None, "noisy"), ("ddim", models.get("ddpm"), "ddim"),
                 ("tweedie", models.get("ddpm-seed"), "seed-tweedie"), ("vae", models.get("vae-seed"), "vae-seed"),
                 ("vae", models.get("vae-conv"), "vae-conv"), ("tweedie", models.get("ddpm-32"), "tweedie (32x32)")
                 ] if net else []
        specs += [("nlm", None, "nlm"), ("wavelet", None, "wavelet")] if cpu else []
        for method, model, tag in specs:
            if (model is None and method in ("vae", "tweedie", "ddim", "direct")) or not wanted(tag, clip):
                continue
            emit(evaluate(dataset, method, model, models, args, clip, args.sigmas, args.n, tag=tag))
        if net and clip and wanted("tweedie, declipped", clip):  # what `siamdiff denoise` does with files
            emit(evaluate(dataset, "tweedie", models["ddpm"], models, args, clip, args.sigmas, args.n,
                          tag="tweedie, declipped", declip=True))
        if net and wanted("seed-ancestral (true sigma)", clip):  # the chains: fewer images on a CPU (row's n)
            emit(evaluate(dataset, "ancestral", models["ddpm-seed"], models, args, clip, args.sigmas, args.n_chain,
                          sigma_mode="true", tag="seed-ancestral (true sigma)"))
        for name, tag in (("ddpm", "tweedie, chain images"), ("ddpm-32", "tweedie (32x32), chain images")):
            if net and not clip and models.get(name) and wanted(tag, clip):  # compared with the chains on their images
                emit(evaluate(dataset, "tweedie", models[name], models, args, clip, args.sigmas, args.n_chain, tag=tag))
        if net and wanted("ancestral", clip):
            emit(evaluate(dataset, "ancestral", models["ddpm"], models, args, clip, args.sigmas, args.n_chain,
                          tag="ancestral"))
        if cpu and wanted("sigma by wavelet-MAD", clip):
            emit(evaluate(dataset, "noisy", None, models, args, clip, args.sigmas, args.n,
                          tag="sigma by wavelet-MAD", estimator=False))
        if cpu and not clip and dataset != "cifar10":  # how much the report's 32x32 grid changes the task
            for size in (None, 32):
                for method in ("noisy", "nlm", "wavelet"):
                    tag = f"{method} ({'32x32' if size else 'native'}, true sigma)"
                    if wanted(tag, clip):
                        emit(evaluate(dataset, method, None, models, args, clip, args.sigmas, args.n,
                                      sigma_mode="true", tag=tag, image_size=size))

    block(False)
    if net:
        for labels in ("none", "predicted", "true"):  # guidance keeps the class at high noise
            for method in ("tweedie", "ddim"):
                if not wanted(f"{method}, labels {labels}", False):
                    continue
                emit(evaluate(dataset, method, models["ddpm"], models, args, False, (0.5, 1.0), args.n,
                              labels=labels, tag=f"{method}, labels {labels}"))
    block(True)


def clean_accuracy(dataset: str, args: argparse.Namespace) -> dict:
    """The fixed classifier's accuracy on the first n clean test images (the ceiling for class accuracy rows)."""
    import torch

    from siamdiff.core.checkpoint import load_model
    from siamdiff.data.datasets import load_dataset

    clf, meta = load_model(Path(args.runs) / f"{dataset}-classifier" / "model.safetensors", kind="classifier")
    test = load_dataset(dataset, "test", args.data_dir)
    with torch.no_grad():
        pred = torch.cat([clf(test.images[s:s + 500].float() / 255).argmax(1) for s in range(0, len(test), 500)])
    correct = (pred == test.labels)
    return {"first_n": float(correct[:args.n].float().mean()), "n": min(args.n, len(test)),
            "full_test": float(correct.float().mean()), "n_test": len(test)}


SHIP = {"ddpm": "diffusion", "estimator": "sigma", "classifier": "classifier"}  # run name -> shipped kind


def ship(result: dict, args: argparse.Namespace) -> None:
    """Copy each dataset's diffusion model, noise estimator and classifier into the package (float16 weights) with
    a model card: the training command and facts from its log, and the benchmark's figures for that model."""
    from siamdiff.core.checkpoint import read_metadata, save_float16_copy

    dest = ROOT / "src" / "siamdiff" / "weights"
    for dataset in args.datasets.split(","):
        for run_name, kind in SHIP.items():
            src = Path(args.runs) / f"{dataset}-{run_name}"
            history = [json.loads(line) for line in (src / "log.jsonl").read_text().splitlines()]
            save_float16_copy(src / "model.safetensors", dest / f"{kind}-{dataset}.safetensors")
            extra = read_metadata(src / "model.safetensors")["extra"]
            planned = (extra.get("recipe", {}).get("train") or extra.get("train") or {}).get("epochs")
            if run_name == "ddpm":
                figures = [r for r in result["rows"] if r["dataset"] == dataset and r["name"] == "tweedie"]
            elif run_name == "estimator":
                figures = [r for r in result["rows"] if r["dataset"] == dataset and r["name"] == "noisy"]
            else:
                figures = []
            card = {"name": f"{kind}-{dataset}", "kind": kind, "dataset": dataset,
                    "data": f"{dataset} official train split minus a 5,000-image validation split (seed 20260); "
                            f"benchmark on the first test images (docs/benchmarks/denoise.md)",
                    "command": extra.get("command"), "epochs_planned": planned, "epochs_completed": len(history),
                    "train_seconds": round(sum(h["seconds"] for h in history), 1),
                    "train_device": history[-1].get("device", "cpu"), "validation": history[-1],
                    "weights": "float16 copy of the trained float32 weights (EMA weights for diffusion models)",
                    "benchmark": [{k: r[k] for k in ("sigma", "clip", "psnr", "ssim", "class_accuracy",
                                                      "sigma_rel_error", "n")} for r in figures],
                    "classifier_clean_accuracy": result.get("classifier_clean_accuracy", {}).get(dataset)
                    if run_name == "classifier" else None}
            if extra.get("init"):  # fine-tuned: the run it started from, with its own command and time
                card["init"] = extra["init"]
                card["data"] += "; fine-tuned from the model named in 'init' on the same data"
            if planned and len(history) < planned:
                card["note"] = (f"stopped by the GPU session's deadline after {len(history)} of {planned} epochs: "
                                f"the one-cycle learning rate had not finished annealing")
            (dest / f"{kind}-{dataset}.json").write_text(json.dumps(card, indent=2) + "\n")
            print(f"shipped {kind}-{dataset} ({len(history)} epochs)")


def row_key(r: dict) -> tuple:
    return r["dataset"], r["name"], r["clip"], r["sigma"]


def latency(command: str, repeats: int = 100) -> dict:
    """Median (p25, p75) ms on the CPU with 2 threads for one 28x28 image and the shipped MNIST model: tweedie with
    sigma given, tweedie blind (learned estimator + network), DDIM with 10 steps (blind); then the same after
    ``Denoiser.compile()`` (its one-time compile time recorded). The record names the machine and code version:
    CPUs differ by 2x here, so each machine keeps its own record (see ``main``)."""
    import torch

    from siamdiff.data.datasets import load_sample
    from siamdiff.reconstruction.api import Denoiser
    from siamdiff.reconstruction.noise import gaussian

    hw = hardware()
    torch.set_num_threads(2)
    den = Denoiser.load("mnist")
    image = gaussian(load_sample("mnist").images[:1].float() / 255, 0.3, torch.Generator().manual_seed(0))

    def timed(**kw) -> dict:
        return time_calls(lambda: den.denoise(image, **kw), repeats, digits=2)

    with torch.inference_mode():
        result = {"tweedie, sigma given": timed(sigma=0.3), "tweedie, blind": timed(sigma="auto"),
                  "ddim 10 steps, blind": timed(sigma="auto", method="ddim", steps=10), "threads": 2,
                  "repeats": repeats, "hardware": f"{hw['cpu']} ({hw['cores']} cores)", "torch": hw["torch"],
                  "code_version": code_version(), "date": time.strftime("%Y-%m-%d"), "command": command}
        began = time.perf_counter()
        den.compile().denoise(image, sigma="auto")  # compiles the network and the estimator for this shape
        result["compile_seconds"] = round(time.perf_counter() - began, 1)
        result.update({"compiled: tweedie, sigma given": timed(sigma=0.3), "compiled: tweedie, blind": timed(
            sigma="auto"), "compiled: ddim 10 steps, blind": timed(sigma="auto", method="ddim", steps=10)})
    return result


def _find(result: dict, dataset: str, name: str, sigma: float, clip: bool = False) -> dict | None:
    return next((r for r in result["rows"] if (r["dataset"], r["name"], r["sigma"], r["clip"]) ==
                 (dataset, name, sigma, clip)), None)


def summary(result: dict) -> list[str]:
    """The issue's targets, read off the rows above (blind = sigma estimated by the learned estimator)."""
    lines = ["## Against the targets", "",
             "MNIST, blind, unclipped: the default method (tweedie) and the supervised direct denoiser on 1,000 test "
             "images; the seed design's ancestral chain, started from the true sigma and measured on its 32x32 grid as "
             "the report did (the easier grid, see the last table), on the first n images only, and the differences "
             "with it taken on those same images. Like for like: siamdiff's U-Net trained on that grid for the seed's "
             "epochs (`tweedie (32x32)`; each row's command gives its model file).", "",
             "| sigma | tweedie dB | direct dB | tweedie - direct | seed ancestral dB (n) | tweedie - seed | "
             "tweedie (32x32) - seed | tweedie class acc |", "|---" * 8 + "|"]

    def minus(row: dict | None, a: dict) -> str:
        return "" if row is None or row["n"] != a["n"] else f"{row['psnr'] - a['psnr']:+.2f}"

    for sigma in (0.1, 0.2, 0.3, 0.5):
        t, d = _find(result, "mnist", "tweedie", sigma), _find(result, "mnist", "direct", sigma)
        a = _find(result, "mnist", "seed-ancestral (true sigma)", sigma)
        if t and d and a:
            same = [_find(result, "mnist", name, sigma) for name in ("tweedie, chain images",
                                                                      "tweedie (32x32), chain images")]
            lines.append(f"| {sigma} | {t['psnr']:.2f} | {d['psnr']:.2f} | {t['psnr'] - d['psnr']:+.2f} | "
                         f"{a['psnr']:.2f} ({a['n']}) | {minus(same[0], a)} | {minus(same[1], a)} | "
                         f"{t['class_accuracy']:.3f} |")
    lines += ["", "Training budgets differ between these models: each row's command names its model file, and each "
                  "shipped model's card (src/siamdiff/weights/*.json) and docs/reconstruction.md give its epochs.",
              "", "Noise-level estimation, median relative error, unclipped (as a file in brackets):", "",
              "| dataset | estimator | " + " | ".join(f"sigma {s}" for s in SIGMAS) + " |",
              "|---|---|" + "---|" * len(SIGMAS)]
    for dataset in dict.fromkeys(r["dataset"] for r in result["rows"]):
        for label, name in (("learned", "noisy"), ("wavelet-MAD", "sigma by wavelet-MAD")):
            cells = []
            for sigma in SIGMAS:
                u, c = _find(result, dataset, name, sigma), _find(result, dataset, name, sigma, True)
                cells.append(("" if not u else f"{u['sigma_rel_error']:.3f}")
                             + ("" if not c else f" ({c['sigma_rel_error']:.3f})"))
            lines.append(f"| {dataset} | {label} | " + " | ".join(cells) + " |")
    lines += ["", "Guidance: class flip rate (1 - class accuracy of the outputs) with tweedie, unclipped, blind:", "",
              "| dataset | sigma | no guidance | label auto (predicted from the unguided estimate) | true label |",
              "|---|---|---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in result["rows"]):
        for sigma in (0.5, 1.0):
            cells = [_find(result, dataset, f"tweedie, labels {k}", sigma) for k in ("none", "predicted", "true")]
            lines.append(f"| {dataset} | {sigma} | " + " | ".join(
                "" if c is None else f"{1 - c['class_accuracy']:.3f}" for c in cells) + " |")
    lines += ["", "As a file (clipped, 8-bit), blind: tweedie as is and after undoing the clipping bias (`--declip`, "
                  "what `siamdiff denoise` does by default):", "",
              "| dataset | sigma | tweedie dB (class acc) | declipped dB (class acc) | direct dB |", "|---|---|---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in result["rows"]):
        for sigma in SIGMAS:
            t, dc = _find(result, dataset, "tweedie", sigma, True), _find(result, dataset, "tweedie, declipped", sigma, True)
            d = _find(result, dataset, "direct", sigma, True)
            if t and dc:
                lines.append(f"| {dataset} | {sigma} | {t['psnr']:.2f} ({t['class_accuracy']:.3f}) | "
                             f"{dc['psnr']:.2f} ({dc['class_accuracy']:.3f}) | {'' if d is None else format(d['psnr'], '.2f')} |")
    grid = [(dataset, sigma) for dataset in dict.fromkeys(r["dataset"] for r in result["rows"]) for sigma in SIGMAS
            if _find(result, dataset, "nlm (32x32, true sigma)", sigma)]
    if grid:
        lines += ["", "The report measured its design on digits resized to 32x32 (the seed design's grid), with the "
                      "noise drawn there. The same model-free methods, told the true sigma, on the native grid and on "
                      "that one (PSNR dB; positive: the 32x32 task is easier):", "",
                  "| dataset | sigma | noisy native / 32x32 | NLM native / 32x32 (diff) | wavelet native / 32x32 (diff) |",
                  "|---|---|---|---|---|"]
        for dataset, sigma in grid:
            cells = []
            for method in ("noisy", "nlm", "wavelet"):
                a = _find(result, dataset, f"{method} (native, true sigma)", sigma)
                b = _find(result, dataset, f"{method} (32x32, true sigma)", sigma)
                cells.append("" if not (a and b) else f"{a['psnr']:.2f} / {b['psnr']:.2f}"
                             + ("" if method == "noisy" else f" ({b['psnr'] - a['psnr']:+.2f})"))
            lines.append(f"| {dataset} | {sigma} | " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(result: dict) -> str:
    hw = result["hardware"]
    lines = ["# Denoising benchmark", "",
             f"Code version `{result['code_version']}`; {hw['cpu']}, {hw['cores']} cores"
             f"{', GPU ' + hw['gpu'] if hw['gpu'] else ', no GPU'}; torch {hw['torch']}. "
             "Generated by " + " then ".join(f"`{c}`" for c in result.get("commands", [result["command"]])) + ".",
             "Each row's device and hardware are in denoise.json.", "",
             "Protocol (docs/reconstruction.md): first N test images at native resolution (a model made for "
             "another size, and rows marked 32x32: the clean images resized to it, the noise drawn there), Gaussian "
             "noise with a fixed seed per sigma; blind rows use the learned sigma estimate; class accuracy by the project's "
             "classifier.", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in result["rows"]):
        acc = result.get("classifier_clean_accuracy", {}).get(dataset)
        if acc:
            lines += [f"{dataset}: the classifier's accuracy on clean test images is {acc['first_n']:.4f} on the "
                      f"first {acc['n']} and {acc['full_test']:.4f} on all {acc['n_test']}.", ""]
        for clip in (False, True):
            rows = [r for r in result["rows"] if r["dataset"] == dataset and r["clip"] == clip]
            if not rows:
                continue
            lines += [f"## {dataset}, {'as a file (clipped, 8-bit)' if clip else 'unclipped'}", "",
                      "| method | sigma | PSNR dB | SSIM | class acc | sigma rel. err | ms/image | device | n |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                acc = "" if r["class_accuracy"] is None else f"{r['class_accuracy']:.4f}"
                err = "" if r["sigma_rel_error"] is None else f"{r['sigma_rel_error']:.3f}"
                lines.append(f"| {r['name']} | {r['sigma']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {acc} | {err} | "
                             f"{1000 * r['seconds_per_image']:.2f} | {r.get('device', 'cpu')} | {r['n']} |")
            lines.append("")
    if result.get("latency"):
        runs = result["latency"]
        ops = [k for k, v in runs[0].items() if isinstance(v, dict)]
        lines += ["## Latency", "", f"CPU, {runs[0]['threads']} threads, one 28x28 MNIST image, shipped model, median "
                  f"ms (p25-p75) of {runs[0]['repeats']} calls after 10 warm-up calls; 'compiled' rows after "
                  "`Denoiser.compile()`. One column per machine, each with its own code version and command "
                  "(below).", "",
                  "| operation | " + " | ".join(r["hardware"] for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
        for op in ops:
            lines.append(f"| {op} | " + " | ".join(f"{r[op]['median_ms']} ({r[op]['p25_ms']}-{r[op]['p75_ms']})"
                                                  for r in runs) + " |")
        lines += [""] + [f"- {r['hardware']}: code `{r['code_version']}`, torch {r['torch']}, {r['date']}, first "
                         f"compiled call {r.get('compile_seconds')} s; `{r['command']}`" for r in runs] + [""]
    lines += summary(result)
    lines += ["Each row's exact command is in denoise.json (`command`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--datasets", default="mnist,fashion-mnist,cifar10")
    parser.add_argument("--sigmas", default=",".join(str(s) for s in SIGMAS))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--n-chain", type=int, default=200, help="images for the ancestral chains")
    parser.add_argument("--epochs", nargs="*", default=[], help="dataset:model=N, e.g. mnist:ddpm=30")
    parser.add_argument("--preset", choices=["full", "tiny"], default="full")
    parser.add_argument("--part", choices=["all", "net", "cpu"], default="all",
                        help="net: methods that run networks; cpu: scikit-image baselines and wavelet-MAD")
    parser.add_argument("--device", default="auto", help="where the networks run")
    parser.add_argument("--batch-size", type=int, default=250, help="images per network batch")
    parser.add_argument("--rows", nargs="*", default=[], help="only these row names (e.g. tweedie nlm)")
    parser.add_argument("--clips", default="unclipped,file", help="unclipped, file or both")
    parser.add_argument("--merge-from", nargs="*", default=[], help="benchmark JSONs whose rows to include")
    parser.add_argument("--drop", nargs="*", default=[], help="row names to leave out of the result")
    parser.add_argument("--latency-only", action="store_true", help="measure CPU latency with the shipped model")
    parser.add_argument("--ship-only", action="store_true",
                        help="copy the diffusion models, noise estimators and classifiers into the package")
    parser.add_argument("--no-train", action="store_true", help="fail instead of training a missing model")
    parser.add_argument("--merge", action="store_true", help="add to (and replace rows of) the existing JSON")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "denoise"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--name", help="output file stem (default denoise, or denoise-smoke for --preset tiny)")
    args = parser.parse_args()
    args.sigmas = tuple(float(s) for s in args.sigmas.split(","))
    args.epochs = dict(e.split("=") for e in args.epochs)
    args.hardware = hardware()  # once: every row of this run names it
    args.clips = args.clips.split(",")
    out = Path(args.out)
    name = args.name or ("denoise" if args.preset == "full" else "denoise-smoke")
    json_path = out / f"{name}.json"
    command = "python " + shlex.join(["benchmarks/denoise.py", *sys.argv[1:]])
    if args.ship_only:
        ship(json.loads(json_path.read_text()), args)
        return
    if args.latency_only:
        result = json.loads(json_path.read_text())
        measured = latency(command)  # replaces this machine's earlier record; other machines' records stay
        result["latency"] = [r for r in result.get("latency", []) if r["hardware"] != measured["hardware"]] + \
            [measured]
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        (out / f"{name}.md").write_text(markdown(result))
        print(json.dumps(measured))
        return
    result = json.loads(json_path.read_text()) if args.merge and json_path.is_file() else \
        {"rows": [], "commands": [], "classifier_clean_accuracy": {}}
    for other in args.merge_from:  # e.g. the network rows measured on a GPU machine
        extra = json.loads(Path(other).read_text())
        result["rows"] += extra["rows"]
        result["commands"] = [*result.get("commands", []), *extra.get("commands", [extra.get("command")])]
    drop = set(args.drop)
    rows = {row_key(r): r for r in result["rows"] if r["name"] not in drop}
    result.update({"command": command, "commands": [*result.get("commands", []), command],
                   "code_version": code_version(), "hardware": args.hardware})
    out.mkdir(parents=True, exist_ok=True)

    def emit(new: list[dict]) -> None:  # written after every evaluation: a run stopped early keeps what it did
        for r in new:
            rows[row_key(r)] = r
        result["rows"] = list(rows.values())
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        (out / f"{name}.md").write_text(markdown(result))

    for dataset in args.datasets.split(","):
        benchmark_dataset(dataset, args, emit)
        if args.part in ("cpu", "all"):
            result["classifier_clean_accuracy"][dataset] = clean_accuracy(dataset, args)
    emit([])
    print(f"wrote {out / name}.md")


if __name__ == "__main__":
    main()
