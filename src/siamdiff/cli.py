"""The ``siamdiff`` command: a thin argparse layer over the library.

Every user error (``SiamdiffError``) becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .core.config import auto_or
from .core.errors import ImageReadError, Interrupted, SiamdiffError, first_line, one_line
from .core.version import __version__

log = logging.getLogger("siamdiff")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, which also records each option's flag by its destination: a library error
    that names the parameter ``image_size`` is shown as naming ``--image-size``."""

    def __init__(self, *args, **kwargs) -> None:
        self.flags: dict[str, str] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        action = super().add_argument(*names, **kwargs)
        if action.option_strings:
            self.flags[action.dest] = max(action.option_strings, key=len)
        return action

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        # a sub-command's parser runs inside its parent's: its flags win over the parent's
        namespace.flags = {**self.flags, **getattr(namespace, "flags", {})}
        return namespace, extras

    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"siamdiff: error: {message}\n")


def _numbers(text: str) -> list[float]:
    """``0.1,0.3`` -> ``[0.1, 0.3]``; an empty item is a typo, not a value to drop silently."""
    try:
        return [float(s) for s in text.split(",")]
    except ValueError:
        raise SiamdiffError(f"{{sigmas}} must be comma-separated numbers, e.g. 0.1,0.3, got '{text}'", "sigmas") \
            from None


def _classes(text: str) -> tuple[int, ...]:
    """An argparse ``type`` for class numbers: ``0-4`` or ``5,7,9`` (or both: ``0-2,7``)."""
    numbers: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            numbers += range(int(first), int(last or first) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"class numbers such as 0-4 or 5,7,9, not '{text}'") from None
    return tuple(numbers)


