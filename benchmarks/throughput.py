"""Training throughput against the machine: for one training step of each default model, the FLOP it does
(counted by ``torch.utils.flop_counter`` over forward and backward), the seconds it takes, and the FLOP/s achieved
against the machine's measured peak — a large matrix multiply in the same dtype and thread count, in the same run.
Written to docs/benchmarks/throughput.{json,md}.

    python benchmarks/throughput.py                       # every default model, float32 and bfloat16 where it pays
    python benchmarks/throughput.py --only similarity:cifar10 --steps 5

The step is the training loop's own (:func:`siamdiff.training.loop.train_step`: loss, backward, optimizer, schedule,
EMA) on batches drawn by the task from in-memory images of the dataset's shape (random pixels: speed does not depend
on what the images show). The ratio tells how far the loop is from the hardware; convolutions of few channels and
the optimizer's elementwise work keep it well below 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, describe, provenance, write  # noqa: E402

# (kind, dataset): the shipped default models; the denoiser is the supervised peer of the benchmarks
MODELS = (("similarity", "mnist"), ("similarity", "fashion-mnist"), ("similarity", "cifar10"),
          ("ddpm", "mnist"), ("ddpm", "cifar10"), ("noise-estimator", "mnist"), ("noise-estimator", "cifar10"),
          ("classifier", "mnist"), ("classifier", "cifar10"), ("denoiser", "mnist"), ("denoiser", "cifar10"))
# other networks measured for comparison: name -> (kind, dataset, changes to the default network's config)
VARIANTS = {"resnet9": ("similarity", "cifar10", {"widths": (128, 256, 512), "residual": (True, False, True),
                                                  "after_pool": 0, "stem": None})}
# the settings of a step, one idea at a time: (name, bfloat16 autocast, channels-last)
SETTINGS = (("float32", False, False), ("bfloat16", True, False), ("bfloat16, channels-last", True, True))
SHAPES = {"mnist": (1, 28), "fashion-mnist": (1, 28), "cifar10": (3, 32)}


def synthetic(dataset: str, n: int, split: str, seed: int):
    """An in-memory set of ``n`` random images of the dataset's shape in 10 classes."""
    import torch

    from siamdiff.data.types import ImageSet

    c, size = SHAPES[dataset]
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    return ImageSet(dataset, split, images, torch.arange(n) % 10, [str(k) for k in range(10)])


def task_of(kind: str, dataset: str, device: str, batch_size: int | None = None, net: dict | None = None):
    """The default task of ``kind`` on synthetic data of ``dataset``'s shape, with enough images for its batches
    (``batch_size``: another batch; ``net``: changes to the network's config)."""
    import importlib
    from dataclasses import replace

    from siamdiff.training.kinds import KINDS
    from siamdiff.training.options import TrainOptions

    spec = KINDS[kind]
    module, name = spec.trainer.split(":")
    trainer = getattr(importlib.import_module(module), name)()
    options = TrainOptions(model=spec.designs[0], device=device, batch_size=batch_size)
    probe = synthetic(dataset, 20, "train", 0)
    recipe = trainer.recipe(options, probe, None)
    batch = recipe.train.batch_size
    train, val = synthetic(dataset, 4 * batch, "train", 1), synthetic(dataset, 200, "val", 2)
    if net:
        recipe = replace(recipe, model=replace(recipe.model, **net))
    return trainer.task_class(recipe, train, val), batch


