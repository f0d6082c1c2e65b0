"""A searchable index of a folder's images: embeddings in safetensors, paths and the model's fingerprint as metadata.

``build_index`` embeds only files that are new (or changed: size or modification time) when the index exists, and
refuses to update it from another folder (that would drop every image of the first);
``search`` returns the k nearest images. Search is exact (one matrix product) by default; with ``use_faiss`` and
faiss installed, an exact flat L2 faiss index is used instead (same neighbours).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import ImageReadError, SiamdiffError, first_line, require
from ..core.files import atomic_write, check_writable, exclusive
from ..core.progress import progress
from ..data.imageio import list_images
from .api import ImageLike, SimilarityModel
from .graded import graded
from .metrics import knn_search

INDEX_FORMAT = "siamdiff-index/1"


@dataclass
class Index:
    """Embeddings ``(N, D)`` float32 of ``paths`` (the images of ``folder``) made by the model with ``fingerprint``."""

    embeddings: np.ndarray
    paths: list[str]
    stamps: list[tuple[int, int]]  # (size, mtime_ns) per path
    fingerprint: str
    model: str
    folder: str = ""  # absolute; empty for an index not made from a folder (or made before this was recorded)
    source: str = ""  # the file it was loaded from (not stored): named in errors

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

        meta = {"format": INDEX_FORMAT, "fingerprint": self.fingerprint, "model": self.model,
                "folder": self.folder, "paths": json.dumps(self.paths), "stamps": json.dumps(self.stamps)}
        tensors = {"embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32)}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Index:
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir():
            raise SiamdiffError(f"cannot open index '{path}': it is a folder, not an index file")
        if not path.is_file():
            raise SiamdiffError(f"cannot open index '{path}': no such file")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") != INDEX_FORMAT:  # another safetensors file (a model, say)
                    raise SiamdiffError(f"cannot open index '{path}': not a siamdiff index")
                emb = f.get_tensor("embeddings")
        except SiamdiffError:
            raise
        except Exception as exc:  # noqa: BLE001 - any damage is one message
            if "header" in str(exc).lower():  # safetensors' words for "not its format"
                raise SiamdiffError(f"cannot open index '{path}': not a siamdiff index") from None
            raise _damaged(path, first_line(exc)) from None
        try:
            paths = [str(p) for p in json.loads(meta["paths"])]
            stamps = [(int(a), int(b)) for a, b in json.loads(meta["stamps"])]
            fingerprint = str(meta["fingerprint"])
        except (KeyError, TypeError, ValueError):
            raise _damaged(path, "its list of images is unreadable") from None
        if emb.ndim != 2 or len(paths) != len(emb) or len(stamps) != len(emb):
            raise _damaged(path, "paths, stamps and embeddings differ in number")
        if len(emb) == 0 or not np.issubdtype(emb.dtype, np.floating):  # siamdiff never writes either
            raise _damaged(path, "no embeddings, or not float ones")
        if not np.isfinite(emb).all():  # NaN distances would rank nonsense silently
            raise _damaged(path, "embeddings that are not finite numbers")
        return cls(emb, paths, stamps, fingerprint, meta.get("model", ""), meta.get("folder", ""), str(path))

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


def _damaged(path: Path, why: str) -> SiamdiffError:
    return SiamdiffError(f"cannot open index '{path}': damaged ({why}); build it again into a new file")


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return int(st.st_size), int(st.st_mtime_ns)


def build_index(folder: str | os.PathLike, model: SimilarityModel, out: str | os.PathLike,
                batch_size: int = 256) -> tuple[Index, dict[str, int]]:
    """Embed the images of ``folder`` (recursively) into the index file ``out``; reuse it when it exists.

    Returns the index and counts ``{"added", "kept", "removed", "skipped"}``. Unreadable files are skipped.
    """
    out = check_writable(out)  # before the embedding, not after it
    with exclusive(out):  # a second writer is refused, not silently overwritten
        return _update(folder, model, out, batch_size)


def _update(folder: str | os.PathLike, model: SimilarityModel, out: Path, batch_size: int
            ) -> tuple[Index, dict[str, int]]:
    """:func:`build_index`'s work, with ``out`` checked and held."""
    files = list_images(folder)
    where = str(Path(folder).resolve())
    old = Index.load(out) if out.exists() else None
    if old is not None:
        old.check_model(model)
    if old is not None and old.folder and old.folder != where:
        raise SiamdiffError(f"index '{out}' holds the images of '{old.folder}', not '{folder}': updating it would "
                            f"drop them; give '{folder}' a new {{out}}", "out")
    known = {p: (i, tuple(s)) for i, (p, s) in enumerate(zip(old.paths, old.stamps))} if old else {}
    keep_rows, keep_paths, keep_stamps, todo = [], [], [], []
    for f in files:
        key = str(f.resolve())
        stamp = _stamp(f)
        if key in known and known[key][1] == stamp:
            keep_rows.append(known[key][0])
            keep_paths.append(key)
            keep_stamps.append(stamp)
        else:
            todo.append((f, key, stamp))
    new_emb, new_paths, new_stamps, skipped = [], [], [], 0
    with progress(len(todo), f"index {Path(folder).name}", "img") as bar:
        for s in range(0, len(todo), batch_size):
            batch = todo[s:s + batch_size]
            arrays, kept = model.prepare_files([f for f, _, _ in batch])
            skipped += len(batch) - len(kept)
            new_paths += [batch[k][1] for k in kept]
            new_stamps += [batch[k][2] for k in kept]
            if arrays:
                new_emb.append(model.embed(np.stack(arrays)))
            bar.update(len(batch))
    dim = model.net.config.embed_dim
    parts = ([old.embeddings[keep_rows]] if old is not None and keep_rows else []) + new_emb
    emb = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    if len(emb) == 0:
        raise SiamdiffError(f"no readable images in '{folder}'" + (f" ({skipped} unreadable)" if skipped else ""))
    index = Index(emb, keep_paths + new_paths, keep_stamps + new_stamps, model.fingerprint, model.source,
                  where)
    index.save(out)
    removed = (len(old.paths) - len(keep_rows)) if old else 0
    return index, {"added": len(new_paths), "kept": len(keep_rows), "removed": removed, "skipped": skipped}


