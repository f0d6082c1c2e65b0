"""Denoising a person's own images: real photos, CIFAR-10 mosaics and whole test images, against BM3D, in one run,
written to docs/benchmarks/photos.{json,md}.

    python benchmarks/photos.py --data-dir ../shared/data
    python benchmarks/photos.py --data-dir ../shared/data --photos camera --sigmas 25 --no-datasets --out /tmp/p

Images: the photos bundled with scikit-image (no download), CIFAR-10 test images mosaicked 8 x 8 into 256 x 256
canvases, and the first test images of MNIST, Fashion-MNIST and CIFAR-10 as they are. Noise: Gaussian, sigma in
{5, 15, 25, 50}/255 (the datasets: 0.1 and 0.3), clipped and rounded to 8 bits as a file would be (the datasets
also unclipped), seeded per image. Methods, each on the same noisy images: siamdiff (one posterior-mean step of
the shipped diffusion model in overlapping tiles; the CIFAR-10 model for every photo, gray ones by its grayscale twin;
the datasets' own models for their test images) blind, blind with the network in bfloat16 (where the CPU has
bfloat16 instructions: emulated, it is slower than float32), and told the true sigma; BM3D (the ``bm3d`` package,
benchmark-only) told the true sigma and blind (sigma from scikit-image's wavelet estimate); the non-local-means
and wavelet baselines of ``siamdiff eval denoise`` told the true sigma; the noisy input. PSNR and SSIM against the
clean image, seconds per megapixel. Seams: siamdiff's PSNR on the pixels within 2 px of its tiles' inner borders,
against its PSNR on the same pixels when the tiling is shifted by half a stride so that they lie inside tiles (the
same pixels, so their content cancels out). Memory: one blind call on a 2000 x 2000 colour image in a fresh
process: the resident memory it adds at its peak, and the whole process's peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, describe, provenance, write  # noqa: E402

PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "coins", "moon", "rocket")
SIGMAS_255 = (5, 15, 25, 50)
DATASET_SIGMAS = (0.1, 0.3)
DATASET_N = 100
MOSAICS = 4  # canvases of 8 x 8 CIFAR-10 test images
BAND = 2  # pixels on each side of a tile's inner border counted as "at the seam"
SEAM_METHOD = "siamdiff (blind)"
BF16 = "siamdiff (blind, bf16)"  # measured where the CPU has bfloat16 instructions (or on a GPU)
METHODS = ("siamdiff (blind)", "siamdiff (blind, bf16)", "siamdiff (true sigma)", "BM3D (true sigma)", "BM3D (blind)", "nlm (true sigma)",
           "wavelet (true sigma)", "noisy")
DATASET_METHODS = ("siamdiff (blind)", "siamdiff (blind, bf16)", "BM3D (true sigma)", "nlm (true sigma)", "noisy")


def noisy_of(clean: np.ndarray, sigma: float, seed: int, clip: bool = True) -> np.ndarray:
    """``clean`` (float in [0, 1]) plus Gaussian noise; with ``clip``, as an 8-bit file would hold it."""
    noisy = clean + sigma * np.random.default_rng(seed).standard_normal(clean.shape)
    return np.round(np.clip(noisy, 0, 1) * 255) / 255 if clip else noisy


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / max(np.mean((a - b) ** 2), 1e-20)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=1.0, channel_axis=2))


class Methods:
    """Every method as ``(noisy (H, W, C) float, true sigma) -> clean (H, W, C)``, with the siamdiff model given."""

    def __init__(self) -> None:
        from siamdiff.reconstruction.pipeline import Denoiser

        self.models = {name: Denoiser.load(name) for name in ("mnist", "fashion-mnist", "cifar10")}
        self.baselines = Denoiser.load(None, kind=None)

    def siamdiff(self, model: str, noisy: np.ndarray, sigma: float | str, precision: str = "fp32") -> np.ndarray:
        import torch

        x = torch.from_numpy(noisy.transpose(2, 0, 1)[None].astype(np.float32))
        return self.models[model].denoise(x, sigma=sigma, precision=precision)[0][0].numpy().transpose(1, 2, 0)

    def baseline(self, method: str, noisy: np.ndarray, sigma: float) -> np.ndarray:
        import torch

        x = torch.from_numpy(noisy.transpose(2, 0, 1)[None].astype(np.float32))
        return self.baselines.denoise(x, sigma=sigma, method=method)[0][0].numpy().transpose(1, 2, 0)

    @staticmethod
    def bm3d(noisy: np.ndarray, sigma: float | None) -> np.ndarray:
        import bm3d
        from skimage.restoration import estimate_sigma

        if sigma is None:
            sigma = float(estimate_sigma(noisy, average_sigmas=True, channel_axis=2))
        if noisy.shape[2] == 3:
            return np.clip(bm3d.bm3d_rgb(noisy, sigma), 0, 1)
        return np.clip(bm3d.bm3d(noisy[:, :, 0], sigma), 0, 1)[:, :, None]

    def run(self, name: str, model: str, noisy: np.ndarray, sigma: float) -> np.ndarray:
        if name == "siamdiff (blind)":
            return self.siamdiff(model, noisy, "auto")
        if name == "siamdiff (blind, bf16)":
            return self.siamdiff(model, noisy, "auto", "bf16")
        if name == "siamdiff (true sigma)":
            return self.siamdiff(model, noisy, sigma)
        if name.startswith("BM3D"):
            return self.bm3d(noisy, sigma if "true" in name else None)
        if name == "noisy":
            return np.clip(noisy, 0, 1)
        return self.baseline(name.split()[0], noisy, sigma)


def photos(names: list[str]) -> list[tuple[str, np.ndarray]]:
    import skimage.data

    out = []
    for name in names:
        image = getattr(skimage.data, name)().astype(np.float64) / 255
        out.append((name, image[:, :, None] if image.ndim == 2 else image[:, :, :3]))
    return out


def mosaics(data_dir: str) -> list[tuple[str, np.ndarray]]:
    from siamdiff.data.datasets import load_dataset

    test = load_dataset("cifar10", "test", data_dir=data_dir)
    images = test.images[:MOSAICS * 64].numpy().astype(np.float64) / 255  # (N, 3, 32, 32)
    out = []
    for m in range(MOSAICS):
        tiles = images[64 * m:64 * (m + 1)].reshape(8, 8, 3, 32, 32)
        out.append((f"mosaic {m}", tiles.transpose(0, 3, 1, 4, 2).reshape(256, 256, 3)))
    return out


def seam_mask(height: int, width: int, tile: int, overlap: int, shift: int = 0) -> np.ndarray:
    """Pixels within :data:`BAND` of an inner border of a tile when the tiling starts ``shift`` pixels above and
    left of the image (the image's own edges are not seams)."""
    from siamdiff.reconstruction.tiles import starts

    mask = np.zeros((height, width), bool)
    for axis, size in ((0, height), (1, width)):
        if size + shift <= tile:
            continue
        for s in starts(size + shift, tile, overlap):
            for edge in (s - shift, s + tile - shift):
                if 0 < edge < size:
                    lo, hi = max(0, edge - BAND), min(size, edge + BAND)
                    if axis == 0:
                        mask[lo:hi] = True
                    else:
                        mask[:, lo:hi] = True
    return mask


def shifted(methods: Methods, noisy: np.ndarray, shift: int) -> np.ndarray:
    """siamdiff (blind) with its tiling moved ``shift`` pixels up and left: the image padded by reflection above
    and to the left, denoised, and cropped back."""
    padded = np.pad(noisy, ((shift, 0), (shift, 0), (0, 0)), mode="reflect")
    return methods.siamdiff("cifar10", padded, "auto")[shift:, shift:]


def measure_images(methods: Methods, group: str, images: list[tuple[str, np.ndarray]], sigmas_255: tuple[int, ...],
                   names: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """Rows (one per image, sigma, method) and the seam statistics (squared errors pooled per sigma)."""
    model = methods.models["cifar10"]
    tile, overlap = model.image_size, model.image_size // 4
    shift = (tile - overlap) // 2
    rows, seams = [], []
    for s255 in sigmas_255:
        sigma = s255 / 255
        pooled = {"tiled": [0.0, 0], "shifted": [0.0, 0]}
        for k, (name, clean) in enumerate(images):
            noisy = noisy_of(clean, sigma, seed=1000 * k + s255)
            for method in names:
                began = time.perf_counter()
                out = methods.run(method, "cifar10", noisy, sigma)
                seconds = time.perf_counter() - began
                rows.append({"group": group, "image": name, "height": clean.shape[0], "width": clean.shape[1],
                             "channels": clean.shape[2], "sigma_255": s255, "method": method,
                             "psnr": psnr(out, clean), "ssim": ssim(out, clean),
                             "seconds_per_megapixel": seconds / (clean.shape[0] * clean.shape[1] / 1e6)})
                print(f"{group} {name} {s255}/255 {method}: {rows[-1]['psnr']:.2f} dB, "
                      f"{rows[-1]['seconds_per_megapixel']:.2f} s/MP", flush=True)
                if method == SEAM_METHOD:
                    at_seams = seam_mask(*clean.shape[:2], tile, overlap) & \
                        ~seam_mask(*clean.shape[:2], tile, overlap, shift)
                    for which, result in (("tiled", out), ("shifted", shifted(methods, noisy, shift))):
                        pooled[which][0] += float(((result - clean) ** 2).mean(axis=2)[at_seams].sum())
                        pooled[which][1] += int(at_seams.sum())
        tiled, moved = (10 * np.log10(pooled[w][1] / pooled[w][0]) for w in ("tiled", "shifted"))
        seams.append({"group": group, "sigma_255": s255, "method": SEAM_METHOD, "psnr_at_seams": float(tiled),
                      "psnr_inside_tiles": float(moved), "difference": float(tiled - moved),
                      "pixels": pooled["tiled"][1]})
    return rows, seams


def measure_datasets(methods: Methods, data_dir: str, n: int, names: tuple[str, ...]) -> list[dict]:
    """Whole test images of each dataset (each its own tile), each dataset's model, by the methods ``names``."""
    from siamdiff.data.datasets import load_dataset

    rows = []
    for dataset in ("mnist", "fashion-mnist", "cifar10"):
        test = load_dataset(dataset, "test", data_dir=data_dir)
        clean = test.images[:n].numpy().astype(np.float64).transpose(0, 2, 3, 1) / 255
        for sigma in DATASET_SIGMAS:
            for clip in (False, True):
                noisy = [noisy_of(c, sigma, seed=7000 + k + round(1000 * sigma), clip=clip) for k, c in enumerate(clean)]
                for method in names:
                    began = time.perf_counter()
                    if method.startswith("siamdiff"):  # one batched call, as a user denoising a folder would
                        import torch

                        x = torch.from_numpy(np.stack(noisy).transpose(0, 3, 1, 2).astype(np.float32))
                        outs = methods.models[dataset].denoise(x, precision="bf16" if "bf16" in method else "fp32")
                        outs = outs[0].numpy().transpose(0, 2, 3, 1)
                    else:
                        outs = [methods.run(method, dataset, n, sigma) for n in noisy]
                    seconds = time.perf_counter() - began
                    rows.append({"group": "dataset", "dataset": dataset, "n": len(clean), "sigma": sigma,
                                 "clip": clip, "method": method,
                                 "psnr": float(np.mean([psnr(o, c) for o, c in zip(outs, clean)])),
                                 "ssim": float(np.mean([ssim(o, c) for o, c in zip(outs, clean)])),
                                 "ms_per_image": 1000 * seconds / len(clean)})
                    print(f"{dataset} sigma {sigma} clip={clip} {method}: {rows[-1]['psnr']:.2f} dB, "
                          f"{rows[-1]['ms_per_image']:.1f} ms/image", flush=True)
    return rows


def _status(field: str) -> float:
    """A field of /proc/self/status in MiB (VmRSS: resident now; VmHWM: the resident peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_probe(size: int) -> dict:
    """In this (fresh) process: the resident memory one blind call on a ``size`` x ``size`` colour image adds."""
    import torch

    from siamdiff.reconstruction.pipeline import Denoiser

    den = Denoiser.load("cifar10")
    rng = np.random.default_rng(0)
    image = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    den.denoise(image[:64, :64])  # warm up
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from what is resident now
    before = _status("VmRSS")
    began = time.perf_counter()
    out, info = den.denoise(image)
    seconds = time.perf_counter() - began
    peak = _status("VmHWM")
    return {"size": size, "tiles": info.tiles[0], "seconds": seconds, "rss_before_call_mib": before,
            "call_peak_mib": peak - before, "process_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            / 1024, "output_shape": list(out.shape), "torch_threads": torch.get_num_threads()}


def memory(size: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--memory-probe", str(size)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict], names: tuple[str, ...], sigmas: tuple[int, ...]) -> list[str]:
    lines = ["| method | " + " | ".join(f"σ {s}/255: PSNR / SSIM" for s in sigmas) + " | s per MP |",
             "|---|" + "---|" * (len(sigmas) + 1)]
    for method in names:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        cells = []
        for s in sigmas:
            at = [r for r in mine if r["sigma_255"] == s]
            cells.append(f"{np.mean([r['psnr'] for r in at]):.2f} / {np.mean([r['ssim'] for r in at]):.4f}")
        pixels = sum(r["height"] * r["width"] for r in mine) / 1e6
        seconds = sum(r["seconds_per_megapixel"] * r["height"] * r["width"] / 1e6 for r in mine)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {seconds / pixels:.2f} |")
    return lines


def summary(result: dict) -> list[str]:
    """The comparisons the tables support, computed here."""
    out = []
    for group in ("photos (gray)", "photos (colour)", "CIFAR-10 mosaics"):
        rows = [r for r in result["rows"] if r["group"] == group]
        if not rows:
            continue
        gaps = []
        for s in sorted({r["sigma_255"] for r in rows}):
            mean = {m: np.mean([r["psnr"] for r in rows if r["method"] == m and r["sigma_255"] == s])
                    for m in ("siamdiff (blind)", "BM3D (true sigma)")}
            gaps.append(f"{s}/255 {mean['siamdiff (blind)'] - mean['BM3D (true sigma)']:+.2f} dB")
        speed = {m: sum(r["seconds_per_megapixel"] for r in rows if r["method"] == m) for m in
                 ("siamdiff (blind)", "siamdiff (blind, bf16)", "BM3D (true sigma)")}
        with_bf16 = f", {speed['BM3D (true sigma)'] / speed[BF16]:.1f}x with bf16" if speed[BF16] else \
            " (bf16 not measured: this CPU has no bfloat16 instructions, and emulated bfloat16 is slower than float32)"
        out.append(f"- {group}: siamdiff blind minus BM3D told the true sigma: {', '.join(gaps)}; BM3D takes "
                   f"{speed['BM3D (true sigma)'] / speed['siamdiff (blind)']:.1f}x siamdiff's time per megapixel"
                   f"{with_bf16}.")
    seams = result.get("seams", [])
    if seams:
        worst = min(seams, key=lambda s: s["difference"])
        out.append(f"- Seams: on the pixels at its tiles' inner borders siamdiff's PSNR is at worst "
                   f"{worst['difference']:+.2f} dB from the PSNR of the same pixels inside shifted tiles "
                   f"({worst['group']}, {worst['sigma_255']}/255).")
    mem = result.get("memory")
    if mem:
        out.append(f"- A {mem['size']} x {mem['size']} colour image ({mem['tiles']} tiles) denoised in one call in "
                   f"{mem['seconds']:.1f} s; the call added {mem['call_peak_mib']:.0f} MiB of resident memory at its "
                   f"peak, over {mem['rss_before_call_mib']:.0f} MiB of the process with torch and the model loaded "
                   f"(peak {mem['process_peak_mib']:.0f} MiB).")
    return out


def markdown(result: dict) -> str:
    lines = ["# Denoising photos and whole images against BM3D", "",
             f"`{result['command']}` · code {result['code_version']} · {describe(result['hardware'])} · "
             f"{result['hardware']['torch_threads']} torch threads · {result['date']}", "",
             "Protocol: benchmarks/photos.py (docstring) and docs/reconstruction.md. PSNR in dB, SSIM, seconds of "
             "one call per megapixel (mean over the images, this machine); every method on the same noisy 8-bit "
             "images.", "", *summary(result), ""]
    sigmas = tuple(result["sigmas_255"])
    for group in ("photos (gray)", "photos (colour)", "CIFAR-10 mosaics"):
        rows = [r for r in result["rows"] if r["group"] == group]
        if rows:
            names = ", ".join(dict.fromkeys(r["image"] for r in rows))
            lines += [f"## {group}: {names}", "", *_table(rows, METHODS, sigmas), ""]
    if result.get("seams"):
        lines += ["## Seams", "", f"siamdiff (blind): PSNR of the pixels within {BAND} px of the tiles' inner borders, "
                  "and of the same pixels with the tiling shifted by half a stride (inside tiles), pooled over the "
                  "images of a group.", "", "| images | σ | at the seams | inside tiles | difference |",
                  "|---|---|---|---|---|"]
        lines += [f"| {s['group']} | {s['sigma_255']}/255 | {s['psnr_at_seams']:.2f} | {s['psnr_inside_tiles']:.2f} | "
                  f"{s['difference']:+.2f} |" for s in result["seams"]]
        lines.append("")
    data = result.get("datasets", [])
    if data:
        lines += [f"## Whole test images (first {data[0]['n']} of each test split)", "",
                  "| dataset | σ | noise | method | PSNR | SSIM | ms per image |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['dataset']} | {r['sigma']} | {'8-bit file' if r['clip'] else 'unclipped'} | {r['method']} | "
                  f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['ms_per_image']:.1f} |" for r in data]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="where CIFAR-10 and the other datasets are (mosaics and whole images)")
    parser.add_argument("--photos", nargs="*", default=list(PHOTOS))
    parser.add_argument("--sigmas", nargs="*", type=int, default=list(SIGMAS_255), help="noise levels, in /255")
    parser.add_argument("--no-datasets", action="store_true", help="leave out the whole test images")
    parser.add_argument("--n", type=int, default=DATASET_N, help="test images of each dataset")
    parser.add_argument("--memory-size", type=int, default=2000, help="side of the colour image of the memory probe")
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe)))
        return
    methods = Methods()
    sigmas = tuple(args.sigmas)
    result = {**provenance(), "sigmas_255": list(sigmas), "rows": [], "seams": [], "datasets": [], "memory": None}
    fast = result["hardware"]["cpu_bf16"]  # the bf16 row only where it is not emulated
    image_methods, dataset_methods = (tuple(m for m in names if fast or m != BF16)
                                      for names in (METHODS, DATASET_METHODS))
    loaded = photos(args.photos)
    groups = [("photos (gray)", [p for p in loaded if p[1].shape[2] == 1]),
              ("photos (colour)", [p for p in loaded if p[1].shape[2] == 3])]
    if args.data_dir:
        groups.append(("CIFAR-10 mosaics", mosaics(args.data_dir)))
    for group, images in groups:
        if images:
            rows, seams = measure_images(methods, group, images, sigmas, image_methods)
            result["rows"] += rows
            result["seams"] += seams
            write(result, markdown(result), args.out, "photos")
    if args.data_dir and not args.no_datasets:
        result["datasets"] = measure_datasets(methods, args.data_dir, args.n, dataset_methods)
    result["memory"] = memory(args.memory_size)
    write(result, markdown(result), args.out, "photos")
    print("\n".join(summary(result)))
    print(f"wrote {args.out / 'photos.md'}")


if __name__ == "__main__":
    main()