def peak(dtype, device, size: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of a ``size`` × ``size`` matrix multiply in ``dtype`` (the best of ``repeats``)."""
    import torch

    from siamdiff.training.loop import synchronize

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - began)
    return 2 * size ** 3 / best


def measure(kind: str, dataset: str, amp: bool, steps: int, device_name: str, channels_last: bool = True,
            batch_size: int | None = None, variant: str | None = None) -> dict:
    """FLOP per step (forward and backward), median seconds per step after two warm-up steps, FLOP/s."""
    from dataclasses import replace

    import statistics

    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from siamdiff.training.loop import (make_optimizer, make_scheduler, place, resolve_device, synchronize,
                                        train_step)

    device = resolve_device(device_name)
    task, batch_size = task_of(kind, dataset, device_name, batch_size, VARIANTS[variant][2] if variant else None)
    cfg = replace(task.recipe.train, channels_last=channels_last)
    model = place(task.model, cfg, device).train()
    trainable = model if task.loss_module is None else nn.ModuleList([model, task.loss_module.to(device)])
    opt = make_optimizer(trainable, cfg)
    sched = make_scheduler(opt, cfg, 10_000)
    batches = iter(task.batches(0, device))
    with FlopCounterMode(display=False) as counter:
        train_step(task, next(batches), opt, sched, amp)
    flop = counter.get_total_flops()
    times = []
    for i in range(steps + 2):
        batch = next(batches, None)
        if batch is None:
            batches = iter(task.batches(i, device))
            batch = next(batches)
        synchronize(device)
        began = time.perf_counter()
        train_step(task, batch, opt, sched, amp)
        synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - began)
    seconds = statistics.median(times)
    params = sum(p.numel() for p in model.parameters())
    return {"kind": kind, "dataset": dataset, "network": variant or "default",
            "setting": ("bfloat16" if amp else "float32") + (", channels-last" if channels_last else ""),
            "precision": "bfloat16" if amp else "float32",
            "batch_size": batch_size, "parameters": params, "gflop_per_step": round(flop / 1e9, 2),
            "s_per_step": round(seconds, 4), "images_per_s": round(batch_size / seconds, 1),
            "tflop_per_s": round(flop / seconds / 1e12, 4)}


def markdown(result: dict) -> str:
    peaks = result["peak_tflop_per_s"]
    lines = [
        "# Training throughput against the machine", "",
        f"Command: `{result['command']}`  ",
        f"Code: `{result['code_version']}`; {describe(result['hardware'])}; {result['date']}.", "",
        "One training step of each default model (the loop's own step: loss, backward, optimizer, schedule, EMA), "
        "FLOP counted by `torch.utils.flop_counter` (forward and backward), seconds the median of "
        f"{result['steps']} steps after two warm-up steps. Peak: a 4096 × 4096 matrix multiply in the same run and "
        "thread count: " + ", ".join(f"{k} {v:.3f} TFLOP/s" for k, v in peaks.items()) + ". Settings, one idea at "
        "a time: float32; bfloat16 autocast; and channels-last weights with it (the loop's default).", "",
        "| model | dataset | network | setting | batch | parameters | GFLOP/step | s/step | images/s | TFLOP/s | "
        "of peak |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['kind']} | {r['dataset']} | {r['network']} | {r['setting']} | {r['batch_size']} | "
                     f"{r['parameters'] / 1e6:.2f} M | {r['gflop_per_step']:.1f} | {r['s_per_step']:.3f} | "
                     f"{r['images_per_s']:.0f} | {r['tflop_per_s']:.3f} | {r['of_peak']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="KIND:DATASET", help="these models only")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="other networks to measure too")
    parser.add_argument("--batch-size", type=int, help="another batch size than the recipes'")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (default 10)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--name", default="throughput", help="the name of the JSON and markdown files")
    args = parser.parse_args(argv)

    import torch

    from siamdiff.training.loop import cpu_has_bf16_instructions, resolve_device

    device = resolve_device(args.device)
    models = MODELS if not args.only else [tuple(m.split(":", 1)) for m in args.only]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model {':'.join(unknown[0])}: use one of "
                     f"{', '.join(':'.join(m) for m in MODELS)}")
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        parser.error(f"unknown variant {bad[0]}: use {', '.join(VARIANTS)}")
    settings = [s for s in SETTINGS if not s[1] or device.type == "cuda" or cpu_has_bf16_instructions()]
    peaks = {"float32": peak(torch.float32, device)}
    if any(s[1] for s in settings):
        peaks["bfloat16"] = peak(torch.bfloat16, device)
    result = {**provenance(), "device": str(device), "steps": args.steps,
              "peak_tflop_per_s": {k: round(v / 1e12, 4) for k, v in peaks.items()}, "rows": []}
    runs = [(kind, dataset, None) for kind, dataset in models] + \
        [(VARIANTS[v][0], VARIANTS[v][1], v) for v in args.variants if VARIANTS[v][:2] in models]
    for kind, dataset, variant in runs:
        for name, amp, channels_last in settings:
            row = measure(kind, dataset, amp, args.steps, args.device, channels_last, args.batch_size, variant)
            row["of_peak"] = round(row["tflop_per_s"] / result["peak_tflop_per_s"][row["precision"]], 4)
            result["rows"].append(row)
            print(f"{kind}:{dataset} {row['network']}, {name}: {row['s_per_step']:.3f} s/step, "
                  f"{row['tflop_per_s']:.3f} TFLOP/s ({row['of_peak']:.1%} of peak)", flush=True)
    write(result, markdown(result), args.out, args.name)


if __name__ == "__main__":
    main()
