"""The training loop shared by every model of siamdiff.

A *task* (:class:`~siamdiff.training.task.Task`) says what one batch's loss is and how to evaluate an epoch;
:func:`fit` does the rest: device choice
(CUDA when present; bfloat16 autocast on CUDA and on CPUs with bfloat16 matrix units), optimizer and one-cycle
schedule, progress bars, a finite-loss guard, a JSONL log per epoch, atomic checkpoints after every epoch and
``--resume``. Every random choice of an epoch is derived from ``(seed, epoch)``, so a resumed run continues exactly
as the uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.checkpoint import load_state, save_state
from ..core.errors import SiamdiffError
from ..core.files import atomic_write, output_folder
from ..core.progress import progress
from .config import TrainConfig
from .task import Task

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SiamdiffError(f"unknown device '{name}'") from None
    if device.type not in ("cpu", "cuda"):
        raise SiamdiffError(f"unknown device '{name}': use auto, cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SiamdiffError("device 'cuda' requested but no CUDA GPU is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SiamdiffError(f"device '{name}' requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX, read from Linux's /proc/cpuinfo).

    There bfloat16 autocast trains the convolutional networks 2-3x faster than float32 (a residual CIFAR-10 net,
    batch 256, 2 cores: 1.01 s -> 0.43 s per step); elsewhere bfloat16 is emulated and slower, so it stays off.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def autocast_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """bfloat16 autocast for training: on CUDA, and on a CPU with bfloat16 matrix units, unless ``cfg.amp`` is off."""
    return cfg.amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_matrix_units()))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":  # the report's optimizer; weight decay as L2 in the gradient
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "constant" or total < 4:  # too few steps for a cycle: constant
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    # warm up over a quarter of the steps (at least 2), then anneal
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                               pct_start=max(0.25, 2.0 / total))


def place(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The model on ``device``, its 4-d weights in channels-last (NHWC) order when ``cfg.channels_last``: oneDNN's
    and cuDNN's convolutions then run without reordering (a CIFAR-10 embedding net on 2 AMX cores, bfloat16:
    0.56 -> 0.39 s per step of 256 images; docs/benchmarks/throughput.md)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def train_step(task: Task, batch: tuple[torch.Tensor, ...], opt: torch.optim.Optimizer, sched: Any,
               amp: bool) -> torch.Tensor:
    """One optimisation step of ``task`` on ``batch`` (the model in train mode): loss under bfloat16 autocast when
    ``amp``, backward, optimizer and schedule steps, the task's after-step hook. Returns the loss (float32,
    detached, not read: reading it would wait for the GPU)."""
    with torch.autocast(batch[0].device.type, dtype=torch.bfloat16, enabled=amp):
        loss = task.loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    task.after_step()
    return loss.detach().float()


CHECK_EVERY = 25  # batches between finite-loss checks (each one synchronises with the GPU)
WARM_BATCHES = 10  # the speed after these is logged as steady_s_per_batch (epochs of more than twice as many)


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (timings, loss reads); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_finite(total: torch.Tensor, epoch: int, batch: int, out: Path) -> None:
    """The finite-loss guard: a NaN or infinite loss anywhere in the epoch so far makes the running sum non-finite;
    the weights of the failed epoch are never saved."""
    if not torch.isfinite(total):
        raise SiamdiffError(f"training diverged: loss is {total.item()} by epoch {epoch + 1}, batch {batch + 1}; "
                            f"lower {{lr}} (last good checkpoint kept in '{out}')", "lr")


def check_run_folder(out: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Refuse a run folder that cannot take this run, before any work: ``resume`` and ``overwrite`` together, an
    existing run without either, or ``resume`` without a state to continue. Returns ``out`` as a ``Path``."""
    out = Path(out)
    if resume and overwrite:
        raise SiamdiffError("{resume} continues the run in {out} and {overwrite} replaces it: give one of them",
                            "resume", "out", "overwrite")
    state_path = out / "state.pt"
    if not resume and not overwrite and any((out / f).exists() for f in ("state.pt", "model.safetensors",
                                                                         "log.jsonl")):
        raise SiamdiffError(f"'{out}' already holds a training run: pass {{resume}} to continue it, {{overwrite}} "
                            f"to replace it, or another {{out}}", "resume", "overwrite", "out")
    if resume and not state_path.is_file():
        raise SiamdiffError(f"cannot resume: '{state_path}' " + ("is not a file" if state_path.exists() else
                                                                  "does not exist"))
    return out


