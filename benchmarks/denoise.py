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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from similarity import code_version, hardware, run as run_timed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIGMAS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
# name -> (train sub-command, --model value); the seed VAE only exists for 28x28 grayscale data
MODELS = {"ddpm": ("ddpm", "unet"), "ddpm-seed": ("ddpm", "seed"), "denoiser": ("denoiser", "default"),
          "classifier": ("classifier", "default"), "estimator": ("noise-estimator", "default"),
          "vae-seed": ("vae", "seed"), "vae-conv": ("vae", "default")}


def run(cmd: list[str]) -> str:
    """Run a ``siamdiff ...`` command line with this Python; its stdout."""
    return run_timed([sys.executable, "-m", "siamdiff", *cmd[1:]])[0]


def train(dataset: str, name: str, args: argparse.Namespace) -> Path:
    sub, model = MODELS[name]
    if args.preset == "tiny":
        model = "tiny" if name != "ddpm-seed" else "seed"
    out = Path(args.runs) / f"{dataset}-{name}"
    if not (out / "log.jsonl").is_file():
        cmd = ["siamdiff", "train", sub, "--dataset", dataset, "--model", model, "--out", str(out),
               "--data-dir", args.data_dir]
        epochs = args.epochs.get(f"{dataset}:{name}") or (1 if args.preset == "tiny" else None)
        if epochs:
            cmd += ["--epochs", str(epochs)]
        if args.preset == "tiny":
            cmd += ["--max-batches", "2"]
        run(cmd + (["--overwrite"] if out.exists() else []))
        print(f"trained {dataset}:{name}", flush=True)
    return out / "model.safetensors"


def evaluate(dataset: str, method: str, model: Path | None, models: dict, args: argparse.Namespace,
             clip: bool, sigmas: tuple[float, ...], n: int, sigma_mode: str = "auto", labels: str = "none",
             tag: str = "") -> list[dict]:
    cmd = ["siamdiff", "eval", "denoise", "--dataset", dataset, "--method", method,
           "--sigmas", ",".join(str(s) for s in sigmas), "--n", str(n), "--sigma-mode", sigma_mode,
           "--classifier", str(models["classifier"]), "--labels", labels, "--data-dir", args.data_dir, "--json"]
    if sigma_mode == "auto" and "estimator" in models:
        cmd += ["--estimator", str(models["estimator"])]
    if model is not None:
        cmd += ["--model", str(model)]
    if clip:
        cmd.append("--clip")
    rows = json.loads(run(cmd))["results"]
    for r in rows:
        r.update({"dataset": dataset, "name": tag or method, "command": shlex.join(cmd)})
    print(f"{dataset} {tag or method} clip={clip}: "
          + ", ".join(f"{r['sigma']}: {r['psnr']:.2f} dB" for r in rows), flush=True)
    return rows


def benchmark_dataset(dataset: str, args: argparse.Namespace) -> list[dict]:
    names = [m for m in MODELS if not (m == "vae-seed" and dataset == "cifar10")]
    models = {m: train(dataset, m, args) for m in names}
    rows: list[dict] = []
    for clip in (False, True):
        for method, model, tag in (("noisy", None, "noisy"), ("tweedie", models["ddpm"], "tweedie"),
                                   ("ddim", models["ddpm"], "ddim"), ("direct", models["denoiser"], "direct"),
                                   ("nlm", None, "nlm"), ("wavelet", None, "wavelet"),
                                   ("vae", models.get("vae-seed"), "vae-seed"), ("vae", models["vae-conv"], "vae-conv"),
                                   ("tweedie", models["ddpm-seed"], "seed-tweedie")):
            if model is None and method == "vae":
                continue
            rows += evaluate(dataset, method, model, models, args, clip, args.sigmas, args.n, tag=tag)
        # the chains are costly on a CPU: fewer images, stated in each row's n
        rows += evaluate(dataset, "ancestral", models["ddpm"], models, args, clip, args.sigmas, args.n_chain,
                         tag="ancestral")
        rows += evaluate(dataset, "ancestral", models["ddpm-seed"], models, args, clip, args.sigmas, args.n_chain,
                         sigma_mode="true", tag="seed-ancestral (true sigma)")
    for labels in ("none", "predicted", "true"):  # guidance keeps the class at high noise
        rows += evaluate(dataset, "ddim", models["ddpm"], models, args, False, (0.5, 1.0), args.n,
                         labels=labels, tag=f"ddim, labels {labels}")
    rows += evaluate(dataset, "noisy", None, {"classifier": models["classifier"]}, args, False, args.sigmas,
                     args.n, tag="sigma by wavelet-MAD")
    return rows


def markdown(result: dict) -> str:
    hw = result["hardware"]
    lines = ["# Denoising benchmark", "",
             f"Code version `{result['code_version']}`; {hw['cpu']}, {hw['cores']} cores"
             f"{', GPU ' + hw['gpu'] if hw['gpu'] else ', no GPU'}; torch {hw['torch']}. "
             f"Generated by `{result['command']}`.", "",
             "Protocol (docs/reconstruction.md): first N test images at native resolution, Gaussian noise with a "
             "fixed seed per sigma; blind rows use the learned sigma estimate; class accuracy by the project's "
             "classifier.", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in result["rows"]):
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
    parser.add_argument("--runs", default=str(ROOT / "runs" / "denoise"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    args = parser.parse_args()
    args.sigmas = tuple(float(s) for s in args.sigmas.split(","))
    args.epochs = dict(e.split("=") for e in args.epochs)
    rows = []
    for dataset in args.datasets.split(","):
        rows += benchmark_dataset(dataset, args)
    result = {"command": "python " + shlex.join(["benchmarks/denoise.py", *sys.argv[1:]]),
              "code_version": code_version(), "hardware": hardware(), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "denoise" if args.preset == "full" else "denoise-smoke"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(result))
    print(f"wrote {out / name}.md")


if __name__ == "__main__":
    main()