def _path(text: str) -> str:
    """An argparse ``type`` for a path: an empty one is refused (it would quietly mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder holding MNIST/raw, FashionMNIST/raw, cifar-10-batches-py "
                                      "(default: $SIAMDIFF_DATA or ~/.cache/siamdiff/data)")
    p.add_argument("--download", action="store_true", help="download missing dataset files (checked by MD5)")


def _train_parser(sub, kind) -> argparse.ArgumentParser:
    """The ``train KIND`` sub-command: the options every kind shares, and those that apply to this one."""
    t = sub.add_parser(kind.name, help=f"train {kind.about}")
    t.add_argument("--dataset", required=True, help="mnist, fashion-mnist, cifar10 or folder:PATH")
    t.add_argument("--model", default=kind.designs[0], choices=kind.designs)
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--max-batches", type=int, help="cap batches per epoch (smoke runs)")
    t.add_argument("--float32", action="store_true", help="train in float32 (no bfloat16 autocast on GPUs and on "
                                                          "CPUs with bfloat16 instructions)")
    t.add_argument("--image-size", type=int,
                   help="folder datasets: square size (default 32)" + ("; on a built-in dataset: the model's size, "
                                                                       "images resized to it" if kind.resizes else ""))
    t.add_argument("--channels", type=int, help="folder datasets: 1 or 3 (default 3); 1 also reads CIFAR-10 as gray")
    t.add_argument("--out", type=_path, required=True, help="run folder: model.safetensors, state.pt, log.jsonl")
    t.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in OUT")
    t.add_argument("--classes", type=_classes, help="train on these classes only: 0-4 or 5,7,9 (class numbers)")
    t.add_argument("--json", action="store_true", help='{"output" (the model file), "epochs", and the last validation scores}')
    if kind.loss:
        t.add_argument("--loss", help="the training loss (default: the design's own)")
    if kind.margin:
        t.add_argument("--margin", type=float)
    if kind.init:
        t.add_argument("--init", help=f"fine-tune this {kind.file_kind} model (a shipped name or a path): its "
                                      f"network is kept, --model is ignored")
    _data_args(t)
    return t


def build_parser() -> argparse.ArgumentParser:
    from .reconstruction.evaluate import LABELS
    from .reconstruction.evaluate import METHODS as EVAL_METHODS
    from .reconstruction.pipeline import METHODS, PRECISIONS
    from .training.kinds import KINDS

    parser = _Parser(prog="siamdiff", description="Image similarity with Siamese networks, and denoising.")
    parser.add_argument("--version", action="version", version=f"siamdiff {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="offline demo on the embedded sample with the shipped weights")
    p.add_argument("--out", type=_path, default="siamdiff-demo", help="folder for the pictures and report")
    p.add_argument("--json", action="store_true", help='{"output": the report}')

    p = sub.add_parser("train", help="train a model")
    what = p.add_subparsers(dest="what", required=True, parser_class=_Parser)
    for kind in KINDS.values():
        _train_parser(what, kind)

    p = sub.add_parser("eval", help="evaluate a model")
    what = p.add_subparsers(dest="what", required=True, parser_class=_Parser)
    e = what.add_parser("similarity", help="verification, retrieval and hard-pair metrics")
    e.add_argument("--model", default="mnist", help="mnist, fashion-mnist, cifar10 or a model path")
    e.add_argument("--dataset", required=True, help="mnist, fashion-mnist, cifar10, sample:NAME or folder:PATH")
    e.add_argument("--n-pairs", type=int, default=10_000)
    e.add_argument("--classes", type=_classes, help="evaluate on these classes only: 5-9 for a model trained on 0-4")
    e.add_argument("--hard", dest="n_hard", type=int, default=1000, help="hard-pair anchors (0 to skip)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    _data_args(e)

    e = what.add_parser("denoise", help="PSNR, SSIM, class accuracy and sigma error of a denoising method")
    e.add_argument("--dataset", required=True)
    e.add_argument("--method", required=True, choices=EVAL_METHODS)
    e.add_argument("--model", help="the method's model: diffusion (tweedie/ddim/ancestral), denoiser, vae")
    e.add_argument("--sigmas", type=str, default="0.1,0.3", help="comma-separated noise levels, [0, 1] scale")
    e.add_argument("--n", type=int, default=1000, help="first N test images")
    e.add_argument("--clip", action="store_true", help="noisy images as files: clipped to [0, 1], 8-bit")
    e.add_argument("--sigma-mode", default="auto", choices=["auto", "true"], help="estimated or true sigma")
    e.add_argument("--estimator", help="learned noise estimator (file or shipped name) or 'wavelet' (default: the "
                   "shipped model's own, else wavelet-MAD)")
    e.add_argument("--classifier", help="classifier for class_accuracy (default: the shipped model's own)")
    e.add_argument("--labels", default="none", choices=LABELS, help="guidance labels")
    e.add_argument("--guidance", type=float, default=1.0)
    e.add_argument("--steps", type=int, default=10)
    e.add_argument("--device", default="auto", help="auto, cpu or cuda (the noise is drawn on the CPU either way)")
    e.add_argument("--batch-size", type=int, default=250, help="images per network batch")
    e.add_argument("--no-declip", action="store_true", help="diffusion methods: leave the bias of clipped pixels "
                                                            "(undone by default, as siamdiff denoise does)")
    e.add_argument("--image-size", type=int, help="measure at this size: the clean test images are resized "
                   "(bilinear) and the noise drawn at it; folders are read at it (default: the model's, else the "
                   "dataset's own; folders 32)")
    e.add_argument("--channels", type=int, help="folder datasets (default: the model's, else 3)")
    e.add_argument("--json", action="store_true")
    _data_args(e)

    p = sub.add_parser("sample", help="draw new images from a diffusion model (DDPM or DDIM)")
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--method", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (DDPM uses every step)")
    p.add_argument("--label", type=int)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=_path, required=True, help="PNG grid")
    p.add_argument("--json", action="store_true", help='{"output", "images", "method", ...}')

    p = sub.add_parser("similarity", help="how similar are two images: a graded score, category first, "
                                          "appearance second")
    p.add_argument("a", nargs="?")
    p.add_argument("b", nargs="?")
    p.add_argument("--pairs", type=_path, metavar="FILE",
                   help="score many pairs: a CSV file of two image paths a line (an optional header a,b)")
    p.add_argument("--model", default="mnist")
    p.add_argument("--json", action="store_true", help="one JSON object (with --pairs: one a line, failed pairs with "
                                                       "their error)")

    p = sub.add_parser("explain", help="why two images are similar: a picture of the regions their agreement comes "
                                       "from")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--model", default="mnist")
    p.add_argument("--out", type=_path, required=True, help="the picture (.png)")
    p.add_argument("--json", action="store_true", help="also print the scores and the maps (one value per region)")

    p = sub.add_parser("duplicates", help="groups of near copies in a folder (a report: nothing is moved or deleted)")
    p.add_argument("folder")
    p.add_argument("--model", default="mnist")
    p.add_argument("--threshold", type=float, help="the graded similarity from which two images are near copies "
                                                   "(default chosen on validation near-copy triplets)")
    p.add_argument("--json", action="store_true", help='{"groups": [[path, ...], ...], ...}')

    p = sub.add_parser("index", help="embed a folder of images into a search index")
    p.add_argument("folder")
    p.add_argument("--out", type=_path, required=True, help="index file (.safetensors); updated in place if it exists")
    p.add_argument("--model", default="mnist")
    p.add_argument("--faiss", choices=("auto", "ivf", "none"), default="auto",
                   help="add a faiss IVF index for fast approximate search, its recall measured (auto: from "
                        "100,000 images on)")
    p.add_argument("--save-every", type=float, default=60.0, metavar="SECONDS",
                   help="save what is embedded this often (a stopped run given again continues from there)")
    p.add_argument("--json", action="store_true",
                   help='{"output", "images", "added", "updated", "kept", "removed", "skipped", "search", "ivf"}')

    p = sub.add_parser("search", help="nearest images of an index")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="query images")
    p.add_argument("--queries", type=_path, metavar="FILE", help="also the query images listed in FILE, one a line")
    p.add_argument("--index", required=True)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--model", help="defaults to the model that built the index")
    p.add_argument("--faiss", dest="use_faiss", action="store_true",
                   help="exact search with faiss's flat index (pip install 'siamdiff[faiss]')")
    p.add_argument("--exact", action="store_true", help="exact search even where the index has an IVF one")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("denoise", help="clean noisy images with a diffusion model")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", type=_path, required=True, help="a .png file for one input, else a folder")
    p.add_argument("--model", default="mnist", help="mnist, fashion-mnist, cifar10 or a diffusion model file/folder")
    p.add_argument("--method", default="tweedie", choices=METHODS["diffusion"])
    p.add_argument("--sigma", type=auto_or(float), default="auto",
                   help="noise level on the [0, 1] scale, or auto (default)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps")
    p.add_argument("--label", type=auto_or(int), help="keep this class (a number), or auto: the class predicted "
                                                       "from the unguided estimate (class-conditional models)")
    p.add_argument("--estimator", help="noise estimator model file, or 'wavelet' for wavelet-MAD (shipped models "
                                       "bring a learned one; other models use wavelet-MAD)")
    p.add_argument("--classifier", help="classifier model file for --label auto (shipped models bring theirs)")
    p.add_argument("--no-declip", action="store_true",
                   help="do not undo the bias of pixels clipped at 0 or 1 (on by default: PNG inputs are clipped)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight with --label")
    p.add_argument("--seed", type=int, default=0, help="seed of the ancestral chain")
    p.add_argument("--tile-overlap", dest="overlap", type=int,
                   help="pixels by which the tiles of an image larger than the model's overlap (default a quarter of "
                        "a tile)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: the network under bfloat16 autocast, 2-3x faster on CPUs with AMX or AVX-512 BF16 and on "
                        "GPUs (slower on other CPUs, which emulate it)")
    p.add_argument("--save-chain", type=_path, metavar="DIR",
                   help="also write each image's reverse chain into DIR: the estimates of the clean image along it, "
                        "and a strip of them after the noisy input (tweedie: its one step)")
    p.add_argument("--json", action="store_true", help="one JSON object per file, a failed one with its error")

    p = sub.add_parser("serve", help="a local web page and REST API (pip install 'siamdiff[web]')")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one, printed)")
    p.add_argument("--model", dest="models", nargs="+", action="extend", metavar="NAME|PATH",
                   help="models to serve: shipped names or model files (default: every shipped model)")
    p.add_argument("--index", dest="indexes", nargs="+", action="extend", metavar="PATH", help="indexes to search")
    p.add_argument("--workers", type=int, help="requests computed at once (default 1)")
    p.add_argument("--queue", type=int, help="requests waiting beyond those (default 8); more are answered 503")
    p.add_argument("--max-upload-mb", type=float, help="largest uploaded file (default 16)")
    p.add_argument("--max-pixels", type=int, help="largest uploaded image (default 4096 x 4096)")
    p.add_argument("--max-calls", type=int, help="most network calls (tiles x steps) of one denoising (default 5000)")

    p = sub.add_parser("plot", help="pictures: pairs with scores, ROC curve, 2-D map of embeddings")
    what = p.add_subparsers(dest="what", required=True, parser_class=_Parser)
    q = what.add_parser("similarity")
    q.add_argument("--model", default="mnist")
    q.add_argument("--dataset", default="sample:mnist")
    q.add_argument("--out", type=_path, required=True, help="folder for the PNGs")
    q.add_argument("--explain", action="store_true", help="draw the pairs under the maps of why they are similar")
    q.add_argument("--json", action="store_true", help='one {"output"} line per picture')
    _data_args(q)
    return parser


def _print_json(obj: object) -> None:
    """One JSON object on one line; never NaN or Infinity (not JSON: a value that would be one is ``null``)."""
    print(json.dumps(_finite(obj), indent=None, sort_keys=False, allow_nan=False))


def _finite(obj: object) -> object:
    """``obj`` with every float that is not finite replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _report(records: list[dict], as_json: bool, show: Callable[[dict], None]) -> int:
    """Print the records of a command over many inputs, in order — with ``as_json`` one JSON object a line, else
    ``show(record)`` — and each failed one's error on stderr; the exit code: 2 if any failed."""
    for r in records:
        if "error" in r:
            print(f"siamdiff: error: {one_line(r['error'])}", file=sys.stderr)
        if as_json:
            _print_json(r)
        elif "error" not in r:
            show(r)
    return 2 if any("error" in r for r in records) else 0


