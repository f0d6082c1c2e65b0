"""All the GPU work of a session in one script: train every model of both halves concurrently, run the network part
of the denoising benchmark, and pack what comes back (at most 8 files of 16 MiB).

    python benchmarks/device_run.py probe --data-dir D --runs R          # 1 short epoch of every job: s/batch
    python benchmarks/device_run.py train --data-dir D --runs R --budget 300 [--probe R/probe.json]
    python benchmarks/device_run.py bench --data-dir D --runs R --budget 150
    python benchmarks/device_run.py collect --runs R --out OUT

Every model is trained by the project's own command (``siamdiff train ...``), written in each job's log and model
file. ``train`` sizes the epochs of every job from the probe's measured seconds per batch (with all jobs sharing
the GPU, as they do in the real run) so that the whole set ends within ``--budget`` seconds; the epochs used are in
each model file. ``--tiny`` runs the same pipeline with tiny models for a smoke test on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("mnist", "fashion-mnist", "cifar10")
N_TRAIN = {"mnist": 55_000, "fashion-mnist": 55_000, "cifar10": 45_000}
# job -> (sub-command, --model, batch size, wanted epochs per dataset kind (gray, colour), minimum epochs)
JOBS = {
    "ddpm": ("ddpm", "unet", 128, (30, 40), 6),
    "ddpm-seed": ("ddpm", "seed", 128, (19, 19), 5),
    "denoiser": ("denoiser", "default", 128, (30, 40), 6),
    "classifier": ("classifier", "default", 128, (15, 30), 5),
    "estimator": ("noise-estimator", "default", 128, (15, 15), 4),
    "vae-seed": ("vae", "seed", 128, (20, 20), 5),
    "vae-conv": ("vae", "default", 128, (20, 20), 5),
    "sim-contrastive": ("similarity", "default", 256, (30, 40), 6),
    "sim-supcon": ("similarity", "default", 256, (30, 40), 6),
    "sim-seed": ("similarity", "seed", 100, (10, 20), 10),  # the report's recipe (CIFAR-10 only: 20 epochs)
}
ONLY = {"vae-seed": ("mnist", "fashion-mnist"), "sim-seed": ("cifar10",)}
PROBE_BATCHES = 40
STARTUP_S = 20.0  # import, CUDA context, data loading, first-batch kernel selection


def run_dir(runs: Path, dataset: str, job: str) -> Path:
    """Where a job writes: the benchmarks' own run folders, so that they reuse these models."""
    if job == "sim-contrastive":
        return runs / "similarity" / f"{dataset}-default"
    if job == "sim-seed":
        return runs / "similarity" / f"{dataset}-seed"
    if job.startswith("sim-"):
        return runs / "similarity-variants" / f"{dataset}-default-{job[len('sim-'):]}"
    return runs / "denoise" / f"{dataset}-{job}"


def jobs(datasets: list[str]) -> list[tuple[str, str]]:
    return [(d, j) for d in datasets for j in JOBS if d in ONLY.get(j, DATASETS)]


def command(dataset: str, job: str, out: Path, data_dir: str, epochs: int, tiny: bool,
            max_batches: int | None = None) -> list[str]:
    sub, model, batch, _, _ = JOBS[job]
    if tiny and job != "ddpm-seed":
        model = "tiny"
    cmd = [sys.executable, "-m", "siamdiff", "train", sub, "--dataset", dataset, "--model", model, "--out", str(out),
           "--data-dir", data_dir, "--epochs", str(epochs), "--batch-size", str(batch), "--overwrite"]
    if job.startswith("sim-") and job != "sim-seed":
        cmd += ["--loss", job[len("sim-"):]]
    if max_batches:
        cmd += ["--max-batches", str(max_batches)]
    return cmd


