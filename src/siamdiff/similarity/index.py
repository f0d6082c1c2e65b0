"""A searchable index of a folder's images: embeddings, names and stamps in safetensors, the model's fingerprint and
the folder as metadata, and for large indexes a faiss IVF index with its measured recall.

``build_index`` streams the folder in batches (memory bounded by a batch and the embeddings), embeds only files
that are new or changed (size or modification time) when the index exists, saves what it has every
``save_every`` seconds (a killed run, given again, continues without embedding those again), and refuses to update
it from another folder while that folder still exists (that would drop every image of the first). Names are kept
relative to the folder, and the folder relative to the index file too: a folder moved together with its index, or
indexed again from its new place, still works.

``search`` returns the k nearest images: exact (one matrix product) by default, or through the index's IVF
(:func:`build_ivf`: ``nlist`` from the size, ``nprobe`` raised until recall@k against exact search on sampled
images reaches :data:`RECALL_TARGET`), which ``build_index`` makes from :data:`AUTO_IVF` images on or when asked.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ImageReadError, SiamdiffError, first_line, require
from ..core.files import atomic_write, check_writable, exclusive
from ..core.progress import progress
from ..data.imageio import list_images
from .api import ImageLike, SimilarityModel
from .graded import graded
from .metrics import knn_search

log = logging.getLogger(__name__)

INDEX_FORMAT = "siamdiff-index/2"
OLD_FORMATS = ("siamdiff-index/1",)  # absolute paths as JSON metadata: read, written again as the current format
AUTO_IVF = 100_000  # images from which build_index adds an IVF index when not told (exact search: ~10 ms per 1e5)
RECALL_TARGET = 0.95  # recall@k of the IVF search against exact search, measured when it is built
RECALL_K = 5
RECALL_QUERIES = 1000
SEARCHES = ("auto", "exact", "flat", "ivf")  # auto: the index's IVF when it has one, else exact


@dataclass
class Index:
    """Embeddings ``(N, D)`` float32 of the images ``names`` (relative to ``folder``; absolute for an index made
    from files outside one), their ``stamps`` ``(size, mtime_ns)``, made by the model with ``fingerprint``.

    ``folder``: the folder's absolute path when indexed; ``root``: where it is now (see :meth:`load`); ``ivf``: a
    faiss IVF index of the embeddings with ``ivf_info`` (``nlist``, ``nprobe``, ``k``, ``recall``, ``queries``)."""

    embeddings: np.ndarray
    names: list[str]
    stamps: list[tuple[int, int]]
    fingerprint: str
    model: str
    folder: str = ""
    source: str = ""  # the file it was loaded from (not stored): named in errors
    root: str = ""
    ivf: Any = None
    ivf_info: dict[str, Any] = field(default_factory=dict)
    # the squared norms of the embeddings, and the array they were computed from (another array: computed again)
    _squared_norms: tuple[np.ndarray, torch.Tensor] | None = field(default=None, init=False, repr=False,
                                                                   compare=False)

    def __post_init__(self) -> None:
        self.root = self.root or self.folder

    @property
    def paths(self) -> list[str]:
        """The images' paths as they are now: each name under :attr:`root`."""
        return [self.path(i) for i in range(len(self.names))]

    def path(self, i: int) -> str:
        """The path of image ``i`` as it is now: its name under :attr:`root` (an absolute name as it is)."""
        return os.path.join(self.root, self.names[i]) if self.root else self.names[i]

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        relative = os.path.relpath(self.folder, path.resolve().parent) if self.folder else ""
        meta = {"format": INDEX_FORMAT, "fingerprint": self.fingerprint, "model": self.model, "folder": self.folder,
                "folder_from_index": relative, "ivf": json.dumps(self.ivf_info)}
        names = b"\0".join(os.fsencode(n) for n in self.names)
        tensors = {"embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32),
                   "stamps": np.asarray(self.stamps, dtype=np.int64).reshape(-1, 2),
                   "names": np.frombuffer(names, dtype=np.uint8)}
        if self.ivf is not None:
            import faiss

            tensors["ivf"] = faiss.serialize_index(self.ivf)
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Index:
        """Read an index file. Its images are looked for in its folder, else (moved together) in the folder at the
        same place relative to the index file; when neither exists, a warning says so and paths name the old
        place."""
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir():
            raise SiamdiffError(f"cannot open index '{path}': it is a folder, not an index file")
        if not path.is_file():
            raise SiamdiffError(f"cannot open index '{path}': no such file")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") not in (INDEX_FORMAT, *OLD_FORMATS):  # another safetensors file (a model)
                    raise SiamdiffError(f"cannot open index '{path}': not a siamdiff index")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except SiamdiffError:
            raise
        except Exception as exc:  # noqa: BLE001 - any damage is one message
            if "header" in str(exc).lower():  # safetensors' words for "not its format"
                raise SiamdiffError(f"cannot open index '{path}': not a siamdiff index") from None
            raise _damaged(path, first_line(exc)) from None
        emb = tensors.get("embeddings")
        folder = meta.get("folder", "")
        try:
            if meta["format"] == INDEX_FORMAT:
                raw = tensors["names"].tobytes()
                names = [os.fsdecode(n) for n in raw.split(b"\0")] if raw else []
                stamps = [(int(a), int(b)) for a, b in tensors["stamps"].reshape(-1, 2).tolist()]
                ivf_info = json.loads(meta.get("ivf") or "{}")
            else:
                names = [_relative(str(p), folder) for p in json.loads(meta["paths"])]
                stamps = [(int(a), int(b)) for a, b in json.loads(meta["stamps"])]
                ivf_info = {}
            fingerprint = str(meta["fingerprint"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise _damaged(path, "its list of images is unreadable") from None
        if emb is None or emb.ndim != 2 or len(names) != len(emb) or len(stamps) != len(emb):
            raise _damaged(path, "names, stamps and embeddings differ in number")
        if len(emb) == 0 or not np.issubdtype(emb.dtype, np.floating):  # siamdiff never writes either
            raise _damaged(path, "no embeddings, or not float ones")
        if not np.isfinite(emb).all():  # NaN distances would rank nonsense silently
            raise _damaged(path, "embeddings that are not finite numbers")
        ivf = None
        if "ivf" in tensors:
            ivf = _read_ivf(path, tensors["ivf"], ivf_info, emb)
        root = _where_now(path, folder, meta.get("folder_from_index", ""))
        return cls(emb, names, stamps, fingerprint, meta.get("model", ""), folder, str(path), root, ivf, ivf_info)

    def check_model(self, model: SimilarityModel) -> None:
        """Refuse a model other than the one that built this index, and embeddings of another width than its own
        (a damaged file whose fingerprint survived): searching or updating would mix two embeddings."""
        name = f"index '{self.source}'" if self.source else "the index"
        if self.fingerprint != model.fingerprint and self.model and self.model == model.source:
            raise SiamdiffError(f"{name} was built by an earlier version of '{self.model}' (its weights have changed "
                                f"since): build a new index")
        if self.fingerprint != model.fingerprint:
            raise SiamdiffError(f"{name} was built by another model ({self.model}); pass {{model}} {self.model} or "
                                f"build a new index", "model")
        width = model.net.config.embed_dim
        if self.embeddings.shape[1] != width:
            raise SiamdiffError(f"{name} is damaged (its embeddings have {self.embeddings.shape[1]} numbers, the "
                                f"model's {width}); build it again into a new file")

    def search_kind(self, method: str = "auto") -> str:
        """The search ``method`` resolves to for this index: ``exact``, ``flat`` (faiss) or ``ivf``."""
        require(method in SEARCHES, "search", " or ".join(SEARCHES), method)
        if method == "ivf" and self.ivf is None:
            raise SiamdiffError(f"index '{self.source or 'in memory'}' has no IVF search: build it with {{faiss}} "
                                f"ivf", "faiss")
        return ("ivf" if self.ivf is not None else "exact") if method == "auto" else method

    def nearest(self, queries: np.ndarray, k: int, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """``(distances (Q, k'), rows (Q, k'))`` of the ``k`` nearest embeddings to each query by ``method``
        (``k' <= k``: an IVF search that finds fewer drops the missing ones, faiss's row −1)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if not np.isfinite(queries).all():
            raise SiamdiffError("the query's embedding is not finite numbers: nothing can be near it")
        kind = self.search_kind(method)
        k = min(k, len(self.names))
        if kind == "exact":  # the gallery's squared norms kept: each search reads the embeddings once
            if self._squared_norms is None or self._squared_norms[0] is not self.embeddings:
                gallery = torch.from_numpy(np.ascontiguousarray(self.embeddings, dtype=np.float32))
                self._squared_norms = self.embeddings, (gallery * gallery).sum(1)
            return knn_search(queries, self.embeddings, k, gallery_sq=self._squared_norms[1])
        if kind == "flat":
            return nearest(self.embeddings, queries, k, use_faiss=True)
        self.ivf.nprobe = int(self.ivf_info["nprobe"])
        d2, rows = self.ivf.search(queries, k)
        found = (rows >= 0).all(axis=0)  # columns every query filled (the missing are at the end of a row)
        return np.sqrt(np.maximum(d2[:, found], 0)), rows[:, found]


def _relative(path: str, folder: str) -> str:
    """``path`` relative to ``folder`` when it is inside it, else as it is."""
    if folder:
        rel = os.path.relpath(path, folder)
        if not rel.startswith(os.pardir):
            return rel
    return path


def _where_now(index_path: Path, folder: str, from_index: str) -> str:
    """Where the indexed folder is now: where it was, else where it is relative to the index file (both moved)."""
    if not folder or Path(folder).is_dir():
        return folder
    beside = (index_path.resolve().parent / from_index) if from_index else None
    if beside is not None and beside.is_dir():
        return str(beside.resolve())
    log.warning("index '%s': its folder '%s' is not there any more; its images cannot be shown or scored until the "
                "folder is back or indexed again from its new place", index_path, folder)
    return folder


def _read_ivf(path: Path, data: np.ndarray, info: dict[str, Any], emb: np.ndarray) -> Any:
    try:
        import faiss
    except ImportError:
        raise SiamdiffError(f"index '{path}' searches with faiss, which is not installed: pip install "
                            f"'siamdiff[faiss]'") from None
    try:
        ivf = faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))
        nprobe, recall = int(info["nprobe"]), float(info["recall"])
    except Exception as exc:  # noqa: BLE001
        raise _damaged(path, f"its IVF index is unreadable: {first_line(exc)}") from None
    if ivf.ntotal != len(emb) or ivf.d != emb.shape[1] or not (1 <= nprobe and math.isfinite(recall)):
        raise _damaged(path, "its IVF index does not match its embeddings")
    return ivf


def _damaged(path: Path, why: str) -> SiamdiffError:
    return SiamdiffError(f"cannot open index '{path}': damaged ({why}); build it again into a new file")


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return int(st.st_size), int(st.st_mtime_ns)


def build_ivf(embeddings: np.ndarray, k: int = RECALL_K, target: float = RECALL_TARGET,
              queries: int = RECALL_QUERIES, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A faiss IVF index (flat cells, L2) of ``embeddings`` with its measured recall.

    ``nlist`` = 4·√N cells (faiss's guideline is 4–16·√N), at most N/39 (its minimum of training points per
    cell), trained on up to 64 points per cell. ``nprobe`` is doubled from 1 until recall@k — the share of the true
    k nearest other images (exact search) of ``queries`` sampled images that the IVF search returns — reaches
    ``target``. Returns the index and ``{"nlist", "nprobe", "k", "recall", "queries", "target"}``."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    rng = np.random.default_rng(seed)
    train = x[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
    quantizer = faiss.IndexFlatL2(d)
    ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
    ivf.cp.seed = seed
    ivf.train(train)
    ivf.add(x)
    rows = np.sort(rng.choice(n, min(n, queries), replace=False))
    kk = min(k, n - 1)
    # exact neighbours in blocks of queries whose distances take at most 2^26 floats (256 MiB) at a time
    truth = _others(knn_search(x[rows], x, kk + 1, chunk=max(1, 2 ** 26 // n))[1], rows, kk)
    nprobe, recall = 1, 0.0
    while True:
        ivf.nprobe = nprobe
        found = _others(ivf.search(x[rows], kk + 1)[1], rows, kk)
        recall = float(np.mean([len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found, truth)]))
        if recall >= target or nprobe >= nlist:
            break
        nprobe = min(2 * nprobe, nlist)
    return ivf, {"nlist": nlist, "nprobe": nprobe, "k": kk, "recall": round(recall, 4), "queries": len(rows),
                 "target": target}


def _others(found: np.ndarray, rows: np.ndarray, k: int) -> list[list[int]]:
    """Each query's first ``k`` neighbours other than itself (and other than faiss's −1)."""
    return [[int(j) for j in f if j != r and j >= 0][:k] for f, r in zip(found, rows)]


def build_index(folder: str | os.PathLike, model: SimilarityModel, out: str | os.PathLike,
                batch_size: int = 256, faiss: str = "auto", save_every: float = 60.0
                ) -> tuple[Index, dict[str, int]]:
    """Embed the images of ``folder`` (recursively) into the index file ``out``; reuse it when it exists.

    ``faiss``: ``auto`` adds an IVF index from :data:`AUTO_IVF` images on, ``ivf`` always, ``none`` never;
    ``save_every``: seconds between saves of what is embedded so far (0: after every batch).
    Returns the index and counts ``{"added", "updated", "kept", "removed", "skipped"}``. Unreadable files are
    skipped.
    """
    require(faiss in ("auto", "ivf", "none"), "faiss", "auto, ivf or none", faiss)
    require(isinstance(save_every, (int, float)) and save_every >= 0, "save_every",
            "0 or more seconds", save_every)
    out = check_writable(out)  # before the embedding, not after it
    with exclusive(out):  # a second writer is refused, not silently overwritten
        return _update(folder, model, out, batch_size, faiss, save_every)


def _update(folder: str | os.PathLike, model: SimilarityModel, out: Path, batch_size: int, faiss: str,
            save_every: float) -> tuple[Index, dict[str, int]]:
    """:func:`build_index`'s work, with ``out`` checked and held."""
    files = list_images(folder)
    where = str(Path(folder).resolve())
    old = Index.load(out) if out.exists() else None
    if old is not None:
        old.check_model(model)
    if old is not None and old.root and old.root != where and Path(old.root).is_dir():
        raise SiamdiffError(f"index '{out}' holds the images of '{old.root}', not '{folder}': updating it would "
                            f"drop them; give '{folder}' a new {{out}}", "out")
    known = {n: (i, tuple(s)) for i, (n, s) in enumerate(zip(old.names, old.stamps))} if old else {}
    keep_rows, keep_names, keep_stamps, todo = [], [], [], []
    for f in files:
        name = _relative(str(f.resolve()), where)
        stamp = _stamp(f)
        if name in known and known[name][1] == stamp:
            keep_rows.append(known[name][0])
            keep_names.append(name)
            keep_stamps.append(stamp)
        else:
            todo.append((f, name, stamp))
    dim = model.net.config.embed_dim
    kept = old.embeddings[keep_rows] if old is not None and keep_rows else np.zeros((0, dim), np.float32)
    new_emb, new_names, new_stamps, skipped = [], [], [], 0

    def index_so_far() -> Index:
        emb = np.concatenate([kept, *new_emb]) if new_emb else kept
        return Index(emb, keep_names + new_names, keep_stamps + new_stamps, model.fingerprint, model.source, where)

    saved = time.monotonic()
    with progress(len(todo), f"index {Path(folder).name}", "img") as bar:
        for s in range(0, len(todo), batch_size):
            batch = todo[s:s + batch_size]
            arrays, ok = model.prepare_files([f for f, _, _ in batch])
            skipped += len(batch) - len(ok)
            new_names += [batch[k][1] for k in ok]
            new_stamps += [batch[k][2] for k in ok]
            if arrays:
                new_emb.append(model.embed(np.stack(arrays)))
            bar.update(len(batch))
            if time.monotonic() - saved >= save_every and s + batch_size < len(todo) and new_names:
                index_so_far().save(out)  # a run killed from here on continues from what is embedded
                saved = time.monotonic()
    index = index_so_far()
    if len(index.names) == 0:
        raise SiamdiffError(f"no readable images in '{folder}'" + (f" ({skipped} unreadable)" if skipped else ""))
    if faiss == "ivf" or (faiss == "auto" and len(index.names) >= AUTO_IVF):
        index.ivf, index.ivf_info = build_ivf(index.embeddings)
        log.info("IVF search: %s", json.dumps(index.ivf_info))
    index.save(out)
    updated = sum(1 for n in new_names if n in known)
    removed = (len(old.names) - len(keep_rows) - updated) if old else 0
    return index, {"added": len(new_names) - updated, "updated": updated, "kept": len(keep_rows),
                   "removed": removed, "skipped": skipped}


def search(index: Index, model: SimilarityModel, query: ImageLike | np.ndarray, k: int = 5,
           use_faiss: bool = False, method: str = "auto") -> list[dict[str, float | str | None]]:
    """The ``k`` nearest images to ``query``: ``[{"path", "similarity", "distance", "probability"}]``, nearest
    first, by ``method`` (:data:`SEARCHES`; ``use_faiss``: faiss's exact flat search). ``similarity`` is the
    graded score of :meth:`SimilarityModel.score`, from each result's file as it is now (None when it can no longer
    be read, or when ``query`` is an embedding rather than an image)."""
    require(isinstance(k, int) and not isinstance(k, bool) and k >= 1, "k", "a positive number", k)
    index.check_model(model)
    image = None if isinstance(query, np.ndarray) and query.ndim == 1 else model.prepare(query)
    q = query if image is None else model.embed(image[None])[0]
    dist, idx = index.nearest(q[None, :], k, "flat" if use_faiss else method)
    prob = model.probability(dist[0]) if model.calibration else [None] * len(idx[0])
    hits = []
    for i, d, p in zip(idx[0], dist[0], prob):
        similarity = None
        if image is not None and model.calibration:
            try:
                found = model.prepare(index.path(i))
            except ImageReadError:
                found = None
            if found is not None:
                similarity = float(graded(p, model.appearance(image[None], found[None])[0]))
        hits.append({"path": index.path(int(i)), "similarity": similarity, "distance": float(d),
                     "probability": None if p is None else float(p)})
    return hits


def nearest(gallery: np.ndarray, queries: np.ndarray, k: int, use_faiss: bool = False) -> tuple[np.ndarray,
                                                                                                np.ndarray]:
    """Exact Euclidean k-NN: ``(distances (Q, k), indices (Q, k))``; faiss's flat L2 index when asked."""
    if use_faiss:
        try:
            import faiss
        except ImportError:
            raise SiamdiffError("faiss is not installed: pip install 'siamdiff[faiss]'") from None
        flat = faiss.IndexFlatL2(gallery.shape[1])
        flat.add(np.ascontiguousarray(gallery, dtype=np.float32))
        d2, idx = flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return np.sqrt(np.maximum(d2, 0)), idx
    return knn_search(queries, gallery, k)


__all__ = ["Index", "build_index", "build_ivf", "nearest", "search"]