def _launcher() -> str:
    """How this process was started: ``siamdiff``, or ``torchrun ... -m siamdiff`` for one rank of several."""
    world, local = (int(os.environ.get(k, "1")) for k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"))
    if world == 1:
        return "siamdiff"
    nodes = f"--nnodes {world // local} " if world > local else ""
    return f"torchrun {nodes}--nproc-per-node {local} -m siamdiff"


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainOptions, train
    from .training.distributed import ranks_from_environment

    options = TrainOptions(**{k: getattr(args, k, None) for k in ("model", "epochs", "batch_size", "lr", "max_batches",
                                                                  "image_size", "channels", "init", "loss", "margin",
                                                                  "classes")},
                           seed=args.seed, device=args.device, amp=False if args.float32 else None)
    history = train(args.what, args.dataset, args.out, options, data_dir=args.data_dir, download=args.download,
                    resume=args.resume, overwrite=args.overwrite,
                    command=_launcher() + " " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    if not ranks_from_environment().main:  # rank 0 reports for all
        return 0
    last = history[-1] if history else {}
    model, scores = Path(args.out) / "model.safetensors", {k: v for k, v in last.items() if k.startswith("val_")}
    if args.json:
        _print_json({"output": str(model), "epochs": len(history), **scores})
    else:
        print(f"wrote {model} after {len(history)} epoch(s): " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.what == "denoise":
        from .reconstruction.evaluate import evaluate_denoise

        rows = evaluate_denoise(args.dataset, _numbers(args.sigmas), args.method, args.model, args.n, args.clip,
                                args.sigma_mode, args.estimator, args.classifier, args.labels, args.guidance,
                                args.steps, args.data_dir, args.download, batch_size=args.batch_size,
                                image_size=args.image_size, channels=args.channels, device=args.device,
                                declip=not args.no_declip)
        if args.json:
            for r in rows:  # one JSON line per setting
                _print_json(r)
        else:
            for r in rows:
                acc = "" if r["class_accuracy"] is None else f"  class acc {r['class_accuracy']:.4f}"
                print(f"sigma {r['sigma']:<5} {r['method']:9s} PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}{acc}")
        return 0
    from .similarity.api import SimilarityModel
    from .similarity.evaluate import evaluate

    result = evaluate(SimilarityModel.load(args.model), args.dataset, args.data_dir, args.download,
                      n_pairs=args.n_pairs, n_hard=args.n_hard, classes=args.classes)
    if args.json:
        _print_json(result)
    else:
        for k, v in result.items():
            print(f"{k:24s} {v:.4f}" if isinstance(v, float) else f"{k:24s} {v}")
    return 0


def _text(path: str, param: str) -> str:
    """The text of a file a parameter names, or a one-line error."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return handle.read()
    except UnicodeDecodeError:
        raise SiamdiffError(f"{{{param}}} '{path}' is not a text file", param) from None
    except OSError as exc:
        raise SiamdiffError(f"cannot read {{{param}}} '{path}': {exc.strerror.lower()}", param) from None


def _read_pairs(path: str) -> list[tuple[str, str]]:
    """The pairs of a CSV file: two paths a line, blank lines skipped, an optional first line ``a,b``."""
    import csv
    import io

    rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(io.StringIO(_text(path, "pairs"))), 1)
            if any(row)]
    if rows and [c.lower() for c in rows[0][1]] == ["a", "b"]:
        rows = rows[1:]
    for n, row in rows:
        if len(row) != 2 or not all(row):
            raise SiamdiffError(f"{{pairs}} '{path}' line {n}: two image paths separated by a comma, got "
                                f"{len([c for c in row if c])} field(s)", "pairs")
    if not rows:
        raise SiamdiffError(f"{{pairs}} '{path}' holds no pairs", "pairs")
    return [(a, b) for _, (a, b) in rows]


def _read_lines(path: str, param: str) -> list[str]:
    """The non-blank lines of a text file, stripped."""
    return [line.strip() for line in _text(path, param).splitlines() if line.strip()]


def _show_pair(r: dict) -> str:
    verdict = "same category" if r["same"] else "different categories"
    return (f"{r['similarity']:.3f}  ({verdict}; probability {r['probability']:.3f}, appearance {r['appearance']:.3f}, "
            f"distance {r['distance']:.3f})")


def _cmd_similarity(args: argparse.Namespace) -> int:
    from .similarity.api import SimilarityModel

    if args.pairs is None and (args.a is None or args.b is None):
        raise SiamdiffError("give two images A B, or {pairs} FILE", "pairs")
    if args.pairs is not None and args.a is not None:
        raise SiamdiffError("give two images A B or {pairs} FILE, not both", "pairs")
    if args.pairs is None:
        result = {"a": args.a, "b": args.b, **SimilarityModel.load(args.model).score(args.a, args.b)}
        if args.json:
            _print_json(result)
        else:
            print(_show_pair(result))
        return 0
    records = SimilarityModel.load(args.model).score_pairs(_read_pairs(args.pairs))
    return _report(records, args.json, lambda r: print(f"{_show_pair(r)}  {r['a']}  {r['b']}"))


def _cmd_explain(args: argparse.Namespace) -> int:
    from .core.files import check_writable
    from .similarity.api import SimilarityModel
    from .similarity.explain import explanation_json, save_explanation

    if Path(args.out).suffix.lower() != ".png":
        raise SiamdiffError(f"{{out}} must name a .png file, got '{args.out}'", "out")
    check_writable(args.out)
    result = SimilarityModel.load(args.model).explain(args.a, args.b)
    save_explanation(result, args.out, names=(Path(args.a).name, Path(args.b).name))
    if args.json:
        _print_json({"a": args.a, "b": args.b, **explanation_json(result), "output": args.out})
    else:
        print(f"{args.out}  (similarity {result['similarity']:.3f}, cosine {result['cosine']:.3f})")
    return 0


def _cmd_duplicates(args: argparse.Namespace) -> int:
    from .similarity.api import SimilarityModel
    from .similarity.duplicates import THRESHOLD, find_duplicates

    report = find_duplicates(args.folder, SimilarityModel.load(args.model),
                             THRESHOLD if args.threshold is None else args.threshold)
    if args.json:
        _print_json(report)
        return 0
    skipped = f", {report['skipped']} unreadable skipped" if report["skipped"] else ""
    print(f"{report['images']} images{skipped}: {len(report['groups'])} group(s) of near copies (similarity >= "
          f"{report['threshold']})")
    for k, (group, smallest) in enumerate(zip(report["groups"], report["similarity"]), 1):
        print(f"group {k}: {len(group)} images, every two at least {smallest:.3f}")
        for path in group:
            print(f"  {path}")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from .similarity.api import SimilarityModel
    from .similarity.index import build_index

    index, counts = build_index(args.folder, SimilarityModel.load(args.model), args.out, faiss=args.faiss,
                                save_every=args.save_every)
    info = index.ivf_info
    if args.json:
        search = {"search": "ivf", "ivf": info} if index.ivf is not None else {"search": "exact"}
        _print_json({"output": args.out, "images": len(index.names), **counts, **search})
    else:
        ivf = f"; IVF search, recall@{info['k']} {info['recall']:.3f} at nprobe {info['nprobe']} of " \
              f"{info['nlist']}" if index.ivf is not None else ""
        print(f"index {args.out}: {len(index.names)} images ({counts['added']} added, {counts['updated']} updated, "
              f"{counts['kept']} kept, {counts['removed']} removed, {counts['skipped']} unreadable skipped){ivf}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from .similarity.api import SimilarityModel
    from .similarity.index import Index, search

    queries = list(args.images) + (_read_lines(args.queries, "queries") if args.queries else [])
    if not queries:
        raise SiamdiffError("give query images, or {queries} FILE", "queries")
    index = Index.load(args.index)
    model = SimilarityModel.load(index.model if args.model is None else args.model)
    method = "flat" if args.use_faiss else "exact" if args.exact else "auto"
    kind = index.search_kind(method)
    how = {"search": kind, **({"recall": index.ivf_info["recall"]} if kind == "ivf" else {})}
    records = []
    for query in queries:
        try:
            records.append({"path": query, **how, "results": search(index, model, query, args.k, method=method)})
        except ImageReadError as exc:  # one unreadable query does not stop the others
            records.append({"path": query, "error": str(exc)})

    def show(r: dict) -> None:
        if len(queries) > 1:
            print(f"{r['path']}:")
        for h in r["results"]:
            graded = "  -  " if h["similarity"] is None else f"{h['similarity']:.3f}"
            probability = "  -  " if h["probability"] is None else f"{h['probability']:.3f}"
            print(f"{graded}  {probability}  {h['distance']:.3f}  {h['path']}")

    return _report(records, args.json, show)


def _cmd_denoise(args: argparse.Namespace) -> int:
    from .reconstruction.pipeline import Denoiser, denoise_files

    den = Denoiser.load(args.model, args.estimator, args.classifier)
    records = denoise_files(den, args.inputs, args.out, sigma=args.sigma, method=args.method, steps=args.steps,
                            label=args.label, guidance=args.guidance,
                            seed=args.seed, declip=not args.no_declip, overlap=args.overlap,
                            save_chain=args.save_chain, precision=args.precision)

    def show(r: dict) -> None:
        tiles = f", {r['tiles']} tiles" if r["tiles"] > 1 else ""
        chain = f"; chain in {r['chain'][0]}" if "chain" in r else ""
        print(f"{r['output']}  (sigma {r['sigma']:.3f}, t* {r['t_start']}, {r['method']}{tiles}{chain})")

    return _report(records, args.json, show)


def _cmd_sample(args: argparse.Namespace) -> int:
    from .reconstruction.pipeline import Denoiser
    from .reconstruction.plots import sample_grid

    out = sample_grid(Denoiser.load(args.model), args.out, n=args.n, method=args.method, steps=args.steps,
                      label=args.label, guidance=args.guidance, seed=args.seed)
    if args.json:
        _print_json({"output": str(out), "images": args.n, "method": args.method, "steps": args.steps,
                     "label": args.label, "guidance": args.guidance, "seed": args.seed})
    else:
        print(out)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .similarity.api import SimilarityModel
    from .similarity.plots import plot_all

    for p in plot_all(SimilarityModel.load(args.model), args.dataset, args.out, args.data_dir, args.download,
                      explain=args.explain):
        if args.json:  # one JSON line per picture
            _print_json({"output": str(p)})
        else:
            print(p)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .web.serve import serve

    serve(args.host, args.port, args.models, args.indexes, max_upload_mb=args.max_upload_mb, workers=args.workers,
          queue=args.queue, max_pixels=args.max_pixels, max_calls=args.max_calls)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(args.out)
    if args.json:
        _print_json({"output": str(report)})
    else:
        print(f"demo written to {report.parent}/ (open {report})")
    return 0


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "similarity": _cmd_similarity, "explain": _cmd_explain,
            "duplicates": _cmd_duplicates, "index": _cmd_index,
            "search": _cmd_search, "plot": _cmd_plot, "demo": _cmd_demo, "denoise": _cmd_denoise,
            "sample": _cmd_sample, "serve": _cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="siamdiff: %(levelname)s: %(message)s")
    os.environ.setdefault("KMP_WARNINGS", "0")
    try:
        return COMMANDS[args.command](args)
    except SiamdiffError as exc:
        message = one_line(exc.render(args.flags))
        if getattr(args, "json", False):  # a script reading the JSON sees the failure too
            _print_json({"error": message})
        print(f"siamdiff: error: {message}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"siamdiff: {one_line(exc.message)}", file=sys.stderr)
        return 128 + exc.signal_number
    except KeyboardInterrupt:
        print("siamdiff: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("siamdiff: error: out of memory", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused a path the user gave (a name too long, say): not a bug
        if args.verbose:
            raise
        reason = exc.strerror.lower() if exc.strerror else first_line(exc)
        where = f": '{exc.filename}'" if exc.filename else ""
        print(f"siamdiff: error: {one_line(reason + where)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, the traceback only with --verbose
        if "can't allocate memory" in str(exc):  # torch's CPU allocator fails with a RuntimeError, not MemoryError
            print("siamdiff: error: out of memory", file=sys.stderr)
            return 2
        if args.verbose:
            raise
        print(f"siamdiff: internal error: {type(exc).__name__}: {one_line(first_line(exc))} (run with -v for the "
              f"traceback)", file=sys.stderr)
        return 1