def launch_all(tasks: list[tuple[str, list[str], Path]], lanes: int, deadline: float, logs: Path) -> dict:
    """Run the commands ``lanes`` at a time (in the given order); kill what is still running at ``deadline``."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    pending, running, status = list(tasks), {}, {}
    while pending or running:
        while pending and len(running) < lanes:
            name, cmd, _ = pending.pop(0)
            log = open(logs / f"{name}.log", "w")
            log.write(shlex.join(cmd) + "\n")
            log.flush()
            running[name] = (subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env), log,
                             time.time())
        for name, (proc, log, began) in list(running.items()):
            if proc.poll() is not None:
                status[name] = {"rc": proc.returncode, "seconds": round(time.time() - began, 1)}
                log.close()
                del running[name]
                print(f"[{time.strftime('%H:%M:%S')}] {name}: rc {proc.returncode} in {status[name]['seconds']} s",
                      flush=True)
        if time.time() > deadline:
            for name, (proc, log, began) in running.items():
                proc.kill()
                status[name] = {"rc": "killed at deadline", "seconds": round(time.time() - began, 1)}
                log.close()
                print(f"{name}: killed at the deadline", flush=True)
            for name, _, _ in pending:
                status[name] = {"rc": "not started"}
            break
        time.sleep(0.5)
    return status


def probe(args: argparse.Namespace) -> None:
    runs = Path(args.runs) / "probe"
    tasks = []
    for d, j in jobs(args.datasets):
        out = run_dir(runs, d, j)
        tasks.append((f"{d}-{j}", command(d, j, out, args.data_dir, 1, args.tiny, PROBE_BATCHES), out))
    began = time.time()
    # every job at once: the per-batch times must be measured under at least the sharing of the real run (a
    # probe in two waves of 14 measured the second wave 2-15x too fast, and the plan overran its budget)
    status = launch_all(tasks, len(tasks), began + args.budget, runs / "logs")
    result = {}
    for name, _, out in tasks:
        try:
            row = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
            result[name] = {"s_per_batch": row.get("steady_s_per_batch", row["seconds"] / PROBE_BATCHES),
                            "first_epoch_s_per_batch": row["seconds"] / PROBE_BATCHES, "device": row.get("device"),
                            "wall_s": status[name]["seconds"]}
        except (OSError, IndexError, KeyError, ValueError):
            result[name] = {"error": str(status.get(name))}
    (Path(args.runs) / "probe.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"probe took {time.time() - began:.0f} s")


def plan(args: argparse.Namespace) -> list[tuple[str, str, int, float]]:
    """Epochs per job: the wanted epochs scaled by one factor f (0.1..1.5, at least each job's minimum) so that a
    longest-first schedule on ``lanes`` lanes ends within the budget. Returns (dataset, job, epochs, est. seconds)."""
    measured = json.loads(Path(args.probe).read_text()) if args.probe else {}
    todo = []
    for d, j in jobs(args.datasets):
        _, _, batch, wanted, minimum = JOBS[j]
        e = wanted[d == "cifar10"]
        if args.tiny:
            e, minimum = 1, 1
        spb = measured.get(f"{d}-{j}", {}).get("s_per_batch", 0.05)
        per_epoch = -(-N_TRAIN[d] // batch) * spb + 2.0  # plus validation and checkpoints
        if args.tiny:
            per_epoch = 2 * spb + 1.0
        todo.append((d, j, e, minimum, per_epoch))

    def schedule(f: float) -> tuple[float, list]:
        chosen = [(d, j, max(m, round(e * f)) if not args.tiny else 1, pe) for d, j, e, m, pe in todo]
        costs = sorted(((STARTUP_S + ep * pe, d, j, ep) for d, j, ep, pe in chosen), reverse=True)
        lanes = [0.0] * args.lanes
        for c, *_ in costs:
            i = lanes.index(min(lanes))
            lanes[i] += c
        return max(lanes), [(d, j, ep, round(c, 1)) for c, d, j, ep in costs]

    f = 1.5
    while f > 0.1 and schedule(f)[0] > args.budget * 0.85:
        f -= 0.05
    makespan, chosen = schedule(f)
    print(f"plan: factor {f:.2f}, estimated makespan {makespan:.0f} s of {args.budget} s", flush=True)
    return chosen


def train(args: argparse.Namespace) -> None:
    began = time.time()
    chosen = plan(args)
    runs = Path(args.runs)
    tasks = []
    for d, j, epochs, est in chosen:  # longest first
        out = run_dir(runs, d, j)
        tasks.append((f"{d}-{j}", command(d, j, out, args.data_dir, epochs, args.tiny,
                                          2 if args.tiny else None), out))
        print(f"  {d}-{j}: {epochs} epochs, ~{est:.0f} s", flush=True)
    status = launch_all(tasks, args.lanes, began + args.budget, runs / "logs")
    (runs / "train-status.json").write_text(json.dumps({"plan": chosen, "status": status}, indent=1))
    print(f"training took {time.time() - began:.0f} s")


def bench(args: argparse.Namespace) -> None:
    began = time.time()
    runs = Path(args.runs)
    tasks = []
    for d in args.datasets:
        cmd = [sys.executable, "benchmarks/denoise.py", "--data-dir", args.data_dir, "--datasets", d, "--part", "net",
               "--device", args.device, "--no-train", "--runs", str(runs / "denoise"), "--out", str(runs / "results"),
               "--name", f"denoise-net-{d}", "--n", str(args.n), "--n-chain", str(args.n), "--batch-size", "1000"]
        if args.sigmas:
            cmd += ["--sigmas", args.sigmas]
        tasks.append((f"bench-{d}", cmd, runs))
    status = launch_all(tasks, len(tasks), began + args.budget, runs / "logs")
    (runs / "bench-status.json").write_text(json.dumps(status, indent=1))
    print(f"benchmark took {time.time() - began:.0f} s")


def collect(args: argparse.Namespace) -> None:
    """Pack the models the package ships or the docs use (as float16) and all logs and results into <= 8 files."""
    from siamdiff.core.checkpoint import save_float16_copy

    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keep = []
    for d in args.datasets:
        for job in ("ddpm", "classifier", "estimator", "vae-seed", "vae-conv", *(j for j in JOBS if j.startswith("sim-"))):
            path = run_dir(runs, d, job) / "model.safetensors"
            if path.is_file():
                keep.append(path)
    half = runs / "half"
    files = []
    for path in keep:
        dest = half / path.relative_to(runs)
        dest.parent.mkdir(parents=True, exist_ok=True)
        files.append(save_float16_copy(path, dest))
    with tarfile.open(out / "models.tar", "w") as tar:
        for f in files:
            tar.add(f, arcname=str(f.relative_to(half)))
    # split into 15 MiB pieces (the limit on what comes back is 16 MiB per file)
    data = (out / "models.tar").read_bytes()
    (out / "models.tar").unlink()
    piece = 15 * 2 ** 20
    for i in range(0, len(data), piece):
        (out / f"models.tar.{i // piece:02d}").write_bytes(data[i:i + piece])
    with tarfile.open(out / "results.tar.xz", "w:xz") as tar:
        for f in sorted(runs.rglob("*")):
            if f.is_file() and (f.suffix in (".jsonl", ".log", ".md") or f.name.endswith(".json")) \
                    and "half" not in f.parts:
                tar.add(f, arcname=str(f.relative_to(runs)))
    print(f"collected {len(files)} models ({len(data) / 2 ** 20:.1f} MiB) and the logs into {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["probe", "train", "bench", "collect"])
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--runs", required=True)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for this step")
    parser.add_argument("--lanes", type=int, default=14, help="jobs at a time")
    parser.add_argument("--probe", help="probe.json for train")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=1000, help="test images per benchmark row")
    parser.add_argument("--sigmas", help="bench: noise levels (default: the benchmark's)")
    parser.add_argument("--out", help="collect: where the files go")
    parser.add_argument("--tiny", action="store_true", help="tiny models: a smoke test of the pipeline")
    args = parser.parse_args()
    args.datasets = args.datasets.split(",")
    {"probe": probe, "train": train, "bench": bench, "collect": collect}[args.step](args)


if __name__ == "__main__":
    main()
