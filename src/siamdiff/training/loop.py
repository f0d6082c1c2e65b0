"""The training loop shared by every model of siamdiff.

A *task* (:class:`~siamdiff.training.task.Task`) says what one batch's loss is and how to evaluate an epoch;
:func:`fit` does the rest: device choice
(CUDA when present; bfloat16 autocast on CUDA and on CPUs with bfloat16 instructions), optimizer and one-cycle
schedule, progress bars, a finite-loss guard, a JSONL log per epoch, atomic checkpoints after every epoch and
``--resume``, a checkpoint after the current step when SIGINT or SIGTERM arrives, and training on several processes
under ``torchrun`` (:mod:`.distributed`). Every random choice of an epoch is derived from ``(seed, epoch)`` and the
state of the random generators is kept at a stop, so a resumed run continues exactly as the uninterrupted one would
have.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.checkpoint import load_state, save_state
from ..core.errors import Interrupted, SiamdiffError
from ..core.files import atomic_write, output_folder
from ..core.progress import progress
from . import distributed
from .config import TrainConfig
from .distributed import Ranks
from .task import Task

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The device ``name`` (auto, cpu, cuda, cuda:N) names, checked; ``auto`` and ``cuda`` mean the GPU of
    ``local_rank`` (one process per GPU under ``torchrun``)."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "auto":
        return torch.device("cpu")
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


def cpu_has_bf16_instructions() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware: Intel AMX (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``:
    AMD Zen 4 and later, Intel Cooper Lake and later), read from Linux's /proc/cpuinfo.

    There bfloat16 autocast trains the convolutional networks about 2-3x faster than float32 (the CIFAR-10 embedding,
    batch 256, 2 cores: 1.39 -> 0.42 s per step with AMX, 2.25 -> 0.91 s with AVX-512 BF16 on an AMD EPYC;
    docs/benchmarks/throughput*.md); elsewhere bfloat16 is emulated and slower, so it stays off.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and bool({"amx_bf16", "avx512_bf16"} & set(line.split()))
                       for line in f)
    except OSError:
        return False


def autocast_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """bfloat16 autocast for training: on CUDA, and on a CPU that multiplies bfloat16 in hardware, unless ``cfg.amp`` is off."""
    return cfg.amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_instructions()))


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
               amp: bool, ranks: Ranks = Ranks(), stop: bool = False) -> tuple[torch.Tensor, bool]:
    """One optimisation step of ``task`` on ``batch`` (the model in train mode; this rank's slice of it): loss under
    bfloat16 autocast when ``amp``, backward, gradients averaged over the ranks, optimizer and schedule steps, the
    task's after-step hook. Returns the loss (float32, detached, not read: reading it would wait for the GPU) and
    whether any rank asked to ``stop`` after this step."""
    with torch.autocast(batch[0].device.type, dtype=torch.bfloat16, enabled=amp):
        loss = task.loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    stop = ranks.average(opt.param_groups, stop)
    opt.step()
    sched.step()
    task.after_step()
    return loss.detach().float(), stop


class StopRequest:
    """SIGINT and SIGTERM, while training, ask the loop to stop after its current step (the first signal; a second
    SIGINT interrupts at once). Outside the main thread, signals stay as they are."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def __bool__(self) -> bool:
        return self.signal_number is not None

    def _handle(self, number: int, frame: Any) -> None:
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = self.signal_number or number

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        before = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)


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


def _interrupted(stop: StopRequest, where: str, state_path: Path) -> Interrupted:
    """The end of a run stopped by a signal ``where`` (in or after an epoch): this rank's signal, or SIGTERM when
    another rank's stopped it."""
    number = stop.signal_number or signal.SIGTERM
    return Interrupted(f"stopped by {signal.Signals(number).name} {where}; the state is in '{state_path}': continue "
                       f"with --resume", number)


def _skip(batches: Iterator[Any], n: int) -> Iterator[Any]:
    """``batches`` after the first ``n`` (drawn, so that the epoch's generator is where it was, and dropped)."""
    for _ in range(n):
        next(batches, None)
    return batches


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
    if out.exists() and not out.is_dir():
        raise SiamdiffError(f"{{out}} '{out}' is a file: give a folder for the run", "out")
    existing = next(p for p in (out, *out.parents) if p.exists())  # the folder the run's files or folders go into
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SiamdiffError(f"cannot write the run into '{out}': folder '{existing}' is not writable", "out")
    return out


