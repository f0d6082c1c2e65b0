"""Scale: a million-image index (embedding, IVF build, exact vs IVF search with measured recall), indexing a folder
(images/s, peak memory, kill -9 and continue), two writers of one index, and SIGTERM during training.

    python benchmarks/scale.py --data-dir ../shared/data

The million images are MNIST test digits, each drawn with a random shift of up to 2 pixels, a contrast of 0.7-1
and Gaussian noise of 8/255, embedded by the shipped MNIST model in memory (the folder part measures reading files).
Everything runs on ``--threads`` torch and faiss threads; timings are medians over single queries.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, describe, provenance, write  # noqa: E402

SIAMDIFF = [sys.executable, "-m", "siamdiff"]


def augmented(images: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` digits drawn from ``images`` ``(N, 1, 28, 28)`` uint8: shifted, contrast changed, noisy."""
    pick = images[rng.integers(0, len(images), n)].astype(np.float32)
    dy, dx = rng.integers(-2, 3, n), rng.integers(-2, 3, n)
    out = np.empty_like(pick)
    for s in range(-2, 3):  # roll by groups of equal shift: vectorised per group
        for t in range(-2, 3):
            rows = np.flatnonzero((dy == s) & (dx == t))
            out[rows] = np.roll(pick[rows], (s, t), axis=(2, 3))
    out *= rng.uniform(0.7, 1.0, (n, 1, 1, 1)).astype(np.float32)
    out += rng.normal(0, 8, out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def million(args, test: np.ndarray) -> dict:
    import faiss
    import torch

    from siamdiff.similarity.api import SimilarityModel
    from siamdiff.similarity.index import RECALL_K, Index, build_ivf

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    model = SimilarityModel.load("mnist")
    rng = np.random.default_rng(args.seed)
    rss_before = peak_rss_mib()
    began = time.perf_counter()
    parts = []
    for s in range(0, args.images, args.chunk):
        parts.append(model.embed(augmented(test, min(args.chunk, args.images - s), rng)))
        print(f"embedded {s + len(parts[-1]):,} of {args.images:,}", file=sys.stderr, flush=True)
    emb = np.concatenate(parts)
    embed_s = time.perf_counter() - began
    began = time.perf_counter()
    ivf, info = build_ivf(emb, k=RECALL_K)
    ivf_s = time.perf_counter() - began
    n = len(emb)
    index = Index(emb, [f"{i}.png" for i in range(n)], [(0, 0)] * n, model.fingerprint, "mnist", ivf=ivf,
                  ivf_info=info)
    queries = model.embed(augmented(test, args.queries, np.random.default_rng(args.seed + 1)))
    timings = {}
    found = {}
    for method in ("exact", "ivf"):
        index.nearest(queries[:1], RECALL_K, method)  # warm-up
        times, rows = [], []
        for q in queries:
            t = time.perf_counter()
            rows.append(index.nearest(q[None], RECALL_K, method)[1][0])
            times.append((time.perf_counter() - t) * 1000)
        timings[method] = {"p50_ms": round(float(np.median(times)), 3),
                           "p99_ms": round(float(np.percentile(times, 99)), 3)}
        found[method] = rows
    recall = float(np.mean([len(set(a) & set(e)) / RECALL_K for a, e in zip(found["ivf"], found["exact"])]))
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        index.save(Path(tmp) / "million.index")
        save_s = time.perf_counter() - began
        size_mib = (Path(tmp) / "million.index").stat().st_size / 2 ** 20
        began = time.perf_counter()
        Index.load(Path(tmp) / "million.index")
        load_s = time.perf_counter() - began
    return {"images": n, "embed_seconds": round(embed_s, 1), "embed_images_per_s": round(n / embed_s),
            "ivf_build_seconds": round(ivf_s, 1), "ivf": info, "peak_rss_mib": round(peak_rss_mib()),
            "rss_before_mib": round(rss_before), "embeddings_mib": round(emb.nbytes / 2 ** 20),
            "file_mib": round(size_mib), "save_seconds": round(save_s, 1), "load_seconds": round(load_s, 1),
            "search": timings, "ivf_recall_at_5_new_queries": round(recall, 4), "queries": args.queries}


def write_folder(folder: Path, images: np.ndarray) -> None:
    from siamdiff.data.imageio import write_png_atomic

    for k, image in enumerate(images):
        sub = folder / f"{k // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        write_png_atomic(image[0], sub / f"{k:06d}.png")


def run_index(folder: Path, out: Path, *extra: str) -> tuple[dict, float, float]:
    """``siamdiff index --json``: its record, seconds and the child's peak memory (MiB)."""
    began = time.perf_counter()
    done = subprocess.run([*SIAMDIFF, "index", str(folder), "--out", str(out), "--json", *extra],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    record = {**json.loads(done.stdout), "output": out.name}  # the temporary folder is no fact of the result
    return record, seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def folder(args, test: np.ndarray) -> dict:
    env_threads = {"OMP_NUM_THREADS": str(args.threads)}
    os.environ.update(env_threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "digits"
        images = augmented(test, args.folder_images, np.random.default_rng(args.seed + 2))
        began = time.perf_counter()
        write_folder(root, images)
        write_s = time.perf_counter() - began
        record, seconds, peak = run_index(root, Path(tmp) / "a.index")
        again, again_s, _ = run_index(root, Path(tmp) / "a.index")
        # kill -9 part-way through, then the same command again
        out = Path(tmp) / "b.index"
        child = subprocess.Popen([*SIAMDIFF, "index", str(root), "--out", str(out), "--save-every", "2"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while not out.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        child.send_signal(signal.SIGKILL)
        child.wait()
        resumed, resumed_s, _ = run_index(root, out)
        # two writers of one index at once
        race = Path(tmp) / "race.index"
        other = Path(tmp) / "other"
        write_folder(other, images[:200])
        procs = [subprocess.Popen([*SIAMDIFF, "index", str(f), "--out", str(race), "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for f in (root, other)]
        results = [(p.wait(), *p.communicate()) for p in procs]
        from siamdiff.similarity.index import Index

        held = Index.load(race)
        winners = [k for k, (code, _, _) in enumerate(results) if code == 0]
        winner_images = len(images) if winners == [0] else 200 if winners == [1] else None
        losers = [r[2].strip().replace(tmp, "$TMP") for r in results if r[0] != 0]
    return {"images": args.folder_images, "write_png_seconds": round(write_s, 1),
            "index_seconds": round(seconds, 1), "images_per_s": round(args.folder_images / seconds),
            "peak_rss_mib": round(peak), "record": record, "again_seconds": round(again_s, 1),
            "again_record": again,
            "killed_then_again": {"kept": resumed["kept"], "added": resumed["added"],
                                  "images": resumed["images"], "seconds": round(resumed_s, 1)},
            "writers": {"exit_codes": [r[0] for r in results],
                        "loser_stderr": losers,
                        "index_images": len(held.names), "winner_images": winner_images}}


def sigterm(args, test) -> dict:
    """SIGTERM in the middle of an epoch of a default-recipe run on a folder of digits; --resume; an uninterrupted
    run beside it."""
    from siamdiff.data.imageio import write_png_atomic

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "digits"
        for k in range(args.train_images):
            sub = root / test.classes[int(test.labels[k])]
            sub.mkdir(parents=True, exist_ok=True)
            write_png_atomic(test.images[k].numpy()[0], sub / f"{k:05d}.png")
        cmd = [*SIAMDIFF, "train", "similarity", "--dataset", f"folder:{root}", "--channels", "1", "--image-size",
               "28", "--epochs", "3", "--batch-size", "16"]
        full = subprocess.run([*cmd, "--out", f"{tmp}/full"], capture_output=True, text=True)
        child = subprocess.Popen([*cmd, "--out", f"{tmp}/cut"], stderr=subprocess.PIPE, text=True)
        log = Path(tmp) / "cut" / "log.jsonl"
        while not log.exists() and child.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)  # into the second epoch
        sent = time.perf_counter()
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate()
        exit_s = time.perf_counter() - sent
        import torch

        from siamdiff.core.checkpoint import load_model, load_state

        state = load_state(Path(tmp) / "cut" / "state.pt")
        resumed = subprocess.run([*cmd, "--out", f"{tmp}/cut", "--resume"], capture_output=True, text=True)
        a = load_model(Path(tmp) / "full" / "model.safetensors")[0].state_dict()
        b = load_model(Path(tmp) / "cut" / "model.safetensors")[0].state_dict()
        identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        message = err.strip().replace(tmp, "$TMP")
    return {"exit_code": child.returncode, "exit_seconds_after_signal": round(exit_s, 2), "message": message,
            "stopped_at": {"epoch": int(state["epoch"]) + 2, "batches": (state.get("partial") or {}).get("batches")},
            "full_exit": full.returncode, "resume_exit": resumed.returncode, "bit_identical": identical}


def markdown(r: dict) -> str:
    m, f, s = r["million"], r["folder"], r["sigterm"]
    ivf = m["ivf"]
    lines = [
        "# Scale", "",
        f"`{r['command']}` — code {r['code_version']}, {describe(r['hardware'])}, {r['settings']['threads']} "
        f"threads, {r['date']}.", "",
        f"## {m['images']:,}-image index (MNIST test digits, random shifts, contrast and noise; shipped MNIST model)",
        "",
        "| measure | value |", "|---|---|",
        f"| embedding | {m['embed_seconds']} s, {m['embed_images_per_s']:,} images/s |",
        f"| IVF build (train, add, nprobe search) | {m['ivf_build_seconds']} s: nlist {ivf['nlist']}, nprobe "
        f"{ivf['nprobe']}, recall@{ivf['k']} {ivf['recall']} on {ivf['queries']} sampled images |",
        f"| peak memory | {m['peak_rss_mib']:,} MiB (before embedding {m['rss_before_mib']:,} MiB; embeddings "
        f"{m['embeddings_mib']} MiB) |",
        f"| index file | {m['file_mib']} MiB, saved in {m['save_seconds']} s, loaded in {m['load_seconds']} s |",
        f"| exact search, one query | p50 {m['search']['exact']['p50_ms']} ms, p99 {m['search']['exact']['p99_ms']} "
        f"ms |",
        f"| IVF search, one query | p50 {m['search']['ivf']['p50_ms']} ms, p99 {m['search']['ivf']['p99_ms']} ms |",
        f"| IVF recall@5 on {m['queries']} new query digits vs exact | {m['ivf_recall_at_5_new_queries']} |", "",
        f"## Indexing a folder of {f['images']:,} PNG files (`siamdiff index`)", "",
        "| measure | value |", "|---|---|",
        f"| first run | {f['index_seconds']} s, {f['images_per_s']:,} images/s, peak memory {f['peak_rss_mib']:,} "
        f"MiB |",
        f"| again, nothing changed | {f['again_seconds']} s, {f['again_record']['kept']:,} kept |",
        f"| kill -9 part-way (`--save-every 2`), then again | {f['killed_then_again']['kept']:,} kept, "
        f"{f['killed_then_again']['added']:,} added, {f['killed_then_again']['images']:,} in all |",
        f"| two writers of one index at once | exit codes {f['writers']['exit_codes']}; the index holds "
        f"{f['writers']['index_images']:,} images (the winner's: {f['writers']['winner_images']:,}) |", "",
        f"The refused writer: `{'; '.join(f['writers']['loser_stderr'])}`", "",
        "## SIGTERM during training", "",
        f"`train similarity` (default recipe, {r['settings']['train_images']:,} MNIST test digits as a folder, batch "
        f"16): SIGTERM in epoch "
        f"{s['stopped_at']['epoch']} — exit code {s['exit_code']} after {s['exit_seconds_after_signal']} s, stopped "
        f"after batch {s['stopped_at']['batches']}; `--resume` then gives weights bit-identical to an uninterrupted "
        f"run: **{s['bit_identical']}**.", "",
        f"Its message: `{s['message']}`", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--folder-images", type=int, default=20_000)
    p.add_argument("--train-images", type=int, default=2_000, help="digits of the training run that is stopped")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DOCS)
    args = p.parse_args()
    from siamdiff.data.datasets import load_dataset

    test_set = load_dataset("mnist", "test", args.data_dir)
    test = test_set.images.numpy()
    settings = {k: getattr(args, k) for k in ("images", "chunk", "queries", "folder_images", "train_images",
                                              "threads", "seed")}
    head = provenance()
    result = {**head, "settings": settings, "sigterm": sigterm(args, test_set), "folder": folder(args, test),
              "million": million(args, test)}
    write(result, markdown(result), args.out, "scale")
    print(markdown(result))


if __name__ == "__main__":
    main()
