"""Training on several processes started by ``torchrun``: the ranks, their shards of each batch, and what they share.

``torchrun --nproc-per-node N -m siamdiff train ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in the environment (several nodes: its ``--nnodes`` and
``--rdzv-endpoint``). Every rank holds the training images in memory and draws the same seeded global batch of
``batch_size × world`` images; each trains on its slice (:meth:`Ranks.shard`). The rest makes N ranks × batch B
compute what one process computes with batch N·B:

- in-batch losses (contrastive, triplet, supcon, normsoftmax) see the embeddings of the whole global batch
  (:meth:`Ranks.gather`, an all-gather through which gradients flow back to the rank that made each embedding);
- batch norm uses the statistics of the global batch (:func:`synchronise_batch_norm`);
- after each backward pass the gradients are averaged over the ranks in one all-reduce (:meth:`Ranks.average`),
  which carries each rank's stop request too, so that all ranks stop at the same step after a signal.

Only rank 0 evaluates, writes checkpoints, logs and progress; every rank reads the state on ``--resume``. The
backend is NCCL for CUDA and gloo for the CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..core.errors import SiamdiffError

TIMEOUT = datetime.timedelta(minutes=30)  # a collective that waits longer (a rank died) fails instead of hanging


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes: ``rank`` of ``world`` (``local`` on its node)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        """Whether this is the rank that evaluates and writes (rank 0)."""
        return self.rank == 0

    def shard(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """This rank's slice of a global batch: contiguous, in rank order, the sizes differing by at most one, so
        that the ranks' slices put together in rank order are the global batch."""
        if self.world == 1:
            return batch
        n = len(batch[0])
        start, stop = (n * r // self.world for r in (self.rank, self.rank + 1))
        return tuple(t[start:stop] for t in batch)

    def gather(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each tensor of this rank's slice put together with the other ranks' into the global batch's (rank
        order); gradients flow back to the rank each row came from. Slices may differ in length by one."""
        if self.world == 1:
            return tensors
        sizes = torch.tensor([len(tensors[0])], device=tensors[0].device)
        counts = [torch.zeros_like(sizes) for _ in range(self.world)]
        dist.all_gather(counts, sizes)
        longest = int(max(c.item() for c in counts))
        out = []
        for t in tensors:
            padded = torch.cat([t, t.new_zeros((longest - len(t), *t.shape[1:]))]) if len(t) < longest else t
            parts = _AllGather.apply(padded).chunk(self.world)
            out.append(torch.cat([p[:int(c.item())] for p, c in zip(parts, counts)]))
        return tuple(out)

    def average(self, param_groups: list[dict[str, Any]], stop: bool) -> bool:
        """Average the gradients of an optimizer's ``param_groups`` over the ranks in one all-reduce; returns whether
        any rank asked to stop (``stop``: this rank's request), so that all stop after the same step."""
        if self.world == 1:
            return stop
        grads = [p.grad for group in param_groups for p in group["params"] if p.grad is not None]
        device = grads[0].device if grads else torch.device("cpu")
        flat = torch.cat([*(g.reshape(-1) for g in grads), torch.tensor([float(stop)], device=device)])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return bool(flat[-1].item() > 0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


class _AllReduce(torch.autograd.Function):
    """The sum over the ranks of a tensor; the gradient of each rank's input is the sum of the ranks' gradients of
    the output (every rank's loss depends on every input)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class _AllGather(torch.autograd.Function):
    """The ranks' tensors (of one shape) concatenated in rank order; the gradient of each rank's input is its rows
    of the summed gradients of all ranks."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def ranks_from_environment() -> Ranks:
    """The ranks ``torchrun`` describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; one process without them."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise SiamdiffError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise SiamdiffError(f"RANK {rank} is not within WORLD_SIZE {world} (set by torchrun)")
    return Ranks(rank, world, local)


def start(ranks: Ranks, device: torch.device) -> bool:
    """Join the process group of ``ranks`` (NCCL on CUDA, gloo on the CPU) unless there is one rank or this process
    is in a group already; returns whether it joined (and so should :func:`stop`)."""
    if ranks.world == 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world, timeout=TIMEOUT, **kwargs)
    return True


def stop() -> None:
    """Leave the process group (at the end of training)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _global_batch_norm(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """The forward pass of a batch norm layer over the global batch of all ranks: the per-channel count and sum,
    then the sum of squared deviations from the global mean, each all-reduced (two passes, as accurate as one
    process's batch norm); gradients flow back through both reductions. In eval mode, or outside a process group,
    the layer's own forward pass."""
    if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
        return type(self).forward(self, x)
    all_reduce = _AllReduce.apply
    dims = [d for d in range(x.dim()) if d != 1]
    shape = [1, -1] + [1] * (x.dim() - 2)
    xf = x.float()
    count = all_reduce(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
    mean = all_reduce(xf.sum(dims)) / count
    centred = xf - mean.view(shape)
    var = all_reduce((centred * centred).sum(dims)) / count
    if self.track_running_stats:
        self.num_batches_tracked.add_(1)
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        with torch.no_grad():
            unbiased = var * (count / (count - 1).clamp(min=1))
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
    y = centred * torch.rsqrt(var + self.eps).view(shape)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y.to(x.dtype)


def synchronise_batch_norm(model: nn.Module) -> nn.Module:
    """``model`` with every batch norm layer normalising over the global batch of all ranks (its forward pass
    replaced on the instance by :func:`_global_batch_norm`; classes, weights and state-dict keys unchanged). One
    mechanism on every device: PyTorch's ``nn.SyncBatchNorm`` refuses CPU tensors."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.forward = _global_batch_norm.__get__(module)
    return model