def _changed(old: Any, new: Any) -> list[str]:
    """The keys whose values differ between two dicts (non-dicts count as empty)."""
    old, new = (d if isinstance(d, dict) else {} for d in (old, new))
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def fit(task: Task, out: str | Path, resume: bool = False, overwrite: bool = False) -> list[dict[str, Any]]:
    """Train ``task.model`` with ``task.recipe.train``; writes ``model.safetensors``, ``state.pt``, ``log.jsonl`` in
    ``out``.

    An existing run in ``out`` is continued with ``resume`` and replaced only with ``overwrite``. Under ``torchrun``
    each process is one rank (:mod:`.distributed`) with a batch of ``batch_size``; rank 0 writes. SIGINT or SIGTERM
    stop training after the current step with a checkpoint in ``out``: :class:`~siamdiff.core.errors.Interrupted`.
    Returns the per-epoch history (the lines of ``log.jsonl``).
    """
    cfg = task.recipe.train
    out = check_run_folder(out, resume, overwrite)
    ranks = distributed.ranks_from_environment()
    device = resolve_device(cfg.device, ranks.local)  # checked, like the state, before the output folder is made
    started = distributed.start(ranks, device)
    try:
        with output_folder(out) if ranks.main else contextlib.nullcontext(), StopRequest().installed() as stop:
            return _train(task, cfg, out, device, resume, ranks, stop)
    finally:
        if started:
            distributed.stop()


def _resumed(state_path: Path, cfg: TrainConfig, ranks: Ranks, recipe: dict[str, Any],
             signature: dict[str, list[int]]) -> dict[str, Any]:
    """The state in ``state_path``, refused (naming what differs) unless it was written by this run's settings. The
    batch of every rank may change with the number of ranks if the global batch (``batch_size × ranks``) stays, and
    the device may change."""
    state = load_state(state_path)
    world = int(state.get("world_size", 1))
    old, new = dict(state.get("train_config") or {}), cfg.to_dict()
    if old.get("batch_size", 0) * world != new["batch_size"] * ranks.world:
        raise SiamdiffError(f"cannot resume: '{state_path}' was written with a global batch of "
                            f"{old.get('batch_size')} x {world} rank(s), not {new['batch_size']} x {ranks.world}: "
                            f"give a {{batch_size}} that keeps {old.get('batch_size', 0) * world} images a step",
                            "batch_size")
    old["batch_size"] = new["batch_size"]
    old["device"] = new["device"]  # a run may go on elsewhere (on the CPU it continues bit-identically)
    if old != new:
        changed = ", ".join(_changed(old, new)) or "settings"
        extend = " (a finished run is extended by a new run with {init} from its model)" if "epochs" in changed \
            else ""
        raise SiamdiffError(f"cannot resume: '{state_path}' was written with other training settings ({changed})"
                            + extend, "init")
    before = state.get("recipe", recipe)  # states written before the recipe was kept are not checked
    if before != recipe:
        changed = ", ".join(_changed(before, recipe)) or "recipe"
        raise SiamdiffError(f"cannot resume: '{state_path}' was written with another {changed}; give the options "
                            f"(or {{init}}) the run started with", "init")
    if state.get("signature") != signature:
        raise SiamdiffError(f"cannot resume: '{state_path}' was written for another model or image size")
    return state


