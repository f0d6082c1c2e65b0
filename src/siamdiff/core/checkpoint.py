"""One checkpoint format for both halves: safetensors weights + JSON config as metadata, written atomically.

A model file holds ``{"format": "siamdiff/1", "kind": ..., "config": <json>, "extra": <json>}`` as safetensors
metadata, so :func:`load_model` rebuilds the network with no flags and never unpickles anything. Training state
(optimizer, epoch, RNG) for ``--resume`` is a separate ``state.pt`` of plain tensors and numbers, loaded with
``weights_only=True``.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import MAX_IMAGE_SIZE
from .errors import CheckpointError, first_line
from .files import atomic_write
from .registry import KINDS

FORMAT = "siamdiff/1"



def save_model(path: str | os.PathLike, model: nn.Module, kind: str, config: dict[str, Any],
               extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` weights with its config; ``extra`` holds JSON-able facts (calibration, dataset, classes)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "kind": kind, "config": json.dumps(config), "extra": json.dumps(extra or {})}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def init_record(source: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Where a fine-tuned model started: the model file ``source`` (metadata ``meta``) — its training command,
    epochs, seconds and device, and its own start when it was itself fine-tuned — recorded in the new model."""
    extra = meta.get("extra", {})
    history = extra.get("history") or []
    return {"from": source, "command": extra.get("command"), "epochs": len(history),
            "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),
            "train_device": history[-1].get("device") if history else None, "previous": extra.get("init")}


def save_float16_copy(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Write ``src`` to ``dest`` with its floating-point weights in float16 and its metadata unchanged (shipped and
    transferred weights: half the size; :func:`load_model` casts them back to the network's float32).

    A ``dest`` that already holds the same tensors and metadata is left as it is (shipping again does not rewrite
    unchanged weight files, whose bytes could differ only in the order of the header's keys)."""
    from safetensors.torch import save_file

    read_metadata(src)  # a siamdiff model file, or a clear error
    meta, tensors = _read_all(src)
    tensors = {k: t.half() if t.is_floating_point() else t for k, t in tensors.items()}
    if Path(dest).is_file():
        try:
            old_meta, old = _read_all(dest)
        except Exception:  # noqa: BLE001 - an unreadable old copy is simply replaced
            old_meta, old = None, {}
        if old_meta == meta and old.keys() == tensors.keys() and all(
                old[k].dtype == t.dtype and torch.equal(old[k], t) for k, t in tensors.items()):
            return Path(dest)
    return atomic_write(dest, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _read_all(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a model file, parsed: ``{"format", "kind", "config": dict, "extra": dict}``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"cannot load model '{path}': no such file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"cannot load model '{path}': permission denied")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - safetensors raises several types for a corrupt header
        raise CheckpointError(f"cannot load model '{path}': not a safetensors model file") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"cannot load model '{path}': format '{meta.get('format')}' is not {FORMAT}")
    try:
        return {"format": meta["format"], "kind": meta["kind"], "config": json.loads(meta["config"]),
                "extra": json.loads(meta.get("extra", "{}"))}
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"cannot load model '{path}': damaged metadata") from None


def load_model(path: str | os.PathLike, kind: str | None = None,
               map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at ``path``; returns ``(model in eval mode, metadata)``.

    ``kind`` (e.g. ``"similarity"``) refuses a checkpoint of another kind with a clear error. Convolution weights
    are kept channels-last: on the CPU that picks oneDNN's convolutions and the channels-last GroupNorm kernel,
    which ran the shipped U-Net faster than the default layout, at one image and at 128 per call, in interleaved
    timings on the 2-core machine (the benchmarks time only the layout in use).
    """
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(f"'{path}' is a {meta['kind']} model, not a {kind} model")
    if meta["kind"] not in KINDS:
        raise CheckpointError(f"'{path}' is of unknown kind '{meta['kind']}'")
    size = meta["config"].get("image_size") if isinstance(meta["config"], dict) else None
    if size is not None and not (isinstance(size, int) and 1 <= size <= MAX_IMAGE_SIZE):
        raise CheckpointError(f"cannot rebuild model '{path}': damaged config (image_size {size!r} is not a side "
                              f"from 1 to {MAX_IMAGE_SIZE})")
    module, func = KINDS[meta["kind"]].split(":")
    try:
        model = getattr(importlib.import_module(module), func)(meta["config"])
    except Exception as exc:  # noqa: BLE001 - any config the builder cannot use is a damaged checkpoint
        raise CheckpointError(f"cannot rebuild model '{path}': {first_line(exc)}") from None
    try:
        state = load_file(str(path), device=str(map_location))
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - shape/key mismatches and corrupt tensors alike
        # torch's message is a header line and then one line per key: the header alone says nothing
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        first = (lines[0] + (" " + lines[1] if len(lines) > 1 and lines[0].endswith(":") else "")) if lines \
            else type(exc).__name__
        raise CheckpointError(f"cannot load weights of '{path}': {first}") from None
    return model.to(memory_format=torch.channels_last).eval(), meta


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save training state (tensors, numbers, strings, nested dicts/lists) atomically."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load training state written by :func:`save_state`; refuses anything that needs unpickling code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"cannot resume: '{path}' does not exist") from None
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot resume from '{path}': damaged or not a siamdiff training state "
                              f"({first_line(exc)[:120]})") from None