def search(index: Index, model: SimilarityModel, query: ImageLike | np.ndarray, k: int = 5,
           use_faiss: bool = False) -> list[dict[str, float | str | None]]:
    """The ``k`` nearest images to ``query``: ``[{"path", "similarity", "distance", "probability"}]``, nearest
    first. ``similarity`` is the graded score of :meth:`SimilarityModel.score`, from each result's file as it is now
    (None when it can no longer be read, or when ``query`` is an embedding rather than an image)."""
    require(isinstance(k, int) and not isinstance(k, bool) and k >= 1, "k", "a positive number", k)
    index.check_model(model)
    image = None if isinstance(query, np.ndarray) and query.ndim == 1 else model.prepare(query)
    q = query if image is None else model.embed(image[None])[0]
    dist, idx = nearest(index.embeddings, q[None, :], min(k, len(index.paths)), use_faiss)
    prob = model.probability(dist[0]) if model.calibration else np.full(len(idx[0]), np.nan)
    hits = []
    for i, d, p in zip(idx[0], dist[0], prob):
        similarity = None
        if image is not None and model.calibration:
            try:
                found = model.prepare(index.paths[i])
            except ImageReadError:
                found = None
            if found is not None:
                similarity = float(graded(p, model.appearance(image[None], found[None])[0]))
        hits.append({"path": index.paths[i], "similarity": similarity, "distance": float(d), "probability": float(p)})
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


__all__ = ["Index", "build_index", "nearest", "search"]