def _changed(old: Any, new: Any) -> list[str]:
    """The keys whose values differ between two dicts (non-dicts count as empty)."""
    old, new = (d if isinstance(d, dict) else {} for d in (old, new))
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def fit(task: Task, out: str | Path, resume: bool = False, overwrite: bool = False) -> list[dict[str, Any]]:
    """Train ``task.model`` with ``task.recipe.train``; writes ``model.safetensors``, ``state.pt``, ``log.jsonl`` in
    ``out``.

    An existing run in ``out`` is continued with ``resume`` and replaced only with ``overwrite``.
    Returns the per-epoch history (the lines of ``log.jsonl``).
    """
    cfg = task.recipe.train
    out = check_run_folder(out, resume, overwrite)
    device = resolve_device(cfg.device)  # checked, like the state, before the output folder is made
    with output_folder(out):  # a run that fails before its first checkpoint leaves no empty folder
        return _train(task, cfg, out, device, resume)


def _train(task: Task, cfg: TrainConfig, out: Path, device: torch.device, resume: bool) -> list[dict[str, Any]]:
    state_path = out / "state.pt"
    model = place(task.model, cfg, device)
    trainable = model if task.loss_module is None else nn.ModuleList([model, task.loss_module.to(device)])
    torch.manual_seed(cfg.seed)
    steps = task.n_batches() if cfg.max_batches is None else min(task.n_batches(), cfg.max_batches)
    opt = make_optimizer(trainable, cfg)
    sched = make_scheduler(opt, cfg, steps)
    history: list[dict[str, Any]] = []
    start = 0
    signature = {k: list(v.shape) for k, v in trainable.state_dict().items()}
    # the rest of a task's recipe (loss, margin, pairs, schedule, augmentation): the network is in the signature
    recipe = {k: v for k, v in task.recipe.to_dict().items() if k not in ("train", "model")}
    if resume:
        state = load_state(state_path)
        if state.get("train_config") != cfg.to_dict():
            changed = ", ".join(_changed(state.get("train_config"), cfg.to_dict())) or "settings"
            raise SiamdiffError(f"cannot resume: '{state_path}' was written with other training settings ({changed})")
        before = state.get("recipe", recipe)  # states written before the recipe was kept are not checked
        if before != recipe:
            changed = ", ".join(_changed(before, recipe)) or "recipe"
            raise SiamdiffError(f"cannot resume: '{state_path}' was written with another {changed}; give the options "
                                f"(or {{init}}) the run started with", "init")
        if state.get("signature") != signature:
            raise SiamdiffError(f"cannot resume: '{state_path}' was written for another model or image size")
        try:
            trainable.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            history = list(state["history"])
            start = int(state["epoch"]) + 1
            task.load_extra_state(state["task"])
            if state.get("init") is not None:  # a fine-tuning run keeps its start, with or without --init again
                task.init = state["init"]
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise SiamdiffError(f"cannot resume from damaged '{state_path}': {exc}") from None
        log.info("resuming at epoch %d", start + 1)
    amp = autocast_enabled(cfg, device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for epoch in range(start, cfg.epochs):
        model.train()
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        began, count, warm_began = time.perf_counter(), 0, 0.0
        total = torch.zeros((), device=device)
        bar = progress(steps, f"epoch {epoch + 1}/{cfg.epochs}", "batch")
        for i, batch in enumerate(task.batches(epoch, device)):
            if i >= steps:
                break
            total += train_step(task, batch, opt, sched, amp)
            count += 1
            if count == WARM_BATCHES:  # the first batches carry one-time costs (kernel loading, allocations)
                synchronize(device)
                warm_began = time.perf_counter()
            bar.update(1)
            # reading the loss waits for the GPU: only every CHECK_EVERY batches, and once after the epoch
            if count % CHECK_EVERY == 0:
                _check_finite(total, epoch, i, out)
                bar.set_postfix(loss=f"{total.item() / count:.4f}")
        _check_finite(total, epoch, count - 1, out)
        bar.close()
        synchronize(device)
        seconds = time.perf_counter() - began
        steady = {"steady_s_per_batch": round((time.perf_counter() - warm_began) / (count - WARM_BATCHES), 5)} \
            if count > 2 * WARM_BATCHES else {}
        model.eval()
        evaluated = time.perf_counter()
        # validation under the training's autocast too: in float32 it took a fifth of a CIFAR-10 epoch on a CPU
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            metrics = task.evaluate(device)
        row = {"epoch": epoch + 1, "loss": total.item() / max(count, 1), "lr": opt.param_groups[0]["lr"],
               "seconds": round(seconds, 2), "eval_seconds": round(time.perf_counter() - evaluated, 2), **steady,
               "device": device_name, **metrics}
        history.append(row)
        log.info("epoch %d: %s", epoch + 1, json.dumps(row))
        task.save(out / "model.safetensors", history)
        save_state(state_path, {"model": trainable.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict(), "epoch": epoch, "history": history,
                                "train_config": cfg.to_dict(), "signature": signature, "recipe": recipe,
                                "task": task.extra_state(), "init": task.init})
        text = "".join(json.dumps(r) + "\n" for r in history)
        atomic_write(out / "log.jsonl", lambda tmp, text=text: tmp.write_text(text))
    return history