def _train(task: Task, cfg: TrainConfig, out: Path, device: torch.device, resume: bool, ranks: Ranks,
           stop: StopRequest) -> list[dict[str, Any]]:
    state_path = out / "state.pt"
    task.ranks = ranks
    model = place(task.model, cfg, device)
    if ranks.world > 1:
        distributed.synchronise_batch_norm(model)
    trainable = model if task.loss_module is None else nn.ModuleList([model, task.loss_module.to(device)])
    torch.manual_seed(cfg.seed)
    steps = task.n_batches() if cfg.max_batches is None else min(task.n_batches(), cfg.max_batches)
    opt = make_optimizer(trainable, cfg)
    sched = make_scheduler(opt, cfg, steps)
    history: list[dict[str, Any]] = []
    start, partial = 0, None
    signature = {k: list(v.shape) for k, v in trainable.state_dict().items()}
    # the rest of a task's recipe (loss, margin, pairs, schedule, augmentation): the network is in the signature
    recipe = {k: v for k, v in task.recipe.to_dict().items() if k not in ("train", "model")}
    if resume:
        state = _resumed(state_path, cfg, ranks, recipe, signature)
        try:
            trainable.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            history = list(state["history"])
            start = int(state["epoch"]) + 1
            partial = state.get("partial")
            if partial is not None:  # where in an epoch a signal stopped it: all of it, or a clear refusal
                partial = {"batches": int(partial["batches"]), "total": torch.as_tensor(partial["total"]),
                           "rng": partial["rng"], "cuda_rng": partial.get("cuda_rng")}
            task.load_extra_state(state["task"])
            if state.get("init") is not None:  # a fine-tuning run keeps its start, with or without --init again
                task.init = state["init"]
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise SiamdiffError(f"cannot resume from damaged '{state_path}': {exc}") from None
        if ranks.main:
            log.info("resuming at epoch %d%s", start + 1, f", batch {partial['batches'] + 1}" if partial else "")
    amp = autocast_enabled(cfg, device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    def checkpoint(epoch: int, extra: dict[str, Any] | None = None) -> None:
        """Write the state after ``epoch`` (the last finished one; ``extra``: where in the next one it stopped)."""
        save_state(state_path, {"model": trainable.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict(), "epoch": epoch, "history": history,
                                "train_config": cfg.to_dict(), "world_size": ranks.world, "signature": signature,
                                "recipe": recipe, "task": task.extra_state(), "init": task.init,
                                **({"partial": extra} if extra else {})})

    for epoch in range(start, cfg.epochs):
        model.train()
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        began, count, warm_began = time.perf_counter(), 0, 0.0
        total = torch.zeros((), device=device)
        batches = task.batches(epoch, device)
        if partial is not None:  # continue a stopped epoch: its first batches drawn again, the random state restored
            batches = _skip(batches, partial["batches"])
            count, total = partial["batches"], partial["total"].to(device)
            torch.set_rng_state(partial["rng"])
            if device.type == "cuda" and partial.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(partial["cuda_rng"], device)
            partial = None
        bar = progress(steps, f"epoch {epoch + 1}/{cfg.epochs}", "batch", show=ranks.main)
        bar.update(count)
        resumed_at, stopping = count, False
        for batch in batches:
            if count >= steps:
                break
            loss, stopping = train_step(task, task.shard(batch, ranks), opt, sched, amp, ranks, bool(stop))
            total += loss
            count += 1
            if count - resumed_at == WARM_BATCHES:  # the first batches carry one-time costs (kernels, allocations)
                synchronize(device)
                warm_began = time.perf_counter()
            bar.update(1)
            # reading the loss waits for the GPU: only every CHECK_EVERY batches, and once after the epoch
            if count % CHECK_EVERY == 0:
                _check_finite(total, epoch, count - 1, out)
                bar.set_postfix(loss=f"{total.item() / count:.4f}")
            if stopping and count < steps:
                bar.close()
                _check_finite(total, epoch, count - 1, out)
                if ranks.main:
                    checkpoint(epoch - 1, {"batches": count, "total": total.cpu(), "rng": torch.get_rng_state(),
                                           "cuda_rng": torch.cuda.get_rng_state(device)
                                           if device.type == "cuda" else None})
                ranks.barrier()  # no rank leaves (and so has torchrun stop the others) before the state is written
                raise _interrupted(stop, f"in epoch {epoch + 1} after batch {count} of {steps}", state_path)
        _check_finite(total, epoch, count - 1, out)
        bar.close()
        synchronize(device)
        seconds = time.perf_counter() - began
        steady = {"steady_s_per_batch": round((time.perf_counter() - warm_began) / (count - resumed_at
                                                                                     - WARM_BATCHES), 5)} \
            if count - resumed_at > 2 * WARM_BATCHES else {}
        if ranks.main:
            model.eval()
            evaluated = time.perf_counter()
            # validation under the training's autocast too: in float32 it took a fifth of a CIFAR-10 epoch on a CPU
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                metrics = task.evaluate(device)
            row = {"epoch": epoch + 1, "loss": total.item() / max(count, 1), "lr": opt.param_groups[0]["lr"],
                   "seconds": round(seconds, 2), "eval_seconds": round(time.perf_counter() - evaluated, 2),
                   **steady, "device": device_name, **({"ranks": ranks.world} if ranks.world > 1 else {}),
                   **metrics}
            history.append(row)
            log.info("epoch %d: %s", epoch + 1, json.dumps(row))
            task.save(out / "model.safetensors", history)
            checkpoint(epoch)
            text = "".join(json.dumps(r) + "\n" for r in history)
            atomic_write(out / "log.jsonl", lambda tmp, text=text: tmp.write_text(text))
        if (stopping or stop) and epoch + 1 < cfg.epochs:  # a signal in an epoch's last step or its evaluation
            if stopping:  # every rank knows: none leaves before rank 0 has written
                ranks.barrier()
            raise _interrupted(stop, f"after epoch {epoch + 1}", state_path)
    ranks.barrier()
    return history
